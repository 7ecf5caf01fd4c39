"""Scale a module's ΔW by a factor c in factor space (what a bake of block weights does).

``scale_module`` multiplies exactly one factor (``kinds.scaled_roles``: the factor LBW scales, plus the bias
delta of full/norm modules) by c, so ΔW becomes c·ΔW for every kind except DoRA; alpha and rank are unchanged.
``scale_balanced`` (LoRA/LoCon only) splits the magnitude: up × sign(c)·√|c|, down × √|c|; a Tucker
``lora_mid`` core is left as is (the product is still exactly c·ΔW).

Scaled roles come back in the compute dtype (float32, or float64 for float64 inputs); the other roles are the
input tensors themselves, so the caller casts everything once at the end. With ``out_dtype`` (a dtype, or
``"input"`` for each tensor's own floating dtype) the scaled roles come back already rounded to it: the product
is computed in float32 and rounded once. When the tensor is already in that dtype (fp16, bf16, fp32), torch's
tensor × Python-scalar multiply does exactly that in one pass (it widens each value to float32, multiplies by
the factor rounded to float32, and rounds the product once), so no float32 copy is made; the result equals
``(tensor.float() * factor).to(out_dtype)`` bit for bit (tested on random fp16 and bf16 tensors).

Example:
    >>> scaled = scale_module("lora", {"lora_up": torch.ones(2, 1), "lora_down": torch.ones(1, 2)}, -0.5)
    >>> scaled["lora_up"].tolist(), scaled["lora_down"].tolist()
    ([[-0.5], [-0.5]], [[1.0, 1.0]])
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from lbw.adapters import _common as c
from lbw.adapters.kinds import AdapterKind, kind_of_roles, scaled_roles
from lbw.errors import AdapterError

OutDtype = torch.dtype | Literal["input"] | None
_HALF = (torch.float16, torch.bfloat16)


def scale_module(
    kind: AdapterKind | str, roles: c.Roles, factor: float, *, out_dtype: OutDtype = None
) -> dict[str, torch.Tensor]:
    """Roles of a module whose ΔW is ``factor``·ΔW: one factor (and any bias delta) scaled, alpha kept.
    Scaled roles in the compute dtype, or rounded once to ``out_dtype`` (see the module docstring).

    Example:
        >>> scale_module("full", {"diff": torch.ones(1, 2), "diff_b": torch.ones(1)}, 2.0)["diff_b"].tolist()
        [2.0]
        >>> scale_module("lora", {"lora_up": torch.ones(2, 1).half(), "lora_down": torch.ones(1, 2).half()},
        ...              0.5, out_dtype="input")["lora_up"].dtype
        torch.float16
    """
    _check_kind(kind, roles)
    _check_factor(factor)
    if kind_of_roles(roles) is AdapterKind.DORA:
        raise AdapterError(
            "cannot scale a DoRA module in factor space: W' = (W0 + c·ΔW)·m/||W0 + c·ΔW|| is not linear "
            "in c; "
            "convert it to a full diff with dora_to_full (needs the base weight)"
        )
    scaled = dict(roles)
    for role in scaled_roles(roles):
        scaled[role] = scale_tensor(roles[role], factor, out_dtype)
    return scaled


def scale_balanced(roles: c.Roles, factor: float, *, out_dtype: OutDtype = None) -> dict[str, torch.Tensor]:
    """LoRA/LoCon roles with ΔW scaled by ``factor``: up × sign·√|factor|, down × √|factor|; mid, alpha kept.
    up and down in the compute dtype, or rounded once to ``out_dtype``.

    Example:
        >>> scaled = scale_balanced({"lora_up": torch.ones(1, 1), "lora_down": torch.ones(1, 1)}, -4.0)
        >>> scaled["lora_up"].item(), scaled["lora_down"].item()
        (-2.0, 2.0)
    """
    _check_factor(factor)
    kind = kind_of_roles(roles)
    if kind is not AdapterKind.LORA:
        raise AdapterError(
            f"balanced scaling splits the factor over lora_up and lora_down and needs a LoRA/LoCon module, "
            f"not {kind}; use scale_module (one factor) instead"
        )
    root = math.sqrt(abs(factor))
    scaled = dict(roles)
    if out_dtype is None:
        up, down = c.fetch(roles, "lora_up", "lora_down")
        scaled["lora_up"] = up * math.copysign(root, factor)
        scaled["lora_down"] = down * root
        return scaled
    compute = c.compute_dtype([roles["lora_up"], roles["lora_down"]])
    scaled["lora_up"] = scale_tensor(roles["lora_up"], math.copysign(root, factor), out_dtype, compute=compute)
    scaled["lora_down"] = scale_tensor(roles["lora_down"], root, out_dtype, compute=compute)
    return scaled


def scale_tensor(
    tensor: torch.Tensor,
    factor: float,
    out_dtype: OutDtype = None,
    *,
    compute: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``tensor`` × ``factor`` in the compute dtype (``out_dtype`` None), or computed in float32 and rounded once
    to ``out_dtype`` (``"input"``: the tensor's own floating dtype). float64 is kept when the tensor and the
    output are float64; ``compute`` overrides the compute dtype (float32 or float64). ``out`` (a tensor of the
    result's shape and dtype, e.g. a slice of a larger one) receives the result, which saves a copy.

    Example:
        >>> scale_tensor(torch.tensor([1.0, 3.0]).half(), 0.1, out_dtype="input").tolist()
        [0.0999755859375, 0.300048828125]
    """
    if out_dtype is None:
        result = tensor.to(compute or c.compute_dtype([tensor])) * factor
        return result if out is None else out.copy_(result)
    target = _target(tensor, out_dtype)
    if compute is None:
        compute = torch.float64 if tensor.dtype == target == torch.float64 else torch.float32
    if out is not None and out.dtype != target:
        raise AdapterError(f"scale_tensor: out has dtype {out.dtype}, the result is {target}")
    if tensor.dtype == target and (target == compute or (compute == torch.float32 and target in _HALF)):
        # one rounding: half/bfloat16 × scalar is computed in float32
        return tensor * factor if out is None else torch.mul(tensor, factor, out=out)
    result = tensor.to(compute) * factor
    return result.to(target) if out is None else out.copy_(result)


def _target(tensor: torch.Tensor, out_dtype: torch.dtype | Literal["input"]) -> torch.dtype:
    if out_dtype != "input":
        return out_dtype
    return tensor.dtype if tensor.dtype.is_floating_point else torch.float32


def _check_kind(kind: AdapterKind | str, roles: c.Roles) -> None:
    expected = AdapterKind(kind)
    found = kind_of_roles(roles)
    if found is not expected:
        raise AdapterError(f"module roles {sorted(roles)} are a {found} module, not {expected}")


def _check_factor(factor: float) -> None:
    if not math.isfinite(factor):
        raise AdapterError(f"scale factor must be a finite number, found {factor}")
