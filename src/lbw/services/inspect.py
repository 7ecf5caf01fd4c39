"""``lbw inspect``: what a LoRA file is, which blocks it touches and how strongly, and its metadata and hashes.

The strength of a block is the sum of ||ΔW||_F (multiplier 1, alpha/rank scale included) over its modules,
computed with the fast norms of ``lbw.adapters`` (Gram matrices, never the dense ΔW). IA3 modules have no norm
without the base model (ΔW = W0 ⊙ w); DoRA modules report the norm of their low-rank direction s·U·D.

Names: the naming families of the modules (``lbw.files.families``) and, per host that runs the architecture,
the modules that host would not load at all (``lbw.files.host_report``). Modules no host loads are counted in
their own row, not in a block: no block weight reaches them anywhere.

Example:
    >>> report = inspect_file("style.safetensors")
    >>> report.architecture, report.layout.name, report.blocks["IN04"].modules
    ('sdxl', 'XL12', 22)
    >>> report.to_json()["hashes"]["computed"] == report.to_json()["hashes"]["stored"]
    True
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbw.adapters.kinds import AdapterKind, alpha_scale
from lbw.domain.layouts import Layout
from lbw.errors import AdapterError, LbwError
from lbw.files.host_report import HostLoading, host_loading
from lbw.files.lora_file import LoraFile
from lbw.files.modules import Module

Progress = Callable[[int, int], None]

# Inspire bucket names as the JSON shows them.
UNMAPPED = "unmapped"
NOT_LOADED = "not loaded"


@dataclass
class BlockStats:
    """Totals of the modules of one block (or of the unmapped modules)."""

    block: str
    modules: int = 0
    params: int = 0
    ranks: set[int] = field(default_factory=set)
    alphas: set[float] = field(default_factory=set)
    norm: float = 0.0
    share: float = 0.0  # percent of the norm sum over all modules

    def add(self, module: Module, norm: float | None) -> None:
        """Count ``module`` (its norm when known) into this block."""
        self.modules += 1
        self.params += module.params
        if module.rank is not None:
            self.ranks.add(module.rank)
        if module.alpha is not None:
            self.alphas.add(module.alpha)
        if norm is not None:
            self.norm += norm

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this block."""
        return {"modules": self.modules, "params": self.params, "ranks": sorted(self.ranks),
                "alphas": sorted(self.alphas), "norm": self.norm, "share": self.share}


