"""The tuning rule on synthetic score tables: exact decisions, the combined check, the goal's order and ties."""

from __future__ import annotations

import pytest

from lbw.domain.tune_rule import (
    KEEP,
    RAISE,
    TAKE,
    TIE,
    TUTORIAL_STEPS,
    WAIT,
    Candidate,
    Decision,
    Score,
    best_index,
    combined_check,
    decide_raise,
    decide_round,
    goal_key,
    lowerable,
    raisable,
    search_objective,
    summarize,
)


def _table(decisions):
    return [(d.block, d.action, d.value, d.rank) for d in decisions]


def test_a_round_takes_keeps_and_defers_exactly():
    base = Score(1.0, 1.0)
    rows = [
        Candidate("IN01", 0.5, 0.0, Score(0.95, 0.6)),   # keeps the effect, side -0.4: taken first
        Candidate("IN02", 0.5, 0.0, Score(0.85, 0.5)),   # loses the effect
        Candidate("IN03", 1.0, 0.5, Score(0.97, 1.0)),   # side not reduced (equal)
        Candidate("OUT00", 0.5, 0.0, Score(0.92, 0.8)),  # passes alone; with IN01: 1 - 0.05 - 0.08 = 0.87 < 0.9
        Candidate("OUT01", 0.5, 0.0, Score(1.0, 0.9)),   # passes, costs no effect: taken second
    ]
    decisions = decide_round(base, rows, 0.9)
    assert _table(decisions) == [("IN01", TAKE, 0.0, 1), ("IN02", KEEP, 0.5, None), ("IN03", KEEP, 1.0, None),
                                 ("OUT00", WAIT, 0.5, None), ("OUT01", TAKE, 0.0, 2)]
    reasons = {d.block: d.reason for d in decisions}
    assert reasons["IN02"] == "lowering loses the effect (effect kept 0.850 < 0.9)"
    assert reasons["IN03"] == "lowering does not reduce the side effect (1.000 >= 1.000)"
    assert reasons["OUT00"].startswith("passes alone, but lowered together with IN01 the effect kept would be 0.870")
    assert reasons["IN01"] == "lowering keeps the effect (0.950 >= 0.9) and reduces the side effect (0.600 < 1.000)"


def test_the_threshold_is_inclusive_and_side_ties_keep_the_original():
    base = Score(1.0, 0.5)
    rows = [Candidate("A", 1.0, 0.5, Score(0.9, 0.4)),          # exactly at the threshold: passes
            Candidate("B", 1.0, 0.5, Score(0.99, 0.5 - TIE / 2)),  # side effect "reduced" by less than TIE: a tie
            Candidate("C", 1.0, 0.5, Score(0.8999999, 0.1))]
    assert [(d.action, d.value) for d in decide_round(base, rows, 0.9)] == [(TAKE, 0.5), (KEEP, 1.0), (KEEP, 1.0)]


def test_equal_side_reductions_are_taken_in_order_of_least_effect_lost_then_block_order():
    base = Score(1.0, 1.0)
    rows = [Candidate("A", 0.5, 0.0, Score(0.93, 0.7)), Candidate("B", 0.5, 0.0, Score(0.97, 0.7)),
            Candidate("C", 0.5, 0.0, Score(0.97, 0.7))]
    decisions = decide_round(base, rows, 0.9)
    assert [(d.block, d.action, d.rank) for d in decisions] == [("A", WAIT, None), ("B", TAKE, 1), ("C", TAKE, 2)]


def test_a_base_below_the_threshold_only_takes_lowerings_that_reach_it():
    base = Score(0.5, 1.0)
    rows = [Candidate("A", 1.0, 0.5, Score(0.95, 0.8)), Candidate("B", 1.0, 0.5, Score(0.6, 0.2))]
    assert _table(decide_round(base, rows, 0.9)) == [("A", TAKE, 0.5, 1), ("B", KEEP, 1.0, None)]


def test_no_candidates_and_a_bad_threshold():
    assert decide_round(Score(1.0, 1.0), [], 0.9) == ()
    with pytest.raises(ValueError, match="threshold"):
        decide_round(Score(1.0, 1.0), [], 1.5)


def test_combined_check_undoes_all_takes_but_the_best_when_together_they_lose_the_effect():
    takes = [Decision("OUT03", 0.5, 0.0, TAKE, Score(0.93, 0.6), "", 2),
             Decision("IN01", 0.5, 0.0, TAKE, Score(0.95, 0.5), "", 1),
             Decision("OUT07", 1.0, 0.5, TAKE, Score(0.91, 0.7), "", 3)]
    assert [d.block for d in combined_check(Score(0.85, 0.3), takes, 0.9)] == ["OUT03", "OUT07"]
    assert combined_check(Score(0.9, 0.3), takes, 0.9) == ()          # kept together: nothing undone
    assert combined_check(Score(0.5, 0.3), takes[:1], 0.9) == ()      # one take was measured alone already


def test_lowerable_blocks_stay_at_or_above_zero():
    values = {"A": 1.0, "B": 0.25, "C": 0.125, "D": 0.0}
    assert lowerable(values, ["A", "B", "C", "D"], 0.25) == ["A", "B"]
    assert lowerable(values, ["A", "B", "C", "D"], 0.125) == ["A", "B", "C"]
    assert TUTORIAL_STEPS == (0.5, 0.25, 0.125)


