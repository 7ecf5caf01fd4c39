"""`lbw meta`: show, edit, JSON output, one-line errors with exit code 2, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from lbw.files.fixtures import write_fixture
from lbw.files.hashes import addnet_hash
from lbw.files.safetensors_header import read_header
from lbw.interfaces.cli.app import run


@pytest.fixture()
def lora(tmp_path):
    return write_fixture("sd15", tmp_path / "gobuhime.safetensors", rank=1, select="layers_0_")


def test_show_prints_hashes_groups_and_sidecar(lora, capsys) -> None:
    assert run(["meta", str(lora)]) == 0
    lines = capsys.readouterr().out.splitlines()
    digest = addnet_hash(lora)
    legacy = read_header(lora).metadata["sshs_legacy_hash"]
    assert lines[0] == str(lora)
    assert lines[1] == "hashes"
    assert lines[2] == f"  sshs_model_hash       {digest:<66}computed {digest}  ok"
    assert lines[3] == f"  sshs_legacy_hash      {legacy:<66}computed {legacy}  ok"
    assert lines[4] == "modelspec"
    assert "  modelspec.architecture     stable-diffusion-v1/lora" in lines
    assert "training (sd-scripts ss_*)" in lines
    assert any(line.startswith("  ss_tag_frequency ") for line in lines)
    assert lines[-1] == "sidecar gobuhime.json: none"


def test_edit_then_show(lora, tmp_path, capsys) -> None:
    Image.new("RGB", (20, 30), (9, 9, 9)).save(tmp_path / "cover.png")
    code = run(["meta", str(lora), "--name", "Gobuhime", "--author", "me", "--rating", "8", "--cover",
                str(tmp_path / "cover.png"), "--weights", "Gobuhime:1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    png_size = (tmp_path / "cover.png").stat().st_size
    assert out == [
        f"wrote {lora} (backup: {lora}.backup)",
        "  ssmd_display_name: (absent) -> 'Gobuhime'",
        "  ssmd_author: (absent) -> 'me'",
        "  modelspec.author: (absent) -> 'me'",
        "  ssmd_rating: (absent) -> '8'",
        f"  ssmd_cover_images: (absent) -> <PNG 20x30, {png_size:,} bytes>",
        "  lbw_block_weights: (absent) -> 'Gobuhime:1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1'",
        "  lbw_block_layout: (absent) -> 'SD17'",
        f"  sshs_model_hash {addnet_hash(lora)} (unchanged; equals the hash of the written file)",
    ]
    assert run(["meta", str(lora)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "user (Additional Networks ssmd_*)" in shown
    assert f"  ssmd_cover_images  <PNG 20x30, {png_size:,} bytes>" in shown
    assert "  lbw_block_weights  Gobuhime:1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1" in shown


def test_json_output_for_show_and_edit(lora, tmp_path, capsys) -> None:
    out = tmp_path / "copy.safetensors"
    assert run(["meta", str(lora), "--trigger", "gobuhime", "--sidecar", "--preferred-weight", "0.7",
                "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == str(out) and result["backup"] is None
    assert result["changes"] == {"modelspec.trigger_phrase": {"old": None, "new": "gobuhime"}}
    assert result["hashes"]["sshs_model_hash"] == addnet_hash(out)
    assert result["sidecar"] == {"path": str(tmp_path / "copy.json"), "content": {
        "activation text": "gobuhime", "sd version": "SD1", "preferred weight": 0.7}}
    assert run(["meta", str(out), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["hashes"]["match"] is True
    assert view["metadata"]["modelspec"]["modelspec.trigger_phrase"] == "gobuhime"
    assert view["sidecar"]["content"]["preferred weight"] == 0.7


def test_set_unset_and_rehash(lora, capsys) -> None:
    assert run(["meta", str(lora), "--set", "my_note=hello=world", "--unset", "ss_training_comment",
                "--no-backup"]) == 0
    out = capsys.readouterr().out
    assert "  my_note: (absent) -> 'hello=world'" in out
    assert "  ss_training_comment: 'None' -> (absent)" in out
    assert not lora.with_name(lora.name + ".backup").exists()
    assert run(["meta", str(lora), "--rehash", "--no-backup"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {lora}\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rating", "11"], "lbw: error: ssmd_rating: rating must be a whole number from 0 to 10, found 11"),
        (["--weights", "XL:1,1,1,1,1,1,1,1,1,1,1,1"],
         "lbw: error: --weights: layout XL12 is for SDXL; this file is SD1/SD2: use 17 or 26 values"),
        (["--set", "novalue"], "lbw: error: --set expects KEY=VALUE, found 'novalue'"),
        (["--unset", "ssmd_author"], "lbw: error: cannot unset 'ssmd_author': the file has no such key"),
        (["--sd-version", "SD9"], "lbw: error: sd version must be one of SD1, SD2, SDXL, SD3, Unknown, found 'SD9'"),
    ],
)
def test_bad_options_fail_with_one_line(lora, capsys, args, message) -> None:
    before = lora.read_bytes()
    assert run(["meta", str(lora), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == message and captured.out == ""
    assert lora.read_bytes() == before


def test_bad_files_fail_with_one_line(tmp_path, capsys) -> None:
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{")
    assert run(["meta", str(truncated)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lbw: error: {truncated}: header length 255 bytes runs past the end of the file (9 bytes); "
                   "truncated or not a safetensors file")
    assert run(["meta", str(tmp_path / "none.safetensors"), "--author", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"lbw: error: {tmp_path / 'none.safetensors'}: file not found"


def test_existing_output_is_refused(lora, tmp_path, capsys) -> None:
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"keep")
    assert run(["meta", str(lora), "--author", "x", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"lbw: error: {out}: already exists; use --force to overwrite it"
    assert out.read_bytes() == b"keep"


def test_meta_never_imports_torch(lora) -> None:
    code = ("import sys; from lbw.interfaces.cli.app import run; "
            f"assert run(['meta', {str(lora)!r}, '--author', 'x']) == 0; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"
