"""Full diff: ΔW = ``diff``, Δbias = ``diff_b`` (LyCORIS full / A1111 network_full; no alpha).

Example:
    >>> delta({"diff": torch.ones(2, 2)}).sum().item()
    4.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lbw.adapters import _common as c


def delta(roles: c.Roles, *, shape: Sequence[int] | None = None) -> torch.Tensor:
    """The weight delta (``diff``) in the compute dtype.

    Example:
        >>> delta({"diff": torch.ones(2, 3, dtype=torch.float16)}).dtype
        torch.float32
    """
    (diff,) = c.fetch(roles, "diff")
    return c.reshaped(diff, shape)


def bias_delta(roles: c.Roles) -> torch.Tensor | None:
    """The bias delta (``diff_b``) in the compute dtype, or None.

    Example:
        >>> bias_delta({"diff": torch.ones(2, 3)}) is None
        True
    """
    return c.fetch(roles, "diff_b")[0] if "diff_b" in roles else None


def frobenius_norm(roles: c.Roles) -> float:
    """||diff||_F (the weight delta only; the bias is not part of ΔW).

    Example:
        >>> frobenius_norm({"diff": torch.ones(2, 2)})
        2.0
    """
    return c.frobenius(delta(roles))


dense_frobenius_norm = frobenius_norm
