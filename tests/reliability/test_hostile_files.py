"""Hostile LoRA files through every command that reads one: one ``lbw: error:`` line naming the file, exit 2,
nothing written, and the same verdict from inspect, bake, merge, verify and meta.

Each case is a real file written byte by byte (u64 little-endian header length, header JSON, data region) around
a small kohya SD1.5 LoRA with real key names; the header text is then made hostile: deep nesting, numbers too
long for Python's int parser, floats/NaN where counts belong, unpaired UTF-16 surrogate escapes, dtypes torch
cannot compute with, factor shapes that do not fit, integer factors, conflicting duplicate keys, non-finite alpha,
bad offsets.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lbw.interfaces.cli.app import run

TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
UNET = "lora_unet_mid_block_attentions_0_proj_in"
DEEP = 100_000
HUGE = "9" * 5000
BITS = {"F32": 32, "F16": 16, "BF16": 16, "I32": 32, "I8": 8, "U8": 8, "BOOL": 8, "F4": 4, "F6_E2M3": 6,
        "F8_E8M0": 8, "U32": 32, "F64": 64}


@dataclass
class Entry:
    """One tensor entry: key, dtype, shape; its data are generated (small, finite values) unless given."""

    key: str
    dtype: str
    shape: list[int]
    data: bytes | None = None

    def payload(self) -> bytes:
        if self.data is not None:
            return self.data
        count = 1
        for n in self.shape:
            count *= n
        if self.dtype == "F32":
            return struct.pack(f"<{count}f", *((i % 7 - 3) / 64 for i in range(count)))
        return bytes((i % 5) for i in range(count * BITS[self.dtype] // 8))


@dataclass
class Blueprint:
    """A LoRA file to write: entries, metadata, and edits of the header text (placeholder -> raw JSON)."""

    entries: list[Entry]
    metadata: dict[str, str] = field(default_factory=lambda: {"ss_network_dim": "4", "ss_network_alpha": "2",
                                                               "ss_base_model_version": "sd_v1"})
    raw: dict[str, str] = field(default_factory=dict)
    offsets: dict[str, list[int]] = field(default_factory=dict)
    extra_json: str = ""

    def write(self, path: Path) -> Path:
        header: dict[str, object] = {"__metadata__": self.metadata}
        data = b""
        for entry in self.entries:
            payload = entry.payload()
            begin = len(data)
            data += payload
            header[entry.key] = {"dtype": entry.dtype, "shape": entry.shape,
                                 "data_offsets": self.offsets.get(entry.key, [begin, len(data)])}
        text = json.dumps(header)
        if self.extra_json:
            text = text[:-1] + ", " + self.extra_json + "}"
        for placeholder, fragment in self.raw.items():
            assert json.dumps(placeholder) in text, placeholder
            text = text.replace(json.dumps(placeholder), fragment)
        blob = text.encode("utf-8")
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
        return path


def lora_entries(rank: int = 4, *, up_dtype: str = "F32", down_dtype: str = "F32", down_rank: int | None = None,
                 alpha: bytes | None = None) -> list[Entry]:
    """Two real kohya modules (text encoder q_proj 768, UNet mid-block proj_in 1280) with alpha 2."""
    entries = []
    for name, width in ((TE, 768), (UNET, 1280)):
        entries += [Entry(f"{name}.alpha", "F32", [], alpha if name == UNET and alpha else struct.pack("<f", 2.0)),
                    Entry(f"{name}.lora_down.weight", down_dtype if name == UNET else "F32",
                          [down_rank or rank if name == UNET else rank, width]),
                    Entry(f"{name}.lora_up.weight", up_dtype if name == UNET else "F32", [width, rank])]
    return entries


def _good() -> Blueprint:
    return Blueprint(lora_entries())


def _shape_placeholder() -> Blueprint:
    blueprint = Blueprint(lora_entries())
    last = blueprint.entries[-1]
    last.data = last.payload()
    last.shape = "@shape@"  # type: ignore[assignment]
    return blueprint


def shape_case(fragment: str) -> Blueprint:
    blueprint = _shape_placeholder()
    blueprint.raw["@shape@"] = fragment
    return blueprint


def offsets_case(fragment: str) -> Blueprint:
    blueprint = _good()
    blueprint.offsets[blueprint.entries[-1].key] = "@offsets@"  # type: ignore[assignment]
    blueprint.raw["@offsets@"] = fragment
    return blueprint


def metadata_case(key: str, value_fragment: str) -> Blueprint:
    blueprint = _good()
    blueprint.metadata[key] = "@value@"
    blueprint.raw["@value@"] = value_fragment
    return blueprint


def surrogate_key() -> Blueprint:
    blueprint = _good()
    blueprint.metadata["@key@"] = "x"
    blueprint.raw["@key@"] = '"ss_tag\\ud800"'
    return blueprint


def surrogate_tensor_name() -> Blueprint:
    blueprint = _good()
    blueprint.entries[0].key = "@name@"
    blueprint.raw["@name@"] = f'"{TE}\\udc80.alpha"'
    return blueprint


def dtype_case(fragment: str) -> Blueprint:
    blueprint = _good()
    blueprint.entries[-1].data = blueprint.entries[-1].payload()
    blueprint.entries[-1].dtype = "@dtype@"
    blueprint.raw["@dtype@"] = fragment
    return blueprint


def alpha_vector() -> Blueprint:
    blueprint = _good()
    alpha = blueprint.entries[3]
    alpha.shape, alpha.data = [2], struct.pack("<2f", 1.0, 2.0)
    return blueprint


def dora_scale_misfit() -> Blueprint:
    blueprint = _good()
    blueprint.entries.append(Entry(f"{UNET}.dora_scale", "F32", [1, 640]))
    return blueprint


def lokr_tucker_misfit() -> Blueprint:
    name = "lora_unet_down_blocks_1_resnets_0_conv1"
    return Blueprint([Entry(f"{name}.alpha", "F32", [], struct.pack("<f", 4.0)),
                      Entry(f"{name}.lokr_t2", "F32", [4, 4, 3, 3]), Entry(f"{name}.lokr_w1", "F32", [4, 4]),
                      Entry(f"{name}.lokr_w2_a", "F32", [4, 160]), Entry(f"{name}.lokr_w2_b", "F32", [2, 80])])


def peft_config(fragment: str) -> Blueprint:
    """A PEFT file whose diffusers ``lora_adapter_metadata`` (JSON inside a metadata string) is hostile."""
    name = "unet.mid_block.attentions.0.proj_in"
    blueprint = Blueprint([Entry(f"{name}.lora_A.weight", "F32", [4, 1280]),
                           Entry(f"{name}.lora_B.weight", "F32", [1280, 4])], metadata={})
    blueprint.metadata["lora_adapter_metadata"] = fragment
    return blueprint


def duplicate_tensor() -> Blueprint:
    """The UNet lora_up appears twice with conflicting shapes; json.loads alone would keep the last silently."""
    blueprint = _good()
    up = blueprint.entries[-1]
    blueprint.extra_json = (f'"{up.key}": {{"dtype": "F32", "shape": [1280, 2], "data_offsets": [0, 10240]}}')
    return blueprint


def duplicate_metadata() -> Blueprint:
    blueprint = _good()
    blueprint.extra_json = '"__metadata__": {"ss_network_dim": "8"}'
    return blueprint


def loha_inner_mismatch() -> Blueprint:
    name = "lora_unet_mid_block_attentions_0_proj_out"
    return Blueprint([Entry(f"{name}.alpha", "F32", [], struct.pack("<f", 4.0)),
                      Entry(f"{name}.hada_w1_a", "F32", [320, 4]), Entry(f"{name}.hada_w1_b", "F32", [4, 320]),
                      Entry(f"{name}.hada_w2_a", "F32", [320, 4]), Entry(f"{name}.hada_w2_b", "F32", [2, 320])])


def lokr_bad_w1() -> Blueprint:
    name = "lora_unet_mid_block_attentions_0_proj_out"
    return Blueprint([Entry(f"{name}.lokr_w1", "F32", [4, 4, 2]), Entry(f"{name}.lokr_w2", "F32", [80, 80])])


def conv_kernel_mismatch() -> Blueprint:
    """LoCon Tucker: lora_mid must be [r, r', kh, kw] matching up and down."""
    name = "lora_unet_down_blocks_1_resnets_0_conv1"
    return Blueprint([Entry(f"{name}.alpha", "F32", [], struct.pack("<f", 2.0)),
                      Entry(f"{name}.lora_down.weight", "F32", [4, 320, 1, 1]),
                      Entry(f"{name}.lora_mid.weight", "F32", [4, 2, 3, 3]),
                      Entry(f"{name}.lora_up.weight", "F32", [640, 4, 1, 1])])


def up_with_kernel() -> Blueprint:
    name = "lora_unet_down_blocks_1_resnets_0_conv1"
    return Blueprint([Entry(f"{name}.lora_down.weight", "F32", [4, 320, 3, 3]),
                      Entry(f"{name}.lora_up.weight", "F32", [640, 4, 3, 3])])


def overlap() -> Blueprint:
    blueprint = _good()
    second = blueprint.entries[1]
    blueprint.offsets[second.key] = [0, 4 * 768 * 4]
    return blueprint


def out_of_range() -> Blueprint:
    blueprint = _good()
    last = blueprint.entries[-1]
    total = sum(len(e.payload()) for e in blueprint.entries)
    blueprint.offsets[last.key] = [total - len(last.payload()) + 4, total + 4]
    return blueprint


NESTED = "[" * DEEP + "]" * DEEP

# name -> (blueprint factory, a fragment the error line must contain)
CASES: dict[str, tuple[Callable[[], Blueprint], str]] = {
    "nested lists in metadata": (lambda: metadata_case("ss_tag_frequency", NESTED), "too deeply"),
    "nested objects in metadata": (lambda: metadata_case("ss_tag_frequency", '{"a":' * DEEP + "1" + "}" * DEEP),
                                   "too deeply"),
    "nested lists as a shape": (lambda: shape_case(NESTED), "too deeply"),
    "nested lists as offsets": (lambda: offsets_case(NESTED), "too deeply"),
    "5000-digit number in a shape": (lambda: shape_case(f"[{HUGE}, 4]"), "digits"),
    "5000-digit number in offsets": (lambda: offsets_case(f"[0, {HUGE}]"), "digits"),
    "5000-digit number in metadata": (lambda: metadata_case("ss_network_dim", HUGE), "digits"),
    "4000-digit number in a shape": (lambda: shape_case(f"[{'9' * 4000}, 4]"), "shape"),
    "float in a shape": (lambda: shape_case("[1280.0, 4]"), "shape"),
    "NaN in a shape": (lambda: shape_case("[NaN, 4]"), "shape"),
    "Infinity in offsets": (lambda: offsets_case("[0, Infinity]"), "data_offsets"),
    "string as a shape": (lambda: shape_case('"1280x4"'), "shape"),
    "object as offsets": (lambda: offsets_case('{"begin": 0}'), "data_offsets"),
    "boolean in a shape": (lambda: shape_case("[true, 4]"), "shape"),
    "negative dims": (lambda: shape_case("[-1280, -4]"), "shape"),
    "unpaired surrogate in a metadata value": (lambda: metadata_case("ss_output_name", '"face\\ud800"'),
                                               "surrogate"),
    "unpaired surrogate in a metadata key": (surrogate_key, "surrogate"),
    "unpaired low surrogate in a metadata value": (lambda: metadata_case("ss_output_name", '"\\udfff!"'),
                                                   "surrogate"),
    "unpaired surrogate in a tensor name": (surrogate_tensor_name, "surrogate"),
    "list as a dtype": (lambda: dtype_case('["F32"]'), "unknown dtype"),
    "nested lists in the PEFT adapter config": (lambda: peft_config(NESTED), "too deeply"),
    "5000-digit number in the PEFT adapter config": (lambda: peft_config(f'{{"r": {HUGE}}}'), "digits"),
    "conflicting duplicate key in the PEFT adapter config": (lambda: peft_config('{"r": 4, "r": 8}'),
                                                             "duplicate key"),
    "F4 lora_up": (lambda: Blueprint(lora_entries(up_dtype="F4")), "stored as F4"),
    "F6_E2M3 lora_down": (lambda: Blueprint(lora_entries(down_dtype="F6_E2M3")), "stored as F6_E2M3"),
    "F8_E8M0 lora_up": (lambda: Blueprint(lora_entries(up_dtype="F8_E8M0")), "stored as F8_E8M0"),
    "U32 lora_down": (lambda: Blueprint(lora_entries(down_dtype="U32")), "stored as U32"),
    "integer lora_up": (lambda: Blueprint(lora_entries(up_dtype="I32")), "stored as I32"),
    "boolean lora_down": (lambda: Blueprint(lora_entries(down_dtype="BOOL")), "stored as BOOL"),
    "rank mismatch up/down": (lambda: Blueprint(lora_entries(down_rank=8)), "rank mismatch"),
    "conflicting duplicate tensor key": (duplicate_tensor, "duplicate key"),
    "conflicting duplicate __metadata__": (duplicate_metadata, "duplicate key"),
    "NaN alpha": (lambda: Blueprint(lora_entries(alpha=struct.pack("<f", float("nan")))), "alpha is nan"),
    "infinite alpha": (lambda: Blueprint(lora_entries(alpha=struct.pack("<f", float("inf")))), "alpha is inf"),
    "alpha of two values": (alpha_vector, "single number"),
    "dora_scale that fits neither axis": (dora_scale_misfit, "dora_scale"),
    "LoKr Tucker core that does not fit": (lokr_tucker_misfit, "lokr_t2"),
    "LoHa factors that do not fit": (loha_inner_mismatch, "hada_w2"),
    "LoKr w1 of three dims": (lokr_bad_w1, "lokr_w1"),
    "LoCon Tucker core that does not fit": (conv_kernel_mismatch, "lora_mid"),
    "conv lora_up with a kernel": (up_with_kernel, "lora_up"),
    "overlapping offsets": (overlap, "overlap"),
    "offsets past the data region": (out_of_range, "data_offsets"),
}

COMMANDS = ("inspect", "bake", "merge", "verify", "meta")


def argv_for(command: str, hostile: Path, good: Path, out: Path) -> list[str]:
    """The command line that makes ``command`` read ``hostile`` (and write ``out`` where it writes)."""
    return {
        "inspect": ["inspect", str(hostile), "--no-hash"],
        "bake": ["bake", str(hostile), "-w", "OUTALL", "-o", str(out)],
        "merge": ["merge", str(good), str(hostile), "-o", str(out)],
        "verify": ["verify", str(hostile), "-a", str(good)],
        "meta": ["meta", str(hostile), "--author", "me", "-o", str(out)],
    }[command]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _good().write(tmp_path_factory.mktemp("good") / "good.safetensors")
    assert run(["inspect", str(path), "--no-hash", "--json"]) == 0
    return path


def test_the_base_file_passes_every_command(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        out = tmp_path / f"{command}.safetensors"
        assert run(argv_for(command, good, good, out)) == 0, capsys.readouterr().err
        assert (command in ("inspect", "verify")) != out.exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_one_error_line(case: str, command: str, good: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    make, fragment = CASES[case]
    hostile = make().write(tmp_path / "hostile.safetensors")
    before = hostile.read_bytes()
    out = tmp_path / "out.safetensors"
    code = run(argv_for(command, hostile, good, out))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"lbw: error: {hostile}"), err
    assert fragment in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    lines[0].encode("utf-8")  # printable in a strict UTF-8 terminal
    assert not out.exists() and hostile.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.safetensors"]


# One real process per class of hostile file, in a terminal that refuses anything but UTF-8.
PROCESS_CASES = ("nested lists in metadata", "5000-digit number in a shape", "unpaired surrogate in a metadata value",
                 "F4 lora_up", "rank mismatch up/down", "conflicting duplicate tensor key", "integer lora_up",
                 "NaN alpha", "negative dims", "overlapping offsets")


@pytest.mark.parametrize("case", PROCESS_CASES)
def test_hostile_file_in_a_real_process(case: str, good: Path, tmp_path: Path) -> None:
    hostile = CASES[case][0]().write(tmp_path / "hostile.safetensors")
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    command = "bake" if PROCESS_CASES.index(case) % 2 else "inspect"
    code = "import sys\nfrom lbw.interfaces.cli.app import main\nsys.argv[0] = 'lbw'\nmain()"
    done = subprocess.run([sys.executable, "-c", code, *argv_for(command, hostile, good, out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"lbw: error: {hostile}") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.parametrize("case", PROCESS_CASES)
def test_hostile_file_as_another_input(case: str, good: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The hostile file as a verify source, as the first merge input, and as a LoRA of the diffusers backend."""
    from lbw.errors import LoraFileError
    from lbw.render.backends.diffusers_backend import DiffusersBackend
    from lbw.render.plan import Cell, LoraSpec, Plan
    from lbw.services.demo_render import demo_settings

    hostile = CASES[case][0]().write(tmp_path / "hostile.safetensors")
    out = tmp_path / "out.safetensors"
    for argv in (["verify", str(good), "-a", f"{hostile}:1:ALL"], ["merge", str(hostile), str(good), "-o", str(out)]):
        assert run(argv) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lbw: error: {hostile}: "), lines
        assert not out.exists()
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}', encoding="utf-8")
    plan = Plan(kind="custom", layout="SD26", cells=(Cell("a", (1.0,) * 26),), settings=demo_settings((1,)),
                loras=(LoraSpec(path=str(hostile), name="hostile"),), model=str(model))
    with pytest.raises(LoraFileError) as caught:
        DiffusersBackend(device="cpu").prepare(plan)
    assert str(caught.value).startswith(f"{hostile}: ") and "\n" not in str(caught.value)


def png_header(width: int, height: int, *, image_data: bool = False) -> bytes:
    """A PNG that declares ``width`` x ``height`` (no pixel data unless ``image_data``: a 1x1 scan line)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) if image_data else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + body
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(("png", "shown", "usable"), [
    (png_header(100_000, 100_000), "<unreadable image (more than 89,478,485 pixels: a decompression bomb?)>", False),
    (png_header(1, 1), "<PNG 1x1, 45 bytes>", False),  # described from its header; as --cover it fails to verify
    (png_header(1, 1, image_data=True), "<PNG 1x1, ", True),
], ids=["bomb", "no pixel data", "valid"])
def test_hostile_cover_images_are_described_not_decoded(png: bytes, shown: str, usable: bool, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    blueprint = _good()
    blueprint.metadata["ssmd_cover_images"] = json.dumps([base64.b64encode(png).decode("ascii")])
    path = blueprint.write(tmp_path / "cover.safetensors")
    assert run(["meta", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and shown in captured.out
    cover = tmp_path / "cover.png"
    cover.write_bytes(png)
    code = run(["meta", str(path), "--cover", str(cover), "-o", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    if usable:
        assert code == 0 and err == ""
    else:
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"lbw: error: {cover}: ")
        assert not (tmp_path / "out.safetensors").exists()
