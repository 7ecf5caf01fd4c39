"""The rule ``lbw tune`` decides with, as pure functions on score tables (standard library only).

A candidate weight vector has a ``Score``: **effect kept** (0..1, how much of the full LoRA's look stays inside the
keep region) and **side effect left** (>= 0, how much of the LoRA's change outside the region remains; 1 = all of
it). The goal: the least side effect with effect kept >= a threshold (default 0.9), ties broken toward the weights
closer to the original (the full LoRA, every block 1). Side effects closer than ``TIE`` count as equal.

The tutorial's round (``decide_round``): the Sub grid lowers every open block by the step. A block whose lowered
cell keeps the effect (>= threshold) and reduces the side effect (below the base cell's, by more than ``TIE``) is
**taken** (fixed at the lowered value); otherwise it is **kept** at its value. Takes are accepted greedily, largest
side-effect reduction first, while the effect kept predicted for all of them together (the base's plus the sum of
each take's change, an additive model) stays >= the threshold; a block that passes alone but does not fit **waits**
for the next round. The loop (``lbw.services.tune_tutorial``) re-renders after a round with takes (the other blocks
are tried again in the new context) and fixes every block at its value when a round takes nothing; then the step
halves (``TUTORIAL_STEPS``). ``combined_check`` undoes all takes but the best when the sheet with all of them lowered
measures below the threshold after all.

SubAdd (``decide_raise``), when the sheet itself keeps less than the threshold and no lowering brings it back (an
analyzer sheet that set a block the face needs to 0): the Add cells raise each open block by the step. The raises
that bring effect back are **raised** (fixed at the raised value) in order of the least side effect added per
effect brought back, until the effect predicted for them together (the base's plus each one's gain, the same
additive model) reaches the threshold; a single raise that reaches it alone with less side effect is raised
instead. The other helpful raises **wait**; the next Sub round measures the new sheet.

Example:
    >>> base = Score(effect=1.0, side=1.0)
    >>> rows = [Candidate("IN01", 0.5, 0.0, Score(0.95, 0.6)), Candidate("OUT03", 0.5, 0.0, Score(0.7, 0.5))]
    >>> [(d.block, d.action, d.value) for d in decide_round(base, rows, 0.9)]
    [('IN01', 'take', 0.0), ('OUT03', 'keep', 0.5)]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TUTORIAL_STEPS: tuple[float, ...] = (0.5, 0.25, 0.125)
DEFAULT_THRESHOLD = 0.9
TIE = 1e-6
TAKE, KEEP, WAIT, RAISE = "take", "keep", "wait", "raise"


@dataclass(frozen=True)
class Score:
    """Effect kept (inside the keep region) and side effect left (outside it) of one candidate."""

    effect: float
    side: float

    def feasible(self, threshold: float) -> bool:
        """True when the effect kept reaches ``threshold``."""
        return self.effect >= threshold


@dataclass(frozen=True)
class ScoreSummary:
    """Mean scores over seeds with their sample standard deviations (0 for one seed) and the seed count."""

    effect: float
    side: float
    effect_sd: float = 0.0
    side_sd: float = 0.0
    n: int = 1

    @property
    def score(self) -> Score:
        """The means as a ``Score`` (what the rule compares)."""
        return Score(self.effect, self.side)


def summarize(scores: Sequence[Score]) -> ScoreSummary:
    """Means and spreads of per-seed scores.

    Example:
        >>> summary = summarize([Score(1.0, 0.5), Score(0.8, 0.3)])
        >>> round(summary.effect, 6), round(summary.side, 6), round(summary.effect_sd, 4), summary.n
        (0.9, 0.4, 0.1414, 2)
    """
    if not scores:
        raise ValueError("no scores to summarize")
    effects = [s.effect for s in scores]
    sides = [s.side for s in scores]
    spread = len(scores) > 1
    return ScoreSummary(statistics.fmean(effects), statistics.fmean(sides),
                        statistics.stdev(effects) if spread else 0.0, statistics.stdev(sides) if spread else 0.0,
                        len(scores))


@dataclass(frozen=True)
class Candidate:
    """One Sub (or Add) cell of a round: the block, its value now, the value the cell renders (``lowered``: for an
    Add cell the raised value), the cell's score."""

    block: str
    current: float
    lowered: float
    score: Score


@dataclass(frozen=True)
class Decision:
    """What the rule does with one block: ``take`` (fix at ``lowered``), ``raise`` (fix at the raised value, kept
    in ``lowered``), ``keep`` (at ``current``) or ``wait`` (passes alone, but not together with the takes of this
    round; or a raise that helps less than the one made); ``rank`` orders the takes (1 = taken first)."""

    block: str
    current: float
    lowered: float
    action: str
    score: Score
    reason: str
    rank: int | None = None

    @property
    def value(self) -> float:
        """The value the block is fixed at: the cell's for a take or a raise, else its current one."""
        return self.lowered if self.action in (TAKE, RAISE) else self.current


