"""PEFT/diffusers files keep alpha in ``lora_adapter_metadata`` (no alpha tensor): the reader must use it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lbw.adapters.registry import delta
from lbw.errors import LoraFileError
from lbw.files.fixtures import fixture_metadata, write_fixture
from lbw.files.lora_file import LoraFile
from lbw.files.peft_config import AdapterConfig, adapter_configs, config_alpha
from lbw.interfaces.cli.app import run
from lbw.services.inspect import compare_reports, inspect_file

Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("peft_alpha")


@pytest.fixture(scope="module")
def pair(folder: Path) -> tuple[Path, Path]:
    """The same factors twice: lora_alpha 2 with r 4 (scale 0.5), and no adapter config (scale 1)."""
    half = write_fixture("sd15_peft", folder / "half.safetensors", rank=4, alpha=2, dtype="fp32", seed=3)
    plain = write_fixture("sd15_peft", folder / "plain.safetensors", rank=4, dtype="fp32", seed=3)
    return half, plain


def test_fixture_writes_the_diffusers_adapter_metadata() -> None:
    metadata = fixture_metadata("sdxl_peft", rank=4, alpha=2)
    config = json.loads(metadata["lora_adapter_metadata"])
    assert metadata["format"] == "pt"
    assert {key.split(".")[0] for key in config} == {"unet", "text_encoder", "text_encoder_2"}
    assert (config["unet.r"], config["unet.lora_alpha"], config["unet.alpha_pattern"]) == (4, 2.0, {})
    targets = config["unet.target_modules"]  # full paths, as diffusers' get_peft_kwargs lists them
    assert len(targets) == 70 * 2 * 4 and "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0" in targets
    assert fixture_metadata("sd15_peft", rank=4) == {"format": "pt"}  # alpha = rank: diffusers writes nothing


def test_alpha_comes_from_the_config_and_scales_delta_w(pair: tuple[Path, Path]) -> None:
    half, plain = (LoraFile.open(path) for path in pair)
    module = half.module(Q)
    assert (module.rank, module.stored_alpha, module.alpha, "alpha" in module.keys) == (4, 2.0, 2.0, False)
    assert plain.module(Q).alpha == 4.0  # no config: alpha = rank
    roles = half.module_tensors(module)
    assert float(roles["alpha"]) == 2.0 and set(half.module_tensors(module, roles=("lora_up",))) == {"lora_up"}
    expected = 0.5 * roles["lora_up"].double() @ roles["lora_down"].double()
    got = delta(module.kind, {role: t.double() for role, t in roles.items()})
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert half.warnings == ("176 PEFT modules take alpha from metadata lora_adapter_metadata (scale alpha/r = 0.5), "
                             "as diffusers does; A1111 and ComfyUI read no alpha for PEFT keys and apply scale 1",)
    assert plain.warnings == ()


def test_inspect_norms_follow_the_config_scale(pair: tuple[Path, Path]) -> None:
    half, plain = (inspect_file(path, hashes=False, device="cpu") for path in pair)
    assert half.blocks["IN01"].alphas == {2.0} and plain.blocks["IN01"].alphas == {4.0}
    comparison = compare_reports(plain, half)
    assert all(math.isclose(row.ratio, 0.5, rel_tol=1e-6) for row in comparison.rows)


def test_alpha_and_rank_patterns_and_rslora() -> None:
    raw = json.dumps({"unet.r": 4, "unet.lora_alpha": 8, "unet.rank_pattern": {"mid_block.attentions.0.proj_in": 2},
                      "unet.alpha_pattern": {"to_q": 1}, "text_encoder.r": 4, "text_encoder.lora_alpha": 4,
                      "text_encoder.use_rslora": True})
    configs = adapter_configs({"lora_adapter_metadata": raw}, "x.safetensors")
    assert configs["unet"] == AdapterConfig(4, 8.0, {"mid_block.attentions.0.proj_in": 2}, {"to_q": 1.0}, False)
    assert config_alpha(configs, Q, 4) == 1.0                                     # alpha_pattern "to_q"
    assert config_alpha(configs, Q.replace("to_q", "to_k"), 4) == 8.0             # lora_alpha 8 / r 4
    assert config_alpha(configs, "unet.mid_block.attentions.0.proj_in", 2) == 8.0  # rank_pattern: 8/2 * 2
    assert config_alpha(configs, TE_Q, 4) == pytest.approx(4 / 2 * 4)             # rsLoRA: 4/sqrt(4) * 4
    assert config_alpha(configs, "text_encoder_2.text_model.x", 4) is None        # no config for that component
    unprefixed = adapter_configs({"lora_adapter_metadata": '{"r": 16, "lora_alpha": 8}'}, "x")
    assert config_alpha(unprefixed, "transformer_blocks.0.attn.to_q", 16) == 8.0


def test_per_module_alphas_become_an_alpha_pattern(folder: Path) -> None:
    path = write_fixture("sd15_peft", folder / "pattern.safetensors", rank=4, alpha=4, alphas={r"attn2\.to_k": 1},
                         dtype="fp32")
    config = json.loads(LoraFile.open(path).metadata["lora_adapter_metadata"])
    assert config["unet.alpha_pattern"]["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == 1.0
    lora = LoraFile.open(path)
    assert lora.module(Q.replace("attn1.to_q", "attn2.to_k")).alpha == 1.0 and lora.module(Q).alpha == 4.0


def test_an_alpha_tensor_wins_over_the_config(tmp_path: Path) -> None:
    tensors = {f"{Q}.lora_A.weight": torch.ones(2, 320), f"{Q}.lora_B.weight": torch.ones(320, 2),
               f"{Q}.alpha": torch.tensor(1.0)}
    save_file(tensors, tmp_path / "a.safetensors", {"lora_adapter_metadata": '{"unet.r": 2, "unet.lora_alpha": 8}'})
    assert LoraFile.open(tmp_path / "a.safetensors").module(Q).alpha == 1.0


@pytest.mark.parametrize(("raw", "problem"), [
    ("{not json", "lora_adapter_metadata is not valid JSON"),
    ("[1]", "lora_adapter_metadata must be a JSON object"),
    ('{"unet.r": 0}', "lora_adapter_metadata: r must be a positive number, found 0"),
    ('{"unet.r": 4, "unet.alpha_pattern": {"to_q": "x"}}', "alpha_pattern['to_q'] must be a positive number"),
])
def test_a_broken_config_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: str,
                                            problem: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({f"{Q}.lora_A.weight": torch.ones(2, 320), f"{Q}.lora_B.weight": torch.ones(320, 2)}, path,
              {"lora_adapter_metadata": raw})
    with pytest.raises(LoraFileError, match=re.escape(problem)):
        LoraFile.open(path)
    assert run(["inspect", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lbw: error: {path}: metadata lora_adapter_metadata") and err.count("\n") == 1


def test_compare_cli_shows_the_half_scale_and_the_warning(pair: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    half, plain = pair
    assert run(["inspect", str(plain), str(half), "--no-hash", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("M00 ")).split()[5] == "0.500"
    assert lines[-1] == ("warning: B: 176 PEFT modules take alpha from metadata lora_adapter_metadata (scale "
                         "alpha/r = 0.5), as diffusers does; A1111 and ComfyUI read no alpha for PEFT keys and apply "
                         "scale 1")
