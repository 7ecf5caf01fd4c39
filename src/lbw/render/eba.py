"""The Effective Block Analyzer as a plan and its outputs: cells, metrics, diff/heatmap images, grid.

As in LBW: the source is every block at the base value (Range[1]); each listed block gets one cell with that
block lowered to the probe value (Range[0]); Diff % compares each cell with the source of the same seed.
Rows = blocks, columns = diff, heatmap, lowered, source (``transpose`` swaps them, like "change X-Y").

Example:
    >>> cells = eba_cells(("IN01", "OUT03"), probe=0.5, base=1.0)
    >>> [cell.label for cell in cells]
    ['source', 'IN01', 'OUT03']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lbw.domain.layouts import SD26
from lbw.errors import RenderError
from lbw.render.analysis import BlockChange, Box, block_change, diff_image, heatmap_overlay
from lbw.render.blocks import format_value
from lbw.render.grid import PLAN_CHUNK, compose_grid, save_png
from lbw.render.paths import inside, safe_component
from lbw.render.plan import Cell, EbaSpec, Plan, plan_to_json

SOURCE_LABEL = "source"


def eba_cells(blocks: Sequence[str], probe: float, base: float) -> tuple[Cell, ...]:
    """The source cell (all blocks at ``base``) and one cell per block at ``probe`` (26-slot vectors)."""
    if not blocks:
        raise RenderError("the analyzer needs at least one block")
    unknown = [b for b in blocks if b not in SD26.ids]
    if unknown:
        raise RenderError(f"analyzer blocks must be 26-layout IDs; not: {', '.join(unknown)}")
    source = Cell(SOURCE_LABEL, (float(base),) * len(SD26))
    cells = [source]
    for block in blocks:
        values = tuple(float(probe) if bid == block else float(base) for bid in SD26.ids)
        cells.append(Cell(block, values, block))
    return tuple(cells)


@dataclass(frozen=True)
class SeedAnalysis:
    """One seed's analyzer result: the metrics per block and where its images were written."""

    seed: int
    changes: tuple[BlockChange, ...]
    grid: Path
    diff_images: Mapping[str, Path]
    heatmaps: Mapping[str, Path]


def analyze_seed(
    plan: Plan,
    seed: int,
    images: Mapping[str, Image.Image],
    out_dir: Path,
    *,
    roi: Box | None = None,
    transpose: bool = False,
) -> SeedAnalysis:
    """Metrics, diff images, heatmaps and the grid for one seed; ``images`` maps cell label -> image."""
    spec = plan.eba or EbaSpec()
    source = np.asarray(images[SOURCE_LABEL].convert("RGB"))
    folder = inside(out_dir, f"seed{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    changes: list[BlockChange] = []
    diffs: dict[str, Path] = {}
    heats: dict[str, Path] = {}
    rows: list[list[Image.Image | None]] = []
    labels: list[str] = []
    for cell in plan.cells[1:]:
        probe = np.asarray(images[cell.label].convert("RGB"))
        change = block_change(cell.label, probe, source, spec.threshold, roi)
        changes.append(change)
        diff = diff_image(probe, source, spec.diff_color)
        heat = heatmap_overlay(probe, source, roi=roi)
        name = safe_component(cell.label, fallback="cell", unique=True)  # a saved plan's labels are outside data
        diffs[cell.label] = save_png(diff, inside(folder, f"diff_{name}.png"))
        heats[cell.label] = save_png(heat, inside(folder, f"heat_{name}.png"))
        rows.append([diff, heat, images[cell.label], images[SOURCE_LABEL]])
        labels.append(row_text(change))
    columns = [
        "diff",
        "heatmap",
        f"block at {format_value(spec.probe)}",
        f"source ({format_value(spec.base)})",
    ]
    if transpose:
        rows = [list(column) for column in zip(*rows, strict=True)]
        labels, columns = columns, labels
    title = f"{plan.name}: Effective Block Analyzer, seed {seed}, threshold {spec.threshold}"
    if roi is not None:
        title += f", region {roi.as_text()}"
    grid = compose_grid(rows, labels, columns, title=title)
    path = save_png(grid, inside(out_dir, f"eba_seed{seed}.png"), {PLAN_CHUNK: plan_to_json(plan)})
    return SeedAnalysis(seed, tuple(changes), path, diffs, heats)


def row_text(change: BlockChange) -> str:
    """``IN01`` / ``Diff : 12.346%`` as LBW labels rows (``str(round(x, 3))``: ``12.5``, ``0.0``), plus the
    region's numbers when given.

    Example: ``row_text(BlockChange("IN01", 12.34567))`` -> ``'IN01\\nDiff : 12.346%'``.
    """
    text = f"{change.block}\nDiff : {round(change.diff_percent, 3)}%"
    if change.roi_diff_percent is not None:
        text += f"\nregion : {change.roi_diff_percent:.3f}%\n{change.roi_share_percent:.1f}% of change inside"
    return text


def mean_changes(per_seed: Sequence[SeedAnalysis]) -> tuple[BlockChange, ...]:
    """Per block, the mean of each metric over the seeds (a single seed is returned unchanged)."""
    if not per_seed:
        raise RenderError("no analyzer results to average")
    first = per_seed[0].changes
    result = []
    for index, change in enumerate(first):
        column = [analysis.changes[index] for analysis in per_seed]
        roi = (
            None if change.roi_diff_percent is None else float(np.mean([c.roi_diff_percent for c in column]))
        )
        share = (
            None
            if change.roi_share_percent is None
            else float(np.mean([c.roi_share_percent for c in column]))
        )
        result.append(BlockChange(change.block, float(np.mean([c.diff_percent for c in column])), roi, share))
    return tuple(result)
