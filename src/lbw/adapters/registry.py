"""Dispatch by adapter kind: ΔW, Frobenius norms, bias deltas and factor scaling for any module.

``where`` (e.g. the file and module name) is prefixed to any AdapterError raised, so callers get one line that
names the module.

Example:
    >>> roles = {"lora_up": torch.ones(2, 1), "lora_down": torch.ones(1, 2), "alpha": torch.tensor(2.0)}
    >>> delta("lora", roles).tolist()
    [[2.0, 2.0], [2.0, 2.0]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

import torch

from lbw.adapters import _common as c
from lbw.adapters import dora, full, ia3, loha, lokr, lora, norm, scale
from lbw.adapters.kinds import NEEDS_BASE, AdapterKind, kind_of_roles
from lbw.errors import AdapterError

MATH: dict[AdapterKind, ModuleType] = {
    AdapterKind.LORA: lora,
    AdapterKind.DORA: dora,
    AdapterKind.LOHA: loha,
    AdapterKind.LOKR: lokr,
    AdapterKind.IA3: ia3,
    AdapterKind.FULL: full,
    AdapterKind.NORM: norm,
}


def delta(
    kind: AdapterKind | str,
    roles: c.Roles,
    *,
    base_weight: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    where: str | None = None,
) -> torch.Tensor:
    """ΔW at multiplier 1 (alpha/rank scale included); IA3 and DoRA need ``base_weight``.

    Example:
        >>> delta("ia3", {"weight": torch.tensor([2.0])}, base_weight=torch.ones(1, 2)).tolist()
        [[2.0, 2.0]]
    """
    with _located(where):
        kind = _checked(kind, roles)
        if kind in NEEDS_BASE:
            base = _base(kind, base_weight)
            return c.reshaped(MATH[kind].delta(roles, base), shape)
        return MATH[kind].delta(roles, shape=shape)


def frobenius_norm(
    kind: AdapterKind | str,
    roles: c.Roles,
    *,
    base_weight: torch.Tensor | None = None,
    where: str | None = None,
) -> float:
    """||ΔW||_F by the kind's fast path (no ΔW built for LoRA, LoCon, LoHa, LoKr, IA3).

    Example:
        >>> frobenius_norm("lora", {"lora_up": torch.ones(3, 1), "lora_down": torch.ones(1, 3)})
        3.0
    """
    return _norm("frobenius_norm", kind, roles, base_weight, where)


def dense_frobenius_norm(
    kind: AdapterKind | str,
    roles: c.Roles,
    *,
    base_weight: torch.Tensor | None = None,
    where: str | None = None,
) -> float:
    """||ΔW||_F by building ΔW: the oracle the fast norms are tested against.

    Example:
        >>> dense_frobenius_norm("full", {"diff": torch.ones(2, 2)})
        2.0
    """
    return _norm("dense_frobenius_norm", kind, roles, base_weight, where)


def _norm(
    method: str, kind: AdapterKind | str, roles: c.Roles, base_weight: torch.Tensor | None, where: str | None
) -> float:
    """Call the kind module's norm ``method``, passing the base weight to the kinds that need it."""
    with _located(where):
        kind = _checked(kind, roles)
        norm = getattr(MATH[kind], method)
        return norm(roles, _base(kind, base_weight)) if kind in NEEDS_BASE else norm(roles)


def bias_delta(kind: AdapterKind | str, roles: c.Roles, *, where: str | None = None) -> torch.Tensor | None:
    """The bias delta of a full (``diff_b``) or norm (``b_norm``) module, else None.

    Example:
        >>> bias_delta("norm", {"w_norm": torch.ones(2), "b_norm": torch.ones(2)}).tolist()
        [1.0, 1.0]
    """
    with _located(where):
        kind = _checked(kind, roles)
        return MATH[kind].bias_delta(roles) if kind in (AdapterKind.FULL, AdapterKind.NORM) else None


def scale_module(
    kind: AdapterKind | str,
    roles: c.Roles,
    factor: float,
    *,
    out_dtype: scale.OutDtype = None,
    where: str | None = None,
) -> dict[str, torch.Tensor]:
    """Roles with ΔW multiplied by ``factor`` (one factor scaled, alpha kept); DoRA is refused. Scaled roles in
    the compute dtype, or computed in float32 and rounded once to ``out_dtype`` (a dtype, or ``"input"``).

    Example:
        >>> scale_module("loha", {"hada_w1_a": torch.ones(1, 1), "hada_w1_b": torch.ones(1, 1),
        ...     "hada_w2_a": torch.ones(1, 1), "hada_w2_b": torch.ones(1, 1)}, 3.0)["hada_w1_a"].item()
        3.0
    """
    with _located(where):
        return scale.scale_module(kind, roles, factor, out_dtype=out_dtype)


def _checked(kind: AdapterKind | str, roles: c.Roles) -> AdapterKind:
    try:
        expected = AdapterKind(kind)
    except ValueError:
        names = [k.value for k in AdapterKind]
        raise AdapterError(f"unknown adapter kind {kind!r}; expected one of {names}") from None
    found = kind_of_roles(roles)
    if found is not expected:
        raise AdapterError(f"module roles {sorted(roles)} are a {found} module, not {expected}")
    return expected


def _base(kind: AdapterKind, base_weight: torch.Tensor | None) -> torch.Tensor:
    if base_weight is None:
        formula = "W0 ⊙ w" if kind is AdapterKind.IA3 else "(W0 + s·U·D)·m/||W0 + s·U·D|| − W0"
        raise AdapterError(f"{kind} ΔW = {formula} needs the base model weight W0 (base_weight)")
    return base_weight


@contextmanager
def _located(where: str | None) -> Iterator[None]:
    try:
        yield
    except AdapterError as error:
        if where is None or error.where is not None:
            raise
        raise AdapterError(error.message, where=where, position=error.position) from None
