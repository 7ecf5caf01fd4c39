"""Scaling and joining straight into the output dtype: computed in float32 and rounded once, bit for bit equal
to the float32 result cast afterwards (what bake and merge rely on to skip the float32 copy); batched LoRA norms
against the dense oracle."""

from __future__ import annotations

import pytest
import torch

from lbw.adapters import concat_rank, frobenius_norm, frobenius_norms, scale_balanced, scale_module, scale_tensor
from lbw.adapters.lora import delta
from lbw.errors import AdapterError

FACTORS = [0.75, -0.5, 1.75, 2.5, -3.0, 1e-3, 1 / 3, 7.77e2, -1.0000001, 1e-30]


def wild(dtype: torch.dtype, count: int = 200_003, seed: int = 0) -> torch.Tensor:
    """Random values over the whole range of ``dtype``: normals, subnormals, zeros of both signs, the extremes."""
    gen = torch.Generator().manual_seed(seed)
    info = torch.finfo(dtype)
    exponents = torch.empty(count).uniform_(-1.0, 1.0, generator=gen) * torch.log2(torch.tensor(info.max)) * 1.02
    signs = torch.where(torch.rand(count, generator=gen) < 0.5, -1.0, 1.0)
    values = signs * torch.exp2(exponents) * (1 + torch.rand(count, generator=gen))
    values[:6] = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_normal / 4])
    return values.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("factor", FACTORS)
def test_half_times_scalar_rounds_once_like_float32_then_cast(dtype, factor) -> None:
    values = wild(dtype, seed=len(str(factor)))
    expected = (values.float() * factor).to(dtype)
    assert same_bits(values * factor, expected)  # the torch behaviour the fast path rests on
    assert same_bits(scale_tensor(values, factor, "input"), expected)
    assert same_bits(scale_tensor(values, factor, dtype), expected)


@pytest.mark.parametrize(("stored", "out"), [(torch.float32, torch.float16), (torch.float16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32), (torch.float64, torch.float16)])
def test_scale_to_another_dtype_computes_in_float32(stored, out) -> None:
    values = wild(torch.float16, 10_001, seed=3).to(stored)
    result = scale_tensor(values, -1.75, out)
    assert result.dtype == out
    assert torch.equal(result, (values.to(torch.float32) * -1.75).to(out))


def test_float64_in_and_out_stays_float64() -> None:
    values = torch.randn(100, dtype=torch.float64)
    assert torch.equal(scale_tensor(values, 1 / 3, "input"), values * (1 / 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scale_module_and_balanced_with_out_dtype_equal_the_cast(dtype, make) -> None:
    for variant in ("lora_conv3x3", "loha_linear", "full", "lokr_decomposed"):
        roles = {k: v.to(dtype) if v.is_floating_point() else v for k, v in make(variant, seed=9).roles.items()}
        kind = "lora" if variant.startswith("lora") else variant.split("_")[0]
        for factor in (-2.5, 0.3):
            fast = scale_module(kind, roles, factor, out_dtype="input")
            slow = scale_module(kind, roles, factor)
            for role, tensor in fast.items():
                assert tensor.dtype == roles[role].dtype, role
                assert torch.equal(tensor, slow[role].to(roles[role].dtype)), (variant, role)
    roles = {k: v.to(dtype) for k, v in make("lora_conv3x3", seed=4).roles.items()}
    fast, slow = scale_balanced(roles, -3.0, out_dtype=dtype), scale_balanced(roles, -3.0)
    assert all(torch.equal(fast[r], slow[r].to(dtype)) for r in ("lora_up", "lora_down"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("form", ["linear", "conv", "tucker", "mixed"])
def test_concat_with_out_dtype_equals_concat_then_cast(dtype, form) -> None:
    gen = torch.Generator().manual_seed(21)

    def module(rank: int, alpha: float, tucker: bool) -> dict[str, torch.Tensor]:
        if form == "linear":
            roles = {"lora_up": torch.randn(40, rank, generator=gen), "lora_down": torch.randn(rank, 24, generator=gen)}
        elif tucker:
            roles = {"lora_up": torch.randn(40, rank, 1, 1, generator=gen),
                     "lora_mid": torch.randn(rank, rank, 3, 3, generator=gen),
                     "lora_down": torch.randn(rank, 24, 1, 1, generator=gen)}
        else:
            roles = {"lora_up": torch.randn(40, rank, 1, 1, generator=gen),
                     "lora_down": torch.randn(rank, 24, 3, 3, generator=gen)}
        roles["alpha"] = torch.tensor(alpha)
        return {k: v.to(dtype) for k, v in roles.items()}

    tucker = {"linear": (False, False), "conv": (False, False), "tucker": (True, True), "mixed": (True, False)}[form]
    items = [(module(4, 3.0, tucker[0]), 1.75), (module(6, 1.0, tucker[1]), -0.6)]
    fast, slow = concat_rank(items, out_dtype=dtype), concat_rank(items)
    assert set(fast) == set(slow)
    for role in fast:
        assert fast[role].dtype == dtype
        assert torch.equal(fast[role], slow[role].to(dtype)), role


def test_batched_norms_match_dense_oracle_and_single_norms() -> None:
    gen = torch.Generator().manual_seed(5)
    ups = torch.randn(7, 96, 8, generator=gen, dtype=torch.float64)
    downs = torch.randn(7, 8, 5 * 9, generator=gen, dtype=torch.float64)
    scales = [0.5, -2.0, 1.0, 0.0, 1 / 3, -1e-3, 8.0]
    oracle = torch.tensor([abs(s) * float(torch.linalg.matrix_norm(u @ d))
                           for s, u, d in zip(scales, ups, downs, strict=True)], dtype=torch.float64)
    batched = frobenius_norms(ups.float(), downs.float(), scales)
    assert batched.dtype == torch.float64 and batched.shape == (7,)
    assert float(((batched - oracle).abs() / oracle.clamp_min(1e-300)).max()) < 1e-5
    assert float(batched[3]) == 0.0
    for index in (0, 1, 6):  # the per-module fast norm agrees (conv: up [out, r, 1, 1], down [r, in, 3, 3])
        roles = {"lora_up": ups[index].float().reshape(96, 8, 1, 1),
                 "lora_down": downs[index].float().reshape(8, 5, 3, 3), "alpha": torch.tensor(scales[index] * 8)}
        assert frobenius_norm("lora", roles) == pytest.approx(float(batched[index]), rel=1e-5)
        assert float(torch.linalg.matrix_norm(delta(roles).reshape(96, -1).double())) == pytest.approx(
            float(batched[index]), rel=1e-5)


def test_batched_norms_refuse_mismatched_shapes() -> None:
    with pytest.raises(AdapterError, match=r"ups \[n, out, r\] and downs \[n, r, in\]"):
        frobenius_norms(torch.ones(2, 3, 4), torch.ones(2, 5, 3), [1.0, 1.0])
    with pytest.raises(AdapterError, match="1 scales for 2 modules"):
        frobenius_norms(torch.ones(2, 3, 1), torch.ones(2, 1, 3), [1.0])
