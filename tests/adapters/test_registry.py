"""Dispatch: kind checks, error locations, device handling."""

from __future__ import annotations

import pytest
import torch

from lbw.adapters import AdapterKind, concat_rank, delta, frobenius_norm, scale_module
from lbw.errors import AdapterError


def test_where_is_prefixed_to_errors():
    roles = {"lora_up": torch.ones(4, 3), "lora_down": torch.ones(2, 4)}
    with pytest.raises(AdapterError) as info:
        frobenius_norm("lora", roles, where="a.safetensors: lora_unet_x")
    assert str(info.value) == ("a.safetensors: lora_unet_x: lora_up has 3 columns but lora_down has 2 rows "
                               "(shapes [4, 3] and [2, 4])")
    with pytest.raises(AdapterError, match=r"^m: module roles \['diff'\] are a full module, not lora$"):
        delta(AdapterKind.LORA, {"diff": torch.ones(2, 2)}, where="m")
    with pytest.raises(AdapterError, match=r"^m: scale factor must be a finite number"):
        scale_module("full", {"diff": torch.ones(2, 2)}, float("nan"), where="m")


def test_unknown_kind_is_refused():
    with pytest.raises(AdapterError, match=r"unknown adapter kind 'glora'; expected one of \['lora', 'dora'"):
        delta("glora", {"lora_up": torch.ones(1, 1), "lora_down": torch.ones(1, 1)})


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ({"lora_up": torch.ones(4, 2, 3, 3), "lora_down": torch.ones(2, 4)},
         r"lora_up must be \[out, r\] or \[out, r, 1, 1\], found shape \[4, 2, 3, 3\]"),
        ({"lora_up": torch.ones(4, 2, 1, 1), "lora_mid": torch.ones(2, 3, 3, 3),
          "lora_down": torch.ones(2, 4, 1, 1)},
         r"lora_mid must be \[2, 2, kh, kw\], found shape \[2, 3, 3, 3\]"),
        ({"lora_up": torch.ones(4, 2), "lora_down": torch.ones(2, 4), "alpha": torch.ones(2)},
         r"alpha must be a single number, found shape \[2\]"),
        ({"hada_w1_a": torch.ones(4, 2), "hada_w1_b": torch.ones(2, 5), "hada_w2_a": torch.ones(4, 2),
          "hada_w2_b": torch.ones(2, 6)}, r"the two LoHa terms have different shapes"),
        ({"lokr_w1": torch.ones(2, 2, 1), "lokr_w2": torch.ones(2, 2)},
         r"lokr_w1 must be 2-D \[out_l, in_m\], found shape \[2, 2, 1\]"),
    ],
)
def test_inconsistent_shapes_are_refused(roles, message):
    from lbw.adapters import kind_of_roles

    with pytest.raises(AdapterError, match=message):
        frobenius_norm(kind_of_roles(roles), roles)


def test_results_stay_on_the_tensors_device():
    meta = torch.device("meta")
    roles = {"lora_up": torch.empty(8, 2, device=meta), "lora_down": torch.empty(2, 6, device=meta)}
    assert delta("lora", roles).device == meta
    assert scale_module("lora", roles, 0.5)["lora_up"].device == meta
    joined = concat_rank([(roles, 1.0), (roles, -1.0)])
    assert joined["lora_up"].device == meta and joined["alpha"].device == meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_match_cpu(make):
    for name in ("lora_tucker", "loha_tucker", "lokr_tucker", "dora_input_axis"):
        case = make(name)
        roles = {k: v.float().cuda() for k, v in case.roles.items()}
        base = None if case.base is None else case.base.float().cuda()
        result = delta(case.kind, roles, base_weight=base)
        assert result.device.type == "cuda"
        assert torch.allclose(result.cpu().double(), case.oracle, rtol=1e-4, atol=1e-4)
        fast = frobenius_norm(case.kind, roles, base_weight=base)
        assert fast == pytest.approx(float(case.oracle.norm()), rel=1e-5)
