"""DoRA (LoRA + ``dora_scale``): W' = (W0 + ρ·s·U·D) · m / ||W0 + ρ·s·U·D||, applied delta W' − W0.

Norm convention, chosen from the shape of ``dora_scale`` (or forced with ``norm_axis``):
- ``"input"``: [1, in] or [1, in, 1, 1], one norm per input column, taken over every dim except dim 1. This is
  A1111's ``apply_weight_decompose`` (and LyCORIS with wd_on_out=False); lbw matches it exactly.
- ``"output"``: [out], [out, 1] or [out, 1, 1, 1], one norm per output row, over every dim except dim 0
  (PEFT ``lora_magnitude_vector``, LyCORIS wd_on_out=True).
No epsilon is added to the norm (as in A1111); a zero norm is refused.

LBW scales ``lora_up`` by the block ratio ρ before the decomposition, and the host multiplies W' − W0 by the
user multiplier afterwards; that is what ``factor`` and ``strength`` reproduce. The result is not linear in ρ
(ρ = 0 still gives W0·m/||W0|| − W0), which is why DoRA modules cannot be scaled in factor space and are baked
as full-diff modules instead (``dora_to_full``).

Example:
    >>> roles = {"lora_up": torch.zeros(2, 1), "lora_down": torch.zeros(1, 2), "dora_scale": torch.ones(1, 2)}
    >>> delta(roles, torch.eye(2)).abs().max().item()
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from lbw.adapters import _common as c
from lbw.adapters import lora
from lbw.errors import AdapterError

NormAxis = Literal["input", "output"]


def norm_axis_of(scale_shape: Sequence[int], weight_shape: Sequence[int]) -> NormAxis:
    """Which norm convention a ``dora_scale`` of this shape uses for a base weight of ``weight_shape``.

    Example:
        >>> norm_axis_of((1, 320, 1, 1), (640, 320, 3, 3))
        'input'
        >>> norm_axis_of((640,), (640, 320))
        'output'
    """
    out, inp = int(weight_shape[0]), int(weight_shape[1])
    shape = tuple(int(n) for n in scale_shape)
    if len(shape) >= 2 and shape[0] == 1 and shape[1] == inp and all(n == 1 for n in shape[2:]):
        return "input"
    if shape and shape[0] == out and all(n == 1 for n in shape[1:]):
        return "output"
    raise AdapterError(
        f"dora_scale has shape {list(shape)}; for a base weight {list(weight_shape)} expected "
        f"[1, {inp}, ...] (per input column, A1111) or [{out}] / [{out}, 1, ...] (per output row)"
    )


def dora_weight(
    roles: c.Roles,
    base_weight: torch.Tensor,
    *,
    factor: float = 1.0,
    norm_axis: NormAxis | None = None,
) -> torch.Tensor:
    """The decomposed weight W' with ``lora_up`` scaled by ``factor``, in the shape of W0.

    Example:
        >>> roles = {"lora_up": torch.zeros(2, 1), "lora_down": torch.zeros(1, 2),
        ...          "dora_scale": 2 * torch.ones(1, 2)}
        >>> dora_weight(roles, torch.eye(2)).tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """
    if "dora_scale" not in roles:
        raise AdapterError("DoRA module is missing role dora_scale")
    lora_roles = {name: t for name, t in roles.items() if name != "dora_scale"}
    lora_delta = lora.delta(lora_roles)
    dtype = torch.promote_types(lora_delta.dtype, torch.float32)
    base = base_weight.to(device=lora_delta.device, dtype=dtype)
    if base.dim() < 2:
        raise AdapterError(f"DoRA base weight must have 2 or more dimensions, found shape {list(base.shape)}")
    merged = base + factor * c.reshaped(lora_delta.to(base.dtype), base.shape)
    magnitude = roles["dora_scale"].to(device=base.device, dtype=base.dtype)
    axis = norm_axis or norm_axis_of(magnitude.shape, base.shape)
    keep = 1 if axis == "input" else 0
    dims = [d for d in range(base.dim()) if d != keep]
    norms = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
    if magnitude.numel() != norms.numel():
        raise AdapterError(
            f"dora_scale has {magnitude.numel()} values but the {axis} axis of {list(base.shape)} "
            f"has {norms.numel()}"
        )
    if bool((norms == 0).any()):
        raise AdapterError(f"DoRA weight has a zero {axis} norm; the decomposition divides by it")
    return merged * (magnitude.reshape(norms.shape) / norms)


def delta(
    roles: c.Roles,
    base_weight: torch.Tensor,
    *,
    factor: float = 1.0,
    norm_axis: NormAxis | None = None,
) -> torch.Tensor:
    """The applied delta W' − W0 at multiplier 1 with ``lora_up`` scaled by ``factor``.

    Example:
        >>> roles = {"lora_up": torch.zeros(2, 1), "lora_down": torch.zeros(1, 2),
        ...          "dora_scale": 2 * torch.ones(1, 2)}
        >>> delta(roles, torch.eye(2)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    weight = dora_weight(roles, base_weight, factor=factor, norm_axis=norm_axis)
    return weight - base_weight.to(device=weight.device, dtype=weight.dtype)


def frobenius_norm(roles: c.Roles, base_weight: torch.Tensor, *, norm_axis: NormAxis | None = None) -> float:
    """||W' − W0||_F (dense: the decomposition is not low-rank).

    Example:
        >>> roles = {"lora_up": torch.zeros(2, 1), "lora_down": torch.zeros(1, 2),
        ...          "dora_scale": 2 * torch.ones(1, 2)}
        >>> round(frobenius_norm(roles, torch.eye(2)), 6)
        1.414214
    """
    return c.frobenius(delta(roles, base_weight, norm_axis=norm_axis))


dense_frobenius_norm = frobenius_norm


def dora_to_full(
    roles: c.Roles,
    base_weight: torch.Tensor,
    factor: float,
    *,
    strength: float = 1.0,
    norm_axis: NormAxis | None = None,
) -> dict[str, torch.Tensor]:
    """A full-diff module {"diff": strength·(W'(factor) − W0)}: exactly the effect A1111 gives this DoRA
    module with block ratio ``factor`` and multiplier ``strength``. Costs out·in·kh·kw values (dense).

    Example:
        >>> roles = {"lora_up": torch.zeros(2, 1), "lora_down": torch.zeros(1, 2),
        ...          "dora_scale": 2 * torch.ones(1, 2)}
        >>> dora_to_full(roles, torch.eye(2), 0.5, strength=3.0)["diff"].tolist()
        [[3.0, 0.0], [0.0, 3.0]]
    """
    return {"diff": strength * delta(roles, base_weight, factor=factor, norm_axis=norm_axis)}
