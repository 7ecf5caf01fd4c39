"""SVD compression: kohya layout, exact relative error, zero error at full rank, factor-form path."""

from __future__ import annotations

import pytest
import torch

from lbw.adapters import compress, compress_lora, concat_rank, lora
from lbw.errors import AdapterError


def _dense_error(delta, roles):
    approx = lora.delta(roles).reshape(delta.shape).double()
    return float((delta.double() - approx).norm() / delta.double().norm())


@pytest.mark.parametrize("shape", [(24, 20), (16, 8, 3, 3), (16, 8, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reported_error_equals_dense_error(shape, dtype):
    gen = torch.Generator().manual_seed(20)
    delta = torch.randn(*shape, generator=gen, dtype=dtype)
    for rank in (1, 4, 7):
        roles, error = compress(delta, rank)
        assert roles["lora_down"].shape == (rank, *shape[1:])
        assert roles["lora_up"].shape == ((shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank))
        assert float(roles["alpha"]) == rank
        tolerance = 1e-10 if dtype == torch.float64 else 1e-5
        assert error == pytest.approx(_dense_error(delta, roles), rel=tolerance)
        assert 0 < error < 1


def test_full_rank_is_exact_and_reports_zero():
    gen = torch.Generator().manual_seed(21)
    delta = torch.randn(10, 6, 3, 3, generator=gen, dtype=torch.float64)
    roles, error = compress(delta, 64)  # more than min(10, 54): clipped to 10
    assert error == 0.0
    assert roles["lora_down"].shape == (10, 6, 3, 3)
    assert torch.allclose(lora.delta(roles), delta, rtol=1e-10, atol=1e-10)


def test_low_rank_input_compresses_without_loss():
    gen = torch.Generator().manual_seed(22)
    delta = torch.randn(30, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 20, generator=gen,
                                                                                   dtype=torch.float64)
    roles, error = compress(delta, 3)
    assert error < 1e-7
    assert torch.allclose(lora.delta(roles), delta, atol=1e-10)


def test_zero_delta_reports_zero_error():
    roles, error = compress(torch.zeros(4, 5), 2)
    assert error == 0.0 and float(lora.delta(roles).abs().max()) == 0.0


@pytest.mark.parametrize("form", ["linear", "conv", "tucker"])
def test_compress_lora_matches_dense_compress(form):
    gen = torch.Generator().manual_seed(23)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    items = []
    for rank, alpha, factor in ((4, 2.0, 0.5), (6, 1.0, -1.5), (3, None, 1.0)):
        if form == "linear":
            roles = {"lora_up": rand(20, rank), "lora_down": rand(rank, 14)}
        elif form == "conv":
            roles = {"lora_up": rand(20, rank, 1, 1), "lora_down": rand(rank, 14, 3, 3)}
        else:
            roles = {"lora_up": rand(20, rank, 1, 1), "lora_mid": rand(rank, rank, 3, 3),
                     "lora_down": rand(rank, 14, 1, 1)}
        if alpha is not None:
            roles["alpha"] = torch.tensor(alpha, dtype=torch.float64)
        items.append((roles, factor))
    joined = concat_rank(items)
    dense = lora.delta(joined)
    for rank in (2, 5, 13, 40):
        fast_roles, fast_error = compress_lora(joined, rank)
        dense_roles, dense_error = compress(dense, rank)
        assert fast_error == pytest.approx(dense_error, rel=1e-9, abs=1e-12)
        kept = min(rank, 13)  # the factor form never keeps more than the module's rank (13)
        assert fast_roles["lora_down"].shape[0] == kept
        assert dense_roles["lora_down"].shape[0] == min(rank, *dense.reshape(20, -1).shape)
        assert torch.allclose(lora.delta(fast_roles), lora.delta(dense_roles), rtol=1e-9, atol=1e-9)


def test_bad_rank_and_shape_are_refused():
    with pytest.raises(AdapterError, match="SVD rank must be a positive integer, found 0"):
        compress(torch.ones(3, 3), 0)
    with pytest.raises(AdapterError, match=r"SVD needs a 2-D or 4-D ΔW, found shape \[3\]"):
        compress(torch.ones(3), 1)
    with pytest.raises(AdapterError, match="compress_lora needs a LoRA/LoCon module, not full"):
        compress_lora({"diff": torch.ones(3, 3)}, 1)
