"""Bake and merge round once: every scaled or joined factor equals the float32 product cast to the stored dtype
(bit for bit), unchanged factors keep their bytes; an overflow of the output dtype is refused, in bake and in
merge; the torch thread count and the garbage collector are restored."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lbw.domain.layouts import SD26
from lbw.domain.weights import BlockWeights
from lbw.errors import AdapterError
from lbw.files.fixtures import write_fixture
from lbw.files.lora_file import LoraFile
from lbw.services.bake import BakeOptions, bake
from lbw.services.merge import merge
from lbw.services.sources import Defaults, open_source, split_specs

SELECT = r"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_[qk]|mid_block_attentions_0_proj_out" \
         r"|up_blocks_3_attentions_2_proj_out|encoder_layers_0_self_attn_q"
VALUES = tuple([0.75] + [(0.0, 0.5, -0.5, 1.75, 1.0, 2.5, 1 / 3)[i % 7] for i in range(25)])


@pytest.fixture(scope="module", params=["fp16", "bf16"])
def half(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp(request.param)
    a = write_fixture("sd15", folder / "a.safetensors", rank=4, alpha=2, dtype=request.param, seed=1, select=SELECT)
    b = write_fixture("sd15", folder / "b.safetensors", rank=3, alpha=3, dtype=request.param, seed=2, select=SELECT)
    return a, b, request.param


def test_bake_rounds_each_scaled_factor_once(half, tmp_path: Path) -> None:
    src, _, _ = half
    weights = BlockWeights(SD26, VALUES, "Mix")
    report = bake(src, tmp_path / "out.safetensors", weights, te=0.8)
    before, after = load_file(src), load_file(tmp_path / "out.safetensors")
    checked = 0
    with LoraFile.open(src) as lora:
        for module in lora.modules:
            factor = report.plan.factor(module)
            for role, key in module.keys.items():
                if factor == 0:
                    assert key not in after
                    continue
                stored = before[key]
                expected = (stored.float() * factor).to(stored.dtype) if role == "lora_up" else stored
                assert after[key].dtype == stored.dtype
                assert torch.equal(after[key].view(torch.int16), expected.view(torch.int16)), key
                checked += 1
    assert checked >= 9


def test_merge_joins_with_one_rounding(half, tmp_path: Path) -> None:
    a, b, _ = half
    sources = [open_source(spec, Defaults()) for spec in split_specs([f"{a}:0.8", f"{b}:-1.5"])]
    merge(sources, tmp_path / "ab.safetensors")
    inputs, out = [load_file(a), load_file(b)], load_file(tmp_path / "ab.safetensors")
    with LoraFile.open(a) as lora:
        for module in lora.modules:
            keys = module.keys
            ups = []
            for tensors, source in zip(inputs, sources, strict=True):
                up = tensors[keys["lora_up"]]
                scale = float(tensors[keys["alpha"]]) / up.shape[1]
                ups.append((up.float() * (source.plan.factor(module) * scale)).to(up.dtype))
            assert torch.equal(out[keys["lora_up"]], torch.cat(ups, dim=1)), module.name
            downs = torch.cat([tensors[keys["lora_down"]] for tensors in inputs])
            assert torch.equal(out[keys["lora_down"]], downs)
            assert float(out[keys["alpha"]]) == downs.shape[0]


def test_overflow_is_refused_in_bake_and_merge(half, tmp_path: Path) -> None:
    a, b, dtype = half
    largest = max(float(t.abs().max()) for k, t in load_file(a).items() if "lora_up" in k)
    big = 4 * torch.finfo(torch.float16 if dtype == "fp16" else torch.bfloat16).max / largest  # past it (alpha/r ½)
    threads = torch.get_num_threads()
    with pytest.raises(AdapterError, match=r"lora_up overflows (fp16|bf16) after scaling"):
        bake(a, tmp_path / "out.safetensors", BlockWeights.filled(SD26, big))
    for specs in ([f"{a}:{big}", f"{b}"], [f"{a}:{big}"]):
        sources = [open_source(spec, Defaults()) for spec in split_specs(specs)]
        with pytest.raises(AdapterError, match=r"lora_up overflows (fp16|bf16) after scaling"):
            merge(sources, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert torch.get_num_threads() == threads and gc.isenabled()
    if dtype == "fp16":  # the same factor fits float32
        report = bake(a, tmp_path / "out.safetensors", BlockWeights.filled(SD26, big),
                      options=BakeOptions(dtype="fp32"))
        assert report.modules_out == report.modules_in