def decide_round(base: Score, candidates: Sequence[Candidate], threshold: float = DEFAULT_THRESHOLD
                 ) -> tuple[Decision, ...]:
    """The decision for every candidate of one Sub round (in the candidates' order); see the module docstring."""
    _check_threshold(threshold)
    decisions: dict[str, Decision] = {}
    passing: list[tuple[int, Candidate]] = []
    for index, row in enumerate(candidates):
        score = row.score
        if not score.feasible(threshold):
            decisions[row.block] = Decision(row.block, row.current, row.lowered, KEEP, score,
                                             f"lowering loses the effect (effect kept {score.effect:.3f} < "
                                             f"{threshold:g})")
        elif not score.side < base.side - TIE:
            decisions[row.block] = Decision(row.block, row.current, row.lowered, KEEP, score,
                                             f"lowering does not reduce the side effect ({score.side:.3f} >= "
                                             f"{base.side:.3f})")
        else:
            passing.append((index, row))
    passing.sort(key=lambda item: (-(base.side - item[1].score.side), base.effect - item[1].score.effect, item[0]))
    predicted = base.effect
    taken: list[str] = []
    for _, row in passing:
        score = row.score
        # the first take was measured exactly; later ones add their change to the prediction (float sums
        # are compared with a hair of slack so that a sum exactly at the threshold passes)
        together = score.effect if not taken else predicted + score.effect - base.effect
        if together >= threshold - 1e-12:
            predicted = together
            taken.append(row.block)
            decisions[row.block] = Decision(row.block, row.current, row.lowered, TAKE, score,
                                             f"lowering keeps the effect ({score.effect:.3f} >= {threshold:g}) and "
                                             f"reduces the side effect ({score.side:.3f} < {base.side:.3f})",
                                             rank=len(taken))
        else:
            decisions[row.block] = Decision(row.block, row.current, row.lowered, WAIT, score,
                                             f"passes alone, but lowered together with {', '.join(taken)} the "
                                             f"effect kept would be {together:.3f} < {threshold:g}; tried again "
                                             "next round")
    return tuple(decisions[row.block] for row in candidates)


def decide_raise(base: Score, candidates: Sequence[Candidate], threshold: float = DEFAULT_THRESHOLD
                 ) -> tuple[Decision, ...]:
    """The decision for every Add cell of a SubAdd round whose sheet keeps less than ``threshold`` (see the module
    docstring): the blocks to ``raise`` (ranked), the helpful ones not needed ``wait``, the rest ``keep``.

    Example:
        >>> base = Score(effect=0.6, side=0.3)
        >>> rows = [Candidate("IN04", 0.0, 0.5, Score(0.75, 0.35)), Candidate("OUT06", 0.0, 0.5, Score(0.95, 0.6)),
        ...         Candidate("OUT07", 0.0, 0.5, Score(0.78, 0.4)), Candidate("OUT09", 0.5, 1.0, Score(0.6, 0.6))]
        >>> [(d.block, d.action, d.value) for d in decide_raise(base, rows, 0.9)]
        [('IN04', 'raise', 0.5), ('OUT06', 'wait', 0.0), ('OUT07', 'raise', 0.5), ('OUT09', 'keep', 0.5)]
    """
    _check_threshold(threshold)
    helpful = [(i, row) for i, row in enumerate(candidates) if row.score.effect > base.effect + TIE]

    def cost(item: tuple[int, Candidate]) -> tuple[int, int, int]:  # side effect added per effect brought back
        index, row = item
        gain = row.score.effect - base.effect
        return (_quantised((row.score.side - base.side) / gain), -_quantised(gain), index)

    chosen: list[Candidate] = []
    predicted, added = base.effect, 0.0
    for _, row in sorted(helpful, key=cost):
        if predicted >= threshold - 1e-12:
            break
        chosen.append(row)
        predicted += row.score.effect - base.effect
        added += row.score.side - base.side
    alone = [row for _, row in helpful if row.score.feasible(threshold)]
    single = min(alone, key=lambda row: (_quantised(row.score.side), row.lowered - row.current), default=None)
    if single is not None and (len(chosen) > 1 and (predicted < threshold - 1e-12
                                                    or single.score.side < base.side + added - TIE)):
        chosen, predicted, added = [single], single.score.effect, single.score.side - base.side
    names = ", ".join(row.block for row in chosen)
    if chosen and predicted >= threshold - 1e-12:
        why = (f"raised ({names}) to bring the effect back: {predicted:.3f} >= {threshold:g} predicted from "
               f"{base.effect:.3f} (each raise's gain added), side effect {base.side + added:.3f}; the raises that "
               "add the least side effect per effect brought back first")
    else:
        why = (f"raised ({names}): every raise that helps, {predicted:.3f} predicted from {base.effect:.3f}; still "
               f"below {threshold:g}")
    ranks = {row.block: rank for rank, row in enumerate(chosen, 1)}
    decisions = []
    for row in candidates:
        score = row.score
        if row.block in ranks:
            decisions.append(Decision(row.block, row.current, row.lowered, RAISE, score,
                                      f"{why} (this one: {score.effect:.3f} kept, side {score.side:.3f})",
                                      rank=ranks[row.block]))
        elif score.effect > base.effect + TIE:
            decisions.append(Decision(row.block, row.current, row.lowered, WAIT, score,
                                      f"raising helps ({score.effect:.3f} from {base.effect:.3f}, side "
                                      f"{score.side:.3f}), but {names} bring the effect back with less side "
                                      "effect; tried again next round"))
        else:
            decisions.append(Decision(row.block, row.current, row.lowered, KEEP, score,
                                      f"raising does not bring the effect back ({score.effect:.3f} <= "
                                      f"{base.effect:.3f})"))
    return tuple(decisions)


