"""Compress a ΔW to a LoRA of at most a given rank by truncated SVD, reporting the exact relative error.

Conv deltas are flattened to [out, in·kh·kw]; the result keeps the kohya layout: down [r, in, kh, kw],
up [out, r, 1, 1] (linear: down [r, in], up [out, r]). The singular values go into up (as sd-scripts does),
alpha = r (scale 1), nothing is clamped. The relative error ||ΔW − ΔW_r||_F / ||ΔW||_F equals
sqrt(Σ_{k>r} σ_k²) / sqrt(Σ_k σ_k²) (Eckart–Young), 0 when nothing is cut (and for ΔW = 0).

``compress_lora`` does the same for a module already in factor form (e.g. the output of ``concat_rank``)
without forming ΔW: QR of both factors, then an SVD of the small R×R core (R = the module's rank).

Example:
    >>> roles, error = compress(torch.eye(3), 2)
    >>> roles["lora_down"].shape, round(error, 6)
    (torch.Size([2, 3]), 0.57735)
"""

from __future__ import annotations

import torch

from lbw.adapters import _common as c
from lbw.adapters import lora
from lbw.adapters.kinds import AdapterKind, kind_of_roles
from lbw.errors import AdapterError


def compress(delta: torch.Tensor, rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """Best rank-``rank`` LoRA of ``delta`` ([out, in] or [out, in, kh, kw]) and its relative Frobenius error.

    Example:
        >>> roles, error = compress(torch.ones(4, 4), 1)
        >>> error < 1e-6
        True
    """
    _check_rank(rank)
    if delta.dim() not in (2, 4):
        raise AdapterError(f"SVD needs a 2-D or 4-D ΔW, found shape {list(delta.shape)}")
    matrix = delta.reshape(delta.shape[0], -1).to(dtype=c.compute_dtype([delta]))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return _truncate(u, s, vh, rank, tuple(delta.shape))


def compress_lora(roles: c.Roles, rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """``compress(lora.delta(roles), rank)`` computed from the factors (QR + a small SVD), never forming ΔW.

    Example:
        >>> roles = {"lora_up": torch.ones(5, 2), "lora_down": torch.ones(2, 4)}
        >>> compress_lora(roles, 1)[0]["lora_up"].shape
        torch.Size([5, 1])
    """
    _check_rank(rank)
    if kind_of_roles(roles) is not AdapterKind.LORA:
        raise AdapterError(f"compress_lora needs a LoRA/LoCon module, not {kind_of_roles(roles)}")
    p = lora.parts(lora.fold_mid(roles))
    q_up, r_up = torch.linalg.qr(p.scale * p.up)
    q_down, r_down = torch.linalg.qr(p.down.T)
    u_core, s, vh_core = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    return _truncate(q_up @ u_core, s, vh_core @ q_down.T, rank, p.shape)


def _truncate(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int, shape: tuple[int, ...]
) -> tuple[dict[str, torch.Tensor], float]:
    keep = min(rank, s.shape[0])
    total = c.sum_to_float(s.square())
    cut = c.sum_to_float(s[keep:].square())
    error = (cut / total) ** 0.5 if total > 0 else 0.0
    up = u[:, :keep] * s[:keep]
    down = vh[:keep]
    if len(shape) == 4:
        up = up.reshape(shape[0], keep, 1, 1)
        down = down.reshape(keep, *shape[1:])
    alpha = torch.tensor(float(keep), dtype=up.dtype, device=up.device)
    return {"lora_up": up.contiguous(), "lora_down": down.contiguous(), "alpha": alpha}, error


def _check_rank(rank: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"SVD rank must be a positive integer, found {rank!r}")
