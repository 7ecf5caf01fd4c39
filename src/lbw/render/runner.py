"""Run a plan through a backend with the content cache; write cells, the plan and the grid(s).

Output folder layout::

    plan.json                     the plan (re-run it with ``lbw plot plan.json``)
    cells/003_SubIN04_0_seed1.png one image per job (hard links into the cache when possible)
    grid.png                      rows = cells, columns = seeds (x axis values); plan in an ``lbw_plan`` chunk
    cache/<sha256>.png            the content cache (shared by re-runs; ``--cache`` moves it)

A cell whose image is one flat colour (NaNs in the UNet or VAE, or a cell the server filled in after a failure)
or that the backend reports as failed is not cached: the other cells render on, then the run fails with one line
naming the failed cells, and the next run renders only those. File names built from labels and axis values are
made safe (``lbw.render.paths``) and stay inside the output folder.

Example:
    >>> result = run_plan(plan, backend, Path("out"))
    >>> result.rendered, result.reused
    (12, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.errors import RenderError
from lbw.render.backends.base import Backend, CellFailure, StepCallback
from lbw.render.backends.http import one_line
from lbw.render.blocks import format_value, weight_of
from lbw.render.cache import CellCache, cache_key, link_or_copy
from lbw.render.grid import PLAN_CHUNK, compose_grid, save_png
from lbw.render.paths import inside, safe_component
from lbw.render.plan import Job, Plan, plan_to_json, save_plan

# Called after each job with (jobs done, jobs total, label of the job, whether it came from the cache).
CellCallback = Callable[[int, int, str, bool], None]


@dataclass
class RunResult:
    """What a run produced: one image path per job, counts, the plan file and the grid(s)."""

    plan: Plan
    out_dir: Path
    plan_path: Path
    cell_paths: dict[Job, Path] = field(default_factory=dict)
    rendered: int = 0
    reused: int = 0
    grids: list[Path] = field(default_factory=list)

    def image(self, job: Job) -> Image.Image:
        """The RGB image of ``job``."""
        with Image.open(self.cell_paths[job]) as image:
            return image.convert("RGB")


def job_keys(plan: Plan, backend: Backend, cache: CellCache) -> dict[Job, str]:
    """The content-cache key of every job of ``plan`` (call after ``backend.prepare(plan)``)."""
    settings = {k: v for k, v in asdict(plan.settings).items() if k != "seeds"}
    base = {
        "backend": backend.name,
        "identity": backend.identity(plan, cache.file_hash),
        "settings": settings,
    }
    return {job: cache_key({**base, "job": backend.job_identity(plan, job)}) for job in plan.jobs()}


def run_plan(
    plan: Plan,
    backend: Backend,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    on_cell: CellCallback | None = None,
    on_step: StepCallback | None = None,
    grid: bool = True,
) -> RunResult:
    """Render every job of ``plan`` not already in the cache, then write cells, ``plan.json`` and the grid."""
    out = Path(out_dir)
    backend.prepare(plan)  # validates the model and LoRAs before anything is written
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cache = CellCache(cache_dir if cache_dir is not None else out / "cache")
    result = RunResult(plan, out, save_plan(plan, out / "plan.json"))
    keys = job_keys(plan, backend, cache)
    jobs = plan.jobs()
    todo: dict[str, Job] = {}
    for job in jobs:
        if cache.get(keys[job]) is None:
            todo.setdefault(keys[job], job)
    done = 0
    total = len(jobs)
    failed: list[tuple[Job, str]] = []
    for job in jobs:
        if keys[job] not in todo:
            done += 1
            result.reused += 1
            if on_cell:
                on_cell(done, total, job.cell.label, True)
    if todo:
        if on_cell:  # the total is known before the first (maybe long) batch: progress and ETA from the start
            on_cell(done, total, "", False)
        for job, image in backend.render(plan, list(todo.values()), on_step):
            key = keys[job]
            if key not in todo:
                raise RenderError(f"backend {backend.name} returned an image for a job it was not given")
            reason = image.reason if isinstance(image, CellFailure) else flat_image_reason(image)
            if reason is not None:
                failed.append((job, reason))
                del todo[key]
                continue
            cache.put(key, image)
            del todo[key]
            copies = sum(1 for j in jobs if keys[j] == key)
            done += copies
            result.rendered += 1
            result.reused += copies - 1
            if on_cell:
                on_cell(done, total, job.cell.label, False)
    if todo:
        missing = ", ".join(job.cell.label for job in todo.values())
        raise RenderError(f"backend {backend.name} finished without rendering: {missing}")
    if failed:
        raise RenderError(failure_message(failed))
    for job in jobs:
        source = cache.get(keys[job])
        assert source is not None
        result.cell_paths[job] = link_or_copy(source, inside(out, "cells", cell_file_name(plan, job)))
    if grid:
        result.grids.append(write_plot_grid(plan, result, out / "grid.png"))
    return result


def flat_image_reason(image: Image.Image) -> str | None:
    """Why ``image`` cannot be a rendered cell (every pixel the same colour), or None when it can be."""
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if all(low == high for low, high in bands):  # type: ignore[misc]
        colour = ", ".join(str(low) for low, _ in bands)  # type: ignore[misc]
        return f"the image is one flat colour ({colour}): NaNs in the UNet or VAE, or a failed cell"
    return None


def failure_message(failed: list[tuple[Job, str]]) -> str:
    """One line naming the failed cells (the first three with their reasons)."""
    shown = "; ".join(f"{one_line(job.cell.label, 80)} seed {job.seed}: {reason}" for job, reason in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    count = f"{len(failed)} cell failed and was" if len(failed) == 1 else f"{len(failed)} cells failed and were"
    return f"{count} not cached (run the same command again to retry): {shown}{more}"


def axis_texts(plan: Plan) -> dict[Any, str]:
    """A safe, distinct file-name text per axis value: ``0.5`` or a checkpoint's stem (``-2``... when stems
    repeat)."""
    if plan.axis is None:
        return {}
    texts: dict[Any, str] = {}
    for index, value in enumerate(plan.axis.values):
        shown = format_value(value) if isinstance(value, int | float) else Path(str(value).replace("\\", "/")).stem
        text = base = safe_component(shown, fallback=f"value{index + 1}", limit=60)
        suffix = index
        while text in texts.values():
            suffix += 1
            text = f"{base}-{suffix}"
        texts[value] = text
    return texts


def cell_file_name(plan: Plan, job: Job) -> str:
    """``003_SubIN04_0_seed1.png`` (``_strength0.5`` / checkpoint stem added for an axis); always one safe name."""
    label = safe_component(job.cell.label, fallback="cell")
    axis = "" if plan.axis is None else f"_{safe_component(plan.axis.kind)}{axis_texts(plan)[job.axis_value]}"
    return f"{job.cell_index:03d}_{label}_seed{job.seed}{axis}.png"


def row_label(plan: Plan, index: int) -> str:
    """A row header: the cell label, and ``ID = value`` for the block the cell varies."""
    cell = plan.cells[index]
    if cell.block is None:
        return cell.label
    value = weight_of(plan.layout, cell.values, cell.block)
    return f"{cell.label}\n{cell.block} = {format_value(value)}"


def column_labels(plan: Plan) -> list[tuple[Any, int, str]]:
    """(axis value, seed, header text) per grid column: axis outermost, then seeds."""
    axis_values = plan.axis.values if plan.axis else (None,)
    columns = []
    for value in axis_values:
        for seed in plan.settings.seeds:
            text = f"seed {seed}"
            if plan.axis is not None:
                shown = format_value(value) if isinstance(value, int | float) else Path(str(value)).stem
                text = f"{plan.axis.kind} {shown}\n{text}"
            columns.append((value, seed, text))
    return columns


def write_plot_grid(plan: Plan, result: RunResult, path: Path) -> Path:
    """The plot grid: one row per cell, one column per (axis value, seed); plan embedded as PNG text."""
    columns = column_labels(plan)
    by_position = {(job.cell_index, job.axis_value, job.seed): job for job in result.cell_paths}
    rows = [
        [result.image(by_position[(index, value, seed)]) for value, seed, _ in columns]
        for index in range(len(plan.cells))
    ]
    image = compose_grid(
        rows,
        [row_label(plan, i) for i in range(len(plan.cells))],
        [text for _, _, text in columns],
        title=f"{plan.name} ({plan.kind})",
    )
    return save_png(image, path, {PLAN_CHUNK: plan_to_json(plan)})
