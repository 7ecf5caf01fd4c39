"""ΔW and Frobenius norms of every adapter kind against dense float64 oracles built from the formulas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lbw.adapters import delta, dense_frobenius_norm, frobenius_norm
from lbw.errors import AdapterError


def test_delta_matches_oracle_in_float64(variant, make, relative_error):
    case = make(variant)
    result = delta(case.kind, case.roles, base_weight=case.base)
    assert result.dtype == torch.float64
    assert tuple(result.shape) == tuple(case.oracle.shape)
    assert relative_error(result, case.oracle) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_delta_computes_in_float32(variant, make, cast_case, relative_error, dtype):
    if variant.startswith("dora") and dtype == torch.float16:
        pytest.skip("dora_scale values are not exact in fp16")
    case = cast_case(make(variant, seed=1), dtype)
    result = delta(case.kind, case.roles, base_weight=case.base)
    assert result.dtype == torch.float32
    assert relative_error(result, case.oracle) < 1e-6


def test_fast_norm_equals_dense_norm_fp32(variant, make, cast_case):
    case = cast_case(make(variant, seed=2), torch.float32)
    fast = frobenius_norm(case.kind, case.roles, base_weight=case.base)
    dense = dense_frobenius_norm(case.kind, case.roles, base_weight=case.base)
    oracle = float(torch.linalg.vector_norm(case.oracle))
    assert fast == pytest.approx(dense, rel=1e-5)
    assert fast == pytest.approx(oracle, rel=1e-5)


def test_fast_norm_equals_oracle_norm_fp64(variant, make):
    case = make(variant, seed=3)
    fast = frobenius_norm(case.kind, case.roles, base_weight=case.base)
    assert fast == pytest.approx(float(torch.linalg.vector_norm(case.oracle)), rel=1e-12)


@pytest.mark.parametrize("variant_name", ["loha_conv_flat", "lokr_conv_decomposed"])
def test_flat_conv_kernels_reshape_to_the_base_shape(variant_name, make):
    case = make(variant_name)
    result = delta(case.kind, case.roles, shape=(16, 12, 3, 3))
    assert torch.equal(result, case.oracle.reshape(16, 12, 3, 3))


def test_shape_with_the_wrong_element_count_is_refused(make):
    case = make("loha_conv_flat")
    expected = r"ΔW has shape \[16, 108\] \(1728 values\), cannot become \[16, 12, 1, 1\]"
    with pytest.raises(AdapterError, match=expected):
        delta("loha", case.roles, shape=(16, 12, 1, 1))


def test_loha_dense_fallback_for_large_ranks_is_exact(relative_error):
    # r1·r2 = 400 makes the Gram path dearer than the product, so the dense fallback runs.
    gen = torch.Generator().manual_seed(7)
    shapes = {"hada_w1_a": (24, 20), "hada_w1_b": (20, 18), "hada_w2_a": (24, 20), "hada_w2_b": (20, 18)}
    roles = {name: torch.randn(*shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    oracle = (roles["hada_w1_a"] @ roles["hada_w1_b"]) * (roles["hada_w2_a"] @ roles["hada_w2_b"])
    assert frobenius_norm("loha", roles) == pytest.approx(float(oracle.norm()), rel=1e-12)


def test_lokr_full_factors_ignore_alpha(make):
    case = make("lokr_full")
    with_alpha = delta("lokr", case.roles)
    without = delta("lokr", {k: v for k, v in case.roles.items() if k != "alpha"})
    assert torch.equal(with_alpha, without)


def test_alpha_zero_gives_zero_delta(make):
    case = make("lora_linear")
    roles = {**case.roles, "alpha": torch.tensor(0.0)}
    assert float(delta("lora", roles).abs().max()) == 0.0
    assert frobenius_norm("lora", roles) == 0.0


def test_norm_of_zero_module_is_zero():
    roles = {"lora_up": torch.zeros(8, 2), "lora_down": torch.zeros(2, 8)}
    assert frobenius_norm("lora", roles) == 0.0


def test_full_and_norm_bias_deltas(make):
    from lbw.adapters import bias_delta

    full = make("full")
    assert torch.equal(bias_delta("full", full.roles), full.roles["diff_b"])
    assert bias_delta("lora", make("lora_linear").roles) is None


@pytest.mark.parametrize("variant_name", ["loha_linear", "loha_conv_flat", "loha_tucker"])
@pytest.mark.parametrize("method", ["gram", "dense"])
def test_loha_both_norm_paths_match_the_oracle(variant_name, method, make, cast_case):
    from lbw.adapters import loha

    case = make(variant_name, seed=4)
    oracle = float(torch.linalg.vector_norm(case.oracle))
    assert loha.frobenius_norm(case.roles, method=method) == pytest.approx(oracle, rel=1e-12)
    fp32 = cast_case(case, torch.float32)
    assert loha.frobenius_norm(fp32.roles, method=method) == pytest.approx(oracle, rel=1e-5)


@given(out=st.integers(1, 9), inp=st.integers(1, 9), r=st.integers(1, 5), r2=st.integers(1, 5),
       kernel=st.sampled_from([None, (1, 1), (3, 3), (1, 3)]), tucker=st.booleans(), seed=st.integers(0, 999))
@settings(max_examples=60, deadline=None)
def test_lora_fast_norm_for_any_shape(out, inp, r, r2, kernel, tucker, seed):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    if kernel is None:
        up, down = rand(out, r), rand(r, inp)
        roles, oracle = {"lora_up": up, "lora_down": down}, up @ down
    elif tucker:
        up, mid, down = rand(out, r), rand(r, r2, *kernel), rand(r2, inp)
        roles = {"lora_up": up.reshape(out, r, 1, 1), "lora_mid": mid,
                 "lora_down": down.reshape(r2, inp, 1, 1)}
        oracle = torch.einsum("oa,abhw,bi->oihw", up, mid, down)
    else:
        up, down = rand(out, r), rand(r, inp, *kernel)
        roles = {"lora_up": up.reshape(out, r, 1, 1), "lora_down": down}
        oracle = torch.einsum("ok,kihw->oihw", up, down)
    assert torch.allclose(delta("lora", roles), oracle, rtol=1e-12, atol=1e-12)
    assert frobenius_norm("lora", roles) == pytest.approx(float(oracle.norm()), rel=1e-10, abs=1e-12)


@given(out=st.integers(1, 8), inp=st.integers(1, 8), r1=st.integers(1, 4), r2=st.integers(1, 4),
       seed=st.integers(0, 999))
@settings(max_examples=40, deadline=None)
def test_loha_gram_norm_for_any_shape(out, inp, r1, r2, seed):
    from lbw.adapters import loha

    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    roles = {"hada_w1_a": rand(out, r1), "hada_w1_b": rand(r1, inp), "hada_w2_a": rand(out, r2),
             "hada_w2_b": rand(r2, inp)}
    oracle = (roles["hada_w1_a"] @ roles["hada_w1_b"]) * (roles["hada_w2_a"] @ roles["hada_w2_b"])
    expected = float(oracle.norm())
    assert loha.frobenius_norm(roles, method="gram") == pytest.approx(expected, rel=1e-10, abs=1e-12)
