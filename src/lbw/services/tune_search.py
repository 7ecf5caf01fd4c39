"""The ``search`` strategy of ``lbw tune``: Optuna's TPE sampler over the tunable blocks, seeded with a start;
and the ``random`` strategy, the baseline a search must beat: Optuna's random sampler over the same space.

Every tunable block takes a value from 0 to 1 (inside the sheet's bounds) in steps of 0.125 (the tutorial's finest
step), except the blocks the tutorial's analyzer run found inert (their lowered cells are byte for byte the source);
the other blocks keep the seed's values (the user's fixed blocks: the values the tune started with). The first trial
is the seed (the tutorial's result, or the sheet the tune started from), given to Optuna with ``enqueue_trial``.
Each trial renders one cell per tuning seed; TPE minimises ``lbw.domain.tune_rule.search_objective`` (the side
effect, a penalty for effect kept below the threshold, a tie-breaker toward the original weights); the result is the
best trial by the goal itself (``best_index``). The sampler has a fixed seed, so the same renders give the same
trials.

Resuming needs no Optuna storage: a re-run replays the search from the start with the same sampler seed; every
trial already rendered comes from the cell cache (costing no budget), so the replay reaches the interrupted trial
and goes on. The search stops when the next trial does not fit the budget, or after ``STALE_TRIALS`` trials in a
row that rendered nothing new (the sampler only proposes weights it has tried).

``random`` draws every trial uniformly from the same grid (no seed trial, no model of the scores): what a search
of the same budget finds by chance. The proof of ``docs/tune.md`` gives it five times the budget.

Example:
    >>> outcome = run_search(ctx, seed=tutorial_result)
    >>> outcome["trials"], outcome["result"][:2]
    (57, [1.0, 0.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lbw.domain.tune_rule import best_index, search_objective
from lbw.services.tune_cells import candidate_plan
from lbw.services.tune_context import TuneContext

PHASE = "search"
RANDOM = "random"
GRID = 0.125
STALE_TRIALS = 30
MAX_TRIALS = 100_000
REPORT_EVERY = 10


def value_range(lower: float | None, upper: float | None) -> tuple[float, float]:
    """The search's values: 0..1 on the ``GRID``, inside the sheet's bounds when it has them.

    Example:
        >>> value_range(None, None), value_range(0.3, 0.9)
        ((0.0, 1.0), (0.375, 0.875))
    """
    low = max(0.0, math.ceil((lower if lower is not None else 0.0) / GRID - 1e-9) * GRID)
    high = min(1.0, math.floor((upper if upper is not None else 1.0) / GRID + 1e-9) * GRID)
    return (low, high) if low <= high else (low, low)


def snap(value: float, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` on the search grid (``low``..``high`` in steps of ``GRID``).

    Example:
        >>> snap(0.3), snap(1.4), snap(-0.2)
        (0.25, 1.0, 0.0)
    """
    return min(high, max(low, round(value / GRID) * GRID))


def run_search(ctx: TuneContext, seed: Sequence[float], *, phase: str = PHASE) -> dict[str, Any]:
    """Run (or replay and continue) the search from ``seed``; returns its state with ``result`` (the weights),
    ``score`` (on the tuning seeds), ``trials`` and why it stopped. ``phase="random"``: the random baseline
    (``seed`` gives only the values of the blocks it does not tune)."""
    if phase not in (PHASE, RANDOM):
        raise ValueError(f"unknown search phase {phase!r}")
    st = ctx.state.setdefault(phase, {})
    cap = ctx.cells.budget.caps.get(phase, 0)
    seed = [float(v) for v in seed]
    if st.get("finished") and st.get("cap") == cap and st.get("seed") == seed:
        return st
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=ctx.sampler_seed) if phase == PHASE
               else optuna.samplers.RandomSampler(seed=ctx.sampler_seed))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    sheet = ctx.view().sheet
    ids = sheet.layout.ids
    low, high = value_range(sheet.lower, sheet.upper)
    inert = set((ctx.state.get("tutorial") or {}).get("inert") or ())
    blocks = [block for block in ctx.tunable if block not in inert]
    index = {block: ids.index(block) for block in blocks}
    space = {block: FloatDistribution(low, high, step=GRID) for block in blocks}
    if not space:
        st.update(finished=True, cap=cap, seed=seed, trials=0, result=seed, score=None, best_trial=None,
                  stopped="no block changes the image")
        ctx.save()
        return st
    if phase == PHASE:
        study.enqueue_trial({block: snap(seed[i], low, high) for block, i in index.items()})
    pool: list[tuple[Any, list[float]]] = []
    stale = trials = 0
    stopped = f"converged: {STALE_TRIALS} trials in a row proposed weights already rendered"
    view = ctx.view()
    while trials < MAX_TRIALS:
        trial = study.ask(space)
        vector = list(seed)
        for block, value in trial.params.items():
            vector[index[block]] = float(value)
        plan = candidate_plan(view, [("trial", vector)], ctx.tuning_seeds)
        if not ctx.cells.fits(plan, phase):
            stopped = f"budget: {ctx.cells.uncached(plan)} cells needed, {ctx.cells.budget.left(phase)} left"
            break
        before = ctx.cells.budget.used(phase)
        paths = ctx.cells.render(plan, phase)
        summary = ctx.scoring.summary({job.seed: path for job, path in paths.items()})
        study.tell(trial, search_objective(summary.score, vector, ctx.original, ctx.threshold))
        pool.append((summary, vector))
        trials += 1
        improved = ctx.consider(summary, vector)
        stale = 0 if ctx.cells.budget.used(phase) > before else stale + 1
        if improved or trials % REPORT_EVERY == 0:
            ctx.emit(phase, f"trial {trials}: effect {summary.effect:.3f} side {summary.side:.3f}"
                     + (" (best so far)" if improved else ""))
        if stale >= STALE_TRIALS:
            break
    else:
        stopped = f"the trial limit ({MAX_TRIALS})"
    if pool:
        chosen = best_index([(s.score, v) for s, v in pool], ctx.original, ctx.threshold)
        summary, vector = pool[chosen]
        st.update(result=vector, score={"effect": summary.effect, "side": summary.side}, best_trial=chosen + 1)
    else:
        st.update(result=list(seed), score=None, best_trial=None)
    st.update(finished=True, cap=cap, seed=seed, trials=trials, stopped=stopped)
    ctx.save()
    ctx.emit(phase, f"finished after {trials} trials ({stopped})")
    return st
