"""Scale a module's ΔW by a factor c in factor space (what a bake of block weights does).

``scale_module`` multiplies exactly one factor (``kinds.scaled_roles``: the factor LBW scales, plus the bias
delta of full/norm modules) by c, so ΔW becomes c·ΔW for every kind except DoRA; alpha and rank are unchanged.
``scale_balanced`` (LoRA/LoCon only) splits the magnitude: up × sign(c)·√|c|, down × √|c|; a Tucker
``lora_mid`` core is left as is (the product is still exactly c·ΔW).

Scaled roles come back in the compute dtype (float32, or float64 for float64 inputs); the other roles are the
input tensors themselves, so the caller casts everything once at the end.

Example:
    >>> scaled = scale_module("lora", {"lora_up": torch.ones(2, 1), "lora_down": torch.ones(1, 2)}, -0.5)
    >>> scaled["lora_up"].tolist(), scaled["lora_down"].tolist()
    ([[-0.5], [-0.5]], [[1.0, 1.0]])
"""

from __future__ import annotations

import math

import torch

from lbw.adapters import _common as c
from lbw.adapters.kinds import AdapterKind, kind_of_roles, scaled_roles
from lbw.errors import AdapterError


def scale_module(kind: AdapterKind | str, roles: c.Roles, factor: float) -> dict[str, torch.Tensor]:
    """Roles of a module whose ΔW is ``factor``·ΔW: one factor (and any bias delta) scaled, alpha kept.

    Example:
        >>> scale_module("full", {"diff": torch.ones(1, 2), "diff_b": torch.ones(1)}, 2.0)["diff_b"].tolist()
        [2.0]
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
        (tensor,) = c.fetch(roles, role)
        scaled[role] = tensor * factor
    return scaled


def scale_balanced(roles: c.Roles, factor: float) -> dict[str, torch.Tensor]:
    """LoRA/LoCon roles with ΔW scaled by ``factor``: up × sign·√|factor|, down × √|factor|; mid, alpha kept.

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
    up, down = c.fetch(roles, "lora_up", "lora_down")
    scaled = dict(roles)
    scaled["lora_up"] = up * math.copysign(root, factor)
    scaled["lora_down"] = down * root
    return scaled


def _check_kind(kind: AdapterKind | str, roles: c.Roles) -> None:
    expected = AdapterKind(kind)
    found = kind_of_roles(roles)
    if found is not expected:
        raise AdapterError(f"module roles {sorted(roles)} are a {found} module, not {expected}")


def _check_factor(factor: float) -> None:
    if not math.isfinite(factor):
        raise AdapterError(f"scale factor must be a finite number, found {factor}")
