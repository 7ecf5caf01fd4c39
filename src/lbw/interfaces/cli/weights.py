"""``lbw weights``: parse, show and convert weight vectors, sd-scripts arguments (instant: stdlib + typer).

Example:
    $ lbw weights parse "DUMMY17:1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11" --to 26
    DUMMY17:1,0,1,2,0,4,5,0,7,8,0,0,0,1,0,0,0,3,4,5,6,7,8,9,10,11
    $ lbw weights sdscripts --dims 2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2,2 --alphas 1
    "block_dims=4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2,2" "block_alphas=1,1,...,1"
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lbw.domain.convert import convert
from lbw.domain.inspire import inspire_to_lbw, lbw_to_inspire, parse_inspire_vector, parse_present_blocks
from lbw.domain.layouts import Layout, layout_named
from lbw.domain.sdscripts import network_args, parse_block_dims
from lbw.domain.weights import BlockWeights, format_value, parse_weights
from lbw.errors import WeightsError
from lbw.interfaces.cli.safe import VectorCommand, markup, shown

INSPIRE = "inspire"


def note(message: str) -> None:
    """A side remark on stderr, so stdout stays ready to copy."""
    typer.echo(f"lbw: note: {shown(message)}", err=True)


def layout_option(text: str, option: str = "--to") -> Layout:
    """The layout an option names (``26``, ``SD26``, ``xl12``...), or a WeightsError naming the option."""
    try:
        return layout_named(text)
    except WeightsError:
        raise WeightsError(
            f"{option} {text!r} is not a layout; expected 26, 17, 20, 12 or 61 (or SD26, SD17, XL20, XL12, FLUX61)"
        ) from None


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
    fill: float | None = typer.Option(
        None, "--fill", help="Value for blocks added by --to 26 (from 17) / --to 20 (from 12); LBW uses 0."
    ),
    allow_drop: bool = typer.Option(
        False, "--allow-drop", help="Allow 26->17 / 20->12 to drop non-zero blocks."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Resolve R/U with this seed."),
    x: float = typer.Option(1.0, "--x", help="Value of X when resolving (LBW default 1)."),
) -> None:
    """Parse a weight string and print it in canonical form (optionally converted)."""
    if fill is not None and to is None:
        raise WeightsError("--fill only applies when converting: add --to 26 (or --to 20)")
    weights = _parse_resolved(text, seed, x)
    if to is not None:
        conversion = convert(weights, layout_option(to), fill=fill or 0.0, allow_drop=allow_drop)
        for line in conversion.notes():
            note(line)
        weights = conversion.weights
    print(shown(weights.format()))


def show_command(
    text: str = typer.Argument(..., help="Weights to show block by block."),
) -> None:
    """Show a weight vector as a block table."""
    from rich.console import Console
    from rich.table import Table

    weights = parse_weights(text)
    table = Table(
        title=f"{markup(weights.name or 'weights')} ({weights.layout.name})", caption=weights.layout.description
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
    lora: Path | None = typer.Option(
        None, "--lora", help="Take the present blocks for Inspire from this LoRA file (instead of --present)."
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
    if present is not None and lora is not None:
        raise WeightsError("give the LoRA's blocks once: --present or --lora, not both")
    if INSPIRE in (source_kind, target) and present is None and lora is None:
        raise WeightsError(
            "Inspire vectors depend on the LoRA's blocks: pass --lora FILE or --present input.1,middle.1,..."
        )
    blocks = _present_blocks(present, lora) if INSPIRE in (source_kind, target) else []
    if source_kind == INSPIRE:
        if target == INSPIRE:
            raise WeightsError("--from inspire needs --to 26, 20 or 61")
        result = inspire_to_lbw(parse_inspire_vector(text), blocks, layout_option(to), name=name)
        for line in result.notes:
            note(line)
        print(shown(result.weights.format()))
        return
    weights = parse_weights(text)
    if name is not None:
        weights = weights.with_name(name)
    if target == INSPIRE:
        vector = lbw_to_inspire(weights, blocks)
        for line in vector.notes:
            note(line)
        print(shown(vector.text()))
        return
    conversion = convert(weights, layout_option(to), fill=fill, allow_drop=allow_drop)
    for line in conversion.notes():
        note(line)
    print(shown(conversion.weights.format()))


def _present_blocks(present: str | None, lora: Path | None) -> list[tuple[str, int]]:
    """The Inspire blocks present: parsed from --present, or read from the LoRA file's header."""
    if lora is None:
        return list(parse_present_blocks(present or ""))
    from lbw.files.lora_file import LoraFile

    with LoraFile.open(lora) as file:
        return list(file.inspire_blocks)


_PER_BLOCK = "a vector (26/17 SD, 20/12 SDXL values; BASE is ignored) or one number for every block"
# The four sd-scripts rank/alpha options, shared by `weights sdscripts` and `sheet render|show`.
DimsOption = Annotated[str | None, typer.Option("--dims", help=f"block_dims, a rank per block: {_PER_BLOCK}.")]
AlphasOption = Annotated[str | None, typer.Option("--alphas", help=f"block_alphas: {_PER_BLOCK}.")]
ConvDimsOption = Annotated[
    str | None, typer.Option("--conv-dims", help=f"conv_block_dims (3x3 conv ranks): {_PER_BLOCK}.")
]
ConvAlphasOption = Annotated[str | None, typer.Option("--conv-alphas", help=f"conv_block_alphas: {_PER_BLOCK}.")]


def sdscripts_command(
    text: str | None = typer.Argument(
        None, help="LBW weights for down/mid/up_lr_weight, or a sheet file (.toml); optional when --dims is given."
    ),
    dims: DimsOption = None,
    alphas: AlphasOption = None,
    conv_dims: ConvDimsOption = None,
    conv_alphas: ConvAlphasOption = None,
    layout: str | None = typer.Option(
        None, "--layout", help="Layout for single numbers when no vector says it: 26 (SD, default) or 20 (SDXL)."
    ),
    project: str | None = typer.Option(None, "--project", help="Use this project's sheet as the weights."),
    workspace: Path = typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                                   help="Workspace folder of the projects (or LBW_WORKSPACE)."),
) -> None:
    """sd-scripts --network_args: block lr weights from LBW weights, block_dims/alphas from a rank per block."""
    if project is not None or (text is not None and text.strip().lower().endswith(".toml")):
        from lbw.services.projects import weights_text

        text = weights_text(text, project=project, workspace=workspace, option="WEIGHTS")
    weights = parse_weights(text) if text is not None else None
    if layout is not None:
        target = layout_option(layout, "--layout")
    else:
        target = weights.layout if weights is not None else None
    block_dims = parse_block_dims(dims, alphas, conv_dims, conv_alphas, layout=target)
    result = network_args(weights, block_dims)
    print(shown(result.text()))
    for line in result.notes:
        note(line)


def register(app: typer.Typer) -> None:
    """Add the ``weights`` command group to ``app``."""
    group = typer.Typer(help="Parse, show and convert block weight vectors.", no_args_is_help=True)
    # VectorCommand: the vector may start with a minus sign (`lbw weights parse -1,0,...`), no `--` needed.
    group.command("parse", cls=VectorCommand)(parse_command)
    group.command("show", cls=VectorCommand)(show_command)
    group.command("convert", cls=VectorCommand)(convert_command)
    group.command("sdscripts", cls=VectorCommand)(sdscripts_command)
    app.add_typer(group, name="weights")
