"""``lbw demo``: the whole loop on a tiny local model (analyzer, Sub grid, bake, verify), or with
``--sheet`` the founding tutorial's Gobuhime sheet and all its outputs, from built-in data.

Example:
    $ lbw demo
    ...
    baked: lbw-demo/gobuhime-tiny-Gobuhime.safetensors (verified: max relative error 0)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from lbw.domain.sheet import Sheet
from lbw.domain.weights import parse_weights

# plot-helper.md §2: the tutorial's sheet after the Effective Block Analyzer survey.
GOBUHIME_WEIGHTS = "Gobuhime:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
GOBUHIME_UNFIXED = (
    "IN01",
    "IN03",
    "IN04",
    "IN05",
    "OUT00",
    "OUT01",
    "OUT06",
    "OUT07",
    "OUT08",
    "OUT09",
    "OUT11",
)
GOBUHIME_LORA = "gobuhime-Defmix2"


def gobuhime_sheet() -> Sheet:
    """The tutorial's example sheet: important blocks 1 + Fix, unneeded 0 + Fix, unclear 0.5 open, step 0.5.

    Example:
        >>> gobuhime_sheet().eba_blocks()
        'IN01,IN03,IN04,IN05,OUT00,OUT01,OUT06,OUT07,OUT08,OUT09,OUT11'
    """
    weights = parse_weights(GOBUHIME_WEIGHTS)
    fixed = [b for b in weights.layout.ids if b not in GOBUHIME_UNFIXED]
    sheet = Sheet.from_weights(weights, fixed=fixed, step=0.5)
    return replace(sheet, lora=GOBUHIME_LORA)


def print_sheet_demo() -> None:
    """Print the Gobuhime sheet report (what `lbw sheet render` prints for it)."""
    from rich.console import Console

    from lbw.interfaces.cli.sheet import print_outputs

    Console(highlight=False, soft_wrap=True).print(
        "[bold]lbw demo[/]: the Plot Helper sheet of the founding tutorial (face LoRA gobuhime-Defmix2). "
        "Important blocks are 1 and fixed, unneeded 0 and fixed, unclear 0.5 and open; "
        "each open block gets a "
        "Sub variant lowered by the step.\n"
    )
    print_outputs(gobuhime_sheet())


def demo_command(
    out: Path = typer.Option(Path("lbw-demo"), "--out", "-o", help="Folder for the model, LoRA, grids, bake."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    sheet: bool = typer.Option(False, "--sheet", help="Only print the tutorial's Gobuhime sheet outputs."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="CPU threads for torch (the tiny model runs fastest on one)."
    ),
    world: bool | None = typer.Option(
        None, "--world/--tiny", help="The built-in world (its trained model and gobuhime LoRA, the side effect "
        "measured before and after; the default when its weights are installed) or the tiny random-weight model."),
) -> None:
    """Show what lbw does, end to end, on the built-in world (no downloads, under a minute on a CPU).

    Runs the Effective Block Analyzer over all 26 blocks of the world's gobuhime LoRA (the face as the region of
    interest), renders a Sub grid of the suggested sheet, bakes the suggested weights exactly, verifies the bake
    and measures the side effect (green outside the face) before and after. ``--tiny`` runs the same loop on a
    tiny random-weight model built locally.
    """
    if sheet:
        print_sheet_demo()
        return
    if world is None:
        from lbw.world.assets import shipped

        world = shipped()
    run_render_demo(out, device, threads, world=world)


def run_render_demo(out: Path, device: str, threads: int = 1, *, world: bool = False) -> None:
    """Run ``lbw.services.demo.run_demo`` with progress on stderr and print where everything is."""
    import time

    import torch
    from rich.console import Console

    from lbw.interfaces.cli.render import RenderProgress, print_eba, print_plot
    from lbw.interfaces.cli.safe import markup, shown
    from lbw.render.backends.diffusers_backend import resolve_device
    from lbw.services.demo import run_demo

    if world:
        from lbw.services.world_demo import run_world_demo as run_demo  # type: ignore[assignment]

    # Tiny 64x64 models gain nothing from more threads, and on a busy CPU extra threads slow torch down a lot.
    torch.set_num_threads(threads)
    err = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    with RenderProgress("cells") as progress:
        result = run_demo(
            out,
            device=resolve_device(device),
            on_cell=progress.on_cell,
            on_stage=lambda text: progress.print(f"[bold]lbw demo[/]: {markup(text)}"),
        )
    baked, check = result.baked, result.verification
    kind = "the built-in world, trained on this machine" if world else "tiny SD1.5 layout, random weights"
    print(f"model: {shown(result.model)}  ({kind})")
    print(f"LoRA:  {shown(result.lora)}")
    print_eba(result.eba)
    print("Sub grid of the suggested sheet:")
    print_plot(result.sub)
    if result.story is not None:
        print_story(result)
    verdict = "verified" if check.passed else "VERIFICATION FAILED"
    print(f"baked: {shown(baked.written.path)} ({verdict}: max relative error {check.max_error:.3g}, "
          f"tolerance {check.tolerance:g}; {baked.modules_out} of {baked.modules_in} modules kept)")
    err.print(f"lbw demo: done in {time.perf_counter() - started:.1f} s")
    if not check.passed:
        raise typer.Exit(1)


def print_story(result: Any) -> None:
    """The tutorial's story in numbers: the face kept, the green outside it before and after."""
    from lbw.interfaces.cli.render import print_plot

    print("The effect and the side effect, same seeds (green skin and the identity parts: share of pictures; clothes "
          "and background: how far their colour moved from the LoRA-off picture, mean CIEDE2000, and the share of "
          "their pixels nearer the LoRA's green than their own colour):")
    print(f"  {'cell':<10} {'green skin':>10} {'ornament':>8} {'choker':>7} {'clothes moved':>14} "
          f"{'background moved':>17} {'green clothes':>13} {'green bg':>8}")
    for label, row in result.numbers.items():
        print(f"  {label:<10} {row['skin_green']:>10.0%} {row['ornament']:>8.0%} {row['choker']:>7.0%} "
              f"{row['clothes_shift']:>14.1f} {row['background_shift']:>17.1f} {row['clothes_green']:>13.0%} "
              f"{row['background_green']:>8.0%}")
    print_plot(result.story)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo_command)
