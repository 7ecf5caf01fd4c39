"""Rendering for projects: a project's plan and backend from its settings, one run into a staging folder, and
the records of what it produced (cells with Diff %, grids, the analyzer table). Knows nothing of the store:
``lbw.services.project_iterations`` moves the staging folder into the workspace and records the iteration.

Diff % of a plot cell is LBW's (``lbw.render.analysis.diff_percent``, threshold 20) against the base cell of its
list (``Sub`` for Sub variants, ``Add`` for Add variants) at the same seed; an analyzer cell's is the analyzer's own
against its source cell.

Example:
    >>> plan = project_plan(sheet, settings, "sub")
    >>> run = run_into(plan, make_project_backend(settings), Path("staging"), cache_dir=Path("cache"))
    >>> run.cells[1].label, run.cells[1].base_label
    ('SubIN01_0', 'Sub')
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lbw.domain.sheet import Sheet
from lbw.errors import Cancelled, RenderError
from lbw.files.hashes import full_file_sha256
from lbw.render.analysis import DEFAULT_THRESHOLD, Thresholds, diff_percent
from lbw.render.backends.base import Backend, StepCallback
from lbw.render.blocks import weight_of
from lbw.render.plan import Plan
from lbw.render.runner import CellCallback, RunResult, run_plan
from lbw.services.analyze import EbaReport, eba_plan, run_eba
from lbw.services.plot import make_backend, plan_from_sheet
from lbw.services.project_settings import lora_specs, render_settings
from lbw.services.project_types import ProjectSettings
from lbw.store.records import AnalysisRecord, CellRecord

# Backend options that belong to the machine, not the project (given per render): diffusers and HTTP ones.
DIFFUSERS_OPTIONS = ("device", "batch_size", "model_config", "dtype", "lora_mode", "ray")
HTTP_OPTIONS = ("timeout", "connect_timeout", "deadline")
DEFAULT_URLS = {"a1111": "http://127.0.0.1:7860", "comfyui": "http://127.0.0.1:8188"}


def project_plan(sheet: Sheet, settings: ProjectSettings, mode: str) -> Plan:
    """The Sub/Add/SubAdd/AddSub plan of ``sheet`` with the project's settings."""
    return plan_from_sheet(sheet, mode, settings=render_settings(settings), loras=lora_specs(settings),
                           model=settings.model)


def analysis_threshold(settings: ProjectSettings) -> int:
    """The analyzer's default pixel threshold for a project: LBW's 20 levels (made for 512-px renders), or 5 for
    renders of at most 128 px, whose flat colours change by fewer levels (measured on the built-in world's
    gobuhime at 64 px: every block under 1% Diff at 20; at 5, BASE 43%, IN04 16%, OUT08 15%, OUT06 10%).

    Example:
        >>> analysis_threshold(settings.with_changes({"width": 512, "height": 512}))
        20
    """
    return 5 if max(settings.width, settings.height) <= 128 else 20


def analysis_plan(
    sheet: Sheet,
    settings: ProjectSettings,
    *,
    blocks: tuple[str, ...],
    probe: float,
    base: float,
    threshold: int,
    thresholds: Thresholds,
    transpose: bool,
    diff_color: str = "black",
) -> Plan:
    """The Effective Block Analyzer plan for the project's tuned LoRA (others rendered beside it)."""
    tuned, *others = lora_specs(settings)
    return eba_plan(tuned, model=settings.model, settings=render_settings(settings), blocks=blocks, probe=probe,
                    base=base, threshold=threshold, transpose=transpose, roi=settings.roi, thresholds=thresholds,
                    diff_color=diff_color,
                    others=others, name=sheet.name)


def make_project_backend(settings: ProjectSettings, options: Mapping[str, Any] | None = None) -> Backend:
    """The project's backend; ``options`` are the machine's (device, dtype, batch_size / timeouts)."""
    options = dict(options or {})
    if settings.backend == "diffusers":
        return make_backend("diffusers", **{k: v for k, v in options.items() if k in DIFFUSERS_OPTIONS})
    if options.get("ray") is not None:
        raise RenderError(f"--ray distributes the diffusers backend; this project renders on {settings.backend}")
    limits = {k: v for k, v in options.items() if k in HTTP_OPTIONS and v is not None}
    url = settings.url or DEFAULT_URLS[settings.backend]
    if settings.backend == "a1111":
        return make_backend("a1111", url=url, mode=settings.a1111_mode, **limits)
    return make_backend(settings.backend, url=url, **limits)


@dataclass
class RenderedRun:
    """What one run wrote under its folder: cells (paths relative to the folder), grid, extra files, table."""

    plan: Plan
    cells: list[CellRecord]
    grid: str | None
    grid_sha256: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    analysis: list[AnalysisRecord] = field(default_factory=list)
    report: EbaReport | None = None
    rendered: int = 0
    reused: int = 0


