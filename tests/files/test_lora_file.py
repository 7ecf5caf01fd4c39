"""LoraFile on realistic fixtures: modules, kinds, blocks, layout, architecture, Inspire blocks, lazy reading."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lbw.adapters.kinds import AdapterKind
from lbw.domain.layouts import SD17, XL12
from lbw.domain.weights import parse_weights
from lbw.errors import LoraFileError
from lbw.files.fixtures import fixture_tensors, write_fixture
from lbw.files.lora_file import LoraFile


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lora_file")


@pytest.fixture(scope="module")
def sd15(folder: Path) -> LoraFile:
    return LoraFile.open(write_fixture("sd15", folder / "sd15.safetensors", rank=8, alpha=4, seed=1))


@pytest.fixture(scope="module")
def sdxl(folder: Path) -> LoraFile:
    return LoraFile.open(write_fixture("sdxl", folder / "sdxl.safetensors", rank=8, alpha=4, seed=2))


def counts(lora: LoraFile) -> dict[str | None, int]:
    found: dict[str | None, int] = {}
    for module in lora.modules:
        found[module.block] = found.get(module.block, 0) + 1
    return found


def test_sd15_inventory_and_blocks(sd15: LoraFile) -> None:
    assert (sd15.architecture, sd15.naming, sd15.adapter_types) == ("sd1", "kohya", ("lora",))
    assert (len(sd15.modules), sd15.tensor_count, sd15.parameter_count) == (264, 792, 4_718_856)
    assert sd15.layout == SD17
    assert sd15.blocks == SD17.ids
    assert counts(sd15) == {block: 72 if block == "BASE" else 12 for block in SD17.ids}
    assert sd15.unmapped == ()
    assert sd15.warnings == ()
    assert sd15.dtypes == {"F16": 792}
    # Parameters per block at rank r = r * sum(in + out) + one alpha per module (lora-files.md §5).
    in01 = sum(m.params for m in sd15.modules if m.block == "IN01")
    assert in01 == 8 * 11_776 + 12
    module = sd15.module("lora_unet_down_blocks_0_attentions_0_proj_in")
    assert (module.kind, module.rank, module.alpha, module.stored_alpha) == (AdapterKind.LORA, 8, 4.0, 4.0)
    assert module.shapes == {"alpha": (), "lora_down": (8, 320, 1, 1), "lora_up": (320, 8, 1, 1)}
    assert module.keys["lora_up"] == "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"
    assert (module.dtype, module.family, module.inspire) == ("F16", "kohya", ("input", 1))


def test_sd15_inspire_blocks_and_vector_conversion(sd15: LoraFile) -> None:
    expected = ([("input", n) for n in (1, 2, 4, 5, 7, 8)] + [("middle", 1)]
                + [("output", n) for n in range(3, 12)])
    assert list(sd15.inspire_blocks) == expected
    assert sd15.inspire_length == 17
    weights = parse_weights("1,0,0,0,0,0,0,0,0,0,0,1,1,1,0.5,0,0")
    assert sd15.to_inspire(weights).vector == weights.numbers()
    back = sd15.from_inspire(list(weights.numbers()))
    assert back.weights.layout.name == "SD26"
    assert back.weights["OUT09"] == 0.5 and back.weights["OUT06"] == 1 and back.weights["IN03"] == 0


def test_sdxl_inventory_and_blocks(sdxl: LoraFile) -> None:
    assert (sdxl.architecture, sdxl.naming, sdxl.layout) == ("sdxl", "kohya", XL12)
    assert (len(sdxl.modules), sdxl.tensor_count, sdxl.parameter_count) == (986, 2958, 28_505_050)
    assert counts(sdxl) == {"BASE": 264, "IN04": 22, "IN05": 22, "IN07": 102, "IN08": 102, "M00": 102,
                            "OUT00": 102, "OUT01": 102, "OUT02": 102, "OUT03": 22, "OUT04": 22, "OUT05": 22}
    assert sdxl.architecture_report.evidence[0] == "second text encoder (lora_te2_)"
    assert "cross-attention context width 2048" in sdxl.architecture_report.evidence
    assert sdxl.architecture_report.metadata_says == {"ss_base_model_version": "sdxl",
                                                      "modelspec.architecture": "sdxl"}
    assert sdxl.inspire_length == 12


def test_conv_loras_need_the_full_layout(folder: Path) -> None:
    sd = LoraFile.open(write_fixture("sd15_locon", folder / "locon.safetensors", rank=4))
    assert (sd.layout.name, len(sd.modules), sd.unmapped) == ("SD26", 350, ())
    assert counts(sd)["IN03"] == 1 and counts(sd)["OUT00"] == 4 and counts(sd)["IN11"] == 3
    assert sd.inspire_length == 27  # BASE + in 1-11 + mid 0, 1, 2 + out 0-11 (lbw-semantics §3.2)
    xl = LoraFile.open(write_fixture("sdxl_locon", folder / "xl_locon.safetensors", rank=4))
    assert (xl.layout.name, len(xl.modules)) == ("XL20", 1052)
    assert xl.inspire_length == 21


@pytest.mark.parametrize(("kind", "adapter"), [
    ("sd15_loha", "loha"), ("sd15_loha_tucker", "loha"), ("sd15_lokr", "lokr"), ("sd15_lokr_full", "lokr"),
    ("sd15_lokr_tucker", "lokr"), ("sd15_locon_tucker", "lora"),
])
def test_lycoris_full_preset_files(folder: Path, kind: str, adapter: str) -> None:
    lora = LoraFile.open(write_fixture(kind, folder / f"{kind}.safetensors", rank=4))
    assert (lora.architecture, lora.naming, lora.adapter_types, lora.layout.name) == (
        "sd1", "lycoris", (adapter,), "SD26")
    # LyCORIS preset full also adapts conv_in (IN00), conv_out and the time embedding (no block: strength 1).
    assert sorted(m.name for m in lora.unmapped) == [
        "lora_unet_conv_out", "lora_unet_time_embedding_linear_1", "lora_unet_time_embedding_linear_2"]
    assert lora.module("lora_unet_conv_in").block == "IN00"
    assert lora.inspire_length == 28


def test_other_adapter_kinds(folder: Path) -> None:
    kinds = {}
    for kind in ("sd15_ia3", "sd15_dora", "sd15_full", "sd15_norm"):
        lora = LoraFile.open(write_fixture(kind, folder / f"{kind}.safetensors", rank=4))
        kinds[kind] = lora.adapter_types
        assert lora.naming == "lycoris"
    assert kinds == {"sd15_ia3": ("ia3",), "sd15_dora": ("dora",), "sd15_full": ("full",),
                     "sd15_norm": ("lora", "norm")}


def test_peft_names_are_normalised(folder: Path) -> None:
    lora = LoraFile.open(write_fixture("sd15_peft", folder / "peft.safetensors", rank=4))
    assert (lora.architecture, lora.naming, lora.layout.name) == ("sd1", "peft", "SD17")
    module = lora.module("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert set(module.roles) == {"lora_up", "lora_down"}
    assert (module.block, module.rank, module.stored_alpha, module.alpha) == ("IN01", 4, None, 4.0)
    xl = LoraFile.open(write_fixture("sdxl_peft", folder / "xl_peft.safetensors", rank=4))
    assert (xl.architecture, xl.layout.name, xl.warnings) == ("sdxl", "XL12", ())


def test_sd2_and_flux(folder: Path) -> None:
    sd2 = LoraFile.open(write_fixture("sd2", folder / "sd2.safetensors", rank=4))
    assert (sd2.architecture, sd2.layout.name, sd2.warnings) == ("sd2", "SD17", ())
    flux = LoraFile.open(write_fixture("flux", folder / "flux.safetensors", rank=4))
    assert (flux.architecture, flux.layout.name, len(flux.modules)) == ("flux", "FLUX61", 228)
    assert flux.blocks == tuple(f"D{n:02d}" for n in range(19)) + tuple(f"S{n:02d}" for n in range(38))
    assert flux.inspire_length == 58


def test_missing_alpha_means_rank(folder: Path) -> None:
    path = write_fixture("sd15", folder / "noalpha.safetensors", rank=4, omit_alpha=True, select="mid_block")
    lora = LoraFile.open(path)
    assert {(m.stored_alpha, m.alpha) for m in lora.modules} == {(None, 4.0)}


def test_module_tensors_are_the_stored_tensors(folder: Path, sd15: LoraFile) -> None:
    stored = fixture_tensors("sd15", rank=8, alpha=4, seed=1)
    module = sd15.module("lora_te_text_model_encoder_layers_3_mlp_fc2")
    tensors = sd15.module_tensors(module)
    assert set(tensors) == {"lora_up", "lora_down", "alpha"}
    assert torch.equal(tensors["lora_up"], stored[f"{module.name}.lora_up.weight"])
    assert tensors["lora_down"].dtype == torch.float16


def test_metadata_disagreement_is_a_warning(folder: Path) -> None:
    path = write_fixture("sd15", folder / "liar.safetensors", rank=4, select="mid_block",
                         metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"})
    lora = LoraFile.open(path)
    assert lora.architecture == "sd1"
    assert "metadata ss_base_model_version = 'sdxl_base_v1-0' says sdxl, but the keys say sd1" in lora.warnings


def test_unsupported_and_unrecognised_tensors_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 2),
        "lora_unet_mid_block_attentions_0_proj_out.oft_blocks": torch.zeros(4, 2, 2),
        "lora_unet_mid_block_attentions_0_proj_out.alpha": torch.tensor(1.0),
        "model.some_weight": torch.zeros(3),
    }, path)
    lora = LoraFile.open(path)
    assert [m.name for m in lora.modules] == ["lora_unet_mid_block_attentions_0_proj_in"]
    assert lora.unrecognized_keys == ("model.some_weight",)
    assert lora.warnings[-2].startswith("module lora_unet_mid_block_attentions_0_proj_out (alpha, oft_blocks) is "
                                        "not supported: unknown adapter roles ['alpha', 'oft_blocks']")
    assert lora.warnings[-1] == "1 tensor keys match no LoRA naming scheme: model.some_weight"


def test_two_keys_for_one_role_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.safetensors"
    save_file({"unet.mid_block.proj_in.lora_A.weight": torch.zeros(2, 4),
               "unet.mid_block.proj_in.lora_A.default.weight": torch.zeros(2, 4),
               "unet.mid_block.proj_in.lora_B.weight": torch.zeros(4, 2)}, path)
    with pytest.raises(LoraFileError, match=r"both give role 'lora_down' of module 'unet\.mid_block\.proj_in'"):
        LoraFile.open(path)


def test_bad_alpha_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "alpha.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_conv_in.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_conv_in.alpha": torch.tensor([1.0, 2.0])}, path)
    with pytest.raises(LoraFileError, match=r"tensor 'lora_unet_conv_in.alpha': alpha must be a single number, "
                                            r"found shape \[2\]"):
        LoraFile.open(path)  # refused on opening, before any command uses the module


def read_bytes_so_far() -> int:
    with open("/proc/self/io", encoding="ascii") as stream:
        fields = dict(line.split(": ") for line in stream.read().splitlines())
    return int(fields["rchar"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_listing_reads_the_header_only(sdxl: LoraFile) -> None:
    data_size = sdxl.header.data_size
    assert data_size > 50_000_000
    before = read_bytes_so_far()
    lora = LoraFile.open(sdxl.path)
    summary = (lora.architecture, lora.layout.name, len(lora.modules), lora.blocks, lora.unmapped,
               lora.inspire_blocks, lora.naming, lora.warnings)
    read = read_bytes_so_far() - before
    assert summary[:3] == ("sdxl", "XL12", 986)
    assert read < 8 + lora.header.header_size + 64 * 1024  # the header plus a little (no tensor data)
    alphas = {m.alpha for m in lora.modules}  # alpha scalars: 986 x 2 bytes
    assert alphas == {4.0}
    assert read_bytes_so_far() - before < 8 + lora.header.header_size + 128 * 1024


def test_pickle_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lora.pt"
    path.write_bytes(b"\x80\x02" + b"\0" * 30)
    with pytest.raises(LoraFileError, match=r"is a pickle checkpoint \(\.pt\); lbw never unpickles"):
        LoraFile.open(path)


def test_header_length_beyond_file_through_lora_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    blob = json.dumps({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(blob) + 10) + blob)
    with pytest.raises(LoraFileError, match="runs past the end of the file"):
        LoraFile.open(path)


@pytest.mark.parametrize(("kind", "select", "evidence"), [
    ("sd15_lokr", "attn2_to_k", "cross-attention context width 768"),
    ("sd15_lokr_tucker", "attn2_to_v", "cross-attention context width 768"),
    ("sd15_ia3", "layers_0_self_attn_q", "text encoder lora_te_ with width 768"),
])
def test_lokr_and_ia3_shapes_are_evidence(folder: Path, kind: str, select: str, evidence: str) -> None:
    path = write_fixture(kind, folder / f"{kind}_arch.safetensors", rank=2, select=select,
                         metadata={"ss_base_model_version": "", "modelspec.architecture": ""})
    report = LoraFile.open(path).architecture_report
    assert (report.name, report.evidence, report.warnings) == ("sd1", (evidence,), ())
