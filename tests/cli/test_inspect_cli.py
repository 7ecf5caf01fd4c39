"""`lbw inspect`: tables, --json, comparing two files, refusals, light imports."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lbw.files.fixtures import write_fixture
from lbw.interfaces.cli.app import run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect_cli")


@pytest.fixture(scope="module")
def sd15(folder: Path) -> Path:
    return write_fixture("sd15", folder / "style.safetensors", rank=4, alpha=2, seed=11)


def test_table_output(sd15: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(sd15), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == str(sd15)
    assert lines[1] == ("architecture   sd1  (keys: cross-attention context width 768; metadata agrees: "
                        "ss_base_model_version, modelspec.architecture)")
    assert "naming         names kohya 264; keys kohya" in lines
    assert "host a1111     loads all 264 modules" in lines and "host diffusers loads all 264 modules" in lines
    assert "adapter types  lora" in lines
    assert "layout         SD17 (17 values); Inspire vector: 17 values" in lines
    assert ("Inspire blocks input.1,input.2,input.4,input.5,input.7,input.8,middle.1,output.3,output.4,output.5,"
            "output.6,output.7,output.8,output.9,output.10,output.11") in lines
    assert "modules        264 (0 unmapped)" in lines
    assert "tensors        792 (F16 x792); 2,359,560 parameters" in lines
    block_rows = [line for line in lines if line.startswith(("BASE ", "IN01 ", "OUT11 "))]
    assert [row.split()[:2] for row in block_rows] == [["BASE", "72"], ["IN01", "12"], ["OUT11", "12"]]
    assert "█" in block_rows[0]
    assert "training (ss_*)" in out and "  ss_network_dim = 4" in out
    assert "sshs_model_hash: stored " in out and "matches the file" in out


def test_json_output(sd15: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(sd15), "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["architecture"], data["naming"], data["layout"], data["modules"], data["tensors"]) == (
        "sd1", "kohya", "SD17", 264, 792)
    assert list(data["blocks"])[:3] == ["BASE", "IN01", "IN02"]
    assert data["blocks"]["IN01"]["modules"] == 12
    assert data["blocks"]["IN01"]["params"] == 4 * 11_776 + 12
    assert data["blocks"]["IN01"]["norm"] > 0
    assert data["hashes"]["stored"] == data["hashes"]["computed"]
    assert data["hashes"]["legacy_stored"] == data["hashes"]["legacy_computed"]
    assert data["unmapped_modules"] == []
    assert data["metadata"]["modelspec"]["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_compare_two_files(folder: Path, sd15: Path, capsys: pytest.CaptureFixture[str]) -> None:
    louder = write_fixture("sd15", folder / "louder.safetensors", rank=4, alpha=2, seed=11, alphas={"mid_block": 4})
    assert run(["inspect", str(sd15), str(louder), "--json", "--no-hash"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["blocks"]["M00"]["ratio"] == pytest.approx(2.0, rel=1e-6)
    assert data["blocks"]["BASE"]["ratio"] == pytest.approx(1.0, rel=1e-12)
    assert run(["inspect", str(sd15), str(louder), "--no-hash"]) == 0
    out = capsys.readouterr().out
    m00 = next(line for line in out.splitlines() if line.startswith("M00 "))
    assert m00.split()[1:3] == ["12", "12"] and m00.split()[5] == "2.000"


def test_metadata_disagreement_is_shown(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    liar = write_fixture("sdxl", folder / "liar.safetensors", rank=2, select="middle_block_1_transformer_blocks_0_",
                         text_encoder=False, metadata={"ss_base_model_version": "sd_v1"})
    assert run(["inspect", str(liar), "--no-hash", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("architecture   sdxl  (keys: SGM UNet names (input_blocks/middle_block/output_blocks); "
                        "cross-attention context width 2048; metadata agrees: modelspec.architecture)")
    assert "warning: metadata ss_base_model_version = 'sd_v1' says sd1, but the keys say sdxl" in lines


def test_ia3_and_no_norms_show_no_strength(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ia3 = write_fixture("sd15_ia3", folder / "ia3.safetensors", rank=2, select="mid_block|layers_0_self_attn_q")
    assert run(["inspect", str(ia3), "--no-hash", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("architecture   sd1  (keys: text encoder lora_te_ with width 768; metadata agrees: "
                        "ss_base_model_version, modelspec.architecture)")
    m00 = next(line for line in lines if line.startswith("M00 "))
    assert m00.split() == ["M00", "10", "25,610", "-", "-", "-", "-"]
    assert "note: IA3 modules have no norm without the base model (ΔW = W0 ⊙ w); they count 0" in lines


@pytest.mark.parametrize(("kind", "summary"), [
    ("sd15_locon", ["adapter types  lora", "layout         SD26 (26 values); Inspire vector: 27 values"]),
    ("sdxl_locon", ["adapter types  lora", "layout         XL20 (20 values); Inspire vector: 21 values"]),
    ("sd15_lokr", ["naming         names kohya 282; keys lycoris", "adapter types  lokr",
                   "layout         SD26 (26 values); Inspire vector: 28 values",
                   "modules        282 (3 unmapped)"]),
    ("sd15_dora", ["adapter types  dora", "layout         SD17 (17 values); Inspire vector: 17 values"]),
    ("flux", ["architecture   flux  (keys: Flux double/single blocks or T5 (lora_te3_) keys; metadata agrees: "
              "ss_base_model_version, modelspec.architecture)",
              "layout         FLUX61 (61 values); Inspire vector: 58 values", "modules        228 (0 unmapped)"]),
])
def test_summary_of_other_kinds(folder: Path, capsys: pytest.CaptureFixture[str], kind: str,
                                summary: list[str]) -> None:
    path = write_fixture(kind, folder / f"{kind}.safetensors", rank=2, alpha=1, text_encoder=False)
    assert run(["inspect", str(path), "--no-hash", "--no-norms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line in lines for line in summary), lines[:9]


def test_malformed_file_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(struct.pack("<Q", 4096) + b"{}")
    assert run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"lbw: error: {path}: header length 4096 bytes runs past the end of the file (10 bytes); "
                   "truncated or not a safetensors file\n")


def test_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.ckpt"
    path.write_bytes(b"\x80\x02")
    assert run(["inspect", str(path)]) == 2
    assert "is a pickle checkpoint (.ckpt); lbw never unpickles" in capsys.readouterr().err


def test_command_module_imports_no_torch() -> None:
    code = ("import sys, typer; import lbw.interfaces.cli.inspect as m; m.register(typer.Typer()); "
            "print(sorted(n for n in ('torch', 'safetensors', 'diffusers', 'transformers') if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_hosts_and_families_of_a_diffusers_flux_file(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # transformer.* and text_encoder.* load in Forge and ComfyUI; text_encoder_2.* (T5) loads nowhere: its own row
    # and list. 4 modules leave 8 keys unmatched: not more than 12, so Forge still loads the rest.
    path = write_fixture("flux_diffusers", folder / "flux_diffusers.safetensors", rank=1,
                         select=r"\.transformer_blocks\.0\.attn\.to_q|block\.0\.layer\.0|layers\.0\.mlp\.fc1")
    assert run(["inspect", str(path), "--no-hash", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "naming         names diffusers 6; keys peft" in lines
    assert "modules        6 (0 unmapped, 4 loaded by no host)" in lines
    assert next(line for line in lines if line.startswith("not loaded ")).split()[:2] == ["not", "loaded"]
    forge = next(line for line in lines if line.startswith("host forge"))
    assert forge.startswith("host forge     does not load 4 of 6 modules (text_encoder_2.encoder.block.0.layer.0.")
    assert "skips the whole file" not in forge
    assert next(line for line in lines if line.startswith("host comfyui")).startswith(
        "host comfyui   does not load 4 of 6 modules")
    assert run(["inspect", str(path), "--json", "--no-hash", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name_families"] == {"diffusers": 6}
    assert list(data["hosts"]) == ["forge", "comfyui"]
    assert data["hosts"]["forge"] == {
        "name": "web UI Forge", "loads_file": True, "modules": 6, "loaded": 2, "unmatched_keys": 8,
        "not_loaded": [f"text_encoder_2.encoder.block.0.layer.0.SelfAttention.{p}" for p in "koqv"]}
    assert data["not_loaded_modules"] == data["hosts"]["comfyui"]["not_loaded"]
    assert data["not_loaded"]["modules"] == 4 and data["blocks"]["T5"]["modules"] == 0
    assert data["blocks"]["D00"]["modules"] == 1 and data["blocks"]["CLIP"]["modules"] == 1


def test_forge_skipping_a_whole_file_is_said(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_fixture("flux_peft", folder / "flux_peft.safetensors", rank=1, select=r"transformer_blocks\.0\.")
    assert run(["inspect", str(path), "--no-hash", "--no-norms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    forge = next(line for line in lines if line.startswith("host forge"))
    assert forge.endswith("40 keys match nothing there, more than 12: web UI Forge skips the whole file, so none "
                          "of it loads")
    assert "20 modules loaded by no host" in next(line for line in lines if "loaded by no host (" in line)


def test_unknown_architecture_says_hosts_cannot_be_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "mystery.safetensors"
    save_file({"lora_unet_conv_out.lora_down.weight": torch.ones(1, 4), "lora_unet_conv_out.lora_up.weight":
               torch.ones(4, 1)}, str(path))
    assert run(["inspect", str(path), "--no-hash", "--no-norms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "hosts: lbw cannot tell which hosts load this file (architecture unknown)" in lines
    assert run(["inspect", str(path), "--no-hash", "--no-norms", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hosts"] == {}
