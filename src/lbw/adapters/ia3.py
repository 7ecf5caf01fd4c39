"""IA3: ΔW = W0 ⊙ w, with w ∈ ℝ^out scaling rows (on_input = 0) or w ∈ ℝ^in scaling columns (on_input = 1).

IA3 stores no alpha. ΔW is linear in the stored vector ``weight`` (its linear parameter) but needs the base
weight W0, so every function here takes ``base_weight``.

Example:
    >>> delta({"weight": torch.tensor([2.0, 0.0])}, torch.ones(2, 3)).tolist()
    [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import math

import torch

from lbw.adapters import _common as c
from lbw.errors import AdapterError


def parameter(roles: c.Roles) -> torch.Tensor:
    """The linear parameter w (the stored ``weight`` vector) in the compute dtype; ΔW is linear in it.

    Example:
        >>> parameter({"weight": torch.tensor([1.0, 2.0], dtype=torch.float16)}).dtype
        torch.float32
    """
    (weight,) = c.fetch(roles, "weight")
    return weight.reshape(-1)


def on_input(roles: c.Roles) -> bool:
    """True when w scales the input columns (``on_input`` role non-zero), else w scales the output rows.

    Example:
        >>> on_input({"weight": torch.ones(3), "on_input": torch.tensor(1)})
        True
    """
    flag = roles.get("on_input")
    return bool(flag is not None and flag.numel() > 0 and flag.reshape(-1)[0].item())


def delta(roles: c.Roles, base_weight: torch.Tensor) -> torch.Tensor:
    """ΔW = W0 ⊙ w (broadcast per row, or per column with on_input), in the shape of W0.

    Example:
        >>> roles = {"weight": torch.tensor([1.0, 3.0]), "on_input": torch.tensor(1)}
        >>> delta(roles, torch.ones(1, 2)).tolist()
        [[1.0, 3.0]]
    """
    base, w = _broadcast(roles, base_weight)
    return base * w


def frobenius_norm(roles: c.Roles, base_weight: torch.Tensor) -> float:
    """||W0 ⊙ w||_F from the row (or column) norms of W0, without forming ΔW.

    Example:
        >>> frobenius_norm({"weight": torch.tensor([3.0, 4.0])}, torch.ones(2, 1))
        5.0
    """
    base, w = _broadcast(roles, base_weight)
    axis = 1 if on_input(roles) else 0
    dims = [d for d in range(base.dim()) if d != axis]
    sums = base.square().sum(dim=dims, keepdim=True)  # squared row (or column) norms of W0
    return math.sqrt(c.sum_to_float(w.square() * sums))


def dense_frobenius_norm(roles: c.Roles, base_weight: torch.Tensor) -> float:
    """||ΔW||_F by building ΔW (test oracle).

    Example:
        >>> dense_frobenius_norm({"weight": torch.tensor([3.0, 4.0])}, torch.ones(2, 1))
        5.0
    """
    return c.frobenius(delta(roles, base_weight))


def _broadcast(roles: c.Roles, base_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = parameter(roles)
    base = base_weight.to(device=w.device, dtype=torch.promote_types(w.dtype, torch.float32))
    w = w.to(base.dtype)
    if base.dim() < 2:
        raise AdapterError(f"IA3 base weight must have at least 2 dimensions, found shape {list(base.shape)}")
    trailing = [1] * (base.dim() - 2)
    if on_input(roles):
        _check_length(w, base.shape[1], base, True)
        return base, w.reshape(1, -1, *trailing)
    _check_length(w, base.shape[0], base, False)
    return base, w.reshape(-1, 1, *trailing)


def _check_length(w: torch.Tensor, expected: int, base: torch.Tensor, columns: bool) -> None:
    if w.numel() != expected:
        axis = "input columns (on_input)" if columns else "output rows"
        raise AdapterError(
            f"IA3 weight has {w.numel()} values but the base weight {list(base.shape)} has {expected} {axis}"
        )
