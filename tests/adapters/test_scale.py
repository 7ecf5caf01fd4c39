"""Scaling one factor (bake) and balanced scaling give exactly c·ΔW; DoRA is refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lbw.adapters import delta, dora_to_full, scale_balanced, scale_module, scaled_roles
from lbw.errors import AdapterError

FACTORS = [0.0, 0.5, -0.5, 1.75]


@pytest.mark.parametrize("factor", FACTORS)
def test_scale_module_gives_factor_times_delta(scalable_variant, factor, make, cast_case, relative_error):
    case = cast_case(make(scalable_variant, seed=5), torch.float32)
    scaled = scale_module(case.kind, case.roles, factor)
    result = delta(case.kind, scaled, base_weight=case.base)
    expected = factor * case.oracle
    if factor == 0.0:
        assert float(result.abs().max()) == 0.0
    else:
        assert relative_error(result, expected) < 1e-6
    touched = set(scaled_roles(case.roles))
    for role, tensor in case.roles.items():
        if role not in touched:
            assert scaled[role] is tensor  # alpha, rank factors and flags untouched


def test_scale_module_keeps_the_input_unchanged(make):
    case = make("lora_linear")
    before = case.roles["lora_up"].clone()
    scale_module("lora", case.roles, -2.0)
    assert torch.equal(case.roles["lora_up"], before)


def test_scaled_full_module_scales_its_bias(make):
    case = make("full")
    scaled = scale_module("full", case.roles, -0.5)
    assert torch.equal(scaled["diff_b"], -0.5 * case.roles["diff_b"])


@pytest.mark.parametrize("factor", FACTORS)
def test_balanced_scaling_gives_factor_times_delta(lora_variant, factor, make, cast_case, relative_error):
    case = cast_case(make(lora_variant, seed=6), torch.float32)
    scaled = scale_balanced(case.roles, factor)
    result = delta("lora", scaled)
    if factor == 0.0:
        assert float(result.abs().max()) == 0.0
    else:
        assert relative_error(result, factor * case.oracle) < 1e-6
    root = abs(factor) ** 0.5
    assert torch.allclose(scaled["lora_down"], root * case.roles["lora_down"])
    assert torch.allclose(scaled["lora_up"], (root if factor >= 0 else -root) * case.roles["lora_up"])
    if "lora_mid" in case.roles:
        assert scaled["lora_mid"] is case.roles["lora_mid"]
    if "alpha" in case.roles:
        assert scaled["alpha"] is case.roles["alpha"]


@given(factor=st.floats(min_value=-8, max_value=8, allow_nan=False), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_scaling_is_linear_for_any_factor(factor, seed):
    gen = torch.Generator().manual_seed(seed)
    roles = {"lora_up": torch.randn(6, 3, generator=gen, dtype=torch.float64),
             "lora_down": torch.randn(3, 5, generator=gen, dtype=torch.float64), "alpha": torch.tensor(1.5)}
    expected = factor * delta("lora", roles)
    for scaled in (scale_module("lora", roles, factor), scale_balanced(roles, factor)):
        assert torch.allclose(delta("lora", scaled), expected, rtol=1e-12, atol=1e-12)


def test_dora_scaling_is_refused_and_points_to_dora_to_full(make):
    case = make("dora_input_axis")
    with pytest.raises(AdapterError, match=r"cannot scale a DoRA module in factor space: .* not linear"):
        scale_module("dora", case.roles, 0.5)
    with pytest.raises(AdapterError, match="needs a LoRA/LoCon module, not dora"):
        scale_balanced(case.roles, 0.5)
    assert set(dora_to_full(case.roles, case.base, 0.5)) == {"diff"}


@pytest.mark.parametrize("name", ["loha_linear", "lokr_full", "ia3_rows", "full"])
def test_balanced_scaling_refuses_other_kinds(name, make):
    case = make(name)
    with pytest.raises(AdapterError, match=f"needs a LoRA/LoCon module, not {case.kind}; use scale_module"):
        scale_balanced(case.roles, 2.0)


def test_kind_mismatch_and_bad_factor_are_refused(make):
    case = make("lora_linear")
    with pytest.raises(AdapterError, match=r"are a lora module, not loha"):
        scale_module("loha", case.roles, 2.0)
    with pytest.raises(AdapterError, match="scale factor must be a finite number, found inf"):
        scale_module("lora", case.roles, float("inf"))