class _Watch:
    """Progress callbacks that also stop the run when ``cancel`` is set (between cells and between steps)."""

    def __init__(self, progress: CellCallback | None, on_step: StepCallback | None,
                 cancel: threading.Event | None) -> None:
        self.progress, self.step_callback, self.cancel = progress, on_step, cancel
        self.done = self.total = 0

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            counted = f" after {self.done} of {self.total} cells" if self.total else ""
            raise Cancelled(f"cancelled{counted}; nothing was recorded (finished cells stay in the workspace "
                            "cache: rendering again reuses them)")

    def on_cell(self, done: int, total: int, label: str, cached: bool) -> None:
        self.done, self.total = done, total
        if self.progress is not None:
            self.progress(done, total, label, cached)
        self.check()

    def on_step(self, fraction: float, label: str, cells: int = 1) -> None:
        if self.step_callback is not None:
            self.step_callback(fraction, label, cells)
        self.check()


def run_into(
    plan: Plan,
    backend: Backend,
    folder: Path,
    *,
    cache_dir: Path,
    progress: CellCallback | None = None,
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
) -> RenderedRun:
    """Render ``plan`` into ``folder`` (cells, plan.json, grid; for an analyzer plan its analysis too) and
    describe the result; ``Cancelled`` when ``cancel`` is set before the last cell."""
    watch = _Watch(progress, on_step, cancel)
    watch.check()
    if plan.kind == "eba":
        report = run_eba(plan, backend, folder, cache_dir=cache_dir, on_cell=watch.on_cell, on_step=watch.on_step)
        return _analysis_run(report, folder)
    result = run_plan(plan, backend, folder, cache_dir=cache_dir, on_cell=watch.on_cell, on_step=watch.on_step)
    watch.check()
    return _plot_run(result, folder)


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _plot_run(result: RunResult, folder: Path) -> RenderedRun:
    plan = result.plan
    bases: dict[int, int] = {}  # cell index -> index of the base cell of its list
    base = 0
    for index, cell in enumerate(plan.cells):
        if cell.block is None:
            base = index
        bases[index] = base
    by_position = {(job.cell_index, job.seed, job.axis_value): (job, path) for job, path in result.cell_paths.items()}
    images: dict[Path, np.ndarray] = {}

    def image(path: Path) -> np.ndarray:
        if path not in images:
            images[path] = _rgb(path)
        return images[path]

    cells = []
    for job, path in sorted(result.cell_paths.items(), key=lambda item: (item[0].cell_index, item[0].seed)):
        cell = job.cell
        base_index = bases[job.cell_index]
        if cell.block is None:
            diff = value = base_label = None
        else:
            _, base_path = by_position[(base_index, job.seed, job.axis_value)]
            diff = diff_percent(image(path), image(base_path), DEFAULT_THRESHOLD)
            value = weight_of(plan.layout, cell.values, cell.block)
            base_label = plan.cells[base_index].label
        cells.append(CellRecord(job.cell_index, cell.label, cell.block, value, job.seed, _relative(path, folder),
                                full_file_sha256(path), diff, base_label))
    grid = result.grids[0] if result.grids else None
    return RenderedRun(plan, cells, None if grid is None else _relative(grid, folder),
                       None if grid is None else full_file_sha256(grid), rendered=result.rendered,
                       reused=result.reused)


def _analysis_run(report: EbaReport, folder: Path) -> RenderedRun:
    run = report.run
    plan = run.plan
    per_seed = {analysis.seed: {c.block: c.diff_percent for c in analysis.changes} for analysis in report.seeds}
    cells = []
    for job, path in sorted(run.cell_paths.items(), key=lambda item: (item[0].cell_index, item[0].seed)):
        cell = job.cell
        if cell.block is None:
            diff = value = base_label = None
        else:
            diff = per_seed[job.seed][cell.label]
            value = weight_of(plan.layout, cell.values, cell.block)
            base_label = plan.cells[0].label
        cells.append(CellRecord(job.cell_index, cell.label, cell.block, value, job.seed, _relative(path, folder),
                                full_file_sha256(path), diff, base_label))
    grids = [_relative(a.grid, folder) for a in report.seeds]
    extra: dict[str, Any] = {
        "grids": grids,
        "diff_images": {str(a.seed): {b: _relative(p, folder) for b, p in a.diff_images.items()} for a in report.seeds},
        "heatmaps": {str(a.seed): {b: _relative(p, folder) for b, p in a.heatmaps.items()} for a in report.seeds},
        "analysis": None if report.report_path is None else _relative(report.report_path, folder),
        "suggested_sheet": None if report.sheet_path is None else _relative(report.sheet_path, folder),
    }
    table = [
        AnalysisRecord(rank, change.block, change.diff_percent, change.roi_diff_percent, change.roi_share_percent)
        for rank, change in enumerate(report.ranked, 1)
    ]
    first = report.seeds[0].grid
    return RenderedRun(plan, cells, grids[0], full_file_sha256(first), extra, table, report,
                       rendered=run.rendered, reused=run.reused)

