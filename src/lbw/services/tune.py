"""``lbw tune``: the founding tutorial's loop run unattended, and a black-box search beside it, on a project.

What it optimises (``docs/tune.md``): for a candidate weight vector, against renders of the same prompt and seed
with the full LoRA (ALL) and with the LoRA off (OFF), **effect kept** inside the keep box and **side effect left**
outside it (``lbw.render.scores``, or a scorer plugged in through the ``lbw.scorers`` entry points). Goal: the
least side effect with effect kept >= the threshold (default 0.9), ties toward the weights closer to ALL
(``lbw.domain.tune_rule``).

How: ``tutorial`` (``lbw.services.tune_tutorial``: the analyzer's classes, then Sub rounds at steps 0.5, 0.25,
0.125, every round an iteration of the project and every change a decision with its scores and why), ``search``
(``lbw.services.tune_search``: Optuna TPE over the tunable blocks, seeded with the tutorial's result), or
``both``. Scores are taken on the tuning seeds only; the held-out seeds are rendered for ALL, OFF and each result
at the end and reported apart. The better result (by the goal, on the tuning seeds) becomes the project's sheet,
every tunable block fixed.

Budget: ``budget`` cells in all, rendered cells only (the workspace cell cache serves the rest). It pays for the
references (ALL and OFF at every seed: up to 2 x seeds), the final evaluation (up to seeds per strategy) and the
strategies (``both``: the tutorial may use half of the rest, the search what the tutorial left). A plan that does
not fit what its phase has left is not started, so the budget is never exceeded. The state
(``lbw.services.tune_state``) and the cache make it resumable: after Ctrl-C the same call continues; a larger
budget continues a finished tune; ``restart=True`` starts a new one.

Example:
    >>> report = run_tune(store, "Face", TuneOptions(keep_box="0.3,0.1,0.7,0.5", budget=200))
    >>> report.winner, report.weights
    ('search', 'Face:1,0,0.5,...')
    >>> [(row.name, round(row.tuning.side, 2)) for row in report.rows]
    [('ALL', 1.0), ('tutorial', 0.41), ('search', 0.33), ('OFF', 0.0)]
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbw.domain.text import json_text
from lbw.domain.tune_rule import DEFAULT_THRESHOLD, best_index
from lbw.errors import LbwError, ProjectError
from lbw.files.atomic import write_text_atomic
from lbw.render.plan import MAX_SEED
from lbw.render.runner import CellCallback
from lbw.render.scorers import DEFAULT_SCORER
from lbw.services.project_types import ProjectView
from lbw.services.tune_context import TuneContext, TuneEvent, TuneProgress
from lbw.services.tune_keep import KeepRegion
from lbw.services.tune_report import KeepMaskInfo, ScoreRow, TuneReport, notes, report_data, write_grid
from lbw.services.tune_state import (
    describe_fingerprint,
    load_state,
    new_state,
    next_run,
    run_folder,
    save_state,
    tune_folder,
)
from lbw.store import Store

__all__ = ["DEFAULT_BUDGET", "STRATEGIES", "ScoreRow", "TuneEvent", "TuneOptions", "TuneReport",
           "default_held_out", "report_data", "run_tune"]

STRATEGIES = ("tutorial", "search", "both", "random")
DEFAULT_BUDGET = 200
HELD_OUT_COUNT = 2
GRID_FILE = "before-after.png"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class TuneOptions:
    """How to tune. ``keep_box``: ``x0,y0,x1,y1`` (pixels, or fractions when all <= 1; default the project's
    region); ``keep_mask``: a PNG of the keep region instead (``lbw.render.masks``: resized with nearest-neighbour
    to the render size, kept = above 50% alpha or luminance; not with ``keep_box``; ``lbw.services.tune_keep``);
    ``seeds``: the tuning seeds (default the project's); ``held_out_seeds``: seeds never tuned on (default the two
    after the largest tuning seed; ``()`` for none); ``analyzer_threshold``: the pixel threshold of the tutorial's
    analyzer run (default ``analysis_threshold``: 20 levels, 5 for renders of at most 128 px)."""

    keep_box: str | None = None
    keep_mask: str | Path | None = None
    budget: int = DEFAULT_BUDGET
    strategy: str = "both"
    threshold: float = DEFAULT_THRESHOLD
    seeds: tuple[int, ...] | None = None
    held_out_seeds: tuple[int, ...] | None = None
    scorer: str = DEFAULT_SCORER
    sampler_seed: int = 0
    analyzer_threshold: int | None = None
    restart: bool = False
    allow_empty_prompt: bool = False


def default_held_out(tuning: Sequence[int], count: int = HELD_OUT_COUNT) -> tuple[int, ...]:
    """``count`` seeds after the largest tuning seed that are not tuning seeds (wrapping to 0 past the largest).

    Example:
        >>> default_held_out((1, 2))
        (3, 4)
    """
    found: list[int] = []
    seed = max(tuning) + 1
    while len(found) < count:
        if seed > MAX_SEED:
            seed = 0
        if seed not in tuning and seed not in found:
            found.append(seed)
        seed += 1
    return tuple(found)


def run_tune(
    store: Store,
    name: str,
    options: TuneOptions | None = None,
    *,
    progress: TuneProgress | None = None,
    on_cell: CellCallback | None = None,
    cancel: threading.Event | None = None,
    backend: Any = None,
    backend_options: Mapping[str, Any] | None = None,
) -> TuneReport:
    """Tune project ``name`` (or continue its interrupted tune); see the module docstring.

    ``progress(TuneEvent)`` follows each step (with the best candidate so far), ``on_cell(done, total, label,
    cached)`` each cell; an exception raised by either (Ctrl-C) stops the tune with its state saved. ``backend``:
    an open backend to use (left open); else one is made from the project's settings and ``backend_options``.
    """
    from lbw.render.scorers import load_scorer
    from lbw.services.project_render import analysis_threshold, make_project_backend
    from lbw.services.projects import check_prompt, get_project
    from lbw.services.tune_cells import Budget, Cells, Scoring, ones_sheet
    from lbw.services.tune_keep import copy_mask, keep_region

    options = options or TuneOptions()
    _check_options(options)
    view = get_project(store, name)
    check_prompt(view.settings, options.allow_empty_prompt)
    tuning = tuple(options.seeds) if options.seeds is not None else tuple(view.settings.seeds)
    held_out = tuple(options.held_out_seeds) if options.held_out_seeds is not None else default_held_out(tuning)
    _check_seeds(tuning, held_out)
    caps = _caps(options, len(tuning) + len(held_out))
    folder = tune_folder(store.workspace, view.id)
    state = None if options.restart else load_state(folder)
    region = keep_region(options, view, folder, state)
    pixels = options.analyzer_threshold
    if pixels is None:
        pixels = analysis_threshold(view.settings)
    scorer = _user_error(lambda: load_scorer(options.scorer))
    fingerprint = {"strategy": options.strategy, "threshold": options.threshold, "seeds": list(tuning),
                   "held_out": list(held_out), **region.fingerprint, "scorer": options.scorer,
                   "sampler_seed": options.sampler_seed, "settings": _settings_digest(view),
                   "analyzer_threshold": pixels}
    if state is not None and state.get("fingerprint") != fingerprint:
        if state.get("status") != "done":
            raise ProjectError(
                f"project {view.name!r} has an unfinished tune with other options or settings "
                f"({describe_fingerprint(state.get('fingerprint') or {})}); run it with those to continue it, or "
                "pass --restart to start a new one")
        state = None
    if state is None and not view.sheet.unfixed_ids:
        raise ProjectError(f"every block of project {view.name!r}'s sheet is fixed: nothing to tune; unfix the "
                           f"blocks to tune (lbw sheet unfix --project {view.name} ...) or undo to an earlier "
                           "iteration")
    view = _use_settings(store, view, tuning, region.roi)
    if state is None:
        tunable = view.sheet.unfixed_ids
        state = new_state(fingerprint, options.budget, run=next_run(folder))
        state["start"] = {"values": list(view.sheet.values), "tunable": list(tunable)}
        run_folder(folder, state["run"]).mkdir(parents=True, exist_ok=True)
    state["budget"] = options.budget
    state["status"] = "running"
    budget = Budget(state["counts"], caps)
    out = run_folder(folder, state["run"])
    copy = copy_mask(region, out)
    engine = backend if backend is not None else make_project_backend(view.settings, backend_options)
    cells = Cells(engine, store.workspace / "cache", out / "scratch", budget, on_cell=on_cell, cancel=cancel,
                  saved=lambda: save_state(folder, state))
    try:
        save_state(folder, state)
        references = _references(cells, view, tuning + held_out)
        scoring = Scoring(scorer, region.mask, references)
        ctx = TuneContext(store, name, folder, state, cells, scoring, engine, options.threshold, tuning,
                          tuple(state["start"]["tunable"]), tuple(state["start"]["values"]), ones_sheet(view.sheet),
                          options.sampler_seed, options.allow_empty_prompt, cancel, progress,
                          analyzer_threshold=pixels)
        ctx.emit("references", f"ALL and LoRA off at {len(tuning) + len(held_out)} seeds")
        results = _strategies(ctx, options, budget)
        report = _finish(ctx, options, results, references, tuning, held_out, region, copy, out)
        state["status"] = "done"
        save_state(folder, state)
        return report
    finally:
        save_state(folder, state)
        if backend is None:
            engine.close()
        shutil.rmtree(out / "scratch", ignore_errors=True)


def _strategies(ctx: TuneContext, options: TuneOptions, budget: Any) -> dict[str, list[float]]:
    from lbw.services.tune_search import run_search
    from lbw.services.tune_tutorial import run_tutorial

    results: dict[str, list[float]] = {}
    if options.strategy in ("tutorial", "both"):
        results["tutorial"] = list(run_tutorial(ctx)["result"])
    if options.strategy in ("search", "both"):
        if options.strategy == "both":
            tutorial = min(budget.used("tutorial"), budget.caps["tutorial"])
            budget.caps["search"] = budget.caps["available"] - tutorial
        seed = results.get("tutorial", list(ctx.start_values))
        results["search"] = list(run_search(ctx, seed)["result"])
    if options.strategy == "random":
        results["random"] = list(run_search(ctx, list(ctx.start_values), phase="random")["result"])
    return results


def _caps(options: TuneOptions, seeds: int) -> dict[str, int]:
    """What each phase may render: references 2 x seeds, evaluation seeds per strategy, strategies the rest."""
    strategies = 2 if options.strategy == "both" else 1
    references, evaluation = 2 * seeds, strategies * seeds
    available = options.budget - references - evaluation
    if available < 1:
        raise ProjectError(f"--budget {options.budget} is too small: ALL and LoRA off at {seeds} seeds and the final "
                           f"evaluation take up to {references + evaluation} cells; give more than that")
    caps = {"references": references, "evaluation": evaluation, "available": available}
    if options.strategy == "tutorial":
        caps["tutorial"] = available
    elif options.strategy in ("search", "random"):
        caps[options.strategy] = available
    else:
        caps["tutorial"] = available // 2
        caps["search"] = available - available // 2
    return caps


def _references(cells: Any, view: ProjectView, seeds: Sequence[int]) -> dict[int, tuple[Path, Path]]:
    """ALL and OFF at every seed (rendered when missing): seed -> (ALL image, OFF image)."""
    from lbw.services.tune_cells import reference_plan

    plan = reference_plan(view, seeds)
    if not cells.fits(plan, "references"):
        raise ProjectError("the references do not fit the budget")  # pragma: no cover - reserved by _caps
    found: dict[int, dict[float, Path]] = {}
    for job, path in cells.render(plan, "references").items():
        found.setdefault(job.seed, {})[float(job.axis_value)] = path
    return {seed: (by_axis[1.0], by_axis[0.0]) for seed, by_axis in found.items()}


def _finish(ctx: TuneContext, options: TuneOptions, results: dict[str, list[float]],
            references: dict[int, tuple[Path, Path]], tuning: tuple[int, ...], held_out: tuple[int, ...],
            region: KeepRegion, copy: Path | None, out: Path) -> TuneReport:
    """Render each result at every seed, score, pick the winner, make it the project's sheet, write the grid and
    the report."""
    from lbw.services.tune_cells import candidate_plan

    view = ctx.view()
    seeds = tuning + held_out
    plan = candidate_plan(view, list(results.items()), seeds)
    if not ctx.cells.fits(plan, "evaluation"):
        raise ProjectError(f"the final evaluation needs {ctx.cells.uncached(plan)} cells; "
                           f"{ctx.cells.budget.left('evaluation')} are left")  # pragma: no cover - reserved
    images: dict[str, dict[int, Path]] = {"ALL": {s: references[s][0] for s in seeds}}
    for job, path in ctx.cells.render(plan, "evaluation").items():
        images.setdefault(job.cell.label, {})[job.seed] = path
    images["OFF"] = {s: references[s][1] for s in seeds}
    vectors: dict[str, tuple[float, ...] | None] = {"ALL": ctx.original, **{k: tuple(v) for k, v in results.items()},
                                                    "OFF": None}
    rows = []
    for label, by_seed in images.items():
        tuned = ctx.scoring.summary({s: by_seed[s] for s in tuning})
        held = ctx.scoring.summary({s: by_seed[s] for s in held_out}) if held_out else None
        rows.append(ScoreRow(label, vectors[label], tuned, held))
    strategies = [row for row in rows if row.name in results]
    winner = strategies[best_index([(r.tuning.score, r.weights or ()) for r in strategies], ctx.original,
                                   ctx.threshold)]
    _apply(ctx, winner)
    view = ctx.view()
    stops = notes(ctx.state, results)
    title = region.describe(Path(copy.name) if copy is not None else None)
    grid = write_grid(view.name, [(r.name, r.tuning.effect, r.tuning.side) for r in rows], images, seeds, held_out,
                      region.mask, title, out / GRID_FILE)
    cells = _relative_cells(images, ctx.store)
    mask = None if copy is None else KeepMaskInfo(copy, str(region.digest), region.kept, region.roi)
    report = TuneReport(view.name, winner.name, view.sheet.weight_line(), tuple(view.sheet.values), tuple(rows),
                        {k: int(v) for k, v in ctx.state["counts"].items()}, options.budget, tuning, held_out,
                        region.box, options.scorer, options.threshold, tuple(ctx.state.get("iterations", [])), grid,
                        out / REPORT_FILE, stops, mask, cells)
    write_text_atomic(report.report, json_text(report_data(report, ctx.state), indent=2, allow_nan=False) + "\n")
    ctx.emit("evaluation", f"{winner.name} wins: effect {winner.tuning.effect:.3f} side {winner.tuning.side:.3f} "
                           "on the tuning seeds")
    return report


def _relative_cells(images: Mapping[str, Mapping[int, Path]], store: Store) -> dict[str, dict[int, str]]:
    """The grid's images relative to the workspace (for a grid redrawn in another language); empty when one lies
    outside it."""
    try:
        return {name: {seed: store.relative(path) for seed, path in by_seed.items()}
                for name, by_seed in images.items()}
    except LbwError:
        return {}


def _apply(ctx: TuneContext, winner: ScoreRow) -> None:
    """Make the winner's weights the project's sheet (every tunable block fixed; one decision per change) and
    record an iteration of the result when the sheet changed (its cells come from the cache)."""
    from lbw.services.project_render import project_plan
    from lbw.services.projects import render_iteration, set_block

    target = list(winner.weights or ())
    if ctx.state.get("applied") == target:
        return
    view = ctx.view()
    why = (f"the {winner.name} strategy's result: effect kept {winner.tuning.effect:.3f}, side effect left "
           f"{winner.tuning.side:.3f} on the tuning seeds")
    changed = False
    for index, block in enumerate(view.sheet.layout.ids):
        if block in ctx.tunable and (view.sheet.values[index] != target[index] or block not in view.sheet.fixed):
            view = set_block(ctx.store, ctx.name, block, value=target[index], fixed=True, source="auto",
                             action="tune", expected_version=view.version,
                             detail={"why": why, "tune": {"strategy": winner.name, "effect": winner.tuning.effect,
                                                          "side": winner.tuning.side}})
            changed = True
    if changed:
        plan = project_plan(view.sheet, view.settings, "sub")
        if ctx.cells.fits(plan, "evaluation"):
            try:
                it = render_iteration(ctx.store, ctx.name, mode="sub", backend=ctx.engine, cancel=ctx.cancel,
                                      progress=ctx.cells.counter("evaluation"),
                                      allow_empty_prompt=ctx.allow_empty_prompt, source="auto")
            finally:
                ctx.save()
            ctx.record_iteration(it.number)
    ctx.state["applied"] = target
    ctx.save()


def _use_settings(store: Store, view: ProjectView, tuning: tuple[int, ...], box: str) -> ProjectView:
    """The tuning seeds and the keep box (a mask's bounding box) become the project's seeds and region (one
    ``settings`` decision), so the analyzer and every Sub round the tune records render the same seeds and measure
    the same region."""
    from lbw.services.projects import update_settings

    changes: dict[str, Any] = {}
    if tuple(view.settings.seeds) != tuning:
        changes["seeds"] = list(tuning)
    if view.settings.roi != box:
        changes["roi"] = box
    if not changes:
        return view
    return update_settings(store, view.name, changes, expected_version=view.version, source="auto")


def _settings_digest(view: ProjectView) -> str:
    data = {k: v for k, v in view.settings.to_dict().items() if k not in ("seeds", "roi")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _check_options(options: TuneOptions) -> None:
    if options.strategy not in STRATEGIES:
        raise ProjectError(f"unknown strategy {options.strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if isinstance(options.budget, bool) or not isinstance(options.budget, int) or options.budget < 1:
        raise ProjectError(f"the budget must be a positive number of cells, got {options.budget!r}")
    threshold = options.threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold <= 1.0:
        raise ProjectError(f"the threshold must be a number above 0 and at most 1, got {threshold!r}")
    pixels = options.analyzer_threshold
    if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 <= pixels <= 255):
        raise ProjectError(f"the analyzer threshold must be an integer from 0 to 255 (levels), got {pixels!r}")
    seed = options.sampler_seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ProjectError(f"the sampler seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def _check_seeds(tuning: tuple[int, ...], held_out: tuple[int, ...]) -> None:
    if not tuning:
        raise ProjectError("no tuning seeds: give --seeds")
    for what, seeds in (("tuning", tuning), ("held-out", held_out)):
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ProjectError(f"{what} seed {seed!r} is not an integer from 0 to {MAX_SEED}")
        if len(set(seeds)) != len(seeds):
            raise ProjectError(f"the {what} seeds repeat a seed: {', '.join(map(str, seeds))}")
    both = sorted(set(tuning) & set(held_out))
    if both:
        raise ProjectError(f"seed {', '.join(map(str, both))} is both a tuning and a held-out seed; held-out seeds "
                           "are never tuned on")


def _user_error(make: Any) -> Any:
    """``make()`` with a render-layer refusal (a bad box, an unknown scorer) as a ProjectError."""
    try:
        return make()
    except LbwError as error:
        raise ProjectError(error.message) from None
