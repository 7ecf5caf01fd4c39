"""The outcome of ``lbw tune``: the score table rows, the report, its JSON form and the before/after grid.

Example:
    >>> data = report_data(report)
    >>> [row["name"] for row in data["rows"]]
    ['ALL', 'tutorial', 'search', 'OFF']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lbw.domain.tune_rule import ScoreSummary


@dataclass(frozen=True)
class ScoreRow:
    """One line of the score table: ALL, a strategy's result or OFF, on the tuning and held-out seeds."""

    name: str
    weights: tuple[float, ...] | None
    tuning: ScoreSummary
    held_out: ScoreSummary | None


@dataclass(frozen=True)
class KeepMaskInfo:
    """A tune's keep mask: its copy in the run folder, its sha256 (of the mask as used), the kept pixels and its
    bounding box (``x0,y0,x1,y1`` in pixels, the project's region during the tune)."""

    file: Path
    sha256: str
    kept_pixels: int
    bounding_box: str


@dataclass(frozen=True)
class TuneReport:
    """What a tune found: the winner and its weights (now the project's sheet), the score table, the cells each
    phase rendered, the iterations it recorded, notes (why a strategy stopped), the grid and the report file, and
    the images of the grid's cells (``grid_cells``: row, seed, path relative to the workspace). The keep region
    is ``keep_box`` (pixels) or, when it was a mask, ``keep_mask`` (and ``keep_box`` is None)."""

    project: str
    winner: str
    weights: str
    values: tuple[float, ...]
    rows: tuple[ScoreRow, ...]
    counts: dict[str, int]
    budget: int
    tuning_seeds: tuple[int, ...]
    held_out_seeds: tuple[int, ...]
    keep_box: str | None
    scorer: str
    threshold: float
    iterations: tuple[int, ...]
    grid: Path
    report: Path
    notes: tuple[str, ...] = field(default_factory=tuple)
    keep_mask: KeepMaskInfo | None = None
    grid_cells: Mapping[str, Mapping[int, str]] = field(default_factory=dict)

    @property
    def cells(self) -> int:
        """Cells rendered by the whole tune (all runs of it)."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class GridWords:
    """The words of the before/after grid, as ``str.format`` templates (English by default; a page passes its own
    language's). ``rows`` renames rows (missing: the row's own name)."""

    title: str = "{name}: ALL vs tuned vs LoRA off ({region})"
    box: str = "keep box {box}"
    mask: str = "keep mask {file} ({kept} of {width}x{height} pixels)"
    scores: str = "effect {effect:.2f} side {side:.2f}"
    seed: str = "seed {seed}"
    tuning: str = "tuning"
    held_out: str = "held out"
    rows: Mapping[str, str] = field(default_factory=lambda: {"OFF": "LoRA off"})

    def region(self, keep: np.ndarray, box: str | None, mask_file: str | None) -> str:
        """The keep region named: its box, or the mask's file and kept pixels."""
        if box is not None:
            return self.box.format(box=box)
        height, width = keep.shape
        return self.mask.format(file=mask_file, kept=int(keep.sum()), width=width, height=height)


ENGLISH = GridWords()


def write_grid(name: str, rows: Sequence[tuple[str, float, float]], images: Mapping[str, Mapping[int, Path]],
               seeds: Sequence[int], held_out: Sequence[int], keep: np.ndarray, region: str, path: Path,
               words: GridWords = ENGLISH) -> Path:
    """ALL, each result and OFF (``rows``: name, effect kept and side effect left on the tuning seeds) at every seed
    (columns, held-out ones marked), the keep region (the boolean mask ``keep``, a box or a drawn shape) outlined in
    white; ``region`` names it in the title."""
    from PIL import Image

    from lbw.render.grid import compose_grid, save_png
    from lbw.render.masks import outline

    edge = outline(keep)
    cells = []
    for row_name, _, _ in rows:
        line = []
        for seed in seeds:
            with Image.open(images[row_name][seed]) as image:
                pixels = np.array(image.convert("RGB"))
            if pixels.shape[:2] == edge.shape:
                pixels[edge] = (255, 255, 255)
            line.append(Image.fromarray(pixels, mode="RGB"))
        cells.append(line)
    labels = [f"{words.rows.get(row_name, row_name)}\n{words.scores.format(effect=effect, side=side)}"
              for row_name, effect, side in rows]
    columns = [f"{words.seed.format(seed=seed)}\n{words.held_out if seed in held_out else words.tuning}"
               for seed in seeds]
    grid = compose_grid(cells, labels, columns, title=words.title.format(name=name, region=region))
    return save_png(grid, path)


def report_data(report: TuneReport, state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (``report.json``; ``lbw tune --json``)."""

    def summary(value: ScoreSummary | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {"effect": value.effect, "side": value.side, "effect_sd": value.effect_sd, "side_sd": value.side_sd,
                "seeds": value.n}

    data: dict[str, Any] = {
        "lbw_tune_report": 1,
        "project": report.project,
        "winner": report.winner,
        "weights": report.weights,
        "threshold": report.threshold,
        "keep_box": report.keep_box,
        "keep_mask": None if report.keep_mask is None else {
            "file": str(report.keep_mask.file), "sha256": report.keep_mask.sha256,
            "kept_pixels": report.keep_mask.kept_pixels, "bounding_box": report.keep_mask.bounding_box},
        "scorer": report.scorer,
        "tuning_seeds": list(report.tuning_seeds),
        "held_out_seeds": list(report.held_out_seeds),
        "rows": [{"name": r.name, "weights": None if r.weights is None else list(r.weights),
                  "tuning": summary(r.tuning), "held_out": summary(r.held_out)} for r in report.rows],
        "budget": report.budget,
        "cells": report.counts,
        "iterations": list(report.iterations),
        "grid": str(report.grid),
        "grid_cells": {name: {str(seed): path for seed, path in by_seed.items()}
                       for name, by_seed in report.grid_cells.items()},
        "notes": list(report.notes),
    }
    if state is not None:
        tutorial = state.get("tutorial") or {}
        if tutorial:
            data["tutorial"] = {"analysis_iteration": tutorial.get("analysis"), "finished": tutorial.get("finished"),
                                "tries": tutorial.get("tried", {})}
        for phase in ("search", "random"):
            found = state.get(phase) or {}
            if found:
                data[phase] = {"trials": found.get("trials"), "best_trial": found.get("best_trial"),
                               "stopped": found.get("stopped")}
    return data


def notes(state: Mapping[str, Any], results: Mapping[str, Any]) -> tuple[str, ...]:
    """Why each strategy stopped, when it matters."""
    notes = []
    tutorial = state.get("tutorial") or {}
    if "tutorial" in results and tutorial.get("stopped"):
        notes.append(f"tutorial: {tutorial['stopped']}")
    for phase in ("search", "random"):
        found = state.get(phase) or {}
        if phase in results and found.get("stopped"):
            notes.append(f"{phase}: {found.get('trials', 0)} trials, best trial {found.get('best_trial')}; stopped "
                         f"by {found['stopped']}")
    return tuple(notes)
