"""The ``tutorial`` strategy of ``lbw tune``: the founding tutorial's loop, run with the project's own operations.

1. **Classify**: the Effective Block Analyzer on the blocks the tune may change (``run_analysis``, the project's
   region = the keep box), then the sheet from its classes (``start_sheet_from_analysis``: important 1 fixed,
   unneeded 0 fixed, unclear 0.5 open).
2. **Bounds**: a sheet without bounds gets 0 and 1 (one decision), so no cell leaves the range the tune works in.
3. **Sub rounds** at step 0.5, then 0.25 and 0.125 ("go deeper": the tunable blocks that can go down by the step
   are unfixed again). Each round renders the sheet's Sub list (``render_iteration``: an iteration of the project)
   and scores every cell on the tuning seeds; ``lbw.domain.tune_rule.decide_round`` decides: takes are fixed at
   the lowered value; after a round with takes the others are tried again in the new context; a round without
   takes fixes every open block at its value and the step halves. When the sheet with a round's takes measures
   below the threshold after all, every take but the best is undone (``combined_check``).
4. **SubAdd** when the sheet itself keeps less than the threshold and no lowered cell brings the effect back (the
   analyzer set a block the region needs to 0): every tunable block that can go up by the step is opened and the
   next round renders the SubAdd list; ``decide_raise`` raises the blocks that bring the effect back with the least
   side effect (fixed at the raised values), and Sub rounds go on in the new context. When no raise helps, the
   step is over.

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
from dataclasses import replace
from typing import Any

from lbw.domain.layouts import SD26
from lbw.domain.tune_rule import (
    KEEP,
    RAISE,
    TAKE,
    TUTORIAL_STEPS,
    Candidate,
    Decision,
    Score,
    combined_check,
    decide_raise,
    decide_round,
    lowerable,
    raisable,
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
        _bound(ctx, st)
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


def _bound(ctx: TuneContext, st: dict[str, Any]) -> None:
    """Give the sheet the bounds 0 and 1 where it has none (one decision), once: the tune moves weights between
    the LoRA off and the full LoRA, so its Sub and Add lists never render a cell outside them."""
    from lbw.services.projects import set_bounds

    if not st.get("bounded"):
        view = ctx.view()
        sheet = view.sheet
        lower = min(0.0, *sheet.values) if sheet.lower is None else sheet.lower
        upper = max(1.0, *sheet.values) if sheet.upper is None else sheet.upper
        if (lower, upper) != (sheet.lower, sheet.upper):
            set_bounds(ctx.store, ctx.name, lower, upper, source="auto", expected_version=view.version)
        st["bounded"] = True
        ctx.save()


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
    floor, _ = _range(view.sheet)
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
    """One Sub (or SubAdd) round: ``again`` (blocks were taken, raised, undone or opened), ``done`` (the step is
    over) or ``budget``."""
    from lbw.services.projects import render_iteration

    if st.get("pending"):
        _apply(ctx, st["pending"])
        st["pending"] = None
        ctx.save()
    view = ctx.view()
    if not view.sheet.unfixed_ids:
        st["mode"] = "sub"
        return "done"
    mode = st.get("mode", "sub")
    plan = project_plan(view.sheet, view.settings, mode)
    if not ctx.cells.fits(plan, PHASE):
        _stop(ctx, st, f"round {st.get('round', 0) + 1} at step {step:g}", ctx.cells.uncached(plan))
        return "budget"
    try:
        it = render_iteration(ctx.store, ctx.name, mode=mode, backend=ctx.engine, progress=ctx.cells.counter(PHASE),
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
    base = summaries[next(c.label for c in it.cells if c.block is None)]
    values = list(view.sheet.values)
    ids = view.sheet.layout.ids
    ctx.consider(base, values)
    where = {"strategy": PHASE, "step": step, "round": st["round"], "iteration": it.number, "list": mode,
             "threshold": ctx.threshold, "base": _numbers(base)}
    head = f"step {step:g} round {st['round']} (iteration {it.number})"
    undo = combined_check(base.score, [_decision(d) for d in st.get("last_takes") or []], ctx.threshold)
    if undo:
        kept = next(d for d in st["last_takes"] if d["block"] not in {u.block for u in undo})
        why = (f"with {', '.join(d['block'] for d in st['last_takes'])} lowered together the effect kept is "
               f"{base.effect:.3f} < {ctx.threshold:g}; only {kept['block']} (measured alone) stays lowered")
        pending = [_change(d.block, d.current, False, "revert", why, {**where, "lowered": d.lowered}, None)
                   for d in undo]
        st["last_takes"] = [kept]
        _commit(ctx, st, pending, f"{head}: {why}")
        return "again"
    lowered: list[Candidate] = []
    raised: list[Candidate] = []
    labels: dict[tuple[str, float], str] = {}
    for label, (block, value) in blocks.items():
        summary = summaries[label]
        vector = list(values)
        vector[ids.index(block)] = value
        ctx.consider(summary, vector)
        current = view.sheet.value(block)
        labels[(block, value)] = label
        (lowered if value < current else raised).append(Candidate(block, current, value, summary.score))
    decisions = decide_round(base.score, lowered, ctx.threshold)
    takes = [d for d in decisions if d.action == TAKE]
    feasible = base.score.feasible(ctx.threshold)
    raise_decisions = decide_raise(base.score, raised, ctx.threshold) if raised and not takes and not feasible \
        else ()
    _note_tries(st, step, it.number, (*decisions, *raise_decisions))
    st["last_takes"] = [_decision_data(d) for d in takes]

    def change(d: Decision, action: str) -> dict[str, Any]:
        label = labels.get((d.block, d.lowered))
        return _change(d.block, d.value, True, action, d.reason,
                       {**where, "lowered": d.lowered, "rule": d.action, "tried": st["tried"].get(d.block, []),
                        **(_numbers(summaries[label]) if label else {})}, label)

    summary_text = f"{head}: base effect {base.effect:.3f} side {base.side:.3f}; "
    if takes:
        st["mode"] = "sub"
        took = ", ".join(f"{d.block} {d.current:g}->{d.lowered:g}" for d in takes)
        _commit(ctx, st, [change(d, TAKE) for d in takes], summary_text + f"took {took}")
        return "again"
    ups = sorted((d for d in raise_decisions if d.action == RAISE), key=lambda d: d.rank or 0)
    if ups:  # SubAdd: the raises, then a Sub round measures the new sheet
        st["mode"] = "sub"
        raised_text = ", ".join(f"{d.block} {d.current:g}->{d.lowered:g}" for d in ups)
        _commit(ctx, st, [change(d, RAISE) for d in ups], summary_text + f"below {ctx.threshold:g}: raised "
                                                                          f"{raised_text}")
        return "again"
    if not feasible and mode == "sub":
        opening = _open_for_raise(ctx, st, view, step, base, where)
        if opening is not None:
            st["mode"] = "subadd"
            _commit(ctx, st, opening[0], summary_text + f"below {ctx.threshold:g} and no lowering brings it back: "
                                                        f"SubAdd{opening[1]}")
            return "again"
    # the step is over: every open block is fixed at its value (by the raise decision in a SubAdd round)
    chosen: list[Decision] = list(raise_decisions)
    chosen += [d for d in decisions if d.block not in {e.block for e in chosen}]
    seen = {d.block for d in chosen}
    chosen += [Decision(b, values[ids.index(b)], values[ids.index(b)], KEEP, base.score,
                        "no cell: the block is at a bound of the sheet") for b in view.sheet.unfixed_ids
               if b not in seen]
    if not feasible:
        chosen = [replace(d, reason=f"{d.reason}; the sheet keeps {base.effect:.3f} < {ctx.threshold:g} and "
                                    "neither lowering nor raising brings it back") for d in chosen]
    st["mode"] = "sub"
    below = "" if feasible else " (below the threshold: neither lowering nor raising brings it back)"
    _commit(ctx, st, [change(d, KEEP) for d in chosen],
            summary_text + f"no block lowered{below}; fixed {len(chosen)} at their values")
    return "done"


def _open_for_raise(ctx: TuneContext, st: dict[str, Any], view: Any, step: float, base: Any,
                    where: dict[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    """The unfix changes that open fixed tunable blocks that can go up by ``step`` (within the sheet's upper bound
    and 1) for a SubAdd round, with a note for the log; None when no open or fixed tunable block can go up.

    The blocks the analyzer ranks highest are opened first, as many as the budget left can render in one SubAdd
    round (an Add cell each, a Sub cell too when the block can also go down; the open blocks' Sub cells and the
    base are cached); at least one, so that a budget too small stops the tune where it says so."""
    values = dict(zip(view.sheet.layout.ids, view.sheet.values, strict=True))
    floor, ceiling = _range(view.sheet)
    candidates = [b for b in ctx.tunable if b in values]
    fixed = raisable(values, [b for b in candidates if b in view.sheet.fixed], step, ceiling)
    already = raisable(values, [b for b in candidates if b not in view.sheet.fixed], step, ceiling)
    if not fixed and not already:
        return None
    rank = _analyzer_rank(ctx, st)
    fixed.sort(key=lambda b: (rank.get(b, len(rank)), view.sheet.layout.ids.index(b)))
    room = ctx.cells.budget.left(PHASE) // max(1, len(ctx.tuning_seeds)) - len(already)
    opened: list[str] = []
    for block in fixed:
        cost = 2 if lowerable(values, [block], step, floor) else 1
        if cost > room and (opened or already):
            break
        opened.append(block)
        room -= cost
    why = (f"the sheet keeps {base.effect:.3f} < {ctx.threshold:g} and no lowering brings it back: opened to try "
           f"raising it by {step:g} (SubAdd)")
    changes = [{"block": b, "value": values[b], "fixed": False, "action": "unfix",
                "detail": {"why": why + (f"; the analyzer ranks it {rank[b] + 1} of {len(rank)}" if b in rank else ""),
                           "tune": {**where, "rule": "open"}}} for b in opened]
    note = f", opened {', '.join(opened)}" if opened else ""
    if len(opened) < len(fixed):
        note = (f", opened {len(opened)} of the {len(fixed)} fixed blocks that can go up"
                + (f" ({', '.join(opened)}: the analyzer ranks them highest)" if opened else "")
                + ": the budget left renders no more in one round")
    return changes, note


def _range(sheet: Any) -> tuple[float, float]:
    """The values the tune may give a block: 0..1, within the sheet's bounds."""
    lower = 0.0 if sheet.lower is None else max(0.0, sheet.lower)
    upper = 1.0 if sheet.upper is None else min(1.0, sheet.upper)
    return lower, upper


def _analyzer_rank(ctx: TuneContext, st: dict[str, Any]) -> dict[str, int]:
    """Block -> its place (0 = first) in the tutorial's analyzer table: by score (the change in the keep region),
    ties (blocks under the pixel threshold in the region all score 0) by Diff % over the whole picture."""
    from lbw.services.projects import get_iteration

    if st.get("analysis") is None:
        return {}
    analysis = get_iteration(ctx.store, ctx.name, st["analysis"]).analysis
    if analysis is None:
        return {}
    rows = sorted(enumerate(analysis.rows), key=lambda item: (-item[1].score, -item[1].diff_percent, item[0]))
    return {row.block: place for place, (_, row) in enumerate(rows)}


def _note_tries(st: dict[str, Any], step: float, iteration: int, decisions: Sequence[Decision]) -> None:
    """Add each decision to its block's list of tries (shown with every later decision about the block)."""
    tried = st.setdefault("tried", {})
    for d in decisions:
        tried.setdefault(d.block, []).append({"step": step, "round": st["round"], "iteration": iteration,
                                              "value": d.lowered, "lowered": d.lowered, "effect": d.score.effect,
                                              "side": d.score.side, "rule": d.action, "why": d.reason})


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
