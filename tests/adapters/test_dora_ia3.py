"""DoRA (A1111 weight decomposition) and IA3: base-weight kinds."""

from __future__ import annotations

import pytest
import torch

from lbw.adapters import delta, dora, dora_to_full, frobenius_norm, ia3
from lbw.errors import AdapterError


def _a1111_dora_delta(up, down, alpha, dora_scale, base):
    """A1111 network.apply_weight_decompose on a conv module, transcribed: norm over all dims but dim 1."""
    updown = (alpha / down.shape[0]) * torch.einsum("ok,kihw->oihw", up.flatten(1), down)
    merged = base + updown
    norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
            .reshape(merged.shape[1], 1, 1, 1).transpose(0, 1))
    return merged * (dora_scale / norm) - base


def test_conv_dora_matches_a1111_with_scaled_up():
    gen = torch.Generator().manual_seed(0)
    up = torch.randn(8, 2, 1, 1, generator=gen, dtype=torch.float64)
    down = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64)
    base = torch.randn(8, 6, 3, 3, generator=gen, dtype=torch.float64)
    scale = torch.rand(1, 6, 1, 1, generator=gen, dtype=torch.float64) + 0.5
    roles = {"lora_up": up, "lora_down": down, "alpha": torch.tensor(1.0), "dora_scale": scale}
    for rho in (0.0, 0.5, -0.5, 1.75):
        expected = _a1111_dora_delta(rho * up, down, 1.0, scale, base)
        assert torch.allclose(dora.delta(roles, base, factor=rho), expected, rtol=1e-12, atol=1e-12)
        full = dora_to_full(roles, base, rho, strength=0.8)
        assert torch.allclose(full["diff"], 0.8 * expected, rtol=1e-12, atol=1e-12)


def test_dora_is_not_linear_in_the_factor(make):
    case = make("dora_input_axis")
    half = dora.delta(case.roles, case.base, factor=0.5)
    assert not torch.allclose(half, 0.5 * dora.delta(case.roles, case.base))
    at_zero = dora.delta(case.roles, case.base, factor=0.0)
    assert float(at_zero.abs().max()) > 0.01  # ρ = 0 still rescales W0 in A1111


def test_norm_axis_inference():
    assert dora.norm_axis_of((1, 320), (640, 320)) == "input"
    assert dora.norm_axis_of((1, 320, 1, 1), (640, 320, 3, 3)) == "input"
    assert dora.norm_axis_of((640,), (640, 320)) == "output"
    assert dora.norm_axis_of((640, 1, 1, 1), (640, 320, 3, 3)) == "output"
    with pytest.raises(
        AdapterError, match=r"dora_scale has shape \[320, 2\]; for a base weight \[640, 320\]"
    ):
        dora.norm_axis_of((320, 2), (640, 320))


def test_zero_norm_is_refused():
    roles = {"lora_up": torch.zeros(2, 1), "lora_down": torch.zeros(1, 2), "dora_scale": torch.ones(1, 2)}
    with pytest.raises(AdapterError, match="zero input norm"):
        dora.delta(roles, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("kind", ["ia3", "dora"])
def test_base_weight_is_required(kind, make):
    case = make("ia3_rows" if kind == "ia3" else "dora_input_axis")
    with pytest.raises(AdapterError, match=f"{kind} ΔW = .* needs the base model weight W0"):
        delta(kind, case.roles)
    with pytest.raises(AdapterError, match="needs the base model weight"):
        frobenius_norm(kind, case.roles)


def test_ia3_linear_parameter_and_orientation(make):
    case = make("ia3_columns")
    assert ia3.on_input(case.roles)
    assert torch.equal(ia3.parameter(case.roles), case.roles["weight"])
    assert not ia3.on_input({"weight": torch.ones(3), "on_input": torch.tensor(0)})


def test_ia3_length_mismatch_names_the_axis(make):
    case = make("ia3_rows")
    with pytest.raises(AdapterError, match=r"IA3 weight has 16 values but the base weight \[12, 16\] has 12 "
                                           r"output rows"):
        ia3.delta(case.roles, torch.ones(12, 16))
