"""LoKr: ΔW = s·(W1 ⊗ W2), a Kronecker product of two factors, each full, low-rank, or (W2 only) Tucker.

W1 = ``lokr_w1`` [out_l, in_m] or ``lokr_w1_a`` [out_l, r] · ``lokr_w1_b`` [r, in_m].
W2 = ``lokr_w2`` [out_k, in_n(, kh, kw)], or ``lokr_w2_a`` [out_k, r] · ``lokr_w2_b`` [r, in_n·kh·kw], or
Tucker R[p, q, h, w] = Σ_ab ``lokr_t2``[a, b, h, w]·``lokr_w2_a``[a, p]·``lokr_w2_b``[b, q] with
w2_a [r, out_k], w2_b [r, in_n]. s = α/r with r the rows of w1_b (else of w2_b); s = 1 when both factors are
full (A1111 rule); the scale is applied once (not twice as LyCORIS' get_diff_weight does).

The fast norm uses ||W1 ⊗ W2||_F = ||W1||_F·||W2||_F, each factor by its own fast path.

Example:
    >>> delta({"lokr_w1": torch.eye(2), "lokr_w2": torch.ones(1, 3)}).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lbw.adapters import _common as c
from lbw.adapters.kinds import alpha_scale
from lbw.errors import AdapterError


def w1_matrix(roles: c.Roles) -> torch.Tensor:
    """W1 as a dense [out_l, in_m] matrix in the compute dtype.

    Example:
        >>> w1_matrix({"lokr_w1_a": torch.ones(2, 1), "lokr_w1_b": torch.ones(1, 3)}).shape
        torch.Size([2, 3])
    """
    if "lokr_w1" in roles:
        (w1,) = c.fetch(roles, "lokr_w1")
        if w1.dim() != 2:
            raise AdapterError(f"lokr_w1 must be 2-D [out_l, in_m], found shape {list(w1.shape)}")
        return w1
    a, b = c.fetch(roles, "lokr_w1_a", "lokr_w1_b")
    up, down = c.as_matrix(a, "lokr_w1_a"), c.as_matrix(b, "lokr_w1_b")
    c.check_inner(up, "lokr_w1_a", down, "lokr_w1_b")
    return up @ down


def w2_tensor(roles: c.Roles) -> torch.Tensor:
    """W2 as a dense [out_k, in_n] or [out_k, in_n, kh, kw] tensor in the compute dtype.

    Example:
        >>> w2_tensor({"lokr_t2": torch.ones(1, 1, 3, 3), "lokr_w2_a": torch.ones(1, 4),
        ...            "lokr_w2_b": torch.ones(1, 5)}).shape
        torch.Size([4, 5, 3, 3])
    """
    if "lokr_w2" in roles:
        (w2,) = c.fetch(roles, "lokr_w2")
        if w2.dim() not in (2, 4):
            raise AdapterError(f"lokr_w2 must be 2-D or 4-D, found shape {list(w2.shape)}")
        return w2
    if "lokr_t2" in roles:
        up, core, down = _tucker_w2(roles)
        return c.tucker_product(up, core, down)
    a, b = c.fetch(roles, "lokr_w2_a", "lokr_w2_b")
    up, down = c.as_matrix(a, "lokr_w2_a"), c.as_matrix(b, "lokr_w2_b")
    c.check_inner(up, "lokr_w2_a", down, "lokr_w2_b")
    return (up @ down).reshape(up.shape[0], *b.shape[1:])


def delta(roles: c.Roles, *, shape: Sequence[int] | None = None) -> torch.Tensor:
    """ΔW = s·(W1 ⊗ W2) at multiplier 1; conv W2 gives [out, in, kh, kw]; ``shape`` reshapes the result.

    Example:
        >>> delta({"lokr_w1": torch.tensor([[1.0, 2.0]]), "lokr_w2": torch.ones(1, 1)}).tolist()
        [[1.0, 2.0]]
    """
    w1 = w1_matrix(roles)
    w2 = w2_tensor(roles)
    dtype = torch.promote_types(w1.dtype, w2.dtype)
    # torch.kron needs contiguous inputs with plain strides: einsum (Tucker W2) can leave odd strides on size-1
    # dims that .contiguous() keeps, and kron's internal view then fails; view(-1).view(shape) resets them.
    w1 = w1.to(dtype=dtype).contiguous().view(-1).view(w1.shape)
    w2 = w2.to(device=w1.device, dtype=dtype).contiguous().view(-1).view(w2.shape)
    if w2.dim() == 4:
        w1 = w1.view(*w1.shape, 1, 1)
    scale = alpha_scale(c.shapes_of(roles), c.alpha_of(roles))
    return c.reshaped(scale * torch.kron(w1, w2), shape)


def frobenius_norm(roles: c.Roles) -> float:
    """|s|·||W1||_F·||W2||_F, each factor from Gram matrices when it is low-rank or Tucker.

    Example:
        >>> frobenius_norm({"lokr_w1": torch.ones(2, 2), "lokr_w2": torch.ones(3, 3)})
        6.0
    """
    scale = alpha_scale(c.shapes_of(roles), c.alpha_of(roles))
    return abs(scale) * _w1_norm(roles) * _w2_norm(roles)


def dense_frobenius_norm(roles: c.Roles) -> float:
    """||ΔW||_F by building ΔW (test oracle).

    Example:
        >>> dense_frobenius_norm({"lokr_w1": torch.ones(2, 2), "lokr_w2": torch.ones(3, 3)})
        6.0
    """
    return c.frobenius(delta(roles))


def _w1_norm(roles: c.Roles) -> float:
    if "lokr_w1" in roles:
        return c.frobenius(w1_matrix(roles))
    a, b = c.fetch(roles, "lokr_w1_a", "lokr_w1_b")
    up, down = c.as_matrix(a, "lokr_w1_a"), c.as_matrix(b, "lokr_w1_b")
    c.check_inner(up, "lokr_w1_a", down, "lokr_w1_b")
    return math.sqrt(max(c.lowrank_norm_sq(up, down), 0.0))


def _w2_norm(roles: c.Roles) -> float:
    if "lokr_w2" in roles:
        return c.frobenius(w2_tensor(roles))
    if "lokr_t2" in roles:
        return math.sqrt(max(c.tucker_norm_sq(*_tucker_w2(roles)), 0.0))
    a, b = c.fetch(roles, "lokr_w2_a", "lokr_w2_b")
    up, down = c.as_matrix(a, "lokr_w2_a"), c.as_matrix(b, "lokr_w2_b")
    c.check_inner(up, "lokr_w2_a", down, "lokr_w2_b")
    return math.sqrt(max(c.lowrank_norm_sq(up, down), 0.0))


def _tucker_w2(roles: c.Roles) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(up [out_k, r], core [r, r', kh, kw], down [r', in_n]) of a Tucker W2."""
    core, a, b = c.fetch(roles, "lokr_t2", "lokr_w2_a", "lokr_w2_b")
    wa, wb = c.as_matrix(a, "lokr_w2_a"), c.as_matrix(b, "lokr_w2_b")
    c.check_core(core, "lokr_t2", wa.shape[0], wb.shape[0])
    return wa.T, core, wb
