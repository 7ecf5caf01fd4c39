"""``lbw tune``: tune a project's block weights unattended (the tutorial's loop and a TPE search).

Progress (each round, each improving trial, with the best candidate so far) goes to stderr; the weights, the
score table (ALL, each strategy, LoRA off; tuning and held-out seeds), the cells used, the grid and the report
file to stdout. Ctrl-C keeps the tune's state: the same command continues it.

Example:
    $ lbw tune --project Face --keep-box 0.3,0.1,0.7,0.5 --budget 200 --seeds 1,2 --held-out-seeds 7,8
    $ lbw tune --project Face --keep-mask face-mask.png --budget 200
    tuned weights (search): Face:1,0,0.5,...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lbw.errors import ProjectError
from lbw.interfaces.cli.safe import Interrupted, markup, shown

if TYPE_CHECKING:
    from lbw.services.tune import TuneReport
    from lbw.services.tune_context import TuneEvent

def _seed_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """``1,2,3`` -> (1, 2, 3); None when not given; ``""`` -> () (allowed for held-out seeds)."""
    if text is None:
        return None
    parts = [part for part in text.replace(" ", "").split(",") if part]
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise ProjectError(f"{option} {text!r}: expected integers separated by commas") from None


def score_table(report: TuneReport) -> list[str]:
    """The score table as lines: one row per ALL, strategy result and LoRA off."""
    from lbw.services.tune_live import score_rows
    from lbw.services.tune_report import report_data

    names = {"OFF": "LoRA off"}
    header = ("", "effect kept", "", "side effect left", "")
    sub = ("", f"tuning ({len(report.tuning_seeds)})", f"held-out ({len(report.held_out_seeds)})",
           f"tuning ({len(report.tuning_seeds)})", f"held-out ({len(report.held_out_seeds)})")
    rows = [header, sub]
    for name, *numbers in score_rows(report_data(report)):
        rows.append((names.get(name, name), *numbers))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]


def keep_region(report: TuneReport) -> str:
    """``keep box x0,y0,x1,y1`` or ``keep mask FILE (N pixels, within x0,y0,x1,y1)``."""
    mask = report.keep_mask
    if mask is None:
        return f"keep box {report.keep_box}"
    return f"keep mask {mask.file} ({mask.kept_pixels} pixels, within {mask.bounding_box})"


def print_report(report: TuneReport) -> None:
    """The weights, the score table, the cells used and the files."""
    counts = report.counts
    print(f"tuned weights ({shown(report.winner)}): {shown(report.weights)}")
    print(f"goal: least side effect with effect kept >= {report.threshold:g} on the tuning seeds "
          f"{','.join(map(str, report.tuning_seeds))}; {shown(keep_region(report))}; scorer {shown(report.scorer)}")
    for line in score_table(report):
        print(line)
    parts = ", ".join(f"{phase} {counts.get(phase, 0)}" for phase in ("references", "tutorial", "search",
                                                                      "random", "evaluation")
                      if phase != "random" or counts.get(phase))
    print(f"cells: {report.cells} rendered, budget {report.budget} ({parts}; cached cells are free)")
    if report.iterations:
        numbers = ", ".join(str(n) for n in report.iterations)
        print(f"iterations of project {shown(report.project)}: {numbers} (see lbw project log; every decision says "
              "why)")
    for note in report.notes:
        print(f"note: {shown(note)}")
    print(f"grid: {shown(report.grid)}")
    print(f"report: {shown(report.report)}")


def register(app: typer.Typer) -> None:
    """Add ``lbw tune`` to ``app``."""

    @app.command("tune")
    def tune_command(
        project: str = typer.Option(..., "--project", help="The project to tune (see `lbw project`)."),
        keep_box: str | None = typer.Option(None, "--keep-box", help="Region whose look the LoRA is for, "
                                            "x0,y0,x1,y1 in fractions or pixels (default: the project's region)."),
        keep_mask: Path | None = typer.Option(None, "--keep-mask", help="The keep region as a PNG instead of a box: "
                                              "kept = above 50% alpha (or luminance); resized to the render size "
                                              "with nearest-neighbour."),
        budget: int = typer.Option(200, "--budget", help="Cells to render at most (cached cells are free)."),
        strategy: str = typer.Option("both", "--strategy", help="tutorial, search, both, or random (a baseline)."),
        threshold: float = typer.Option(0.9, "--threshold", help="Least effect kept (0..1)."),
        seeds: str | None = typer.Option(None, "--seeds", help="Tuning seeds (default: the project's)."),
        held_out_seeds: str | None = typer.Option(None, "--held-out-seeds", help="Seeds never tuned on, only "
                                                  "reported (default: the two after the largest tuning seed)."),
        scorer: str = typer.Option("lab-ssim", "--scorer", help="Scorer (entry point group lbw.scorers)."),
        sampler_seed: int = typer.Option(0, "--sampler-seed", help="Seed of the search's TPE sampler."),
        analyzer_threshold: int | None = typer.Option(None, "--analyzer-threshold", help="Pixel threshold of the "
                                                      "tutorial's analyzer run (default 20; 5 up to 128 px)."),
        restart: bool = typer.Option(False, "--restart", help="Start a new tune instead of continuing one."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        allow_empty_prompt: bool = typer.Option(False, "--allow-empty-prompt", help="Render without a prompt."),
        workspace: Path = typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                                       help="Workspace folder of the projects (or LBW_WORKSPACE)."),
        device: str = typer.Option("auto", "--device", help="diffusers: auto, cpu, cuda, cuda:N."),
        dtype: str | None = typer.Option(None, "--dtype", help="diffusers: fp32, fp16 or bf16."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="diffusers: images per batch."),
        lora_mode: str | None = typer.Option(None, "--lora-mode", help="diffusers: batched or merge."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
        timeout: float | None = typer.Option(None, "--timeout", help="a1111/comfyui: seconds per request."),
        connect_timeout: float | None = typer.Option(None, "--connect-timeout", help="a1111/comfyui: seconds to "
                                                     "connect."),
        deadline: float | None = typer.Option(None, "--deadline", help="a1111/comfyui: seconds per run."),
    ) -> None:
        """Tune a project's block weights unattended: keep the LoRA's look inside the keep box, remove its side
        effects outside, with as little of the LoRA removed as needed (docs/tune.md)."""
        from lbw.domain.text import json_text
        from lbw.interfaces.cli.project import open_store
        from lbw.interfaces.cli.render import RenderProgress
        from lbw.services.projects import get_project
        from lbw.services.tune import TuneOptions, report_data, run_tune

        options = TuneOptions(keep_box=keep_box, keep_mask=keep_mask, budget=budget, strategy=strategy,
                              threshold=threshold,
                              seeds=_seed_list(seeds, "--seeds"),
                              held_out_seeds=_seed_list(held_out_seeds, "--held-out-seeds"), scorer=scorer,
                              sampler_seed=sampler_seed, restart=restart, allow_empty_prompt=allow_empty_prompt,
                              analyzer_threshold=analyzer_threshold)
        store = open_store(workspace)
        get_project(store, project)  # an unknown project is refused before torch loads
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        given = {"device": device, "dtype": dtype, "batch_size": batch_size, "lora_mode": lora_mode,
                 "timeout": timeout, "connect_timeout": connect_timeout, "deadline": deadline}
        machine = {key: value for key, value in given.items() if value is not None}
        bars = RenderProgress("cells")

        def on_event(event: TuneEvent) -> None:
            best = ""
            if event.best is not None:
                best = f"; best so far: effect {event.best.effect:.3f} side {event.best.side:.3f}"
            bars.print(markup(f"tune [{event.phase}] {event.text}{best} (cells {event.cells}/{event.budget})"))

        try:
            with bars:
                report = run_tune(store, project, options, progress=on_event, on_cell=bars.on_cell,
                                  backend_options=machine)
        except KeyboardInterrupt:
            raise Interrupted("the tune's state is saved and rendered cells stay in the workspace cache: run the "
                              "same command again to continue") from None
        if as_json:
            print(json_text(report_data(report), indent=2))
        else:
            print_report(report)