def raisable(values: Mapping[str, float], blocks: Iterable[str], step: float, ceiling: float = 1.0) -> list[str]:
    """The ``blocks`` whose value can be raised by ``step`` without going above ``ceiling``.

    Example:
        >>> raisable({"IN01": 1.0, "IN02": 0.0, "OUT03": 0.5}, ["IN01", "IN02", "OUT03"], 0.5)
        ['IN02', 'OUT03']
    """
    return [b for b in blocks if values[b] + step <= ceiling + 1e-9]


def combined_check(measured: Score, takes: Sequence[Decision], threshold: float = DEFAULT_THRESHOLD
                   ) -> tuple[Decision, ...]:
    """The takes to undo when the sheet with all ``takes`` lowered measures ``measured``: none while it keeps the
    effect (or there was one take, measured alone already), else every take but the first (the best, whose cell
    measured exactly that change alone).

    Example:
        >>> takes = [Decision("IN01", 0.5, 0.0, TAKE, Score(0.95, 0.5), "", 1),
        ...          Decision("OUT03", 0.5, 0.0, TAKE, Score(0.93, 0.6), "", 2)]
        >>> [d.block for d in combined_check(Score(0.85, 0.3), takes, 0.9)]
        ['OUT03']
    """
    _check_threshold(threshold)
    if measured.feasible(threshold) or len(takes) <= 1:
        return ()
    ordered = sorted(takes, key=lambda d: d.rank if d.rank is not None else math.inf)
    return tuple(ordered[1:])


def lowerable(values: Mapping[str, float], blocks: Iterable[str], step: float, floor: float = 0.0) -> list[str]:
    """The ``blocks`` whose value can be lowered by ``step`` without going below ``floor``.

    Example:
        >>> lowerable({"IN01": 1.0, "IN02": 0.0, "OUT03": 0.25}, ["IN01", "IN02", "OUT03"], 0.25)
        ['IN01', 'OUT03']
    """
    return [b for b in blocks if values[b] - step >= floor - 1e-9]


def distance(weights: Sequence[float], original: Sequence[float]) -> float:
    """L1 distance of two weight vectors (how much of the original was moved)."""
    if len(weights) != len(original):
        raise ValueError(f"weight vectors differ in length: {len(weights)} vs {len(original)}")
    return sum(abs(a - b) for a, b in zip(weights, original, strict=True))


def goal_key(score: Score, weights: Sequence[float], original: Sequence[float],
             threshold: float = DEFAULT_THRESHOLD) -> tuple[int, ...]:
    """Sort key of the goal (smaller is better): feasible first; then the least side effect (infeasible ones: the
    most effect kept, then the least side effect); ties (within ``TIE``) toward weights closer to ``original``.

    Example:
        >>> ones = [1.0, 1.0]
        >>> goal_key(Score(0.95, 0.4), [1.0, 0.5], ones) < goal_key(Score(0.95, 0.4), [0.5, 0.5], ones)
        True
    """
    _check_threshold(threshold)
    moved = _quantised(distance(weights, original))
    if score.feasible(threshold):
        return (0, _quantised(score.side), moved)
    return (1, -_quantised(score.effect), _quantised(score.side), moved)


def best_index(entries: Sequence[tuple[Score, Sequence[float]]], original: Sequence[float],
               threshold: float = DEFAULT_THRESHOLD) -> int:
    """Index of the best (score, weights) entry by ``goal_key``; the first of equals.

    Example:
        >>> best_index([(Score(0.8, 0.1), [0.0]), (Score(0.9, 0.5), [1.0]), (Score(0.95, 0.3), [0.5])], [1.0])
        2
    """
    if not entries:
        raise ValueError("no entries to choose from")
    keys = [goal_key(score, weights, original, threshold) for score, weights in entries]
    return min(range(len(keys)), key=lambda i: (keys[i], i))


def search_objective(score: Score, weights: Sequence[float], original: Sequence[float],
                     threshold: float = DEFAULT_THRESHOLD, penalty: float = 10.0) -> float:
    """The single number the black-box search minimises: the side effect, plus ``penalty`` x the effect missing
    below the threshold, plus a tie-breaker of 1e-3 x the mean distance to the original weights.

    Example:
        >>> round(search_objective(Score(0.85, 0.2), [0.5, 1.0], [1.0, 1.0]), 6)
        0.70025
    """
    missing = max(0.0, threshold - score.effect)
    return score.side + penalty * missing + 1e-3 * distance(weights, original) / max(1, len(weights))


def _quantised(value: float) -> int:
    return round(value / TIE)


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must be a number from 0 to 1, got {threshold!r}")
