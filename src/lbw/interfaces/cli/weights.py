"""``lbw weights``: parse, show and convert weight vectors (instant: standard library + typer only).

Example:
    $ lbw weights parse "DUMMY17:1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11" --to 26
    DUMMY17:1,0,1,2,0,4,5,0,7,8,0,0,0,1,0,0,0,3,4,5,6,7,8,9,10,11
"""

from __future__ import annotations

import typer

from lbw.domain.convert import convert
from lbw.domain.inspire import inspire_to_lbw, lbw_to_inspire, parse_inspire_vector, parse_present_blocks
from lbw.domain.layouts import layout_named
from lbw.domain.weights import BlockWeights, format_value, parse_weights
from lbw.errors import WeightsError

INSPIRE = "inspire"


def note(message: str) -> None:
    """A side remark on stderr, so stdout stays ready to copy."""
    typer.echo(f"lbw: note: {message}", err=True)


def _parse_resolved(text: str, seed: int | None, x: float) -> BlockWeights:
    weights = parse_weights(text)
    if seed is not None:
        return weights.resolve(seed, x)
    if weights.is_symbolic:
        note("R/U/X are kept symbolic; pass --seed (and --x) to resolve them")
    return weights


def parse_command(
    text: str = typer.Argument(
        ..., help='Weights: "NAME:v1,...,vN" or "v1,...,vN" (N = 12, 17, 20, 26, 61).'
    ),
    to: str | None = typer.Option(None, "--to", help="Convert to this layout: 26, 17, 20, 12 (or SD26...)."),
    fill: float = typer.Option(0.0, "--fill", help="Value for blocks added by 17->26 / 12->20 (LBW uses 0)."),
    allow_drop: bool = typer.Option(
        False, "--allow-drop", help="Allow 26->17 / 20->12 to drop non-zero blocks."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Resolve R/U with this seed."),
    x: float = typer.Option(1.0, "--x", help="Value of X when resolving (LBW default 1)."),
) -> None:
    """Parse a weight string and print it in canonical form (optionally converted)."""
    weights = _parse_resolved(text, seed, x)
    if to is not None:
        conversion = convert(weights, layout_named(to), fill=fill, allow_drop=allow_drop)
        for line in conversion.notes():
            note(line)
        weights = conversion.weights
    print(weights.format())


def show_command(
    text: str = typer.Argument(..., help="Weights to show block by block."),
) -> None:
    """Show a weight vector as a block table."""
    from rich.console import Console
    from rich.table import Table

    weights = parse_weights(text)
    table = Table(
        title=f"{weights.name or 'weights'} ({weights.layout.name})", caption=weights.layout.description
    )
    table.add_column("block")
    table.add_column("weight", justify="right")
    for block_id, value in weights.items():
        table.add_row(block_id, format_value(value))
    Console(highlight=False).print(table)


def convert_command(
    text: str = typer.Argument(..., help="Weights (LBW) or an Inspire block_vector with --from inspire."),
    to: str = typer.Option(..., "--to", help="Target: 26, 17, 20, 12, 61 or inspire."),
    source: str = typer.Option("lbw", "--from", help="Source convention: lbw or inspire."),
    present: str | None = typer.Option(
        None, "--present", help="The LoRA's blocks, for Inspire: input.1,input.2,middle.1,output.3,..."
    ),
    fill: float = typer.Option(0.0, "--fill", help="Fill value for 17->26 / 12->20."),
    allow_drop: bool = typer.Option(
        False, "--allow-drop", help="Allow 26->17 / 20->12 to drop non-zero blocks."
    ),
    name: str | None = typer.Option(None, "--name", help="Name for the result (Inspire input has none)."),
) -> None:
    """Convert between layouts, or between LBW and ComfyUI Inspire vectors for a LoRA's present blocks."""
    source_kind = source.strip().lower()
    target = to.strip().lower()
    if source_kind not in ("lbw", INSPIRE):
        raise WeightsError(f"--from must be lbw or inspire, not {source!r}")
    if INSPIRE in (source_kind, target) and present is None:
        raise WeightsError("Inspire vectors depend on the LoRA's blocks: pass --present input.1,middle.1,...")
    if source_kind == INSPIRE:
        if target == INSPIRE:
            raise WeightsError("--from inspire needs --to 26, 20 or 61")
        result = inspire_to_lbw(
            parse_inspire_vector(text), parse_present_blocks(present or ""), layout_named(to), name=name
        )
        for line in result.notes:
            note(line)
        print(result.weights.format())
        return
    weights = parse_weights(text)
    if name is not None:
        weights = weights.with_name(name)
    if target == INSPIRE:
        vector = lbw_to_inspire(weights, parse_present_blocks(present or ""))
        for line in vector.notes:
            note(line)
        print(vector.text())
        return
    conversion = convert(weights, layout_named(to), fill=fill, allow_drop=allow_drop)
    for line in conversion.notes():
        note(line)
    print(conversion.weights.format())


def register(app: typer.Typer) -> None:
    """Add the ``weights`` command group to ``app``."""
    group = typer.Typer(help="Parse, show and convert block weight vectors.", no_args_is_help=True)
    group.command("parse")(parse_command)
    group.command("show")(show_command)
    group.command("convert")(convert_command)
    app.add_typer(group, name="weights")
