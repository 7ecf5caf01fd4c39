"""``lbw demo``: the founding tutorial's Gobuhime sheet and all its outputs, from built-in data.

``gobuhime_sheet()`` and ``print_sheet_demo()`` stay callable for a later, rendering demo.

Example:
    $ lbw demo
    Sheet Gobuhime (SD26, step 0.5)
    ...
"""

from __future__ import annotations

from dataclasses import replace

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


def demo_command() -> None:
    """Show what lbw does: the tutorial's Gobuhime sheet and every output it produces."""
    print_sheet_demo()


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo_command)
