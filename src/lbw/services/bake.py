"""``lbw bake``: apply block weights to a LoRA file exactly, so that at multiplier 1 it does what the weights did.

For every module, ΔW_out = factor · ΔW_in with factor = ρ(block) × (te or unet multiplier) (see ``resolve``).
One factor is scaled in float32 (the one LBW scales: ``lora_up``, ``hada_w1_a``, ``lokr_w1``, IA3 ``weight``,
``diff``, ``w_norm``; plus the bias delta of full/norm modules), or with ``balanced`` the magnitude is split
√|c| over ``lora_up``/``lora_down`` (LoRA/LoCon only; the sign stays on ``lora_up``). Alpha and rank are kept.
Each tensor is cast once to the output dtype. Modules of blocks at factor 0 are removed unless ``keep_zero``.
Modules that no host of the architecture loads (``lbw.domain.hosts``) are kept untouched, whatever the weights,
and the plan's notes list them.

DoRA is not linear in the factor: refused unless ``dora="dense"``, which stores the exact applied delta as a
full-diff module (``diff`` of the layer's full shape, out·in·kh·kw values instead of r·(out+in)), computed from
the base weights (``model``).

The file is written atomically by ``lbw.files.writer.save_lora`` (hashes from the bytes as written): a crash or
Ctrl-C leaves no output. The output's lock is held for the whole bake, and the final step never replaces a file
unless ``force``: two runs writing one new output never both succeed. The input is only read.

This module runs the bake (lock, streaming loop, atomic write); one module is baked by
``bake_module.bake_module`` (DoRA by ``dora_dense``), key naming and casts live in ``tensor_output``, metadata in
``bake_metadata``, destination checks in ``outputs``.

Example:
    >>> weights = load_weights("Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1").weights
    >>> report = bake("face.safetensors", "face-baked.safetensors", weights, te=1, unet=1)
    >>> report.modules_out, report.written.model_hash == addnet_hash("face-baked.safetensors")
    (204, True)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lbw.adapters.kinds import AdapterKind
from lbw.domain.weights import BlockWeights
from lbw.errors import OutputError
from lbw.files.lora_file import LoraFile
from lbw.services.bake_metadata import baked_metadata
from lbw.services.bake_module import bake_module
from lbw.services.bulk import bulk_mode
from lbw.services.dora_dense import open_dora_base
from lbw.services.outputs import check_destination, output_lock, refuse_unsupported, torch_dtype
from lbw.services.resolve import FactorPlan, resolve_for_file
from lbw.services.tensor_output import output_tensors

if TYPE_CHECKING:
    import torch

    from lbw.files.writer import WrittenFile

DoraMode = Literal["refuse", "dense"]
# A hook called after each module: (modules done, modules in total).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BakeOptions:
    """How to bake: keep zero blocks, balanced split, DoRA handling, base model, output dtype, overwrite."""

    keep_zero: bool = False
    balanced: bool = False
    dora: DoraMode = "refuse"
    model: Path | None = None
    dtype: str | None = None
    force: bool = False


@dataclass(frozen=True)
class BakeReport:
    """What a bake did: the plan, module counts, removed modules, DoRA conversions, sizes and hashes."""

    source: Path
    plan: FactorPlan
    modules_in: int
    modules_out: int
    removed: tuple[str, ...]
    dora_dense: tuple[str, ...]
    source_size: int
    source_hash: str
    written: WrittenFile
    metadata: dict[str, str] = field(repr=False)


def bake(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    weights: BlockWeights,
    *,
    te: float = 1.0,
    unet: float = 1.0,
    options: BakeOptions | None = None,
    progress: Progress | None = None,
) -> BakeReport:
    """Resolve ``weights`` for ``source`` and bake them into ``dest`` (see ``bake_file``).

    Example:
        >>> bake("a.safetensors", "b.safetensors", parse_weights("1," * 16 + "0"), unet=0.8).modules_out
        252
    """
    with LoraFile.open(source) as lora:
        plan = resolve_for_file(weights, lora.modules, lora.architecture, te=te, unet=unet, where=str(source))
        return bake_file(lora, plan, dest, options=options, progress=progress)


def bake_file(
    lora: LoraFile,
    plan: FactorPlan,
    dest: str | os.PathLike[str],
    *,
    options: BakeOptions | None = None,
    progress: Progress | None = None,
) -> BakeReport:
    """Bake a resolved plan into ``dest``: module by module, scaled in float32, cast once, written atomically.

    Example:
        >>> with LoraFile.open("a.safetensors") as lora:
        ...     plan = resolve_for_file(weights, lora.modules, lora.architecture)
        ...     bake_file(lora, plan, "b.safetensors").removed[:1]
        ('lora_unet_down_blocks_0_attentions_0_proj_in',)
    """
    options = options or BakeOptions()
    dest = Path(dest)
    check_destination(dest, [lora.path], force=options.force)
    with output_lock(dest, force=options.force):
        return _bake_locked(lora, plan, dest, options, progress)


def _bake_locked(
    lora: LoraFile, plan: FactorPlan, dest: Path, options: BakeOptions, progress: Progress | None
) -> BakeReport:
    from lbw.files.mapped import MappedTensors
    from lbw.files.writer import save_lora

    check_destination(dest, [lora.path], force=options.force)  # again: another run may have written it meanwhile
    refuse_unsupported(lora)
    out_dtype = torch_dtype(options.dtype)
    tensors: dict[str, torch.Tensor] = {}
    removed: list[str] = []
    dora_dense: list[str] = []
    base = open_dora_base(lora, options)
    mapped = MappedTensors(lora.header)  # zero-copy reads: unchanged tensors are written from the page cache
    # The map is closed last: after the pool, whose exit waits for the hashing job (which may not even have
    # started when the modules are done).
    with mapped, ThreadPoolExecutor(max_workers=1) as pool, bulk_mode():
        source_hash_job = pool.submit(mapped.data_sha256)  # hashlib releases the GIL: runs alongside
        try:
            total = len(lora.modules)
            for done, module in enumerate(lora.modules, start=1):
                baked = bake_module(lora, module, plan, options, base, read=mapped.tensors)
                if baked is None:
                    removed.append(module.name)
                else:
                    if module.kind is AdapterKind.DORA:
                        dora_dense.append(module.name)
                    tensors.update(output_tensors(lora, module, baked, out_dtype))
                if progress is not None:
                    progress(done, total)
        finally:
            if base is not None:
                base.close()
        if not tensors:
            raise OutputError("every module is at weight 0; nothing to write (use --keep-zero to keep them)",
                              where=str(dest))
        gone = set(removed)
        kept = [m for m in lora.modules if m.name not in gone]

        def metadata_with(source_hash: str) -> dict[str, str]:
            return baked_metadata(lora, plan, dest, source_hash, kept, dora_dense)

        # The source hash may still be running: the header is written with a placeholder of its length and
        # completed once the data are out.
        written = save_lora(tensors, metadata_with("0" * 64), dest, force=options.force,
                            final_metadata=lambda: metadata_with(source_hash_job.result()))
        source_hash = source_hash_job.result()
    return BakeReport(lora.path, plan, len(lora.modules), len(kept), tuple(removed), tuple(dora_dense),
                      lora.header.file_size, source_hash, written, metadata_with(source_hash))
