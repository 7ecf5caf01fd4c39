"""``lbw tune`` as a front end runs it (the workbench's Auto button; any other caller can do the same): the form
read into ``TuneOptions``, a live watch of a running tune (cells, ETA, the best candidate so far), the score table
as rows of text, and a project's last tune read back from its state and report.

Example:
    >>> options = tune_form(view, keep_box="0.3,0.1,0.7,0.5", budget=40, strategy="tutorial", threshold=0.9,
    ...                     held_out="-")
    >>> options.budget, options.held_out_seeds
    (40, ())
    >>> watch = TuneWatch(budget=40)
    >>> watch.on_cell(1, 2, "ALL", False)
    >>> watch.now().cells
    1
    >>> score_rows(report_data(report))[0]
    ['ALL', '1.000', '-', '1.000', '-']
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbw.domain.tune_rule import DEFAULT_THRESHOLD, ScoreSummary
from lbw.errors import LbwError, ProjectError
from lbw.services.project_types import ProjectView
from lbw.services.tune import DEFAULT_BUDGET, GRID_FILE, REPORT_FILE, STRATEGIES, TuneEvent, TuneOptions
from lbw.services.tune_report import GridWords
from lbw.store import Store

__all__ = ["NO_SEEDS", "LastTune", "ReportSummary", "TuneNow", "TuneWatch", "last_tune", "report_summary",
           "score_rows", "tune_form", "tune_grid"]

NO_SEEDS = "-"  # what the held-out seeds field takes for "none"
MAX_BOX_CHARS = 200
MAX_BUDGET = 1_000_000
MAX_REPORT_BYTES = 16 * 1024 * 1024


# ----------------------------------------------------------------------------------------------- the form


def tune_form(
    view: ProjectView,
    *,
    keep_box: Any = None,
    keep_mask: Path | None = None,
    budget: Any = DEFAULT_BUDGET,
    strategy: Any = "both",
    threshold: Any = DEFAULT_THRESHOLD,
    held_out: Any = None,
    restart: bool = False,
) -> TuneOptions:
    """The options of a tune of ``view`` from form values (text or numbers as a page sends them), checked at once
    so that a mistake is one line before anything is queued: the keep box (empty: the project's region) must
    parse and leave part of the image outside it, or the keep mask (a path the caller chose, e.g. the project's
    drawn mask; not with a box) must read as one, the budget is a whole number of cells, the threshold is in
    (0, 1], the strategy is known, the held-out seeds are numbers (empty: the default two; ``-``: none), and the
    project has a prompt. What needs the project's seeds (a budget too small for them) is checked by ``run_tune``.

    Example:
        >>> tune_form(view, keep_box="nan,0,1,1")
        Traceback (most recent call last):
        lbw.errors.ProjectError: keep box 'nan,0,1,1': expected four finite numbers x0,y0,x1,y1
    """
    from lbw.render.masks import read_mask
    from lbw.render.scores import keep_mask as keep_box_mask
    from lbw.services.projects import check_prompt

    box = _text(keep_box)
    if len(box) > MAX_BOX_CHARS:
        raise ProjectError(f"the keep box is at most {MAX_BOX_CHARS} characters: x0,y0,x1,y1")
    if keep_mask is not None:
        if box:
            raise ProjectError("give the keep region as a box or as the drawn mask, not both: empty the keep box "
                               "or untick the drawn mask")
        try:
            read_mask(keep_mask, view.settings.width, view.settings.height)
        except LbwError as error:
            raise ProjectError(error.message, where=error.where) from None
    elif not box and not view.settings.roi:
        raise ProjectError(f"project {view.name!r} has no region: give the keep box x0,y0,x1,y1 (the part of the "
                           "image the LoRA is for, e.g. the face; fractions or pixels)")
    try:
        if keep_mask is None:
            keep_box_mask(box or view.settings.roi or "", view.settings.width, view.settings.height)
    except LbwError as error:
        raise ProjectError(error.message) from None
    cells = _whole(budget, "the budget")
    if not 1 <= cells <= MAX_BUDGET:
        raise ProjectError(f"the budget must be a number of cells from 1 to {MAX_BUDGET}, got {cells}")
    name = _text(strategy) or "both"
    if name not in STRATEGIES:
        raise ProjectError(f"unknown strategy {name[:40]!r}; expected one of {', '.join(STRATEGIES)}")
    least = _number(threshold, "the threshold")
    if not 0.0 < least <= 1.0:
        raise ProjectError(f"the threshold must be above 0 and at most 1, got {least:g}")
    check_prompt(view.settings)
    return TuneOptions(keep_box=box or None, keep_mask=keep_mask, budget=cells, strategy=name, threshold=least,
                       held_out_seeds=_held_out(held_out), restart=bool(restart))


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or _text(value) == "":
        raise ProjectError(f"{what}: give a number")
    try:
        number = float(value if isinstance(value, int | float) else _text(value)[:40])
    except ValueError:
        raise ProjectError(f"{what}: {_text(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise ProjectError(f"{what}: {_text(value)[:40]!r} is not a finite number")
    return number


def _whole(value: Any, what: str) -> int:
    number = _number(value, what)
    if number != int(number):
        raise ProjectError(f"{what}: {number:g} is not a whole number of cells")
    return int(number)


def _held_out(value: Any) -> tuple[int, ...] | None:
    from lbw.services.workbench import parse_seeds

    text = _text(value)
    if not text:
        return None
    if text == NO_SEEDS:
        return ()
    try:
        return parse_seeds(text)
    except ProjectError as error:
        raise ProjectError(f"held-out seeds: {error.message} (or {NO_SEEDS} for none)") from None


# ----------------------------------------------------------------------------------------------- live


@dataclass(frozen=True)
class TuneNow:
    """A running tune at one moment: the phase and its last line, cells rendered by the whole tune and the budget,
    cells rendered by this run (its rate gives the ETA), the best candidate so far, and how many progress events
    came (a page redraws what the tune recorded when this number moves)."""

    phase: str = ""
    text: str = ""
    cells: int = 0
    budget: int = 0
    rendered: int = 0
    best: ScoreSummary | None = None
    best_weights: tuple[float, ...] | None = None
    events: int = 0

    def eta(self, elapsed: float) -> float | None:
        """Seconds left if the whole budget is spent at this run's rate so far (None before the first cell); the
        tune may finish earlier (a strategy that converges stops)."""
        if self.rendered <= 0 or elapsed <= 0:
            return None
        return max(0, self.budget - self.cells) * elapsed / self.rendered


class TuneWatch:
    """Follows a tune: pass ``on_event`` as ``run_tune``'s ``progress`` and ``on_cell`` as its ``on_cell`` (both
    called from the thread that runs the tune); ``now()`` from any thread says where it is."""

    def __init__(self, budget: int) -> None:
        self._lock = threading.Lock()
        self._now = TuneNow(budget=int(budget))

    def now(self) -> TuneNow:
        """The latest state."""
        return self._now

    def on_event(self, event: TuneEvent) -> None:
        """A step of the tune (a round, an improving trial, the evaluation)."""
        with self._lock:
            now = self._now
            self._now = TuneNow(event.phase, event.text, int(event.cells), int(event.budget), now.rendered,
                                event.best, event.best_weights, now.events + 1)

    def on_cell(self, done: int, total: int, label: str, cached: bool) -> None:
        """A cell finished; rendered ones count (as the tune's budget counts them)."""
        if cached or not label:
            return
        with self._lock:
            now = self._now
            self._now = TuneNow(now.phase, now.text, now.cells + 1, now.budget, now.rendered + 1, now.best,
                                now.best_weights, now.events)


# ----------------------------------------------------------------------------------------------- results


def score_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """The score table of a report (``report_data(report)`` or a ``report.json``): per row (ALL, each strategy's
    result, OFF) its name, effect kept on the tuning and held-out seeds, side effect left on the same; the mean
    with its spread when there are two seeds or more, ``-`` where there is nothing (no held-out seeds).

    Example:
        >>> score_rows({"rows": [{"name": "search", "tuning": {"effect": 0.8704, "side": 0.9431,
        ...     "effect_sd": 0.0541, "side_sd": 0.015, "seeds": 2}, "held_out": None}]})
        [['search', '0.870±0.054', '-', '0.943±0.015', '-']]
    """
    rows = []
    for row in _list(data.get("rows")):
        if not isinstance(row, Mapping):
            continue
        tuning, held = row.get("tuning"), row.get("held_out")
        rows.append([str(row.get("name", "?"))[:40], _mean(tuning, "effect"), _mean(held, "effect"),
                     _mean(tuning, "side"), _mean(held, "side")])
    return rows


@dataclass(frozen=True)
class ReportSummary:
    """What a report says beside its table, as text: the winner, the weights line, the threshold, the keep region
    (the box, or ``mask keep-mask.png (1024 px within 16,13,48,45)``),
    the tuning and held-out seeds, the iterations recorded and the notes (why a strategy stopped)."""

    winner: str
    weights: str
    threshold: str
    keep_box: str
    tuning_seeds: tuple[int, ...]
    held_out_seeds: tuple[int, ...]
    iterations: tuple[int, ...]
    notes: tuple[str, ...]


def report_summary(data: Mapping[str, Any]) -> ReportSummary:
    """The summary of a report (``report_data(report)`` or a ``report.json``); what is missing or of the wrong
    kind is left out, so a damaged file shows what it still holds.

    Example:
        >>> report_summary({"winner": "search", "tuning_seeds": [1, 2], "held_out_seeds": "x"}).held_out_seeds
        ()
    """

    def text(key: str, limit: int = 2000) -> str:
        value = data.get(key)
        return value[:limit] if isinstance(value, str) else ""

    def numbers(key: str) -> tuple[int, ...]:
        return tuple(v for v in _list(data.get(key)) if isinstance(v, int) and not isinstance(v, bool))

    threshold = data.get("threshold")
    region = text("keep_box", 200)
    mask = data.get("keep_mask")
    if not region and isinstance(mask, Mapping):  # a mask: its file's name, kept pixels and bounds
        kept, bounds, file = mask.get("kept_pixels"), mask.get("bounding_box"), mask.get("file")
        region = (f"mask {Path(file[:500]).name[:100] if isinstance(file, str) else '?'}"
                  f" ({kept if type(kept) is int else '?'} px"
                  f"{f' within {bounds[:100]}' if isinstance(bounds, str) else ''})")
    return ReportSummary(text("winner", 40), text("weights"), f"{threshold:g}" if _finite(threshold) else "",
                         region, numbers("tuning_seeds"), numbers("held_out_seeds"),
                         numbers("iterations"),
                         tuple(note[:500] for note in _list(data.get("notes")) if isinstance(note, str)))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mean(summary: Any, key: str) -> str:
    if not isinstance(summary, Mapping):
        return "-"
    value, spread, seeds = summary.get(key), summary.get(f"{key}_sd"), summary.get("seeds")
    if not _finite(value):
        return "-"
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 2 and _finite(spread):
        return f"{value:.3f}±{spread:.3f}"
    return f"{value:.3f}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LastTune:
    """A project's latest tune as stored: ``finished`` or not (stopped, or running now), the cells it rendered and
    its budget, and when it finished its report (``report.json`` as data) and before/after grid."""

    finished: bool
    cells: int
    budget: int
    run: int
    report: dict[str, Any] | None
    grid: Path | None


def last_tune(store: Store, name: str) -> LastTune | None:
    """The project's latest tune (None when it was never tuned); a damaged state or report is a ProjectError
    naming the file."""
    from lbw.files.json_text import load_json
    from lbw.services.projects import get_project
    from lbw.services.tune_state import load_state, run_folder, tune_folder

    view = get_project(store, name)
    folder = tune_folder(store.workspace, view.id)
    state = load_state(folder)
    if state is None:
        return None
    run = state.get("run")
    if isinstance(run, bool) or not isinstance(run, int) or not 0 < run < 10**6:
        raise ProjectError(f"tune state: run must be a run number, got {str(run)[:40]!r}; start a new tune",
                           where=str(folder / "state.json"))
    budget = state.get("budget")
    budget = budget if isinstance(budget, int) and not isinstance(budget, bool) else 0
    cells = sum(int(v) for v in state["counts"].values())  # load_state checked every count
    finished = state.get("status") == "done"
    out = run_folder(folder, run)
    report, grid = None, None
    path = out / REPORT_FILE
    if finished and path.is_file():
        raw = path.read_bytes()[:MAX_REPORT_BYTES + 1]
        if len(raw) > MAX_REPORT_BYTES:
            raise ProjectError(f"the tune report is larger than {MAX_REPORT_BYTES} bytes", where=str(path))
        try:
            data = load_json(raw.decode("utf-8"), where=str(path), what="tune report", error=ProjectError)
        except UnicodeDecodeError:
            raise ProjectError("the tune report is not UTF-8 text", where=str(path)) from None
        if not isinstance(data, dict) or data.get("lbw_tune_report") != 1:
            raise ProjectError('not a tune report (expected "lbw_tune_report": 1)', where=str(path))
        report = data
        grid = out / GRID_FILE if (out / GRID_FILE).is_file() else None
    return LastTune(finished, cells, budget, run, report, grid)


def tune_grid(store: Store, name: str, lang: str, words: GridWords) -> Path | None:
    """The before/after grid of the project's last finished tune in language ``lang``, drawn once with ``words``
    from the report's cells (``before-after.<lang>.png`` beside the English ``before-after.png``, which is what
    ``lang`` ``en`` gets); None when there is no finished tune. A report without cells (a tune of an earlier lbw)
    gives the English grid; a cell image gone from the cache is a ProjectError naming it."""
    from PIL import Image

    from lbw.render.masks import read_mask
    from lbw.render.paths import safe_component
    from lbw.render.scores import keep_mask
    from lbw.services.tune_report import write_grid

    last = last_tune(store, name)
    if last is None or last.report is None or last.grid is None:
        return None
    data = last.report
    cells = data.get("grid_cells")
    if lang == "en" or not isinstance(cells, dict) or not cells:
        return last.grid
    path = last.grid.with_name(f"before-after.{safe_component(lang, fallback='xx', limit=8)}.png")
    if path.is_file():
        return path

    def inside(text: Any, what: str) -> Path:  # relative to the workspace, or absolute inside it
        try:
            found = store.path_of(store.relative(text) if Path(text).is_absolute() else text)
        except (LbwError, TypeError):
            found = None
        if found is None or not found.is_file():
            raise ProjectError(f"the tune's {what} is gone: {str(text)[:200]}; run the tune again to redraw its grid",
                               where=str(last.grid.with_name(REPORT_FILE)))
        return found

    tuning = tuple(data.get("tuning_seeds") or ())
    held_out = tuple(data.get("held_out_seeds") or ())
    seeds = tuning + held_out
    rows = [(row["name"], row["tuning"]["effect"], row["tuning"]["side"]) for row in data["rows"]]
    images = {row: {seed: inside(cells.get(row, {}).get(str(seed)), f"{row} image at seed {seed}") for seed in seeds}
              for row, _, _ in rows}
    with Image.open(images[rows[0][0]][seeds[0]]) as first:
        width, height = first.size
    mask = data.get("keep_mask")
    if isinstance(mask, dict):
        copy = inside(mask.get("file"), "keep mask")
        keep = read_mask(copy, width, height)
        region = words.region(keep, None, copy.name)
    else:
        keep = keep_mask(str(data.get("keep_box")), width, height)
        region = words.region(keep, str(data.get("keep_box")), None)
    return write_grid(str(data.get("project", name)), rows, images, seeds, held_out, keep, region, path, words)
