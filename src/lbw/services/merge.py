"""``lbw merge``: several LoRAs, each with its strength and block weights, into one LoRA whose ΔW is exactly
Σ c_i·ΔW_i (c_i = block ratio × strength, resolved per file as LBW does).

Exact mode (no ``rank``), per module name:
- one source holds it: carried over with one factor scaled (as ``bake`` does; alpha and rank kept); a module
  no host loads is carried as it is (never compressed either), several of them are joined at factor 1;
- several LoRA/LoCon sources: joined along the rank (each c_i·α_i/r_i folded into its up factor, alpha =
  total rank, scale 1), different ranks and alphas fine;
- several full-diff, norm or IA3 sources (same ``on_input``): their linear parameters summed, exact;
- LoHa, LoKr, DoRA or mixed kinds in several sources: refused (no exact factor form), unless ``rank``.
With ``rank`` (``conv_rank`` for k×k convs, default ``rank``), each merged module whose rank would exceed it is
compressed by truncated SVD of the exact sum, and the relative Frobenius error is reported per block and
overall; nothing is clamped. Modules with a bias delta or 1-D norms stay exact.

Example:
    >>> sources = [open_source(s, Defaults()) for s in split_specs(["a.safetensors:0.8:OUTALL", "b.safetensors"])]
    >>> report = merge(sources, "ab.safetensors")
    >>> report.joined, report.overall_error
    (264, 0.0)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind
from lbw.domain.numbers import format_number
from lbw.errors import AdapterError, LoraFileError, OutputError
from lbw.files.modules import Module, natural_key
from lbw.files.peft_config import ADAPTER_METADATA_KEY
from lbw.services.bake import (
    HASH_KEYS,
    INFERENCE_WEIGHT_KEYS,
    MERGED_FROM_KEY,
    bulk_mode,
    check_destination,
    check_finite,
    check_scaled,
    dim_alpha_text,
    key_for_role,
    output_lock,
    output_stem,
    refuse_unsupported,
    source_title,
    torch_dtype,
)
from lbw.services.sources import OpenSource

if TYPE_CHECKING:
    import torch

    from lbw.files.writer import WrittenFile
    from lbw.services.base_weights import BaseWeights

Progress = Callable[[int, int], None]
MERGE_SOURCES_KEY = "lbw_merge_sources"
MERGE_RANK_KEY = "lbw_merge_rank"
# Names of k×k (3×3) convs in kohya files, to give a flattened conv LoHa/LoKr its kernel back.
_CONV3 = re.compile(r"(_conv1|_conv2|_conv|_op|_in_layers_2|_out_layers_3|conv_in|conv_out)$")


@dataclass(frozen=True)
class MergeOptions:
    """How to merge: SVD rank limits, base model (DoRA/IA3 with rank), output dtype, overwrite."""

    rank: int | None = None
    conv_rank: int | None = None
    model: Path | None = None
    dtype: str | None = None
    force: bool = False


@dataclass(frozen=True)
class BlockError:
    """Relative Frobenius error of a block after compression: sqrt(Σ||ΔW − ΔW_r||²) / sqrt(Σ||ΔW||²)."""

    block: str
    modules: int
    compressed: int
    error: float


@dataclass(frozen=True)
class MergeReport:
    """What a merge did: counts, the per-block and overall compression error, the written file."""

    modules_out: int
    joined: int
    carried: int
    summed: int
    compressed: int
    blocks: tuple[BlockError, ...]
    overall_error: float
    written: WrittenFile
    metadata: dict[str, str] = field(repr=False)


@dataclass
class _Tally:
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


def merge(
    sources: Sequence[OpenSource],
    dest: str | os.PathLike[str],
    *,
    options: MergeOptions | None = None,
    progress: Progress | None = None,
) -> MergeReport:
    """Merge resolved sources into ``dest`` (see the module docstring); written atomically with fresh hashes.

    Example:
        >>> merge(sources, "ab.safetensors", options=MergeOptions(rank=16)).overall_error < 0.1
        True
    """
    options = options or MergeOptions()
    if not sources:
        raise OutputError("merge needs at least one input LoRA")
    dest = Path(dest)
    check_destination(dest, [s.lora.path for s in sources], force=options.force)
    with output_lock(dest, force=options.force):
        return _merge_locked(sources, dest, options, progress)


def _merge_locked(
    sources: Sequence[OpenSource], dest: Path, options: MergeOptions, progress: Progress | None
) -> MergeReport:
    from lbw.files.lora_file import with_config_alpha
    from lbw.files.mapped import MappedTensors
    from lbw.files.writer import save_lora

    check_destination(dest, [s.lora.path for s in sources], force=options.force)  # again, under the lock
    for source in sources:
        refuse_unsupported(source.lora)
    _check_architectures(sources)
    out_dtype = torch_dtype(options.dtype)
    base = _open_base(options)
    names = sorted({m.name for s in sources for m in s.lora.modules}, key=natural_key)
    tensors: dict[str, torch.Tensor] = {}
    counts = {"joined": 0, "carried": 0, "summed": 0}
    tally = _Tally()
    # Zero-copy reads: unchanged factors are written from the page cache; each source is hashed from its map.
    mapped = [MappedTensors(source.lora.header) for source in sources]
    by_source = {id(source): one for source, one in zip(sources, mapped, strict=True)}

    def read(source: OpenSource, module: Module) -> dict[str, torch.Tensor]:
        return with_config_alpha(module, by_source[id(source)].tensors(module.keys))

    pool = ThreadPoolExecutor(max_workers=1)  # hashlib releases the GIL: the sources hash alongside the merge
    hash_jobs = [pool.submit(one.data_sha256) for one in mapped]
    ranks: set[int] = set()
    alphas: set[float | None] = set()
    try:
        with bulk_mode(single_thread=options.rank is None):
            for done, name in enumerate(names, start=1):
                terms = _terms(sources, name)
                if terms:
                    how, roles, first = _merge_module(terms, options, base, tally, read)
                    counts[how] += 1
                    tensors.update(_output_tensors(first, roles, out_dtype))
                    if "lora_down" in roles:
                        rank = int(roles["lora_down"].shape[0])
                        ranks.add(rank)
                        alphas.add(float(roles["alpha"]) if "alpha" in roles else float(rank))
                if progress is not None:
                    progress(done, len(names))
            if not tensors:
                raise OutputError("every module is at weight 0; nothing to write", where=str(dest))
            dim_alpha = dim_alpha_text(ranks, alphas)

            def metadata_with(hashes: Sequence[str]) -> dict[str, str]:
                return merged_metadata(sources, hashes, dest, options, dim_alpha)

            # The source hashes may still be running: the header is written with placeholders of their length and
            # completed once the data are out.
            written = save_lora(tensors, metadata_with(["0" * 64] * len(sources)), dest, force=options.force,
                                final_metadata=lambda: metadata_with([job.result() for job in hash_jobs]))
            metadata = metadata_with([job.result() for job in hash_jobs])
    finally:
        if base is not None:
            base.close()
        for one in mapped:
            one.close()
        pool.shutdown(cancel_futures=True)
    blocks, overall = _errors(tally)
    modules_out = sum(counts.values())
    return MergeReport(modules_out, counts["joined"], counts["carried"], counts["summed"],
                       sum(tally.compressed.values()), blocks, overall, written, metadata)


# Reads a module's role tensors from its source.
Reader = Callable[[OpenSource, Module], "dict[str, torch.Tensor]"]


def _terms(sources: Sequence[OpenSource], name: str) -> list[tuple[OpenSource, Module]]:
    terms = []
    for source in sources:
        try:
            module = source.lora.module(name)
        except LoraFileError:  # not in this file
            continue
        zero = source.plan.multiplier(module) == 0 if module.kind is AdapterKind.DORA else \
            source.plan.factor(module) == 0
        if not zero:
            terms.append((source, module))
    return terms


def _merge_module(
    terms: list[tuple[OpenSource, Module]],
    options: MergeOptions,
    base: BaseWeights | None,
    tally: _Tally,
    read: Reader,
) -> tuple[str, dict[str, torch.Tensor], Module]:
    """(how, roles, reference module) for one module name. Scaled and joined factors come back computed in
    float32 and rounded once to the output dtype; the other roles as read."""
    from lbw.adapters.concat import concat_rank
    from lbw.adapters.registry import scale_module
    from lbw.adapters.svd import compress

    first = terms[0][1]
    kinds = {module.kind for _, module in terms}
    block = first.block or "unmapped"
    limit = _rank_limit(first, options)
    out_dtype = torch_dtype(options.dtype)
    if len(terms) == 1 and (first.kind is not AdapterKind.DORA or _is_identity(terms[0])):
        source = terms[0][0]
        roles = read(source, first)
        factor = source.plan.factor(first)
        roles, factor = _fold_config_alpha(first, roles, factor, out_dtype)
        if factor != 1.0 and first.kind is not AdapterKind.DORA:
            scaled = scale_module(first.kind, roles, factor, out_dtype=out_dtype or "input", where=first.name)
            check_scaled(scaled, roles, factor, first)
            roles = scaled
        if first.kind is AdapterKind.LORA and not source.plan.untouched(first):  # no host loads it: kept as is
            roles = _compress(roles, limit, block, tally)
        return "carried", roles, first
    if kinds == {AdapterKind.LORA}:
        items = [(read(s, m), s.plan.factor(m)) for s, m in terms]
        if limit is not None and not _all_plain_in(items, out_dtype):
            joined = concat_rank(items)  # compressed from the float32 sum (see _all_plain_in)
        else:
            target = out_dtype or _dtype_for(first, "lora_up")
            joined = concat_rank(items, out_dtype=target)
            _check_joined(joined, items, target, first)
        return "joined", _compress(joined, limit, block, tally), first
    if len(kinds) == 1 and first.kind in (AdapterKind.FULL, AdapterKind.NORM, AdapterKind.IA3) \
            and (options.rank is None or first.kind is not AdapterKind.FULL or _has_bias(terms)):
        return "summed", _sum_linear(terms, read), first
    if options.rank is None:
        shown = ", ".join(sorted(k.value for k in kinds))
        raise AdapterError(
            f"cannot merge {shown} modules exactly: only LoRA/LoCon modules join along the rank (and full, norm "
            "or IA3 modules of one kind sum); bake each file alone, or pass --rank N to compress the exact sum "
            "by SVD with the error reported", where=first.name)
    delta = _dense_sum(terms, base, read)
    roles, error = compress(delta, limit or options.rank)
    tally.add(block, float(delta.norm()), error, True)
    return "joined" if len(terms) > 1 else "carried", roles, first


def _fold_config_alpha(
    module: Module, roles: dict[str, torch.Tensor], factor: float, out_dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], float]:
    """(roles, factor) with an alpha that comes from a PEFT adapter config folded into the factor, so the module
    needs no alpha (scale 1): the merged file has no adapter config (joined modules have other ranks), and a
    PEFT file holds no alpha tensors. A DoRA module (never scaled by a factor) gets its up factor scaled here."""
    from lbw.adapters.kinds import alpha_scale
    from lbw.adapters.scale import scale_tensor

    if "alpha" in module.keys or "alpha" not in roles:
        return roles, factor
    scale = alpha_scale({role: tuple(t.shape) for role, t in roles.items()}, float(roles["alpha"]))
    plain = {role: tensor for role, tensor in roles.items() if role != "alpha"}
    if module.kind is not AdapterKind.DORA:
        return plain, factor * scale
    up = scale_tensor(plain["lora_up"], scale, out_dtype or "input")
    check_scaled({"lora_up": up}, plain, scale, module)
    return {**plain, "lora_up": up}, factor


def _compress(
    roles: dict[str, torch.Tensor], limit: int | None, block: str, tally: _Tally
) -> dict[str, torch.Tensor]:
    """With a rank limit: the LoRA module compressed by SVD when its rank exceeds it (error tallied), else as
    is (its norm tallied)."""
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


def _all_plain_in(items: Sequence[tuple[Mapping[str, torch.Tensor], float]], out_dtype: torch.dtype | None) -> bool:
    """Whether every joined module is plain (no ``lora_mid``), like-shaped, with its factors stored in the output
    dtype. Only then does ``--rank`` compress the joined factors as rounded to the output dtype; otherwise it
    compresses the float32 sum (the behaviour of lbw's first merge implementation, kept bit for bit)."""
    first_up, first_down = items[0][0]["lora_up"], items[0][0]["lora_down"]
    dtype = first_up.dtype
    if (out_dtype or dtype) != dtype or not dtype.is_floating_point:
        return False
    for roles, _ in items:
        up, down = roles["lora_up"], roles["lora_down"]
        if "lora_mid" in roles or up.dtype != dtype or down.dtype != dtype or down.dim() != first_down.dim():
            return False
        if up.dim() != first_up.dim() or up.shape[0] != first_up.shape[0] or down.shape[1:] != first_down.shape[1:]:
            return False
    return True


def _check_joined(
    joined: Mapping[str, torch.Tensor],
    items: Sequence[tuple[Mapping[str, torch.Tensor], float]],
    target: torch.dtype,
    module: Module,
) -> None:
    """Refuse joined factors that overflowed the output dtype: only possible for a factor above 1 (up) or a
    cast to a narrower dtype."""
    import torch

    limit = torch.finfo(target).max
    for role in ("lora_up", "lora_down"):
        narrowed = any(roles[role].is_floating_point() and torch.finfo(roles[role].dtype).max > limit
                       for roles, _ in items)
        scaled = role == "lora_up" and any(abs(factor) > 1 for _, factor in items)
        if narrowed or scaled:
            check_finite(joined[role], role, module)


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


def _sum_linear(terms: list[tuple[OpenSource, Module]], read: Reader) -> dict[str, torch.Tensor]:
    """Σ c_i·(linear parameters) for full, norm or IA3 modules of one kind (exact)."""
    from lbw.adapters import scale_module

    flags = set()
    total: dict[str, torch.Tensor] = {}
    for source, module in terms:
        scaled = scale_module(module.kind, read(source, module), source.plan.factor(module), where=module.name)
        if "on_input" in scaled:
            flags.add(float(scaled["on_input"]))
        for role, tensor in scaled.items():
            if role == "on_input":
                total[role] = tensor
            elif role in total:
                if total[role].shape != tensor.shape:
                    raise AdapterError(f"{role} shapes differ between inputs ({list(total[role].shape)} vs "
                                       f"{list(tensor.shape)})", where=module.name)
                total[role] = total[role] + tensor.float()
            else:
                total[role] = tensor.float()
    if len(flags) > 1:
        raise AdapterError("IA3 modules scale different axes (on_input differs); they cannot be summed",
                           where=terms[0][1].name)
    return total


def _rank_limit(module: Module, options: MergeOptions) -> int | None:
    if options.rank is None:
        return None
    kernel = module.shapes.get("lora_down", ())
    is_kxk = (len(kernel) == 4 and tuple(kernel[2:]) != (1, 1)) or "lora_mid" in module.shapes \
        or bool(_CONV3.search(module.name))
    return options.conv_rank if is_kxk and options.conv_rank is not None else options.rank


def _is_identity(term: tuple[OpenSource, Module]) -> bool:
    source, module = term
    return source.plan.ratio(module) == 1.0 and source.plan.multiplier(module) == 1.0


def _has_bias(terms: list[tuple[OpenSource, Module]]) -> bool:
    return any("diff_b" in module.shapes for _, module in terms)


def _need_base(module: Module, base: BaseWeights | None, architecture: str) -> torch.Tensor:
    if base is None:
        raise AdapterError(f"{module.kind} ΔW depends on the base weight W0: pass --model CKPT", where=module.name)
    return base.weight(module, architecture)


def _open_base(options: MergeOptions) -> BaseWeights | None:
    if options.model is None:
        return None
    from lbw.services.base_weights import BaseWeights

    return BaseWeights.open(options.model)


def _check_architectures(sources: Sequence[OpenSource]) -> None:
    found = {source.lora.architecture for source in sources}
    if len(found) > 1:
        listed = ", ".join(f"{s.spec.path.name}={s.lora.architecture}" for s in sources)
        raise AdapterError(f"inputs are for different models ({listed}); merge LoRAs of one architecture")


def _output_tensors(
    reference: Module, roles: dict[str, torch.Tensor], out_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Keys in the reference module's naming; a PEFT module with alpha = rank drops alpha (PEFT has none). Each
    floating tensor is cast once to the output dtype; a cast to a narrower dtype that overflows is refused."""
    import torch

    result = {}
    peft = reference.family == "peft"
    for role, tensor in roles.items():
        if role == "alpha" and peft and "lora_down" in roles and float(tensor) == roles["lora_down"].shape[0]:
            continue
        target = out_dtype or _dtype_for(reference, role)
        value = tensor
        if tensor.is_floating_point() and tensor.dtype != target:
            value = tensor.to(target)
            if torch.finfo(target).max < torch.finfo(tensor.dtype).max:
                check_finite(value, role, reference)
        result[key_for_role(reference, role)] = value.contiguous()
    return result


def _dtype_for(reference: Module, role: str) -> torch.dtype:
    import torch

    first = reference.dtype.split("+")[0]
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(first, torch.float32)


def merged_metadata(
    sources: Sequence[OpenSource],
    hashes: Sequence[str],
    dest: Path,
    options: MergeOptions,
    dim_alpha: tuple[str | None, str | None],
) -> dict[str, str]:
    """The first input's metadata with the merge recorded: output name, ``modelspec.merged_from``
    (``title(short hash)`` per input), ``lbw_merge_sources`` (JSON: file, sshs_model_hash, te, unet, weights),
    ``lbw_merge_rank``, and ``ss_network_dim``/``ss_network_alpha`` of the result (``Dynamic`` when mixed).

    Example:
        >>> json.loads(merged_metadata(sources, hashes, Path("ab.safetensors"), MergeOptions(), ("16", "16"))
        ...            ["lbw_merge_sources"])[0]["file"]
        'a.safetensors'
    """
    first = sources[0].lora.metadata
    metadata = {k: v for k, v in first.items()
                if k not in HASH_KEYS and k not in INFERENCE_WEIGHT_KEYS and not k.startswith("lbw_baked_")
                and k != ADAPTER_METADATA_KEY}  # PEFT alphas are folded into the factors: every scale is 1
    stem = output_stem(dest)
    metadata["ss_output_name"] = stem
    if "modelspec.title" in metadata:
        metadata["modelspec.title"] = stem
    metadata[MERGED_FROM_KEY] = ", ".join(f"{source_title(s.lora)}({h[:12]})"
                                          for s, h in zip(sources, hashes, strict=True))
    metadata[MERGE_SOURCES_KEY] = json.dumps([
        {"file": s.spec.path.name, "sshs_model_hash": h, "te": format_number(s.plan.te),
         "unet": format_number(s.plan.unet), "weights": s.plan.applied_text()}
        for s, h in zip(sources, hashes, strict=True)
    ], ensure_ascii=False)
    if options.rank is not None:
        metadata[MERGE_RANK_KEY] = str(options.rank) + (f"/{options.conv_rank}" if options.conv_rank else "")
    dim, alpha = dim_alpha
    if dim is not None:
        metadata["ss_network_dim"] = dim
        metadata["ss_network_alpha"] = alpha or "Dynamic"
    return metadata


def _errors(tally: _Tally) -> tuple[tuple[BlockError, ...], float]:
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
