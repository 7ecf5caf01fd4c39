"""Rank concatenation: ΔW of the joined module = Σ c_i·ΔW_i for linear, conv, Tucker and mixed modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lbw.adapters import concat_rank, lora
from lbw.errors import AdapterError


def _random_lora(gen, form, rank, alpha, out=16, inp=12):
    rand = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    if form == "linear":
        roles = {"lora_up": rand(out, rank), "lora_down": rand(rank, inp)}
    elif form == "conv":
        roles = {"lora_up": rand(out, rank, 1, 1), "lora_down": rand(rank, inp, 3, 3)}
    else:
        roles = {"lora_up": rand(out, rank, 1, 1), "lora_mid": rand(rank, rank, 3, 3),
                 "lora_down": rand(rank, inp, 1, 1)}
    if alpha is not None:
        roles["alpha"] = torch.tensor(alpha)
    return roles


def _oracle(items):
    total = None
    for roles, factor in items:
        as64 = {k: v.double() for k, v in roles.items()}
        term = factor * lora.delta(as64)
        total = term if total is None else total + term
    return total


CASES = {
    "two_linear": [("linear", 4, 2.0, 0.7), ("linear", 8, None, -1.25)],
    "three_linear": [("linear", 4, 1.0, 1.0), ("linear", 2, 16.0, 0.5), ("linear", 6, 3.0, -0.3)],
    "three_conv": [("conv", 4, 1.0, 1.75), ("conv", 2, None, -0.5), ("conv", 3, 8.0, 0.25)],
    "two_tucker": [("tucker", 4, 2.0, 0.5), ("tucker", 2, 1.0, -1.0)],
    "tucker_and_conv": [("tucker", 4, 2.0, 0.5), ("conv", 3, 1.0, 1.5), ("tucker", 2, None, -2.0)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_concat_equals_weighted_sum_fp32(case, relative_error):
    gen = torch.Generator().manual_seed(11)
    items = [(_random_lora(gen, form, rank, alpha), factor) for form, rank, alpha, factor in CASES[case]]
    joined = concat_rank(items)
    total_rank = sum(rank for _, rank, _, _ in CASES[case])
    assert joined["lora_up"].dtype == torch.float32
    assert float(joined["alpha"]) == joined["lora_down"].shape[0]
    assert joined["lora_up"].shape[1] == total_rank
    assert relative_error(lora.delta(joined), _oracle(items)) < 1e-6


def test_tucker_inputs_give_a_block_diagonal_core():
    gen = torch.Generator().manual_seed(12)
    a, b = _random_lora(gen, "tucker", 3, None), _random_lora(gen, "tucker", 2, None)
    joined = concat_rank([(a, 1.0), (b, 1.0)])
    mid = joined["lora_mid"]
    assert mid.shape == (5, 5, 3, 3)
    assert torch.equal(mid[:3, :3], a["lora_mid"]) and torch.equal(mid[3:, 3:], b["lora_mid"])
    assert float(mid[:3, 3:].abs().max()) == 0.0 and float(mid[3:, :3].abs().max()) == 0.0
    assert joined["lora_down"].shape == (5, 12, 1, 1) and joined["lora_up"].shape == (16, 5, 1, 1)


def test_mixed_tucker_and_plain_gives_plain_locon():
    gen = torch.Generator().manual_seed(13)
    tucker, conv = _random_lora(gen, "tucker", 4, 1.0), _random_lora(gen, "conv", 2, 1.0)
    joined = concat_rank([(tucker, 1.0), (conv, 1.0)])
    assert "lora_mid" not in joined
    assert joined["lora_down"].shape == (6, 12, 3, 3) and joined["lora_up"].shape == (16, 6, 1, 1)


def test_fold_mid_is_exact(relative_error):
    gen = torch.Generator().manual_seed(14)
    roles = _random_lora(gen, "tucker", 4, 2.5)
    folded = lora.fold_mid(roles)
    assert relative_error(lora.delta(folded), lora.delta({k: v.double() for k, v in roles.items()})) < 1e-6


@given(ranks=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       factors=st.lists(st.floats(-3, 3, allow_nan=False), min_size=4, max_size=4),
       seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_concat_any_ranks_and_factors(ranks, factors, seed):
    gen = torch.Generator().manual_seed(seed)
    items = [(_random_lora(gen, "linear", r, float(r + i)), factors[i]) for i, r in enumerate(ranks)]
    items64 = [({k: v.double() for k, v in roles.items()}, c) for roles, c in items]
    assert torch.allclose(lora.delta(concat_rank(items64)), _oracle(items), rtol=1e-10, atol=1e-10)


def test_concat_refusals(make):
    gen = torch.Generator().manual_seed(15)
    plain = _random_lora(gen, "linear", 2, None)
    with pytest.raises(AdapterError, match="needs at least one module"):
        concat_rank([])
    loha = make("loha_linear").roles
    expected = r"module 1 is loha: only LoRA/LoCon modules can be joined along the rank \(it has no rank to "
    with pytest.raises(AdapterError, match=expected):
        concat_rank([(plain, 1.0), (loha, 1.0)])
    dora = make("dora_input_axis").roles
    with pytest.raises(AdapterError, match=r"module 0 is dora: .*DoRA is not linear in its factors"):
        concat_rank([(dora, 1.0)])
    other = _random_lora(gen, "linear", 2, None, out=8)
    with pytest.raises(AdapterError, match=r"module 1 has ΔW shape \[8, 12\], module 0 has \[16, 12\]"):
        concat_rank([(plain, 1.0), (other, 1.0)])
    conv = _random_lora(gen, "conv", 2, None)
    with pytest.raises(AdapterError, match=r"module 1 has ΔW shape \[16, 12, 3, 3\]"):
        concat_rank([(plain, 1.0), (conv, 1.0)])
    with pytest.raises(AdapterError, match="module 0 has a non-finite factor nan"):
        concat_rank([(plain, float("nan"))])
