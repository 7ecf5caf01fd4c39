"""Norm layers (LyCORIS ``norm``): Δweight = ``w_norm``, Δbias = ``b_norm`` (no alpha).

Example:
    >>> delta({"w_norm": torch.ones(4)}).shape
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lbw.adapters import _common as c


def delta(roles: c.Roles, *, shape: Sequence[int] | None = None) -> torch.Tensor:
    """The weight delta (``w_norm``) in the compute dtype.

    Example:
        >>> delta({"w_norm": torch.ones(3, dtype=torch.bfloat16)}).dtype
        torch.float32
    """
    (w_norm,) = c.fetch(roles, "w_norm")
    return c.reshaped(w_norm, shape)


def bias_delta(roles: c.Roles) -> torch.Tensor | None:
    """The bias delta (``b_norm``) in the compute dtype, or None.

    Example:
        >>> bias_delta({"w_norm": torch.ones(3), "b_norm": torch.zeros(3)}).tolist()
        [0.0, 0.0, 0.0]
    """
    return c.fetch(roles, "b_norm")[0] if "b_norm" in roles else None


def frobenius_norm(roles: c.Roles) -> float:
    """||w_norm||_2 (the weight delta only).

    Example:
        >>> frobenius_norm({"w_norm": torch.tensor([3.0, 4.0])})
        5.0
    """
    return c.frobenius(delta(roles))


dense_frobenius_norm = frobenius_norm
