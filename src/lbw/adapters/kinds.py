"""Adapter kinds, their tensor roles, and the rank and alpha/rank scale rules (standard library only).

Roles are the kohya/LyCORIS tensor suffixes without ``.weight`` (see docs/architecture.md). Everything here
works on role names and shapes only, so the files layer can use it on a safetensors header without loading a
tensor and without importing torch.

Example:
    >>> kind_of_roles({"lora_up", "lora_down", "alpha"})
    <AdapterKind.LORA: 'lora'>
    >>> alpha_scale({"lora_up": (320, 8), "lora_down": (8, 320), "alpha": ()}, alpha=4.0)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

from lbw.errors import AdapterError


class AdapterKind(StrEnum):
    """The adapter algorithms lbw computes ΔW for."""

    LORA = "lora"
    DORA = "dora"
    LOHA = "loha"
    LOKR = "lokr"
    IA3 = "ia3"
    FULL = "full"
    NORM = "norm"


# Roles that may appear for each kind (required ones are checked by kind_of_roles).
ROLES: Mapping[AdapterKind, frozenset[str]] = {
    AdapterKind.LORA: frozenset({"lora_up", "lora_down", "lora_mid", "alpha"}),
    AdapterKind.DORA: frozenset({"lora_up", "lora_down", "lora_mid", "alpha", "dora_scale"}),
    AdapterKind.LOHA: frozenset(
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"}
    ),
    AdapterKind.LOKR: frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"}
    ),
    AdapterKind.IA3: frozenset({"weight", "on_input"}),
    AdapterKind.FULL: frozenset({"diff", "diff_b"}),
    AdapterKind.NORM: frozenset({"w_norm", "b_norm"}),
}

# The one factor LBW multiplies by the block ratio (A1111 LBW); LoKr uses lokr_w1_a when lokr_w1 is absent.
FACTOR_ROLE: Mapping[AdapterKind, str] = {
    AdapterKind.LORA: "lora_up",
    AdapterKind.DORA: "lora_up",
    AdapterKind.LOHA: "hada_w1_a",
    AdapterKind.LOKR: "lokr_w1",
    AdapterKind.IA3: "weight",
    AdapterKind.FULL: "diff",
    AdapterKind.NORM: "w_norm",
}

# Bias deltas scale together with the factor so the whole module delta stays linear in the ratio.
BIAS_ROLE: Mapping[AdapterKind, str] = {AdapterKind.FULL: "diff_b", AdapterKind.NORM: "b_norm"}

# Kinds whose ΔW depends on the base weight W0 (IA3: W0 ⊙ w; DoRA: weight decomposition).
NEEDS_BASE: frozenset[AdapterKind] = frozenset({AdapterKind.IA3, AdapterKind.DORA})

Shapes = Mapping[str, Sequence[int]]


def kind_of_roles(roles: Iterable[str]) -> AdapterKind:
    """Classify a module by its role names; raise AdapterError for unknown or incomplete sets.

    Example:
        >>> kind_of_roles(["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"])
        <AdapterKind.LOHA: 'loha'>
    """
    names = set(roles)
    if names & {"lora_up", "lora_down", "lora_mid"}:
        kind = AdapterKind.DORA if "dora_scale" in names else AdapterKind.LORA
        _require(kind, names, ("lora_up", "lora_down"))
    elif any(name.startswith("hada_") for name in names):
        kind = AdapterKind.LOHA
        _require(kind, names, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        if ("hada_t1" in names) != ("hada_t2" in names):
            raise AdapterError("loha module has only one of hada_t1/hada_t2; Tucker LoHa needs both")
    elif any(name.startswith("lokr_") for name in names):
        kind = AdapterKind.LOKR
        _require_one_of(names, "lokr_w1", ("lokr_w1_a", "lokr_w1_b"))
        _require_one_of(names, "lokr_w2", ("lokr_w2_a", "lokr_w2_b"))
        if "lokr_t2" in names and "lokr_w2" in names:
            raise AdapterError("lokr module has lokr_t2 with a full lokr_w2; lokr_t2 goes with lokr_w2_a/_b")
    elif "weight" in names:
        kind = AdapterKind.IA3
    elif "diff" in names:
        kind = AdapterKind.FULL
    elif "w_norm" in names:
        kind = AdapterKind.NORM
    elif "dora_scale" in names:
        raise AdapterError("module has dora_scale but no lora_up/lora_down; DoRA is supported on LoRA only")
    else:
        raise AdapterError(f"unknown adapter roles {sorted(names)}; expected lora_up/lora_down, hada_*, "
                           "lokr_*, weight (IA3), diff (full) or w_norm (norm)")
    unknown = names - ROLES[kind]
    if unknown:
        extra = " (DoRA is supported on LoRA only)" if "dora_scale" in unknown else ""
        raise AdapterError(f"{kind} module has unexpected roles {sorted(unknown)}{extra}")
    return kind


def scaled_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """The roles LBW multiplies by the block ratio for this module (the factor, plus a bias delta).

    Example:
        >>> scaled_roles(["lokr_w1_a", "lokr_w1_b", "lokr_w2"])
        ('lokr_w1_a',)
        >>> scaled_roles(["diff", "diff_b"])
        ('diff', 'diff_b')
    """
    names = set(roles)
    kind = kind_of_roles(names)
    factor = FACTOR_ROLE[kind]
    if kind is AdapterKind.LOKR and factor not in names:
        factor = "lokr_w1_a"
    bias = BIAS_ROLE.get(kind)
    return (factor, bias) if bias in names else (factor,)


def rank_of(shapes: Shapes) -> int | None:
    """The rank r used in the alpha/r scale, from role shapes; None where the kind has no rank.

    lora/dora: rows of lora_down (A1111 and ComfyUI); loha: rows of hada_w1_b; lokr: rows of lokr_w1_b,
    else of lokr_w2_b, else None (both factors full); ia3/full/norm: None.

    Example:
        >>> rank_of({"hada_w1_a": (64, 4), "hada_w1_b": (4, 32), "hada_w2_a": (64, 4), "hada_w2_b": (4, 32)})
        4
    """
    kind = kind_of_roles(shapes)
    if kind in (AdapterKind.LORA, AdapterKind.DORA):
        return _rows(shapes, "lora_down")
    if kind is AdapterKind.LOHA:
        return _rows(shapes, "hada_w1_b")
    if kind is AdapterKind.LOKR:
        for role in ("lokr_w1_b", "lokr_w2_b"):
            if role in shapes:
                return _rows(shapes, role)
    return None


def alpha_scale(shapes: Shapes, alpha: float | None) -> float:
    """The scale s applied to the factor product: alpha/rank, or 1 when alpha is missing or there is no rank.

    A stored alpha is taken literally (an alpha of 0 gives scale 0, as A1111 does). LoKr with both factors
    full has scale 1 whatever alpha says.

    Example:
        >>> alpha_scale({"lokr_w1": (4, 4), "lokr_w2": (80, 80), "alpha": ()}, alpha=8.0)
        1.0
    """
    rank = rank_of(shapes)
    if rank is None or alpha is None:
        return 1.0
    if not math.isfinite(alpha):
        raise AdapterError(f"alpha must be a finite number, found {alpha}")
    return alpha / rank


def _rows(shapes: Shapes, role: str) -> int:
    shape = shapes[role]
    if len(shape) < 2 or shape[0] < 1:
        raise AdapterError(f"{role} must have 2 or more dimensions and a positive rank, found {list(shape)}")
    return int(shape[0])


def _require(kind: AdapterKind, names: set[str], required: Sequence[str]) -> None:
    missing = [role for role in required if role not in names]
    if missing:
        raise AdapterError(f"{kind} module is missing role {', '.join(missing)} (has {sorted(names)})")


def _require_one_of(names: set[str], full: str, pair: tuple[str, str]) -> None:
    has_pair = [role in names for role in pair]
    if full in names and any(has_pair):
        raise AdapterError(f"lokr module has both {full} and {'/'.join(pair)}; expected one form")
    if full not in names and not all(has_pair):
        missing = [role for role, present in zip(pair, has_pair, strict=True) if not present]
        needs = f"{full} or {' + '.join(pair)}"
        raise AdapterError(f"lokr module is missing role {', '.join(missing)} (needs {needs})")
