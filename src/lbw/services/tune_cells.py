"""The cells of ``lbw tune``: candidate and reference plans, renders through the workspace cache counted against
the budget, and scores of cached cells against the references of the same seed.

Only cells the backend renders count (a cell found in the cache costs nothing); before each plan the number of
its cells missing from the cache is compared with what the phase has left, so the budget is never exceeded. The
counts live in the tune's state (``lbw.services.tune_state``) and are saved after each plan and on Ctrl-C.

Example:
    >>> cells = Cells(engine, store.workspace / "cache", scratch, Budget({"search": 0}, {"search": 50}))
    >>> plan = candidate_plan(view, [("tuned", (1.0,) * 26)], seeds=(1, 2))
    >>> cells.fits(plan, "search"), cells.uncached(plan)
    (True, 2)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lbw.domain.sheet import Sheet
from lbw.domain.tune_rule import Score, ScoreSummary, summarize
from lbw.errors import Cancelled, RenderError
from lbw.render.backends.base import Backend
from lbw.render.cache import CellCache
from lbw.render.plan import Axis, Cell, Job, Plan
from lbw.render.runner import CellCallback, job_keys, run_plan
from lbw.render.scores import as_score
from lbw.services.project_render import project_plan
from lbw.services.project_types import ProjectView

ALL_LABEL = "ALL"
OFF_LABEL = "OFF"
PHASES = ("references", "tutorial", "search", "random", "evaluation")


def candidate_plan(view: ProjectView, vectors: Sequence[tuple[str, Sequence[float]]], seeds: Sequence[int]) -> Plan:
    """A plan of weight vectors (label, values in the sheet's layout) at ``seeds`` with the project's settings."""
    settings = replace(view.settings, seeds=tuple(seeds))
    base = project_plan(replace(view.sheet, fixed=frozenset(view.sheet.layout.ids)), settings, "sub")
    cells = tuple(Cell(label, tuple(float(v) for v in values)) for label, values in vectors)
    return replace(base, kind="custom", cells=cells, name=f"{view.sheet.name}-tune")


def reference_plan(view: ProjectView, seeds: Sequence[int]) -> Plan:
    """ALL (every block 1 at the project's strength) and OFF (the tuned LoRA at strength 0, other LoRAs as set)
    at ``seeds``: one cell on a strength axis 1, 0."""
    ones = (1.0,) * len(view.sheet.layout)
    plan = candidate_plan(view, [(ALL_LABEL, ones)], seeds)
    return replace(plan, axis=Axis("strength", (1.0, 0.0)))


def ones_sheet(sheet: Sheet) -> tuple[float, ...]:
    """The full LoRA's vector in ``sheet``'s layout (the original the goal measures distances from)."""
    return (1.0,) * len(sheet.layout)


@dataclass
class Budget:
    """Cells rendered per phase (``counts``, saved in the tune's state) and what each phase may render (``caps``)."""

    counts: dict[str, int]
    caps: dict[str, int] = field(default_factory=dict)

    def used(self, phase: str) -> int:
        """Cells ``phase`` rendered so far."""
        return int(self.counts.get(phase, 0))

    def left(self, phase: str) -> int:
        """Cells ``phase`` may still render."""
        return max(0, int(self.caps.get(phase, 0)) - self.used(phase))

    def count(self, phase: str) -> None:
        """One more rendered cell for ``phase``."""
        self.counts[phase] = self.used(phase) + 1

    @property
    def total(self) -> int:
        """Cells rendered by every phase together."""
        return sum(int(v) for v in self.counts.values())


class Cells:
    """Renders plans with one backend and the workspace cache; counts rendered cells per phase."""

    def __init__(self, engine: Backend, cache_dir: Path, scratch: Path, budget: Budget, *,
                 on_cell: CellCallback | None = None, cancel: threading.Event | None = None,
                 saved: Callable[[], None] | None = None) -> None:
        self.engine, self.cache_dir, self.scratch, self.budget = engine, cache_dir, scratch, budget
        self.on_cell, self.cancel, self.saved = on_cell, cancel, saved
        self.cache = CellCache(cache_dir)
        self._keys: dict[Plan, dict[Job, str]] = {}

    def keys(self, plan: Plan) -> dict[Job, str]:
        """The cache key of every job of ``plan`` (memoised for the last few plans)."""
        found = self._keys.get(plan)
        if found is None:
            self.engine.prepare(plan)
            found = job_keys(plan, self.engine, self.cache)
            if len(self._keys) >= 8:
                self._keys.pop(next(iter(self._keys)))
            self._keys[plan] = found
        return found

    def uncached(self, plan: Plan) -> int:
        """How many cells of ``plan`` the backend would render (distinct jobs missing from the cache)."""
        return len({key for key in self.keys(plan).values() if self.cache.get(key) is None})

    def fits(self, plan: Plan, phase: str) -> bool:
        """True when rendering ``plan`` stays within what ``phase`` has left."""
        self.check_cancel()
        return self.uncached(plan) <= self.budget.left(phase)

    def counter(self, phase: str) -> CellCallback:
        """A progress callback that counts each rendered cell for ``phase``, then calls the caller's one (which may
        raise: the count is already taken)."""

        def on_cell(done: int, total: int, label: str, cached: bool) -> None:
            if not cached and label:
                self.budget.count(phase)
            if self.on_cell is not None:
                self.on_cell(done, total, label, cached)
            self.check_cancel()

        return on_cell

    def render(self, plan: Plan, phase: str) -> dict[Job, Path]:
        """Render what ``plan`` misses (the caller checked ``fits``) and return every job's cached image."""
        self.check_cancel()
        if self.uncached(plan):
            self.scratch.mkdir(parents=True, exist_ok=True)
            try:
                run_plan(plan, self.engine, self.scratch, cache_dir=self.cache_dir, on_cell=self.counter(phase),
                         grid=False)
            finally:
                if self.saved is not None:
                    self.saved()
        return self.paths(plan)

    def paths(self, plan: Plan) -> dict[Job, Path]:
        """Every job's cached image (all must be rendered)."""
        found = {}
        for job, key in self.keys(plan).items():
            path = self.cache.get(key)
            if path is None:
                raise RenderError(f"cell {job.cell.label} seed {job.seed} is not in the cache after its render")
            found[job] = path
        return found

    def check_cancel(self) -> None:
        """Cancelled when the caller's cancel event is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled; finished cells stay in the workspace cache and the same tune continues "
                            "when run again")


class Scoring:
    """Scores of cell images against the references (ALL, OFF) of their seed, memoised by image path."""

    def __init__(self, scorer: Any, keep: np.ndarray, references: Mapping[int, tuple[Path, Path]]) -> None:
        self.scorer, self.keep = scorer, keep
        self.references = {seed: (_rgb(full), _rgb(off)) for seed, (full, off) in references.items()}
        self._memo: dict[tuple[str, int], Score] = {}

    def score(self, image: Path, seed: int) -> Score:
        """Effect kept and side effect left of the cell image ``image`` rendered at ``seed``."""
        key = (str(image), seed)
        if key not in self._memo:
            full, off = self.references[seed]
            name = getattr(self.scorer, "name", type(self.scorer).__name__)
            self._memo[key] = as_score(self.scorer.score(_rgb(image), full, off, self.keep), f"scorer {name!r}")
        return self._memo[key]

    def summary(self, images: Mapping[int, Path]) -> ScoreSummary:
        """Mean and spread over the seeds of ``images`` (seed -> image)."""
        return summarize([self.score(path, seed) for seed, path in sorted(images.items())])

    def by_label(self, paths: Mapping[Job, Path], seeds: Sequence[int]) -> dict[str, ScoreSummary]:
        """Per cell label of a rendered plan, the summary over ``seeds``."""
        grouped: dict[str, dict[int, Path]] = {}
        for job, path in paths.items():
            if job.seed in seeds:
                grouped.setdefault(job.cell.label, {})[job.seed] = path
        return {label: self.summary(images) for label, images in grouped.items()}


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