@dataclass
class InspectReport:
    """Everything ``lbw inspect`` shows about one file."""

    path: Path
    file_size: int
    architecture: str
    architecture_evidence: tuple[str, ...]
    naming: str
    adapter_types: tuple[str, ...]
    layout: Layout
    module_count: int
    tensor_count: int
    parameter_count: int
    dtypes: dict[str, int]
    blocks: dict[str, BlockStats]
    unmapped: BlockStats
    unmapped_modules: tuple[str, ...]
    inspire_blocks: tuple[tuple[str, int], ...]
    inspire_length: int
    metadata: dict[str, dict[str, str]]
    hashes: dict[str, Any]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    norm_device: str
    families: dict[str, int] = field(default_factory=dict)
    hosts: tuple[HostLoading, ...] = ()
    not_loaded: BlockStats = field(default_factory=lambda: BlockStats(NOT_LOADED))
    not_loaded_modules: tuple[str, ...] = ()

    @property
    def total_norm(self) -> float:
        """Sum of ||ΔW||_F over every module, unmapped and not loaded ones included."""
        return sum(stats.norm for stats in self.blocks.values()) + self.unmapped.norm + self.not_loaded.norm

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object (the ``--json`` output).

        Example:
            >>> sorted(inspect_file("a.safetensors", hashes=False).to_json())[:3]
            ['adapter_types', 'architecture', 'architecture_evidence']
        """
        return {
            "file": str(self.path),
            "file_size": self.file_size,
            "architecture": self.architecture,
            "architecture_evidence": list(self.architecture_evidence),
            "naming": self.naming,
            "adapter_types": list(self.adapter_types),
            "layout": self.layout.name,
            "layout_length": len(self.layout),
            "modules": self.module_count,
            "tensors": self.tensor_count,
            "parameters": self.parameter_count,
            "dtypes": self.dtypes,
            "blocks": {block: stats.to_json() for block, stats in self.blocks.items()},
            "unmapped": self.unmapped.to_json(),
            "unmapped_modules": list(self.unmapped_modules),
            "name_families": self.families,
            "hosts": {report.host: report.to_json() for report in self.hosts},
            "not_loaded": self.not_loaded.to_json(),
            "not_loaded_modules": list(self.not_loaded_modules),
            "inspire_blocks": [[bucket, number] for bucket, number in self.inspire_blocks],
            "inspire_length": self.inspire_length,
            "total_norm": self.total_norm,
            "metadata": self.metadata,
            "hashes": self.hashes,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def inspect_file(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    norms: bool = True,
    hashes: bool = True,
    progress: Progress | None = None,
) -> InspectReport:
    """Inspect one LoRA file: blocks with module counts, parameters, ranks, alphas and ||ΔW||_F sums.

    ``device`` runs the norm math there (``cpu``, ``cuda``, ``auto``); ``progress(done, total)`` is called as
    modules are measured. ``hashes=False`` skips hashing the data region.

    Example:
        >>> inspect_file("style.safetensors", hashes=False).blocks["BASE"].modules
        72
    """
    with LoraFile.open(path) as lora, ThreadPoolExecutor(max_workers=1) as pool:
        device = resolve_device(device)
        # Hash the data region on a second thread while the norms run (hashlib and torch release the GIL).
        hashing = pool.submit(file_hashes, lora.path) if hashes else None
        measured = module_norms(lora, device=device, progress=progress) if norms else {}
        blocks = {block: BlockStats(block) for block in lora.layout.ids}
        unmapped = BlockStats(UNMAPPED)
        not_loaded = BlockStats(NOT_LOADED)
        nowhere = []
        for module in lora.modules:
            if module.naming is not None and module.naming.loaded_nowhere:
                target = not_loaded
                nowhere.append(module.name)
            elif module.block is None:
                target = unmapped
            else:
                target = blocks.setdefault(module.block, BlockStats(module.block))
            target.add(module, measured.get(module.name))
        total = sum(stats.norm for stats in blocks.values()) + unmapped.norm + not_loaded.norm
        for stats in (*blocks.values(), unmapped, not_loaded):
            stats.share = 100.0 * stats.norm / total if total > 0 else 0.0
        return InspectReport(
            path=lora.path,
            file_size=lora.header.file_size,
            architecture=lora.architecture,
            architecture_evidence=lora.architecture_report.evidence,
            naming=lora.naming,
            adapter_types=lora.adapter_types,
            layout=lora.layout,
            module_count=len(lora.modules),
            tensor_count=lora.tensor_count,
            parameter_count=lora.parameter_count,
            dtypes=lora.dtypes,
            blocks=blocks,
            unmapped=unmapped,
            unmapped_modules=tuple(m.name for m in lora.unmapped if m.naming is None or not m.naming.loaded_nowhere),
            inspire_blocks=lora.inspire_blocks,
            inspire_length=lora.inspire_length,
            metadata=group_metadata(lora.metadata),
            hashes=hashing.result() if hashing is not None else {},
            warnings=lora.warnings,
            notes=(*_norm_notes(lora, norms), *_host_notes(lora)),
            norm_device=device,
            families=_families(lora.modules),
            hosts=host_loading(lora.modules, lora.architecture, lora.unrecognized_keys),
            not_loaded=not_loaded,
            not_loaded_modules=tuple(nowhere),
        )


def _families(modules: tuple[Module, ...]) -> dict[str, int]:
    """Naming family -> module count, most modules first."""
    counts: dict[str, int] = {}
    for module in modules:
        family = module.naming.family if module.naming is not None else "unknown"
        counts[family] = counts.get(family, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def module_norms(lora: LoraFile, *, device: str = "cpu", progress: Progress | None = None) -> dict[str, float]:
    """||ΔW||_F of every module whose norm needs no base weight (all kinds except IA3), by module name.

    Plain LoRA modules (no ``lora_mid``) are batched by shape: their r x r Gram matrices are computed with one
    batched product per shape group. Every other kind goes through its ``lbw.adapters`` fast norm one by one.

    Example:
        >>> round(module_norms(LoraFile.open("style.safetensors"))["lora_unet_mid_block_attentions_0_proj_in"], 4)
        0.8132
    """
    measurable = [module for module in lora.modules if module.kind is not AdapterKind.IA3]
    groups: dict[tuple[object, ...], list[Module]] = {}
    single: list[Module] = []
    for module in measurable:
        key = _batch_key(module)
        if key is None:
            single.append(module)
        else:
            groups.setdefault(key, []).append(module)
    norms: dict[str, float] = {}
    done = 0
    with _cpu_threads(1 if device == "cpu" else None):
        for members in groups.values():
            for start in range(0, len(members), _batch_size(members[0])):
                chunk = members[start:start + _batch_size(members[0])]
                norms.update(zip((m.name for m in chunk), _batched_lora_norms(lora, chunk, device), strict=True))
                done += len(chunk)
                if progress is not None:
                    progress(done, len(measurable))
        for module in single:
            try:
                norms[module.name] = norm_of_module(module.kind, lora.module_tensors(module, device=device))
            except AdapterError as error:
                raise AdapterError(f"module {module.name}: {error.message}", where=str(lora.path)) from None
            done += 1
            if progress is not None:
                progress(done, len(measurable))
    return {module.name: norms[module.name] for module in measurable}


# Elements per batch of factors (float32, ~8 MB): small enough that the allocator reuses memory instead of
# mapping fresh pages for every batch, which costs more than the arithmetic (measured 20x on fp16->fp32).
_BATCH_ELEMENTS = 2 * 1024 * 1024


def _batch_key(module: Module) -> tuple[object, ...] | None:
    """Shapes that let a plain LoRA module join a batch; None for anything else (measured one by one). Shapes
    were validated when the file was opened (``lbw.files.validate``): up [out, r(, 1, 1)], down [r, ...]."""
    if module.kind is not AdapterKind.LORA or "lora_mid" in module.shapes:
        return None
    return module.shapes["lora_up"], module.shapes["lora_down"]


def _batch_size(module: Module) -> int:
    up, down = module.shapes["lora_up"], module.shapes["lora_down"]
    per_module = math.prod(up) + math.prod(down)
    return max(1, _BATCH_ELEMENTS // per_module)


def _batched_lora_norms(lora: LoraFile, modules: list[Module], device: str) -> list[float]:
    """||s·U·D||_F for same-shaped plain LoRA modules (``lbw.adapters.lora.frobenius_norms``), in float32."""
    from lbw.adapters.lora import frobenius_norms

    up_shape = modules[0].shapes["lora_up"]
    rank = up_shape[1]
    ups = lora.stacked(modules, "lora_up").reshape(len(modules), up_shape[0], rank)
    downs = lora.stacked(modules, "lora_down").reshape(len(modules), rank, -1)
    scales = [alpha_scale(module.shapes, module.stored_alpha) for module in modules]
    return frobenius_norms(ups.to(device), downs.to(device), scales).tolist()


@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    """Run torch CPU ops with ``count`` threads, restoring the setting after (None: leave it).

    The per-module Gram products are small (r x r from [out, r]); one thread avoids the thread-pool
    synchronisation that makes them several times slower on a loaded machine (see benchmarks/bench_inspect.py).
    """
    import torch

    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def norm_of_module(kind: AdapterKind, roles: Mapping[str, Any]) -> float:
    """||ΔW||_F of one module by its kind's fast path (DoRA: the low-rank direction; IA3: not possible).

    Example:
        >>> norm_of_module(AdapterKind.LORA, {"lora_up": torch.ones(3, 1), "lora_down": torch.ones(1, 3)})
        3.0
    """
    from lbw.adapters import full, loha, lokr, lora, norm

    if kind is AdapterKind.DORA:
        return lora.frobenius_norm({role: t for role, t in roles.items() if role != "dora_scale"})
    fast = {AdapterKind.LORA: lora.frobenius_norm, AdapterKind.LOHA: loha.frobenius_norm,
            AdapterKind.LOKR: lokr.frobenius_norm, AdapterKind.FULL: full.frobenius_norm,
            AdapterKind.NORM: norm.frobenius_norm}
    if kind not in fast:
        raise LbwError(f"{kind} modules have no norm without the base model")
    return fast[kind](roles)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; an unavailable device is a clear error.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise LbwError(f"device {device!r} is not available ({str(error).splitlines()[0]})") from None
    return device


def group_metadata(metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Metadata grouped as training (``ss_*``), user (``ssmd_*``), modelspec, hashes (``sshs_*``), lbw, other.

    Example:
        >>> group_metadata({"ss_network_dim": "8", "sshs_model_hash": "ab"})["hashes"]
        {'sshs_model_hash': 'ab'}
    """
    from lbw.files.metadata import group_metadata as grouped

    return grouped(metadata)


