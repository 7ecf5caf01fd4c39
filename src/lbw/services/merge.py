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

This module runs the merge (lock, the two passes, atomic write): pass 1 records what every module name writes
(merging it where that is not known in advance), pass 2 merges each module as the writer reaches it, so only a
few modules are in memory at once (``merge_stream``, ``merge_specs``). One module name is merged by
``merge_join.merge_module``, compression lives in ``merge_compress``, key naming and casts in ``tensor_output``,
metadata in ``bake_metadata``, destination checks in ``outputs``.

Example:
    >>> sources = [open_source(s, Defaults()) for s in split_specs(["a.safetensors:0.8:OUTALL", "b.safetensors"])]
    >>> report = merge(sources, "ab.safetensors")
    >>> report.joined, report.overall_error
    (264, 0.0)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lbw.errors import AdapterError, OutputError
from lbw.files.modules import Module, natural_key
from lbw.services.bake_metadata import dim_alpha_text, merged_metadata
from lbw.services.bulk import bulk_mode
from lbw.services.merge_compress import BlockError, block_errors
from lbw.services.merge_stream import MergeStream
from lbw.services.outputs import check_destination, output_lock, refuse_unsupported, torch_dtype
from lbw.services.sources import OpenSource

if TYPE_CHECKING:
    import torch

    from lbw.files.writer import WrittenFile
    from lbw.services.base_weights import BaseWeights

# A hook called as the merge goes: (steps done, steps in total); each module name is a step of pass 1 and of pass 2.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MergeOptions:
    """How to merge: SVD rank limits, base model (DoRA/IA3 with rank), output dtype, overwrite."""

    rank: int | None = None
    conv_rank: int | None = None
    model: Path | None = None
    dtype: str | None = None
    force: bool = False


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
    base = _open_base(options)
    names = sorted({m.name for s in sources for m in s.lora.modules}, key=natural_key)
    counts = {"joined": 0, "carried": 0, "summed": 0}
    # Zero-copy reads: unchanged factors are written from the page cache; each source is hashed from its map.
    mapped = [MappedTensors(source.lora.header) for source in sources]
    by_source = {id(source): one for source, one in zip(sources, mapped, strict=True)}

    def read(source: OpenSource, module: Module) -> dict[str, torch.Tensor]:
        return with_config_alpha(module, by_source[id(source)].tensors(module.keys))

    def written(done: int) -> None:  # pass 2 (``done`` modules of those written), as the second half of the steps
        if progress is not None:
            progress(len(names) + round(done * len(names) / max(sum(counts.values()), 1)), 2 * len(names))

    stream = MergeStream(sources, options, base, read, torch_dtype(options.dtype), written)
    pool = ThreadPoolExecutor(max_workers=1)  # hashlib releases the GIL: the sources hash alongside the merge
    hash_jobs = [pool.submit(one.data_sha256) for one in mapped]
    ranks: set[int] = set()
    alphas: set[float | None] = set()
    try:
        with bulk_mode(single_thread=options.rank is None):
            for done, name in enumerate(names, start=1):  # pass 1: what every module writes
                planned = stream.plan(name)
                if planned is not None:
                    how, rank, alpha = planned
                    counts[how] += 1
                    if rank is not None:
                        ranks.add(rank)
                        alphas.add(alpha)
                if progress is not None:
                    progress(done, 2 * len(names))
            if not stream.specs:
                raise OutputError("every module is at weight 0; nothing to write", where=str(dest))
            dim_alpha = dim_alpha_text(ranks, alphas)

            def metadata_with(hashes: Sequence[str]) -> dict[str, str]:
                return merged_metadata(sources, hashes, dest, options, dim_alpha)

            # Pass 2: the modules merged as the writer reaches them. The source hashes may still be running:
            # the header is written with placeholders of their length and completed once the data are out.
            written_file = save_lora(stream.lazy(), metadata_with(["0" * 64] * len(sources)), dest,
                                     force=options.force,
                                     final_metadata=lambda: metadata_with([job.result() for job in hash_jobs]))
            metadata = metadata_with([job.result() for job in hash_jobs])
    finally:
        # The pool first: a hash job still running reads the maps, so they are closed only once it is over.
        pool.shutdown(wait=True, cancel_futures=True)
        if base is not None:
            base.close()
        for one in mapped:
            one.close()
    tally = stream.tally
    blocks, overall = block_errors(tally)
    modules_out = sum(counts.values())
    return MergeReport(modules_out, counts["joined"], counts["carried"], counts["summed"],
                       sum(tally.compressed.values()), blocks, overall, written_file, metadata)


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

