"""The proof of issue #12 on the built-in world: ALL, the tutorial and search strategies, a random search with five
times their budget, and an exhaustive grid over the blocks that matter, on tuning and held-out seeds.

Each arm runs in its own workspace (its own cell cache, so no arm renders for another) on the workbench's demo
project (the world's gobuhime, the face as the keep box):

- ``both``: ``run_tune(strategy="both", budget=B)``: the tutorial, then the search seeded with its result.
- ``random``: ``run_tune(strategy="random", budget=5B)``: Optuna's random sampler over the same grid.
- ``exhaustive``: the ``K`` blocks of largest analyzer Diff % (the ``both`` arm's analyzer run) take every
  combination of ``--values`` (the other blocks at ``--others``: 1 as in ALL, or 0), scored on the tuning seeds
  with the same scorer; the best by the tune's goal is then rendered at the held-out seeds. It says whether the
  target (side effect at most half of ALL's with effect kept >= the threshold) is reachable by moving those blocks
  at all.

Prints a Markdown table (mean ± spread over seeds) and writes ``proof.json`` in ``--out``.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python tools/tune_proof.py --out /tmp/proof [--budget 200]
[--random-factor 5] [--blocks 5] [--values 0,0.5,1] [--seeds 11,12] [--held-out 13,14] [--analyzer-threshold N]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

from lbw.domain.tune_rule import DEFAULT_THRESHOLD, ScoreSummary, best_index
from lbw.services.tune import TuneOptions, run_tune
from lbw.services.workbench import DEMO_PROJECT, latest_analysis, open_demo_project


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _summary(summary: ScoreSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {"effect": summary.effect, "effect_sd": summary.effect_sd, "side": summary.side, "side_sd": summary.side_sd,
            "n": summary.n}


def _store(folder: Path, seeds: tuple[int, ...]) -> Any:
    from lbw.services.projects import open_workspace

    store = open_workspace(folder / "workspace")
    open_demo_project(store, folder / "assets", seeds=seeds)
    return store


def run_arm(folder: Path, strategy: str, budget: int, seeds: tuple[int, ...], held: tuple[int, ...],
            threshold: float, analyzer_threshold: int | None = None) -> dict[str, Any]:
    """One ``run_tune`` in its own workspace; its rows, cells and wall time."""
    store = _store(folder, seeds)
    began = time.monotonic()
    report = run_tune(store, DEMO_PROJECT, TuneOptions(budget=budget, strategy=strategy, threshold=threshold,
                                                        analyzer_threshold=analyzer_threshold,
                                                        seeds=seeds, held_out_seeds=held))
    return {"strategy": strategy, "budget": budget, "cells": report.cells, "seconds": time.monotonic() - began,
            "winner": report.winner, "weights": report.weights,
            "rows": [{"name": row.name, "weights": None if row.weights is None else list(row.weights),
                      "tuning": _summary(row.tuning), "held_out": _summary(row.held_out)} for row in report.rows],
            "notes": list(report.notes)}


def run_exhaustive(folder: Path, blocks: int, values: tuple[float, ...], seeds: tuple[int, ...],
                   held: tuple[int, ...], threshold: float, others: float = 1.0) -> dict[str, Any]:
    """Every combination of ``values`` on the ``blocks`` blocks of largest Diff % in ``folder``'s analyzer run."""
    from lbw.render.scorers import DEFAULT_SCORER, load_scorer
    from lbw.render.scores import keep_mask
    from lbw.services.project_render import make_project_backend
    from lbw.services.projects import get_project
    from lbw.services.tune_cells import Budget, Cells, Scoring, candidate_plan, reference_plan

    store = _store(folder, seeds)
    view = get_project(store, DEMO_PROJECT)
    found = latest_analysis(store, DEMO_PROJECT)
    if found is None:
        raise SystemExit(f"no analyzer run in {folder}: run the 'both' arm first")
    rows = sorted(found[1].rows, key=lambda row: -row.diff_percent)
    chosen = [row.block for row in rows[:blocks]]
    ids = view.sheet.layout.ids
    vectors = []
    for combo in itertools.product(values, repeat=len(chosen)):
        vector = [others] * len(ids)
        for block, value in zip(chosen, combo, strict=True):
            vector[ids.index(block)] = value
        vectors.append(vector)
    engine = make_project_backend(view.settings)
    cells = Cells(engine, store.workspace / "cache", folder / "scratch", Budget({}, {"exhaustive": 10**9}))
    began = time.monotonic()
    try:
        refs: dict[int, dict[float, Path]] = {}
        for job, path in cells.render(reference_plan(view, seeds + held), "exhaustive").items():
            refs.setdefault(job.seed, {})[float(job.axis_value)] = path
        scoring = Scoring(load_scorer(DEFAULT_SCORER), keep_mask(view.settings.roi, view.settings.width,
                                                                 view.settings.height),
                          {seed: (by[1.0], by[0.0]) for seed, by in refs.items()})
        labelled = [(f"x{i}", v) for i, v in enumerate(vectors)]
        paths = cells.render(candidate_plan(view, labelled, seeds), "exhaustive")
        by_label = scoring.by_label(paths, seeds)
        table = [(by_label[label], vector) for label, vector in labelled]
        original = (1.0,) * len(ids)
        best = best_index([(summary.score, vector) for summary, vector in table], original, threshold)
        summary, vector = table[best]
        held_paths = cells.render(candidate_plan(view, [("best", vector)], held), "exhaustive") if held else {}
        held_summary = scoring.by_label(held_paths, held).get("best") if held else None
    finally:
        engine.close()
    feasible = [s for s, _ in table if s.effect >= threshold]
    return {"blocks": chosen, "values": list(values), "others": others, "vectors": len(vectors),
            "cells": cells.budget.total,
            "seconds": time.monotonic() - began, "feasible": len(feasible),
            "least_side_feasible": min((s.side for s in feasible), default=None),
            "most_effect": max(s.effect for s, _ in table),
            "best": {"weights": vector, "tuning": _summary(summary), "held_out": _summary(held_summary)},
            "diff_percent": {row.block: row.diff_percent for row in rows[:blocks]}}