def test_the_goal_orders_feasible_first_then_side_effect_then_closeness_to_the_original():
    ones = [1.0, 1.0, 1.0]
    entries = [
        (Score(0.95, 0.2), [0.0, 0.0, 0.0]),  # feasible, side 0.2, far from the original
        (Score(0.80, 0.0), [0.0, 0.0, 0.0]),  # infeasible: never before a feasible one
        (Score(0.91, 0.2), [1.0, 0.5, 1.0]),  # feasible, side 0.2 (tie), closest: the best
        (Score(0.99, 0.3), [1.0, 1.0, 1.0]),
    ]
    assert best_index(entries, ones, 0.9) == 2
    keys = sorted(range(4), key=lambda i: goal_key(entries[i][0], entries[i][1], ones, 0.9))
    assert keys == [2, 0, 3, 1]
    # among infeasible ones: the most effect kept first
    infeasible = [(Score(0.5, 0.1), [1.0, 1.0, 1.0]), (Score(0.7, 0.9), [0.0, 0.0, 0.0])]
    assert best_index(infeasible, ones, 0.9) == 1
    # side effects closer than TIE tie; then the first of equals
    tied = [(Score(0.95, 0.3 + TIE / 10), [1.0, 0.5, 1.0]), (Score(0.95, 0.3), [1.0, 0.5, 1.0])]
    assert best_index(tied, ones, 0.9) == 0


def test_search_objective_and_summaries():
    assert search_objective(Score(0.95, 0.25), [1.0, 1.0], [1.0, 1.0]) == 0.25
    assert search_objective(Score(0.8, 0.25), [0.0, 1.0], [1.0, 1.0], 0.9) == pytest.approx(0.25 + 1.0 + 0.0005)
    summary = summarize([Score(1.0, 0.2), Score(0.8, 0.4), Score(0.9, 0.3)])
    assert (summary.effect, summary.side, summary.n) == (pytest.approx(0.9), pytest.approx(0.3), 3)
    assert summary.effect_sd == pytest.approx(0.1) and summary.side_sd == pytest.approx(0.1)
    assert summarize([Score(0.7, 0.1)]).effect_sd == 0.0


def test_subadd_raises_the_cheapest_blocks_until_the_predicted_effect_reaches_the_threshold():
    base = Score(0.6, 0.3)
    rows = [
        Candidate("IN04", 0.0, 0.5, Score(0.75, 0.35)),  # +0.15 effect for +0.05 side: 0.33 per effect, first
        Candidate("IN05", 0.0, 0.5, Score(0.95, 0.6)),   # restores alone, +0.3 side: more than the two together
        Candidate("OUT06", 0.5, 1.0, Score(0.78, 0.4)),  # +0.18 for +0.1: 0.56, second; 0.6+0.15+0.18 = 0.93
        Candidate("OUT07", 0.0, 0.5, Score(0.7, 0.5)),   # helps, 2.0 per effect, not needed: waits
        Candidate("OUT08", 0.0, 0.5, Score(0.6, 0.9)),   # no more effect (equal): kept
        Candidate("OUT09", 0.0, 0.5, Score(0.5, 0.2)),   # less effect: kept
    ]
    decisions = decide_raise(base, rows, 0.9)
    assert _table(decisions) == [("IN04", RAISE, 0.5, 1), ("IN05", WAIT, 0.0, None), ("OUT06", RAISE, 1.0, 2),
                                 ("OUT07", WAIT, 0.0, None), ("OUT08", KEEP, 0.0, None), ("OUT09", KEEP, 0.0, None)]
    reasons = {d.block: d.reason for d in decisions}
    assert reasons["IN04"] == ("raised (IN04, OUT06) to bring the effect back: 0.930 >= 0.9 predicted from 0.600 "
                               "(each raise's gain added), side effect 0.450; the raises that add the least side "
                               "effect per effect brought back first (this one: 0.750 kept, side 0.350)")
    assert reasons["OUT07"] == ("raising helps (0.700 from 0.600, side 0.500), but IN04, OUT06 bring the effect "
                                "back with less side effect; tried again next round")
    assert reasons["OUT08"] == "raising does not bring the effect back (0.600 <= 0.600)"


def test_subadd_prefers_one_restoring_raise_with_less_side_effect_and_raises_all_that_help_when_short():
    base = Score(0.6, 0.3)
    rows = [Candidate("A", 0.0, 0.5, Score(0.75, 0.45)), Candidate("B", 0.0, 0.5, Score(0.78, 0.5)),
            Candidate("C", 0.5, 1.0, Score(0.92, 0.55))]  # A+B: 0.93 for +0.35; C alone: 0.92 for +0.25
    assert [(d.action, d.rank) for d in decide_raise(base, rows, 0.9)] == [(WAIT, None), (WAIT, None), (RAISE, 1)]
    # two single restoring raises with equal side effects: the one adding less per effect brought back
    rows = [Candidate("A", 0.0, 0.5, Score(0.91, 0.4)), Candidate("B", 0.5, 0.75, Score(0.95, 0.4 + TIE / 3))]
    assert [d.action for d in decide_raise(Score(0.3, 0.1), rows, 0.9)] == [WAIT, RAISE]
    # short of the threshold with every helpful raise: all of them are raised, the reason says so
    rows = [Candidate("A", 0.0, 0.5, Score(0.4, 0.2)), Candidate("B", 0.0, 0.5, Score(0.5, 0.3))]
    decisions = decide_raise(Score(0.3, 0.1), rows, 0.9)
    assert [(d.action, d.rank) for d in decisions] == [(RAISE, 2), (RAISE, 1)]
    assert decisions[0].reason.startswith("raised (B, A): every raise that helps, 0.600 predicted from 0.300; "
                                          "still below 0.9")
    # nothing helps: every block is kept
    assert [d.action for d in decide_raise(Score(0.99, 0.1), rows, 0.999)] == [KEEP, KEEP]
    assert raisable({"A": 0.5, "B": 0.75, "C": 1.0}, ["A", "B", "C"], 0.25) == ["A", "B"]
    assert raisable({"A": 0.5}, ["A"], 0.25, ceiling=0.7) == []
