"""PEFT files whose alpha lives in ``lora_adapter_metadata``: bake keeps the config and writes no alpha tensor;
merge folds each input's config alpha into the up factors, writes no alpha tensor and drops the config (every
scale of the merged file is 1). ``lbw verify`` checks both against the inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from lbw.domain.layouts import SD26
from lbw.domain.weights import BlockWeights
from lbw.files.fixtures import write_fixture
from lbw.files.lora_file import LoraFile
from lbw.services.bake import bake
from lbw.services.merge import merge
from lbw.services.sources import Defaults, open_source, split_specs
from lbw.services.verify import verify

SELECT = r"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_[qk]|layers.0.self_attn.q"
VECTOR = "Mix:" + ",".join(str(v) for v in [0.8] + [(0.0, 0.5, -0.5, 1.75, 1.0)[i % 5] for i in range(25)])


@pytest.fixture(scope="module")
def peft(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("peft")
    a = write_fixture("sd15_peft", folder / "a.safetensors", rank=4, alpha=2, dtype="fp16", seed=3, select=SELECT)
    b = write_fixture("sd15_peft", folder / "b.safetensors", rank=3, alpha=6, dtype="fp16", seed=4,
                      select=SELECT.replace("to_[qk]", "to_[qkv]"))
    return a, b


def keys_and_metadata(path: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(path, "pt") as handle:
        return set(handle.keys()), handle.metadata()


def test_bake_keeps_the_adapter_config_and_writes_no_alpha(peft, tmp_path: Path) -> None:
    a, _ = peft
    out = tmp_path / "baked.safetensors"
    weights = BlockWeights(SD26, tuple(float(v) for v in VECTOR.split(":")[1].split(",")), "Mix")
    bake(a, out, weights, te=0.8)
    keys, metadata = keys_and_metadata(out)
    assert not [key for key in keys if "alpha" in key]
    assert metadata["lora_adapter_metadata"] == keys_and_metadata(a)[1]["lora_adapter_metadata"]
    with LoraFile.open(out) as lora:
        assert {module.alpha for module in lora.modules} == {2.0}  # still from the config: scale 0.5
    report = verify(out, [open_source(spec, Defaults(te=0.8, weights=VECTOR)) for spec in split_specs([str(a)])])
    assert report.passed and report.max_error < 2e-3


def test_merge_folds_config_alphas_and_drops_the_config(peft, tmp_path: Path) -> None:
    a, b = peft
    specs = [f"{a}:0.8:{VECTOR}", f"{b}:-0.5"]
    out = tmp_path / "ab.safetensors"
    report = merge([open_source(spec, Defaults()) for spec in split_specs(specs)], out)
    assert report.joined == 3 and report.carried == 1
    keys, metadata = keys_and_metadata(out)
    assert not [key for key in keys if "alpha" in key]
    assert "lora_adapter_metadata" not in metadata
    with LoraFile.open(out) as lora:
        assert all(module.alpha == module.rank for module in lora.modules)  # scale 1 everywhere
    checked = verify(out, [open_source(spec, Defaults()) for spec in split_specs(specs)])
    assert checked.passed and checked.max_error < 2e-3
