"""What a merged module writes (keys, dtypes, shapes), known from the inputs' headers without merging it, for the
common exact cases: pass 1 of the streaming merge (``merge_stream``) uses it, so that such a module is merged
only once, in pass 2, as the writer reaches it.

Known in advance (without ``--rank``): a plain LoRA/LoCon module (no Tucker core) carried over from one input,
and plain LoRA/LoCon modules joined along the rank. Only where nothing can make the merge fail: the shapes pass
the checks the merge starts with (``lora.parts``, ``concat_rank``: up [out, r] or [out, r, 1, 1],
down [r, ...], one ΔW shape, finite factors and alphas), no factor above 1 and no cast to a narrower dtype
(where ``merge_join`` checks for an overflow), floating-point tensors only. For any other module ``predict``
returns None and the module is merged in pass 1 too. Pass 2 checks each merged module against the prediction.

Example:
    >>> predicted = predict(terms_of(sources, "lora_unet_mid_block_attentions_0_proj_in"), None)
    >>> predicted.how, predicted.rank, predicted.specs["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"]
    ('joined', 24, (torch.float16, (1280, 24, 1, 1)))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind, alpha_scale
from lbw.errors import LoraFileError
from lbw.files.mapped import TORCH_DTYPE_NAMES
from lbw.files.modules import Module
from lbw.services.sources import OpenSource
from lbw.services.tensor_output import key_for_role, reference_dtype

if TYPE_CHECKING:
    import torch

Spec = tuple["torch.dtype", tuple[int, ...]]
_FLOATS = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class Predicted:
    """How a module merges, the tensors it writes (key → (dtype, shape)), and its rank and alpha for
    ``ss_network_dim``/``ss_network_alpha``."""

    how: str
    specs: dict[str, Spec]
    rank: int
    alpha: float


def predict(terms: list[tuple[OpenSource, Module]], out_dtype: torch.dtype | None) -> Predicted | None:
    """The tensors the module of ``terms`` writes when merged without ``--rank``, or None when only merging it
    tells (see the module docstring). Reads no tensor (the alpha scalars come from ``Module.stored_alpha``).

    Example:
        >>> predict(terms_of(sources, "lora_te_text_model_encoder_layers_0_mlp_fc1"), None).how
        'carried'
    """
    if not terms:
        return None
    for source, module in terms:
        if module.kind is not AdapterKind.LORA or not _plain(module, source):
            return None
        if not math.isfinite(source.plan.factor(module)):
            return None
    alphas = []
    for _, module in terms:
        if "alpha" not in module.keys:  # a config alpha is read as a float32 tensor (``with_config_alpha``)
            alphas.append(_float32(module.config_alpha))
            continue
        try:
            alphas.append(module.stored_alpha)
        except (LoraFileError, KeyError):  # not a finite number: the merge says what is wrong
            return None
    if any(alpha is not None and not math.isfinite(alpha) for alpha in alphas):
        return None
    if len(terms) == 1:
        return _carried(terms[0], alphas[0], out_dtype)
    return _joined(terms, out_dtype)


def _carried(term: tuple[OpenSource, Module], alpha: float | None, out_dtype: torch.dtype | None) -> Predicted | None:
    """``merge_join``'s carried branch: the factor (with a PEFT config alpha folded in) scales one tensor, the
    shapes are kept, and a config alpha is not written."""
    source, module = term
    factor = source.plan.factor(module)
    if "alpha" not in module.keys and alpha is not None:  # fold_config_alpha, on the float32 alpha it reads
        factor *= alpha_scale({**module.shapes, "alpha": ()}, alpha)
        alpha = None
    if not math.isfinite(factor) or abs(factor) > 1:
        return None  # a factor above 1 is checked for an overflow
    if any(_narrower(out_dtype or reference_dtype(module, role), _stored(source, key))
           for role, key in module.keys.items()):
        return None  # so is a cast to a narrower dtype
    rank = int(module.shapes["lora_down"][0])
    written = {role: tuple(module.shapes[role]) for role in module.keys}
    specs = _output_specs(module, written, out_dtype, alpha, rank)
    return Predicted("carried", specs, rank, alpha if alpha is not None else float(rank))


def _joined(terms: list[tuple[OpenSource, Module]], out_dtype: torch.dtype | None) -> Predicted | None:
    """``concat_rank`` of plain modules: up [out, Σr] (conv: [out, Σr, 1, 1]), down [Σr, ...] stacked,
    alpha = Σr, all in the output dtype."""
    import torch

    first = terms[0][1]
    ups = [module.shapes["lora_up"] for _, module in terms]
    downs = [module.shapes["lora_down"] for _, module in terms]
    if len({(up[0], *down[1:]) for up, down in zip(ups, downs, strict=True)}) != 1:
        return None  # ΔW shapes differ: refused by the merge
    if any(abs(source.plan.factor(module)) > 1 for source, module in terms):
        return None  # the joined up factor is checked for an overflow
    target = out_dtype or reference_dtype(first, "lora_up")
    if any(_narrower(target, _stored(source, module.keys[role]))
           for source, module in terms for role in ("lora_up", "lora_down")):
        return None  # a narrowing cast is checked for an overflow
    rank = sum(int(down[0]) for down in downs)
    conv = any(len(up) == 4 or len(down) == 4 for up, down in zip(ups, downs, strict=True))
    written = {"lora_up": (ups[0][0], rank, 1, 1) if conv else (ups[0][0], rank),
               "lora_down": (rank, *downs[0][1:]), "alpha": ()}
    alpha = float(torch.tensor(float(rank), dtype=target))
    return Predicted("joined", _output_specs(first, written, out_dtype, alpha, rank), rank, alpha)


def _output_specs(
    module: Module, written: Mapping[str, tuple[int, ...]], out_dtype: torch.dtype | None, alpha: float | None,
    rank: int,
) -> dict[str, Spec]:
    """``merged_tensors`` on shapes: keys in the module's naming, each in the output dtype; a PEFT module whose
    alpha equals its rank writes no alpha."""
    specs = {}
    for role, shape in written.items():
        if role == "alpha" and module.family == "peft" and alpha == rank:
            continue
        specs[key_for_role(module, role)] = (out_dtype or reference_dtype(module, role), tuple(shape))
    return specs


def _plain(module: Module, source: OpenSource) -> bool:
    """The checks ``lora.parts`` starts with, on the header: up [out, r] or [out, r, 1, 1], down [r, ...] of
    2 or more dimensions, r ≥ 1, alpha one number; no Tucker core; every tensor a float."""
    if set(module.keys) - {"lora_up", "lora_down", "alpha"}:
        return False
    up, down = module.shapes["lora_up"], module.shapes["lora_down"]
    if len(up) not in (2, 4) or (len(up) == 4 and tuple(up[2:]) != (1, 1)):
        return False
    if len(down) < 2 or down[0] < 1 or up[1] != down[0]:
        return False
    if "alpha" in module.shapes and math.prod(module.shapes["alpha"]) != 1:
        return False
    return all(source.lora.header.tensors[key].dtype in _FLOATS for key in module.keys.values())


def _float32(value: float | None) -> float | None:
    import torch

    return None if value is None else float(torch.tensor(value, dtype=torch.float32))


def _stored(source: OpenSource, key: str) -> torch.dtype:
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[source.lora.header.tensors[key].dtype])


def _narrower(target: torch.dtype, dtype: torch.dtype) -> bool:
    import torch

    return torch.finfo(target).max < torch.finfo(dtype).max
