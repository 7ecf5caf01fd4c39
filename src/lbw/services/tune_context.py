"""What the strategies of ``lbw tune`` share: the project, the options, cells and scores, the state, progress.

Example:
    >>> ctx.emit("tutorial", "step 0.5 round 1: took IN01")   # a TuneEvent with the best candidate so far
    >>> ctx.consider(summary, vector)                          # True when it is the best so far
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbw.domain.tune_rule import ScoreSummary, goal_key
from lbw.render.backends.base import Backend
from lbw.services.project_types import ProjectView
from lbw.services.tune_cells import Cells, Scoring
from lbw.services.tune_state import save_state
from lbw.store import Store


@dataclass(frozen=True)
class TuneEvent:
    """A progress line: the phase, what happened, cells rendered so far and the budget, the best candidate so far
    (its scores on the tuning seeds and its weights)."""

    phase: str
    text: str
    cells: int
    budget: int
    best: ScoreSummary | None = None
    best_weights: tuple[float, ...] | None = None


TuneProgress = Callable[[TuneEvent], None]


@dataclass
class TuneContext:
    """The project and everything a strategy needs; ``state`` is the tune's JSON state (saved by ``save``)."""

    store: Store
    name: str
    folder: Path
    state: dict[str, Any]
    cells: Cells
    scoring: Scoring
    engine: Backend
    threshold: float
    tuning_seeds: tuple[int, ...]
    tunable: tuple[str, ...]
    start_values: tuple[float, ...]
    original: tuple[float, ...]
    sampler_seed: int = 0
    allow_empty_prompt: bool = False
    cancel: threading.Event | None = None
    progress: TuneProgress | None = None
    best: tuple[ScoreSummary, tuple[float, ...]] | None = field(default=None)
    analyzer_threshold: int = 20  # the tutorial analyzer's pixel threshold (levels of 255)

    def view(self) -> ProjectView:
        """The project as it is now."""
        from lbw.services.projects import get_project

        return get_project(self.store, self.name)

    def save(self) -> None:
        """Write the state (atomically)."""
        save_state(self.folder, self.state)

    def consider(self, summary: ScoreSummary, weights: Sequence[float]) -> bool:
        """Remember ``weights`` when they are the best candidate so far by the goal; True when they are."""
        vector = tuple(float(w) for w in weights)
        key = goal_key(summary.score, vector, self.original, self.threshold)
        if self.best is None or key < goal_key(self.best[0].score, self.best[1], self.original, self.threshold):
            self.best = (summary, vector)
            return True
        return False

    def emit(self, phase: str, text: str) -> None:
        """Tell the caller's progress callback (if any) what happened, with the best candidate so far."""
        if self.progress is None:
            return
        best, weights = self.best if self.best is not None else (None, None)
        self.progress(TuneEvent(phase, text, self.cells.budget.total, int(self.state.get("budget", 0)), best,
                                weights))

    def record_iteration(self, number: int) -> None:
        """Note an iteration the tune recorded in the project."""
        numbers = self.state.setdefault("iterations", [])
        if number not in numbers:
            numbers.append(number)
