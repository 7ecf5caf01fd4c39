"""LoRA and LoCon: ΔW = (α/r)·U·D for linear, conv 1x1, conv kxk, and LoCon Tucker (``lora_mid``).

Shapes: linear up [out, r], down [r, in]; conv up [out, r, 1, 1], down [r, in, kh, kw]; Tucker up
[out, r, 1, 1], mid [r, r', kh, kw], down [r', in, 1, 1]. The rank r of α/r is the rows of ``lora_down``.

Example:
    >>> roles = {"lora_up": torch.ones(4, 2), "lora_down": torch.ones(2, 3), "alpha": torch.tensor(1.0)}
    >>> delta(roles)[0, 0].item()
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lbw.adapters import _common as c
from lbw.adapters.kinds import alpha_scale
from lbw.errors import AdapterError


@dataclass(frozen=True)
class LoraParts:
    """A LoRA module in matrix form: ΔW = scale · up @ [mid] @ down, reshaped to ``shape``."""

    up: torch.Tensor  # [out, r]
    down: torch.Tensor  # [r', in·kh·kw] plain, [r', in] Tucker
    mid: torch.Tensor | None  # [r, r', kh, kw] (Tucker only)
    scale: float
    shape: tuple[int, ...]  # the natural ΔW shape


def parts(roles: c.Roles, *, compute: bool = True) -> LoraParts:
    """Validate a LoRA/LoCon module and return its factors as matrices in the compute dtype (with
    ``compute=False``: as stored, no copy; for shape checks and callers that round once themselves).

    Example:
        >>> parts({"lora_up": torch.ones(4, 2, 1, 1), "lora_down": torch.ones(2, 3, 3, 3)}).shape
        (4, 3, 3, 3)
    """
    if compute:
        up_raw, down_raw = c.fetch(roles, "lora_up", "lora_down")
    else:
        up_raw, down_raw = roles["lora_up"], roles["lora_down"]
    up = c.up_matrix(up_raw, "lora_up")
    mid = c.optional(roles, "lora_mid", up) if compute else roles.get("lora_mid")
    scale = alpha_scale(c.shapes_of(roles), c.alpha_of(roles))
    if mid is None:
        down = c.as_matrix(down_raw, "lora_down")
        c.check_inner(up, "lora_up", down, "lora_down")
        shape = (up.shape[0], *down_raw.shape[1:])
        return LoraParts(up, down, None, scale, shape)
    if down_raw.dim() not in (2, 4) or (down_raw.dim() == 4 and tuple(down_raw.shape[2:]) != (1, 1)):
        shape_found = list(down_raw.shape)
        raise AdapterError(f"lora_down of a Tucker module must be [r, in, 1, 1], found {shape_found}")
    down = down_raw.reshape(down_raw.shape[0], down_raw.shape[1])
    c.check_core(mid, "lora_mid", up.shape[1], down.shape[0])
    return LoraParts(up, down, mid, scale, (up.shape[0], down.shape[1], mid.shape[2], mid.shape[3]))


def delta(roles: c.Roles, *, shape: Sequence[int] | None = None) -> torch.Tensor:
    """ΔW at multiplier 1, alpha/rank scale included; ``shape`` reshapes the result (same element count).

    Example:
        >>> roles = {"lora_up": torch.eye(2), "lora_down": torch.eye(2), "alpha": torch.tensor(1.0)}
        >>> delta(roles).diag().tolist()
        [0.5, 0.5]
    """
    p = parts(roles)
    product = p.up @ p.down if p.mid is None else c.tucker_product(p.up, p.mid, p.down)
    return c.reshaped((p.scale * product).reshape(p.shape), shape)


def frobenius_norm(roles: c.Roles) -> float:
    """||ΔW||_F from r×r Gram matrices (Tucker: contracted through the core), without forming ΔW.

    Example:
        >>> frobenius_norm({"lora_up": torch.ones(3, 1), "lora_down": torch.ones(1, 3)})
        3.0
    """
    p = parts(roles)
    norm_sq = c.lowrank_norm_sq(p.up, p.down) if p.mid is None else c.tucker_norm_sq(p.up, p.mid, p.down)
    return abs(p.scale) * math.sqrt(max(norm_sq, 0.0))


def frobenius_norms(
    ups: torch.Tensor, downs: torch.Tensor, scales: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """||s_i·U_i·D_i||_F for a batch of same-shaped plain LoRA modules, from r×r Gram matrices:
    sum((U_iᵀU_i) ⊙ (D_i D_iᵀ)) per module, never forming ΔW. ``ups`` [n, out, r], ``downs`` [n, r, in·kh·kw]
    (conv factors flattened), ``scales`` [n] (α/r, any sign); products in the factors' dtype (use float32 or
    float64). Returns float64 [n]: |s_i| times the square root taken in the factors' dtype.

    Example:
        >>> frobenius_norms(torch.ones(2, 3, 1), torch.ones(2, 1, 3), [1.0, -0.5]).tolist()
        [3.0, 1.5]
    """
    if ups.dim() != 3 or downs.dim() != 3 or ups.shape[0] != downs.shape[0] or ups.shape[2] != downs.shape[1]:
        raise AdapterError(f"batched factors must be ups [n, out, r] and downs [n, r, in], found "
                           f"{list(ups.shape)} and {list(downs.shape)}")
    roots = ((ups.mT @ ups) * (downs @ downs.mT)).sum(dim=(1, 2)).clamp_min(0).sqrt()
    factors = torch.as_tensor(scales, dtype=torch.float64).reshape(-1)
    if factors.numel() != ups.shape[0]:
        raise AdapterError(f"{factors.numel()} scales for {ups.shape[0]} modules")
    return factors.abs() * roots.to(device="cpu", dtype=torch.float64)


def dense_frobenius_norm(roles: c.Roles) -> float:
    """||ΔW||_F by building ΔW (test oracle and benchmark baseline).

    Example:
        >>> dense_frobenius_norm({"lora_up": torch.ones(3, 1), "lora_down": torch.ones(1, 3)})
        3.0
    """
    return c.frobenius(delta(roles))


def fold_mid(roles: c.Roles) -> dict[str, torch.Tensor]:
    """Turn a Tucker LoCon module into the plain conv form with the same ΔW, same rank and alpha.

    down'[a, i, h, w] = Σ_b mid[a, b, h, w]·down[b, i], so ΔW = (α/r)·up @ down' exactly; r becomes the
    inner size of ``lora_up``, so alpha is rescaled to keep α/r unchanged. A module without ``lora_mid`` is
    returned as is.

    Example:
        >>> roles = {"lora_up": torch.ones(2, 1, 1, 1), "lora_mid": torch.ones(1, 1, 3, 3),
        ...          "lora_down": torch.ones(1, 5, 1, 1)}
        >>> fold_mid(roles)["lora_down"].shape
        torch.Size([1, 5, 3, 3])
    """
    if "lora_mid" not in roles:
        return dict(roles)
    p = parts(roles)
    assert p.mid is not None
    down = torch.einsum("abhw,bi->aihw", p.mid, p.down)
    rank = down.shape[0]
    return {
        "lora_up": p.up.reshape(p.up.shape[0], rank, 1, 1),
        "lora_down": down,
        "alpha": torch.tensor(p.scale * rank, dtype=p.up.dtype, device=p.up.device),
    }
