"""LoHa: ΔW = (α/r)·(W1a·W1b) ⊙ (W2a·W2b), r = rows of ``hada_w1_b``; Tucker with ``hada_t1``/``hada_t2``.

Shapes: plain Wna [out, r], Wnb [r, in·kh·kw] (or [r, in, kh, kw]); Tucker Wna [r, out], Wnb [r, in],
Tn [r, r, kh, kw] with R_n[p, q, h, w] = Σ_ab Tn[a, b, h, w]·Wna[a, p]·Wnb[b, q]. A plain conv LoHa stores the
kernel flattened, so its natural ΔW shape is [out, in·kh·kw]; pass ``shape`` to get the conv kernel back.

The fast norm uses the face-splitting identity (A1·B1) ⊙ (A2·B2) = (A1 • A2)(B1 ∗ B2) (row-wise and
column-wise Khatri-Rao products, inner size r1·r2) and then the LoRA Gram formula; it costs about
(out + in)·(r1·r2)² per kernel tap against out·in·(r1 + r2) for the dense product, so the cheaper is taken.

Example:
    >>> ones = torch.ones
    >>> roles = {"hada_w1_a": ones(2, 1), "hada_w1_b": ones(1, 3),
    ...          "hada_w2_a": ones(2, 1), "hada_w2_b": ones(1, 3)}
    >>> delta(roles).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lbw.adapters import _common as c
from lbw.adapters.kinds import alpha_scale
from lbw.errors import AdapterError


@dataclass(frozen=True)
class LohaParts:
    """Per Hadamard term n: ups[n] [taps, out, r_n] (one matrix per kernel tap), downs[n] [r_n, in_flat]."""

    ups: tuple[torch.Tensor, torch.Tensor]
    downs: tuple[torch.Tensor, torch.Tensor]
    scale: float
    shape: tuple[int, ...]


def parts(roles: c.Roles) -> LohaParts:
    """Validate a LoHa module; express each Hadamard term per kernel tap as up_tap @ down.

    Example:
        >>> z = torch.zeros
        >>> roles = {"hada_w1_a": z(2, 1), "hada_w1_b": z(1, 3), "hada_w2_a": z(2, 1), "hada_w2_b": z(1, 3)}
        >>> parts(roles).shape
        (2, 3)
    """
    w1a, w1b, w2a, w2b = c.fetch(roles, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    scale = alpha_scale(c.shapes_of(roles), c.alpha_of(roles))
    if "hada_t1" not in roles:
        ups, downs = [], []
        for n, (a, b) in enumerate(((w1a, w1b), (w2a, w2b)), start=1):
            up = c.as_matrix(a, f"hada_w{n}_a")
            down = c.as_matrix(b, f"hada_w{n}_b")
            c.check_inner(up, f"hada_w{n}_a", down, f"hada_w{n}_b")
            ups.append(up.unsqueeze(0))
            downs.append(down)
        _check_same(ups, downs)
        shape = (w1a.shape[0], *w1b.shape[1:])
        return LohaParts((ups[0], ups[1]), (downs[0], downs[1]), scale, shape)
    t1, t2 = (c.optional(roles, name, w1a) for name in ("hada_t1", "hada_t2"))
    ups, downs, kernel = [], [], None
    for n, (t, a, b) in enumerate(((t1, w1a, w1b), (t2, w2a, w2b)), start=1):
        assert t is not None
        wa = c.as_matrix(a, f"hada_w{n}_a")
        wb = c.as_matrix(b, f"hada_w{n}_b")
        c.check_core(t, f"hada_t{n}", wa.shape[0], wb.shape[0])
        # per tap: up_tap[p, b] = Σ_a Wna[a, p]·Tn[a, b, tap]
        ups.append(torch.einsum("ap,abhw->hwpb", wa, t).reshape(-1, wa.shape[1], wb.shape[0]))
        downs.append(wb)
        kernel = tuple(t.shape[2:])
    _check_same(ups, downs)
    assert kernel is not None
    shape = (ups[0].shape[1], downs[0].shape[1], *kernel)
    return LohaParts((ups[0], ups[1]), (downs[0], downs[1]), scale, shape)


def delta(roles: c.Roles, *, shape: Sequence[int] | None = None) -> torch.Tensor:
    """ΔW at multiplier 1 (α/r included), in the natural shape or reshaped to ``shape``.

    Example:
        >>> ones = torch.ones
        >>> r = {"hada_w1_a": ones(2, 1), "hada_w1_b": ones(1, 3),
        ...      "hada_w2_a": 2 * ones(2, 1), "hada_w2_b": ones(1, 3)}
        >>> delta(r)[0, 0].item()
        2.0
    """
    p = parts(roles)
    product = (_term(p, 0) * _term(p, 1)).permute(1, 2, 0)  # [out, in_flat, taps]
    return c.reshaped((p.scale * product).reshape(p.shape), shape)


def frobenius_norm(roles: c.Roles, *, method: Literal["auto", "gram", "dense"] = "auto") -> float:
    """||ΔW||_F through Gram matrices of the Khatri-Rao factors, or densely when that is cheaper (``auto``).

    Example:
        >>> ones = torch.ones
        >>> frobenius_norm({"hada_w1_a": ones(2, 1), "hada_w1_b": ones(1, 2), "hada_w2_a": ones(2, 1),
        ...                 "hada_w2_b": ones(1, 2)})
        2.0
    """
    p = parts(roles)
    taps, out, r1 = p.ups[0].shape
    r2 = p.ups[1].shape[2]
    cols = p.downs[0].shape[1]
    gram_cost = (taps * out + cols) * (r1 * r2) ** 2
    dense_cost = taps * out * cols * (r1 + r2)
    if method == "dense" or (method == "auto" and gram_cost > dense_cost):
        return abs(p.scale) * c.frobenius(_term(p, 0) * _term(p, 1))
    down = (p.downs[0].unsqueeze(1) * p.downs[1].unsqueeze(0)).reshape(r1 * r2, cols)  # B1 ∗ B2
    down_gram = down @ down.T
    up = (p.ups[0].unsqueeze(3) * p.ups[1].unsqueeze(2)).reshape(taps, out, r1 * r2)  # A1 • A2 per tap
    norm_sq = c.sum_to_float((up.transpose(1, 2) @ up) * down_gram)
    return abs(p.scale) * math.sqrt(max(norm_sq, 0.0))


def dense_frobenius_norm(roles: c.Roles) -> float:
    """||ΔW||_F by building ΔW (test oracle).

    Example:
        >>> ones = torch.ones
        >>> dense_frobenius_norm({"hada_w1_a": ones(2, 1), "hada_w1_b": ones(1, 2), "hada_w2_a": ones(2, 1),
        ...                       "hada_w2_b": ones(1, 2)})
        2.0
    """
    return c.frobenius(delta(roles))


def _term(p: LohaParts, n: int) -> torch.Tensor:
    """R_n as [taps, out, in_flat]: up_tap @ down for every tap."""
    return p.ups[n] @ p.downs[n]


def _check_same(ups: list[torch.Tensor], downs: list[torch.Tensor]) -> None:
    if ups[0].shape[:2] != ups[1].shape[:2] or downs[0].shape[1] != downs[1].shape[1]:
        raise AdapterError(
            "the two LoHa terms have different shapes: "
            f"hada_w1 gives [{ups[0].shape[1]}, {downs[0].shape[1]}], hada_w2 gives [{ups[1].shape[1]}, "
            f"{downs[1].shape[1]}] (kernel taps {ups[0].shape[0]} vs {ups[1].shape[0]})"
        )