def _cell(summary: dict[str, Any] | None, key: str) -> str:
    if summary is None:
        return "-"
    if summary["n"] < 2:
        return f"{summary[key]:.3f}"
    return f"{summary[key]:.3f} ± {summary[key + '_sd']:.3f}"


def markdown(result: dict[str, Any]) -> list[str]:
    """The proof's table: one row per weight vector, effect kept and side effect left on both seed splits."""
    lines = ["| weights | cells | effect kept, tuning | effect kept, held-out | side left, tuning "
             "| side left, held-out |", "| --- | --- | --- | --- | --- | --- |"]
    seen: set[str] = set()
    for arm in result["arms"]:
        for row in arm["rows"]:
            name = row["name"] if row["name"] in ("ALL", "OFF") else f"{row['name']} (budget {arm['budget']})"
            if name in seen:
                continue
            seen.add(name)
            cells = "" if row["name"] in ("ALL", "OFF") else str(arm["cells"])
            lines.append(f"| {name} | {cells} | {_cell(row['tuning'], 'effect')} | {_cell(row['held_out'], 'effect')} "
                         f"| {_cell(row['tuning'], 'side')} | {_cell(row['held_out'], 'side')} |")
    ex = result.get("exhaustive")
    if ex:
        best = ex["best"]
        lines.append(f"| exhaustive best ({len(ex['blocks'])} blocks x {len(ex['values'])} values, others "
                     f"{ex['others']:g}) | {ex['cells']} "
                     f"| {_cell(best['tuning'], 'effect')} | {_cell(best['held_out'], 'effect')} "
                     f"| {_cell(best['tuning'], 'side')} | {_cell(best['held_out'], 'side')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--random-factor", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--values", default="0,0.5,1")
    parser.add_argument("--seeds", default="11,12")
    parser.add_argument("--held-out", default="13,14")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--analyzer-threshold", type=int, default=None,
                        help="pixel threshold of the tutorial's analyzer (default: the project's, 5 at 64 px)")
    parser.add_argument("--others", type=float, default=1.0, help="value of the blocks the exhaustive grid leaves")
    parser.add_argument("--skip", default="", help="arms to skip: both, random, exhaustive")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds, held = _ints(args.seeds), _ints(args.held_out)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    result: dict[str, Any] = {"seeds": list(seeds), "held_out": list(held), "threshold": args.threshold, "arms": []}
    if "both" not in skip:
        result["arms"].append(run_arm(args.out / "both", "both", args.budget, seeds, held, args.threshold,
                                      args.analyzer_threshold))
    if "random" not in skip:
        result["arms"].append(run_arm(args.out / "random", "random", args.budget * args.random_factor, seeds, held,
                                      args.threshold))
    if "exhaustive" not in skip:
        values = tuple(float(v) for v in args.values.split(","))
        result["exhaustive"] = run_exhaustive(args.out / "both", args.blocks, values, seeds, held, args.threshold,
                                              args.others)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proof.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(markdown(result)))
    ex = result.get("exhaustive")
    if ex:
        print(f"exhaustive: blocks {', '.join(ex['blocks'])}; {ex['vectors']} vectors, {ex['feasible']} keep the "
              f"effect >= {args.threshold}; least side effect among them: {ex['least_side_feasible']}; most effect "
              f"kept: {ex['most_effect']:.3f}; {ex['seconds']:.0f} s")
    for arm in result["arms"]:
        print(f"{arm['strategy']}: {arm['cells']} cells in {arm['seconds']:.0f} s; notes: {'; '.join(arm['notes'])}")


if __name__ == "__main__":
    main()
