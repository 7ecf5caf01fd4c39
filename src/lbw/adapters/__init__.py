"""Pure tensor math per adapter kind: ΔW, fast Frobenius norms, factor scaling, rank concat, SVD.

``lbw.adapters.kinds`` is standard-library only; the torch-based functions below are loaded on first use, so
importing ``lbw.adapters.kinds`` (or this package) does not import torch. See docs/adapters.md.

Example:
    >>> from lbw.adapters import AdapterKind, kind_of_roles
    >>> kind_of_roles({"diff"}) is AdapterKind.FULL
    True
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lbw.adapters.kinds import (
    BIAS_ROLE,
    FACTOR_ROLE,
    NEEDS_BASE,
    AdapterKind,
    alpha_scale,
    kind_of_roles,
    rank_of,
    scaled_roles,
)

_LAZY = {
    "delta": "registry",
    "frobenius_norm": "registry",
    "frobenius_norms": "lora",
    "dense_frobenius_norm": "registry",
    "bias_delta": "registry",
    "scale_module": "registry",
    "scale_balanced": "scale",
    "scale_tensor": "scale",
    "concat_rank": "concat",
    "compress": "svd",
    "compress_lora": "svd",
    "dora_to_full": "dora",
}

__all__ = [
    "BIAS_ROLE",
    "FACTOR_ROLE",
    "NEEDS_BASE",
    "AdapterKind",
    "alpha_scale",
    "bias_delta",
    "compress",
    "compress_lora",
    "concat_rank",
    "delta",
    "dense_frobenius_norm",
    "dora_to_full",
    "frobenius_norm",
    "frobenius_norms",
    "kind_of_roles",
    "rank_of",
    "scale_balanced",
    "scale_module",
    "scale_tensor",
    "scaled_roles",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lbw.adapters' has no attribute {name!r}")
    return getattr(import_module(f"lbw.adapters.{module}"), name)
