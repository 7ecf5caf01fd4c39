"""The ``tutorial`` strategy of ``lbw tune``: the founding tutorial's loop, run with the project's own operations.

1. **Classify**: the Effective Block Analyzer on the blocks the tune may change (``run_analysis``, the project's
   region = the keep box), then the sheet from its classes (``start_sheet_from_analysis``: important 1 fixed,
   unneeded 0 fixed, unclear 0.5 open).
2. **Sub rounds** at step 0.5, then 0.25 and 0.125 ("go deeper": the tunable blocks that can go down by the step
   are unfixed again). Each round renders the sheet's Sub list (``render_iteration``: an iteration of the project)
   and scores every cell on the tuning seeds; ``lbw.domain.tune_rule.decide_round`` decides: takes are fixed at
   the lowered value; after a round with takes the others are tried again in the new context; a round without
   takes fixes every open block at its value and the step halves. When the sheet with a round's takes measures
   below the threshold after all, every take but the best is undone (``combined_check``).

Every change is a decision of the project (source ``auto``) whose detail holds the cell, the scores, the rule and
why (``why``), and each block's earlier tries, so the History shows them and a person can undo to any iteration.
Decisions about to be applied are saved in the state first, so an interrupt between two of them is finished on
the next run without rendering.

Example:
    >>> outcome = run_tutorial(ctx)
    >>> outcome["finished"], outcome["result"][:3]
    (True, [1.0, 0.0, 0.5])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lbw.domain.layouts import SD26
from lbw.domain.tune_rule import (
    KEEP,
    TAKE,
    TUTORIAL_STEPS,
    Candidate,
    Decision,
    Score,
    combined_check,
    decide_round,
    lowerable,
)
from lbw.render.analysis import Thresholds
from lbw.services.project_render import analysis_plan, project_plan
from lbw.services.tune_context import TuneContext

PHASE = "tutorial"
# The analyzer as the tutorial runs it: each block lowered to 0.5 from 1; the pixel threshold is the tune's
# (``TuneOptions.analyzer_threshold``, by default ``analysis_threshold``: 20 levels, 5 for renders of at most 128
# px). With 20 on the world's flat 64-px pictures every block measured under 1% Diff, all were classed unneeded,
# the start sheet was all zeros and the face was lost.
ANALYZER = {"probe": 0.5, "base": 1.0}


def run_tutorial(ctx: TuneContext) -> dict[str, Any]:
    """Run (or continue) the tutorial strategy; returns its state with ``result`` (the weights), ``finished``
    and, when the budget stopped it, ``stopped``."""
    st = ctx.state.setdefault("tutorial", {})
    if st.get("finished"):
        return st
    st.pop("stopped", None)
    if _classify(ctx, st):
        while st.get("step_index", 0) < len(TUTORIAL_STEPS):
            step = TUTORIAL_STEPS[st.get("step_index", 0)]
            if not st.get("step_ready"):
                _prepare_step(ctx, st, step)
            outcome = _round(ctx, st, step)
            if outcome == "budget":
                break
            if outcome == "done":
                st.update(step_index=st.get("step_index", 0) + 1, step_ready=False, round=0, last_takes=[])
                ctx.save()
        else:
            st["finished"] = True
    st["result"] = list(ctx.view().sheet.values)
    ctx.save()
    if st.get("finished"):
        ctx.emit(PHASE, "finished: every block fixed")
    return st


def _stop(ctx: TuneContext, st: dict[str, Any], what: str, needed: int) -> None:
    left = ctx.cells.budget.left(PHASE)
    st["stopped"] = f"the budget stopped it before {what} ({needed} cells needed, {left} left)"
    ctx.emit(PHASE, st["stopped"])


def _classify(ctx: TuneContext, st: dict[str, Any]) -> bool:
    """The analyzer run and the sheet from its classes (once); False when the budget does not allow the run."""
    from lbw.services.projects import run_analysis, start_sheet_from_analysis

    if st.get("sheet_started"):
        return True
    view = ctx.view()
    if st.get("analysis") is None:
        blocks = tuple(b for b in ctx.tunable if b in SD26.ids)
        threshold = ctx.analyzer_threshold
        plan = analysis_plan(view.sheet, view.settings, blocks=blocks, thresholds=Thresholds(), transpose=False,
                             threshold=threshold, **ANALYZER)
        if not ctx.cells.fits(plan, PHASE):
            _stop(ctx, st, "the analyzer run", ctx.cells.uncached(plan))
            return False
        try:
            it = run_analysis(ctx.store, ctx.name, blocks=blocks, backend=ctx.engine, cancel=ctx.cancel,
                              progress=ctx.cells.counter(PHASE), allow_empty_prompt=ctx.allow_empty_prompt,
                              threshold=threshold, **ANALYZER)
        finally:
            ctx.save()
        st["analysis"] = it.number
        st["inert"] = inert_blocks(it.cells)
        ctx.record_iteration(it.number)
        ctx.save()
        classes = it.analysis.classes() if it.analysis is not None else {}
        counts = {c: sum(1 for v in classes.values() if v == c) for c in ("important", "unclear", "unneeded")}
        ctx.emit(PHASE, f"analyzer: iteration {it.number}: " + ", ".join(f"{n} {c}" for c, n in counts.items()))
    start_sheet_from_analysis(ctx.store, ctx.name, st["analysis"], source="auto", expected_version=view.version)
    st["sheet_started"] = True
    ctx.save()
    return True


def inert_blocks(cells: Sequence[Any]) -> list[str]:
    """The blocks of an analyzer run whose lowered cell is byte for byte the source cell at every seed: they
    change nothing, so the search leaves them alone."""
    source = {c.seed: c.sha256 for c in cells if c.block is None}
    same: dict[str, bool] = {}
    for cell in cells:
        if cell.block is not None:
            same[cell.block] = same.get(cell.block, True) and source.get(cell.seed) == cell.sha256
    return [block for block, equal in same.items() if equal]


def _prepare_step(ctx: TuneContext, st: dict[str, Any], step: float) -> None:
    """Set the sheet's step; from the second step on, unfix the tunable blocks that can go down by it; fix open
    blocks that cannot (their value is below the step)."""
    from lbw.services.projects import set_block, set_step

    view = ctx.view()
    if view.sheet.step != step:
        view = set_step(ctx.store, ctx.name, step, source="auto", expected_version=view.version)
    values = dict(zip(view.sheet.layout.ids, view.sheet.values, strict=True))
    floor = max(0.0, view.sheet.lower or 0.0)  # never below 0, nor below the sheet's lower bound
    if st.get("step_index", 0) > 0:
        for block in lowerable(values, [b for b in ctx.tunable if b in view.sheet.fixed], step, floor):
            why = f"go deeper: step {step:g}; {block} at {values[block]:g} can go down by it"
            view = set_block(ctx.store, ctx.name, block, fixed=False, source="auto", action="unfix",
                             expected_version=view.version, detail={"why": why, "tune": {"strategy": PHASE,
                                                                                        "step": step}})
    stuck = [b for b in view.sheet.unfixed_ids if b not in lowerable(values, [b], step, floor)]
    for block in stuck:
        why = f"cannot be lowered by {step:g} below {floor:g}; kept at {values[block]:g}"
        view = set_block(ctx.store, ctx.name, block, value=values[block], fixed=True, source="auto", action=KEEP,
                         expected_version=view.version, detail={"why": why, "tune": {"strategy": PHASE,
                                                                                    "step": step}})
    st.update(step_ready=True, round=0, last_takes=[])
    ctx.save()


def _round(ctx: TuneContext, st: dict[str, Any], step: float) -> str:
    """One Sub round: ``again`` (takes were made or undone), ``done`` (the step is over) or ``budget``."""
    from lbw.services.projects import render_iteration

    if st.get("pending"):
        _apply(ctx, st["pending"])
        st["pending"] = None
        ctx.save()
    view = ctx.view()
    if not view.sheet.unfixed_ids:
        return "done"
    plan = project_plan(view.sheet, view.settings, "sub")
    if not ctx.cells.fits(plan, PHASE):
        _stop(ctx, st, f"round {st.get('round', 0) + 1} at step {step:g}", ctx.cells.uncached(plan))
        return "budget"
    try:
        it = render_iteration(ctx.store, ctx.name, mode="sub", backend=ctx.engine, progress=ctx.cells.counter(PHASE),
                              cancel=ctx.cancel, allow_empty_prompt=ctx.allow_empty_prompt, source="auto")
    finally:
        ctx.save()
    st["round"] = st.get("round", 0) + 1
    ctx.record_iteration(it.number)
    images: dict[str, dict[int, Any]] = {}
    blocks: dict[str, tuple[str, float]] = {}
    for cell in it.cells:
        images.setdefault(cell.label, {})[cell.seed] = cell.image
        if cell.block is not None and cell.value is not None:
            blocks[cell.label] = (cell.block, cell.value)
    summaries = {label: ctx.scoring.summary(by_seed) for label, by_seed in images.items()}
    base_label = next(c.label for c in it.cells if c.block is None)
    base = summaries[base_label]
    values = list(view.sheet.values)
    ids = view.sheet.layout.ids
    ctx.consider(base, values)
    where = {"strategy": PHASE, "step": step, "round": st["round"], "iteration": it.number,
             "threshold": ctx.threshold, "base": _numbers(base)}
    undo = combined_check(base.score, [_decision(d) for d in st.get("last_takes") or []], ctx.threshold)
    if undo:
        kept = next(d for d in st["last_takes"] if d["block"] not in {u.block for u in undo})
        why = (f"with {', '.join(d['block'] for d in st['last_takes'])} lowered together the effect kept is "
               f"{base.effect:.3f} < {ctx.threshold:g}; only {kept['block']} (measured alone) stays lowered")
        pending = [_change(d.block, d.current, False, "revert", why, {**where, "lowered": d.lowered}, None)
                   for d in undo]
        st["last_takes"] = [kept]
        _commit(ctx, st, pending, f"step {step:g} round {st['round']} (iteration {it.number}): {why}")
        return "again"
    candidates = []
    for label, (block, lowered) in blocks.items():
        summary = summaries[label]
        vector = list(values)
        vector[ids.index(block)] = lowered
        ctx.consider(summary, vector)
        candidates.append(Candidate(block, view.sheet.value(block), lowered, summary.score))
    decisions = decide_round(base.score, candidates, ctx.threshold)
    labels = {block: label for label, (block, _) in blocks.items()}
    tried = st.setdefault("tried", {})
    for d in decisions:
        tried.setdefault(d.block, []).append({"step": step, "round": st["round"], "iteration": it.number,
                                              "lowered": d.lowered, "effect": d.score.effect, "side": d.score.side,
                                              "rule": d.action, "why": d.reason})
    takes = [d for d in decisions if d.action == TAKE]
    chosen = takes or list(decisions)
    if not takes:  # open blocks without a Sub cell (at a bound) are fixed at their value too
        tried_blocks = {d.block for d in decisions}
        chosen += [Decision(b, values[ids.index(b)], values[ids.index(b)], KEEP, base.score,
                            "no Sub cell: the block is at the lower bound") for b in view.sheet.unfixed_ids
                   if b not in tried_blocks]
    pending = [_change(d.block, d.value, True, TAKE if d.action == TAKE else KEEP, d.reason,
                       {**where, "lowered": d.lowered, "rule": d.action, "tried": tried.get(d.block, []),
                        **(_numbers(summaries[labels[d.block]]) if d.block in labels else {})},
                       labels.get(d.block)) for d in chosen]
    st["last_takes"] = [_decision_data(d) for d in takes]
    took = ", ".join(f"{d.block} {d.current:g}->{d.lowered:g}" for d in takes)
    below = "" if base.score.feasible(ctx.threshold) else " (below the threshold: lowering cannot bring it back)"
    text = (f"step {step:g} round {st['round']} (iteration {it.number}): base effect {base.effect:.3f}{below} "
            f"side {base.side:.3f}; " + (f"took {took}" if takes else f"no block lowered; fixed {len(chosen)} at "
                                                                       "their values"))
    _commit(ctx, st, pending, text)
    return "again" if takes else "done"


def _commit(ctx: TuneContext, st: dict[str, Any], pending: list[dict[str, Any]], text: str) -> None:
    """Save the decisions about to be applied, apply them, clear them; report the round."""
    st["pending"] = pending
    ctx.save()
    _apply(ctx, pending)
    st["pending"] = None
    ctx.save()
    ctx.emit(PHASE, text)


def _apply(ctx: TuneContext, pending: Sequence[dict[str, Any]]) -> None:
    """Apply saved changes as decisions (one each; a change already made records nothing)."""
    from lbw.services.projects import set_block

    for change in pending:
        view = ctx.view()
        set_block(ctx.store, ctx.name, change["block"], value=change["value"], fixed=change["fixed"], source="auto",
                  action=change["action"], detail=change["detail"], expected_version=view.version)


def _change(block: str, value: float, fixed: bool, action: str, why: str, tune: dict[str, Any],
            cell: str | None) -> dict[str, Any]:
    detail: dict[str, Any] = {"why": why, "tune": tune}
    if cell is not None:
        detail["cell"] = cell
    return {"block": block, "value": value, "fixed": fixed, "action": action, "detail": detail}


def _numbers(summary: Any) -> dict[str, float | int]:
    return {"effect": summary.effect, "side": summary.side, "effect_sd": summary.effect_sd,
            "side_sd": summary.side_sd, "seeds": summary.n}


def _decision_data(d: Decision) -> dict[str, Any]:
    return {"block": d.block, "current": d.current, "lowered": d.lowered, "effect": d.score.effect,
            "side": d.score.side, "rank": d.rank}


def _decision(data: dict[str, Any]) -> Decision:
    return Decision(data["block"], data["current"], data["lowered"], TAKE, Score(data["effect"], data["side"]), "",
                    data.get("rank"))
