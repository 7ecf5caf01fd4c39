"""The ``--rank`` path of ``lbw merge``: truncated SVD where a merged module's rank would exceed the limit, with
the relative Frobenius error tallied per block and overall. Nothing is clamped.

- ``rank_limit``: ``conv_rank`` for k×k convs (and LoCon Tucker), else ``rank``; None without ``--rank``.
- ``compress_to_limit``: a LoRA module (carried or rank-joined) compressed when its rank exceeds the limit.
- ``compress_dense``: modules with no exact factor form (LoHa, LoKr, DoRA, mixed kinds) summed densely, then
  compressed.
- ``Tally`` and ``block_errors``: per block sqrt(Σ||ΔW − ΔW_r||²) / sqrt(Σ||ΔW||²), in layout order.

Example:
    >>> tally = Tally()
    >>> roles = compress_to_limit(joined, 16, "IN04", tally)
    >>> roles["lora_down"].shape[0], block_errors(tally)[0][0].block
    (16, 'IN04')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind
from lbw.errors import AdapterError
from lbw.files.modules import Module

if TYPE_CHECKING:
    import torch

    from lbw.services.base_weights import BaseWeights
    from lbw.services.merge import MergeOptions
    from lbw.services.merge_join import Reader
    from lbw.services.sources import OpenSource

# Names of k×k (3×3) convs in kohya files, to give a flattened conv LoHa/LoKr its kernel back.
_CONV3 = re.compile(r"(_conv1|_conv2|_conv|_op|_in_layers_2|_out_layers_3|conv_in|conv_out)$")


@dataclass(frozen=True)
class BlockError:
    """Relative Frobenius error of a block after compression: sqrt(Σ||ΔW − ΔW_r||²) / sqrt(Σ||ΔW||²)."""

    block: str
    modules: int
    compressed: int
    error: float


@dataclass
class Tally:
    """Squared error and squared norm per block, for the compression report."""

    error_sq: dict[str, float] = field(default_factory=dict)
    norm_sq: dict[str, float] = field(default_factory=dict)
    modules: dict[str, int] = field(default_factory=dict)
    compressed: dict[str, int] = field(default_factory=dict)

    def add(self, block: str, norm: float, error: float, compressed: bool) -> None:
        self.error_sq[block] = self.error_sq.get(block, 0.0) + (error * norm) ** 2
        self.norm_sq[block] = self.norm_sq.get(block, 0.0) + norm**2
        self.modules[block] = self.modules.get(block, 0) + 1
        self.compressed[block] = self.compressed.get(block, 0) + int(compressed)


def rank_limit(module: Module, options: MergeOptions) -> int | None:
    """The rank a merged module may keep: ``conv_rank`` (when given) for k×k convs, else ``rank``; None without
    ``rank`` (exact mode).

    Example:
        >>> rank_limit(conv3x3_module, MergeOptions(rank=16, conv_rank=8)), rank_limit(module, MergeOptions())
        (8, None)
    """
    if options.rank is None:
        return None
    kernel = module.shapes.get("lora_down", ())
    is_kxk = (len(kernel) == 4 and tuple(kernel[2:]) != (1, 1)) or "lora_mid" in module.shapes \
        or bool(_CONV3.search(module.name))
    return options.conv_rank if is_kxk and options.conv_rank is not None else options.rank


def compress_to_limit(
    roles: dict[str, torch.Tensor], limit: int | None, block: str, tally: Tally
) -> dict[str, torch.Tensor]:
    """With a rank limit: the LoRA module compressed by SVD when its rank exceeds it (error tallied), else as
    is (its norm tallied).

    Example:
        >>> compress_to_limit(roles, 4, "OUT03", tally)["lora_down"].shape[0]  # rank 8 before
        4
    """
    if limit is None:
        return roles
    from lbw.adapters import compress_lora, frobenius_norm

    norm = frobenius_norm(AdapterKind.LORA, roles)
    if int(roles["lora_down"].shape[0]) > limit:
        roles, error = compress_lora(roles, limit)
        tally.add(block, norm, error, True)
    else:
        tally.add(block, norm, 0.0, False)
    return roles


def compress_dense(
    terms: list[tuple[OpenSource, Module]],
    rank: int,
    base: BaseWeights | None,
    read: Reader,
    block: str,
    tally: Tally,
) -> dict[str, torch.Tensor]:
    """The exact Σ c_i·ΔW_i of modules of any kinds, compressed by truncated SVD to a LoRA module of ``rank``
    (error tallied). DoRA and IA3 terms need the base weights.

    Example:
        >>> compress_dense([(a, loha_module), (b, lora_module)], 16, None, read, "IN04", tally)["lora_up"].shape
        torch.Size([320, 16])
    """
    from lbw.adapters.svd import compress

    delta = _dense_sum(terms, base, read)
    roles, error = compress(delta, rank)
    tally.add(block, float(delta.norm()), error, True)
    return roles


def block_errors(tally: Tally) -> tuple[tuple[BlockError, ...], float]:
    """The per-block errors (in SD/Flux layout order, unmapped last) and the overall error of a tally.

    Example:
        >>> block_errors(Tally())
        ((), 0.0)
    """
    from lbw.domain.layouts import FLUX61, SD26

    position = {block: index for index, block in enumerate((*SD26.ids, *FLUX61.ids))}
    blocks = []
    for block in sorted(tally.norm_sq, key=lambda b: position.get(b, len(position))):
        norm_sq = tally.norm_sq[block]
        error = math.sqrt(tally.error_sq[block] / norm_sq) if norm_sq > 0 else 0.0
        blocks.append(BlockError(block, tally.modules[block], tally.compressed[block], error))
    total = sum(tally.norm_sq.values())
    overall = math.sqrt(sum(tally.error_sq.values()) / total) if total > 0 else 0.0
    return tuple(blocks), overall


def _dense_sum(terms: list[tuple[OpenSource, Module]], base: BaseWeights | None, read: Reader) -> torch.Tensor:
    """Σ c_i·ΔW_i as a dense float32 tensor, [out, in, kh, kw] for conv layers."""
    from lbw.adapters import delta, dora_to_full

    values = []
    for source, module in terms:
        roles = read(source, module)
        if module.kind is AdapterKind.DORA:
            weight = _need_base(module, base, source.lora.architecture)
            term = dora_to_full(roles, weight, source.plan.ratio(module), strength=source.plan.multiplier(module))
            values.append(term["diff"].float())
        else:
            weight = _need_base(module, base, source.lora.architecture) if module.kind is AdapterKind.IA3 else None
            values.append(source.plan.factor(module)
                          * delta(module.kind, roles, base_weight=weight, where=module.name).float())
    shape = next((tuple(v.shape) for v in values if v.dim() == 4), None) or _kernel_hint(terms[0][1], values[0])
    total = values[0].reshape(shape)
    for value in values[1:]:
        if value.numel() != total.numel():
            raise AdapterError(f"inputs disagree on the layer size ({list(value.shape)} vs {list(total.shape)})",
                               where=terms[0][1].name)
        total = total + value.reshape(shape)
    return total


def _kernel_hint(module: Module, value: torch.Tensor) -> tuple[int, ...]:
    """A flattened conv ΔW ([out, in·3·3] from LoHa/LoKr) gets its 3×3 kernel back when the module name is a
    kohya k×k conv (conv1, conv2, downsampler/upsampler conv, in_layers_2, out_layers_3); otherwise as is."""
    if value.dim() == 2 and _CONV3.search(module.name) and value.shape[1] % 9 == 0:
        return (value.shape[0], value.shape[1] // 9, 3, 3)
    return tuple(value.shape)


def _need_base(module: Module, base: BaseWeights | None, architecture: str) -> torch.Tensor:
    if base is None:
        raise AdapterError(f"{module.kind} ΔW depends on the base weight W0: pass --model CKPT", where=module.name)
    return base.weight(module, architecture)
