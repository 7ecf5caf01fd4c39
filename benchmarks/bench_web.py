"""Benchmark the workbench's server side: a sheet action as the page runs it (the service call, then the redraw
of every tab from the store) and opening a project with history, for a project of ``--iterations`` iterations.

The project (SD26, a real fixture LoRA in a LoRA folder) gets ``--iterations`` Sub iterations written straight
into the store (``bench_project.fill``: 27 cells each, three decisions after each; no renders, so no images: the
History thumbnails are skipped). Each case runs ``--repeats`` times after one warm-up; the median wall time is
printed (target < 100 ms each). The redraw is ``Page._refresh`` of the English page: what the server computes
before Gradio serialises the answer (Gradio's own JSON and file handling are not included); after a sheet
action only what a sheet change can alter is redrawn (the page's "sheet" scope), a page load draws everything.

Run: ``.venv/bin/python benchmarks/bench_web.py [--iterations 50] [--repeats 20]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_project import fill
from lbw.domain.layouts import SD26
from lbw.files.fixtures import write_fixture
from lbw.services import projects as ps

TARGET_MS = 100.0


def median_ms(action: Callable[[int], object], repeats: int) -> float:
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
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from lbw.interfaces.web.context import WebContext, WebOptions
    from lbw.interfaces.web.page import Page

    with tempfile.TemporaryDirectory(prefix="lbw-bench-web-") as folder:
        base = Path(folder)
        (base / "loras").mkdir()
        lora = write_fixture("sd15", base / "loras" / "face.safetensors", rank=8, alpha=4, dtype="fp16", seed=0)
        ctx = WebContext.create(WebOptions(workspace=base / "ws", loras=(base / "loras",)))
        store = ctx.store
        ps.create_project(store, "Bench", ps.ProjectSettings(lora=str(lora), prompt="1girl"))
        fill(store, "Bench", args.iterations)
        page = Page(ctx, "en")
        page.build()
        extra = [None for _, _, inputs in page.refreshers for _ in inputs]
        state: dict[str, object] = {"version": ps.get_project(store, "Bench").version}
        state["session"] = page.after(ps.get_project(store, "Bench"), {})

        def redraw(session: dict[str, object]) -> None:
            updates = page._refresh(session, *extra)
            assert isinstance(updates[0], dict) or not str(updates[0]).startswith("⚠"), updates[0]

        def action(call: Callable[[int], ps.ProjectView]) -> Callable[[int], object]:
            """The service call, then the redraw its new session fires (a sheet change: scope "sheet")."""
            def run(index: int) -> object:
                view = call(index)
                state["version"] = view.version
                state["session"] = page.after(view, state["session"], "sheet")  # type: ignore[arg-type]
                redraw(state["session"])  # type: ignore[arg-type]
                return view
            return run

        def open_page(index: int) -> None:
            """A page load: the whole page drawn for the project."""
            redraw(page.after(ps.get_project(store, "Bench"), {}))

        blocks = [b for b in SD26.ids if b != "BASE"]
        cases: dict[str, Callable[[int], object]] = {
            "fix a block + redraw": action(lambda i: ps.fix_block(
                store, "Bench", blocks[i % len(blocks)], 0.25 if i % 2 else 0.75, expected_version=state["version"],
                source="click")),
            "click a cell (take) + redraw": action(lambda i: ps.fix_cell(
                store, "Bench", "SubBASE_0.5", take=i % 2 == 0, expected_version=state["version"],
                source="click")),
            "switch mode + redraw": action(lambda i: ps.set_mode(
                store, "Bench", ("subadd", "sub")[i % 2], expected_version=state["version"], source="click")),
            "undo to an iteration + redraw": action(lambda i: ps.undo_to(
                store, "Bench", 1 + (i % args.iterations), expected_version=state["version"], source="click")),
            f"open the project page ({args.iterations} iterations)": open_page,
        }
        results = {name: median_ms(run, args.repeats) for name, run in cases.items()}
    print(f"workbench server side, median of {args.repeats} (service call + the redraw it fires):")
    for name, value in results.items():
        verdict = "ok" if value < TARGET_MS else f"ABOVE the {TARGET_MS:g} ms target"
        print(f"  {name:<44} {value:8.2f} ms  {verdict}")


if __name__ == "__main__":
    main()