def file_hashes(path: Path) -> dict[str, Any]:
    """Stored and computed AddNet hashes, and whether each stored one matches.

    Example:
        >>> file_hashes(Path("style.safetensors"))["match"]
        True
    """
    from lbw.files.hashes import stored_and_computed

    result: dict[str, Any] = dict(stored_and_computed(path))
    result["match"] = None if result.get("stored") is None else result["stored"] == result["computed"]
    legacy = result.get("legacy_stored")
    result["legacy_match"] = None if legacy is None else legacy == result.get("legacy_computed")
    return result


def _norm_notes(lora: LoraFile, norms: bool) -> tuple[str, ...]:
    notes: list[str] = []
    if not norms:
        notes.append("norms not computed (--no-norms)")
        return tuple(notes)
    kinds = {module.kind for module in lora.modules}
    if AdapterKind.IA3 in kinds:
        notes.append("IA3 modules have no norm without the base model (ΔW = W0 ⊙ w); they count 0")
    if AdapterKind.DORA in kinds:
        notes.append("DoRA modules count the norm of their low-rank direction s·U·D; the applied delta also "
                     "depends on the base weight")
    return tuple(notes)


def _host_notes(lora: LoraFile) -> tuple[str, ...]:
    """What a host does with modules it loads but LBW does not re-weight (docs/naming.md)."""
    from lbw.domain.hosts import hosts_for

    dropped = sum(module.kind in (AdapterKind.FULL, AdapterKind.NORM) for module in lora.modules)
    if dropped and "forge" in hosts_for(lora.architecture):
        return (f"on Forge, the LBW extension re-weights only lora/loha/lokr patches and drops the other "
                f"{dropped} full-diff/norm modules while it is active",)
    return ()


