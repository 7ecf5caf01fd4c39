"""Benchmark the project store: server-side time of the sheet actions and of opening a project with history.

A workspace in a temporary folder holds one SD26 project with ``--iterations`` iterations (default 50) written
directly into the store (no renders): each a full Sub list (27 cells) with Diff % per cell and three decisions
after it, like a long tuning session. Then each action runs ``--repeats`` times (after one warm-up) and the median
wall time of the service call is printed (target < 100 ms each):
- fix a block (``fix_block``), click a cell (``fix_cell``), switch mode (``set_mode``), undo (``undo_to``);
- open the project as a page does: ``get_project`` + ``list_iterations`` + ``get_iteration`` (the latest, with its
  cells) + ``project_log``.
Every call opens its own SQLite connection and transaction, as the web server's workers do.

Run: ``.venv/bin/python benchmarks/bench_project.py [--iterations 50] [--repeats 30]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet, variants
from lbw.services import projects as ps
from lbw.store import records as db

TARGET_MS = 100.0


def fill(store: ps.Store, name: str, iterations: int) -> None:
    """``iterations`` iterations of full Sub lists, three decisions after each (no rendering)."""
    for number in range(1, iterations + 1):
        with store.write() as con:
            record = db.project_by_name(con, name)
            entries = variants(record.sheet, "sub").entries
            cells = []
            for position, variant in enumerate(entries):
                block = variant.block_id
                value = None if block is None else variant.weights.numbers()[SD26.index(block)]
                cells.append(db.CellRecord(position, variant.name, block, value, 1,
                                           f"projects/{record.id}/iterations/{number:04d}-sub/cells/{position:03d}.png",
                                           f"{number:032x}{position:032x}", None if block is None else 1.5 * position,
                                           None if block is None else "Sub"))
            iteration = db.insert_iteration(
                con, record.id, number=number, kind="sub", sheet_before=record.sheet, plan='{"cells": []}',
                folder=f"projects/{record.id}/iterations/{number:04d}-sub", grid=None, grid_sha256=None,
                created=db.now(), cells=cells)
            decisions = [db.NewDecision("take", "click", block, 1.0, 0.5, False, True, {"cell": f"Sub{block}_0.5"})
                         for block in SD26.ids[number % 20: number % 20 + 3]]
            db.insert_decisions(con, record.id, decisions, iteration_id=iteration.id)


def median_ms(action: Callable[[int], object], repeats: int) -> float:
    """Median wall time of ``action(i)`` over ``repeats`` runs, after one warm-up run."""
    action(-1)
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        action(index)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lbw-bench-project-") as folder:
        store = ps.open_workspace(Path(folder) / "ws")
        view = ps.create_project(store, "Bench", ps.ProjectSettings(prompt="1girl"), Sheet.new("Bench", SD26))
        fill(store, "Bench", args.iterations)
        state = {"version": ps.get_project(store, "Bench").version}

        def mutate(call: Callable[[int], ps.ProjectView]) -> Callable[[int], object]:
            def run(index: int) -> object:
                result = call(index)
                state["version"] = result.version
                return result
            return run

        blocks = [b for b in SD26.ids if b != "BASE"]
        cases: dict[str, Callable[[int], object]] = {
            "fix a block": mutate(lambda i: ps.fix_block(
                store, "Bench", blocks[i % len(blocks)], 0.25 if i % 2 else 0.75, expected_version=state["version"])),
            "click a cell (take)": mutate(lambda i: ps.fix_cell(
                store, "Bench", "SubBASE_0.5", take=i % 2 == 0, expected_version=state["version"])),
            "switch mode": mutate(lambda i: ps.set_mode(
                store, "Bench", ("subadd", "sub")[i % 2], expected_version=state["version"])),
            "undo to an iteration": mutate(lambda i: ps.undo_to(
                store, "Bench", 1 + (i % args.iterations), expected_version=state["version"])),
        }

        def open_project(_: int) -> object:
            project = ps.get_project(store, "Bench")
            history = ps.list_iterations(store, "Bench")
            latest = ps.get_iteration(store, "Bench")
            log = ps.project_log(store, "Bench")
            assert len(history) == args.iterations and len(latest.cells) == 27 and log and project
            return latest

        cases[f"open the project ({args.iterations} iterations)"] = open_project
        results = {name: median_ms(action, args.repeats) for name, action in cases.items()}
    del view
    print(f"project store, median of {args.repeats} (SQLite WAL, one connection per call):")
    for name, value in results.items():
        verdict = "ok" if value < TARGET_MS else f"ABOVE the {TARGET_MS:g} ms target"
        print(f"  {name:<36} {value:8.2f} ms  {verdict}")


if __name__ == "__main__":
    main()