@dataclass(frozen=True)
class BlockComparison:
    """One block of two files side by side; ``ratio`` is norm B / norm A (None when A's norm is 0)."""

    block: str
    a: BlockStats
    b: BlockStats

    @property
    def ratio(self) -> float | None:
        """norm B / norm A, or None when A has no norm in this block."""
        return self.b.norm / self.a.norm if self.a.norm > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this row."""
        return {"modules_a": self.a.modules, "modules_b": self.b.modules, "params_a": self.a.params,
                "params_b": self.b.params, "norm_a": self.a.norm, "norm_b": self.b.norm,
                "share_a": self.a.share, "share_b": self.b.share, "ratio": self.ratio}


@dataclass(frozen=True)
class CompareReport:
    """Two inspected files compared block by block."""

    a: InspectReport
    b: InspectReport
    rows: tuple[BlockComparison, ...]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object: both reports and the per-block comparison."""
        return {"a": self.a.to_json(), "b": self.b.to_json(),
                "blocks": {row.block: row.to_json() for row in self.rows},
                "total_norm_a": self.a.total_norm, "total_norm_b": self.b.total_norm,
                "warnings": list(self.warnings)}


def compare_reports(a: InspectReport, b: InspectReport) -> CompareReport:
    """Compare two inspected files block by block (norms, modules, ratio B/A), unmapped modules last.

    Example:
        >>> rows = compare_reports(inspect_file("v1.safetensors"), inspect_file("v2.safetensors")).rows
        >>> rows[0].block, round(rows[0].ratio, 3)
        ('BASE', 1.021)
    """
    warnings: list[str] = []
    if a.architecture != b.architecture:
        warnings.append(f"the files are for different architectures ({a.architecture} and {b.architecture}); "
                        "blocks with the same ID hold different layers")
    ids = _union_order(a.blocks, b.blocks)
    rows = [BlockComparison(block, a.blocks.get(block, BlockStats(block)), b.blocks.get(block, BlockStats(block)))
            for block in ids]
    if a.unmapped.modules or b.unmapped.modules:
        rows.append(BlockComparison(UNMAPPED, a.unmapped, b.unmapped))
    return CompareReport(a, b, tuple(rows), tuple(warnings))


def _union_order(first: Mapping[str, BlockStats], second: Mapping[str, BlockStats]) -> list[str]:
    from lbw.domain.layouts import FLUX61, SD26, XL20

    present = set(first) | set(second)
    for layout in (SD26, XL20, FLUX61):
        if present <= set(layout.ids):
            return [block for block in layout.ids if block in present]
    return [*first, *(block for block in second if block not in first)]
