"""``lbw sheet`` and ``lbw hints``: the Plot Helper sheet on the command line (instant, no heavy imports).

Example:
    $ lbw sheet render --weights "Gobuhime:1,0,0.5,..." --unfixed IN01,IN03 --json
    {"weight": "Gobuhime:1,0,0.5,...", "sub_weights": "Sub:...", ...}
    $ lbw sheet new face.toml --name Face
    $ lbw sheet fix face.toml IN01=0 OUT06=0.5
    $ lbw sheet show face.toml
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lbw.domain.hints import HintRow, hint_rows, hint_table, select_hints
from lbw.domain.layouts import Layout, canonical_block_id
from lbw.domain.numbers import format_number, parse_number
from lbw.domain.prompt import LEGACY_WARNING
from lbw.domain.sdscripts import BlockDims, parse_block_dims
from lbw.domain.sheet import LIST_KINDS, OUTPUT_KEYS, Sheet, SheetOutputs, sheet_outputs
from lbw.domain.sheet_file import sheet_from_toml, sheet_to_toml
from lbw.domain.text import json_text
from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import OutputError, SheetError
from lbw.interfaces.cli.presets import load_presets, read_text_file, write_text_file
from lbw.interfaces.cli.safe import markup, shown
from lbw.interfaces.cli.weights import AlphasOption, ConvAlphasOption, ConvDimsOption, DimsOption, layout_option

if TYPE_CHECKING:
    from rich.console import Console

    from lbw.services.project_types import ProjectView
    from lbw.store import Store

_LIST_TITLES = {"sub": "Sub", "add": "Add", "subadd": "SubAdd", "addsub": "AddSub"}
ALL = "all"


def split_ids(text: str, layout_ids: Sequence[str] = ()) -> list[str]:
    """Block IDs from ``"IN01,IN02 OUT03"`` (commas and/or spaces; ``MID`` accepted; ``all`` = ``layout_ids``)."""
    ids: list[str] = []
    for token in text.replace(",", " ").split():
        ids.extend(layout_ids if token.lower() == ALL and layout_ids else [canonical_block_id(token)])
    return ids


def _assignments(items: list[str], sheet: Sheet) -> tuple[dict[str, float], list[str]]:
    """Split ``ID=VALUE`` items (values) from bare IDs; ``all`` means every block."""
    values: dict[str, float] = {}
    bare: list[str] = []
    for item in items:
        for token in item.replace(",", " ").split():
            if "=" in token:
                block, _, raw = token.partition("=")
                values[canonical_block_id(block)] = parse_number(raw, what=f"value for {block}")
            elif token.lower() == ALL:
                bare.extend(sheet.layout.ids)
            else:
                bare.append(canonical_block_id(token))
    return values, bare


def load_sheet(path: Path) -> Sheet:
    """Read a sheet file."""
    return sheet_from_toml(read_text_file(path, SheetError), where=str(path))


def save_sheet(path: Path, sheet: Sheet) -> None:
    """Write a sheet file atomically."""
    write_text_file(path, sheet_to_toml(sheet))


def print_outputs(
    sheet: Sheet,
    *,
    as_json: bool = False,
    only: str | None = None,
    legacy_tag: bool = False,
    dims: BlockDims | None = None,
) -> None:
    """Print the sheet's outputs: JSON, one output alone (``only``), or the readable report."""
    outputs = sheet_outputs(sheet, legacy_tag=legacy_tag, dims=dims)
    if legacy_tag:
        typer.echo(f"lbw: warning: {LEGACY_WARNING}", err=True)
    if only is not None:
        if only not in OUTPUT_KEYS:
            raise SheetError(f"unknown output {only!r}; expected one of {', '.join(OUTPUT_KEYS)}")
        print(shown(outputs.as_dict()[only], keep="\n"))
    elif as_json:
        print(json_text(outputs.as_dict()))
    else:
        print_sheet_report(sheet, outputs)


def print_sheet_report(sheet: Sheet, outputs: SheetOutputs) -> None:
    """The readable report: block table, then every output as plain text ready to copy."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    bounds = ""
    if sheet.lower is not None or sheet.upper is not None:
        low = "-inf" if sheet.lower is None else format_number(sheet.lower)
        high = "inf" if sheet.upper is None else format_number(sheet.upper)
        bounds = f", bounds {low}..{high}"
    console.print(
        f"[bold]Sheet {markup(sheet.name)}[/] ({sheet.layout.name}, step {format_number(sheet.step)}{bounds})"
    )
    print_block_table(console, sheet)
    console.print(f"[bold {'green' if sheet.is_done else 'yellow'}]{markup(sheet.status())}[/]")

    def section(title: str, text: str, hint: str = "") -> None:
        console.print()
        console.print(f"[bold cyan]{title}[/]" + (f" [dim]{hint}[/]" if hint else ""))
        print(shown(text, keep="\n"))

    section("WEIGHT", outputs.weight, "(add to LBW's presets for the final bake)")
    for kind in LIST_KINDS:
        title = _LIST_TITLES[kind]
        chosen = outputs.lists[kind]
        section(
            f"{title} weights",
            chosen.preset_text(),
            '(paste into LBW "Weights setting", Save Presets, Reload Tags)',
        )
        section(
            f"{title} Prompt S/R", chosen.prompt_sr(), f"(X/Y/Z plot X values; {len(chosen.entries)} cells)"
        )
    section("Effective Block Analyzer Blocks", outputs.eba_blocks or "(empty: every block is fixed)")
    section("sd-scripts block arguments", outputs.sd_scripts.text(), "(--network_args)")
    for line in outputs.sd_scripts.notes:
        console.print(f"  [dim]note: {markup(line)}[/]")
    section("Prompt tag", outputs.prompt_tag, "(for the Sub and SubAdd lists)")
    console.print("[dim]for the Add and AddSub lists:[/]")
    print(shown(outputs.add_prompt_tag))
    console.print(
        "  [dim]note: the base tags Sub and Add must not occur elsewhere in the prompt: "
        "Prompt S/R replaces every occurrence[/]"
    )
    for skipped in outputs.skipped:
        console.print(f"  [yellow]left out:[/] {markup(skipped.describe())}")
    for variant in outputs.out_of_range:
        console.print(
            f"  [yellow]outside 0..1:[/] {markup(variant.name)} (LBW accepts it; set --lower/--upper to bound)"
        )


def print_block_table(console: Console, sheet: Sheet) -> None:
    """The weight and Fix rows of a sheet, wrapped to the console width."""
    from rich.table import Table

    ids = sheet.layout.ids
    width = max(1, (console.width - 8) // 7)  # 7 = an OUT00 column with padding
    for start in range(0, len(ids), width):
        chunk = ids[start : start + width]
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("")
        for block_id in chunk:
            table.add_column(block_id, justify="right")
        table.add_row("weight", *(format_number(sheet.value(b)) for b in chunk))
        table.add_row("fixed", *("✓" if b in sheet.fixed else "-" for b in chunk))
        console.print(table)


def _fixed_from_options(
    weights_layout_ids: tuple[str, ...], fixed: str | None, unfixed: str | None
) -> list[str]:
    if fixed is not None and unfixed is not None:
        raise SheetError("give --fixed or --unfixed, not both")
    if fixed is not None:
        return split_ids(fixed, weights_layout_ids)
    if unfixed is not None:
        open_ids = set(split_ids(unfixed, weights_layout_ids))
        unknown = sorted(open_ids - set(weights_layout_ids))
        if unknown:
            raise SheetError(
                f"block {', '.join(unknown)} is not in the layout ({','.join(weights_layout_ids)})"
            )
        return [b for b in weights_layout_ids if b not in open_ids]
    return []


def render_command(
    weights: str = typer.Option(..., "--weights", "-w", help='"NAME:v1,..." (26, 17, 20 or 12 values).'),
    fixed: str | None = typer.Option(
        None, "--fixed", help="Fixed blocks, e.g. BASE,IN00,IN02 (others unfixed)."
    ),
    unfixed: str | None = typer.Option(None, "--unfixed", help="Unfixed blocks (all others fixed)."),
    step: float = typer.Option(0.5, "--step", help="AddSubValue: the Sub/Add step."),
    lower: float | None = typer.Option(None, "--lower", help="Variants never go below this."),
    upper: float | None = typer.Option(None, "--upper", help="Variants never go above this."),
    name: str | None = typer.Option(None, "--name", help="Sheet name (default: the weights' name)."),
    lora: str | None = typer.Option(
        None, "--lora", help="LoRA name for the prompt tag (default: the sheet name)."
    ),
    legacy_tag: bool = typer.Option(
        False, "--legacy-tag", help="Old <lora:NAME:1:PRESET> tag (fails on web UI >= 1.5)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every output."),
    only: str | None = typer.Option(
        None, "--only", help=f"Print one output alone: {', '.join(OUTPUT_KEYS)}."
    ),
    dims: DimsOption = None,
    alphas: AlphasOption = None,
    conv_dims: ConvDimsOption = None,
    conv_alphas: ConvAlphasOption = None,
) -> None:
    """Compute every sheet output from a weight string and the fixed/unfixed blocks."""
    parsed = parse_weights(weights)
    fixed_ids = _fixed_from_options(parsed.layout.ids, fixed, unfixed)
    sheet = Sheet.from_weights(parsed, fixed=fixed_ids, step=step, name=name)
    sheet = replace(sheet, lower=lower, upper=upper, lora=lora)
    block_dims = parse_block_dims(dims, alphas, conv_dims, conv_alphas, layout=sheet.layout)
    print_outputs(sheet, as_json=as_json, only=only, legacy_tag=legacy_tag, dims=block_dims)


def new_command(
    file: Path = typer.Argument(..., help="Sheet file to create (TOML)."),
    name: str | None = typer.Option(None, "--name", help="Sheet name (the WEIGHT preset name)."),
    layout: str = typer.Option("26", "--layout", help="26, 17, 20 or 12."),
    value: float = typer.Option(1.0, "--value", help="Starting weight of every block."),
    weights: str | None = typer.Option(None, "--weights", "-w", help="Start from these weights instead."),
    fixed: str | None = typer.Option(None, "--fixed", help="Blocks to fix from the start."),
    step: float = typer.Option(0.5, "--step", help="AddSubValue."),
    lora: str | None = typer.Option(None, "--lora", help="LoRA name for the prompt tag."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Create a sheet file."""
    if file.exists() and not force:
        raise OutputError("exists; pass --force to overwrite", where=str(file))
    if weights is not None:
        parsed = parse_weights(weights)
        fixed_ids = split_ids(fixed or "", parsed.layout.ids)
        sheet = Sheet.from_weights(parsed, fixed=fixed_ids, step=step, name=name)
    else:
        if name is None:
            raise SheetError("a new sheet needs --name (or --weights NAME:...)")
        sheet = Sheet.new(name, layout_option(layout, "--layout"), value, step)
        sheet = sheet.fix(split_ids(fixed or "", sheet.layout.ids))
    if lora is not None:
        sheet = replace(sheet, lora=lora)
    save_sheet(file, sheet)
    print(shown(f"created {file}: {sheet.status()}"))
    print(shown(sheet.weight_line()))


def set_command(
    file: Path = typer.Argument(..., help="Sheet file."),
    assignments: list[str] = typer.Argument(None, help="ID=VALUE items, e.g. IN01=0 OUT06=0.5."),
    fix: bool = typer.Option(False, "--fix", help="Also fix the blocks set."),
    all_unfixed: float | None = typer.Option(
        None, "--all-unfixed", help="Set every unfixed block to this value."
    ),
    step: float | None = typer.Option(None, "--step", help="New AddSubValue."),
    name: str | None = typer.Option(None, "--name", help="New sheet name."),
    lora: str | None = typer.Option(None, "--lora", help="LoRA name for the prompt tag."),
    lower: float | None = typer.Option(None, "--lower", help="Lower bound for variants."),
    upper: float | None = typer.Option(None, "--upper", help="Upper bound for variants."),
    no_bounds: bool = typer.Option(False, "--no-bounds", help="Remove both bounds."),
) -> None:
    """Change values, the step, the name, the LoRA name or the bounds of a sheet file."""
    sheet = load_sheet(file)
    values, bare = _assignments(assignments or [], sheet)
    if bare:
        raise SheetError(f"give values as ID=VALUE (got {' '.join(bare)}); `lbw sheet fix` fixes blocks")
    if values:
        sheet = sheet.set_values(values, fix=True if fix else None)
    if all_unfixed is not None:
        sheet = sheet.set_all_unfixed(all_unfixed)
    sheet = replace(
        sheet,
        name=name or sheet.name,
        step=sheet.step if step is None else step,
        lower=None if no_bounds else (sheet.lower if lower is None else lower),
        upper=None if no_bounds else (sheet.upper if upper is None else upper),
        lora=sheet.lora if lora is None else lora,
    )
    save_sheet(file, sheet)
    _print_state(file, sheet)


ProjectOption = typer.Option(None, "--project", help="Act on this project's sheet instead of a file.")
WorkspaceOption = typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                               help="Workspace folder of the projects (or LBW_WORKSPACE).")


def fix_command(
    items: list[str] = typer.Argument(
        ..., metavar="ITEMS", help="Sheet file, then IDs to fix, optionally with a value: IN01=0 OUT06 "
        "(or all). With --project: IDs, ID=VALUE or cell labels such as SubIN05_0."
    ),
    project: str | None = ProjectOption,
    value: float | None = typer.Option(None, "--value", help="With --project: fix the blocks at this value."),
    keep: bool = typer.Option(False, "--keep", help="With --project and a cell label: fix at the base value."),
    workspace: Path = WorkspaceOption,
) -> None:
    """Fix blocks (and set their values when given as ID=VALUE); with --project a cell label takes that cell's
    value (--keep: the base value)."""
    if project is not None:
        _fix_project(project, workspace, items, value, keep)
        return
    if value is not None or keep:
        raise SheetError("--value and --keep go with --project; in a sheet file write ID=VALUE")
    file, blocks = _file_and_blocks(items)
    sheet = load_sheet(file)
    values, bare = _assignments(blocks, sheet)
    sheet = sheet.set_values(values, fix=True).fix(bare)
    save_sheet(file, sheet)
    _print_state(file, sheet)


def unfix_command(
    items: list[str] = typer.Argument(..., metavar="ITEMS", help="Sheet file, then IDs to unfix (or all)."),
    project: str | None = ProjectOption,
    workspace: Path = WorkspaceOption,
) -> None:
    """Unfix blocks so they get Sub/Add variants again."""
    if project is not None:
        from lbw.services.projects import get_project, unfix_block

        store = _store(workspace)
        view = get_project(store, project)
        values, bare = _assignments(items, view.sheet)
        if values:
            raise SheetError("unfix takes block IDs only; use `lbw sheet fix --project P ID=VALUE` to set values")
        for block in bare:
            view = unfix_block(store, project, block, expected_version=view.version)
        _print_project_state(view)
        return
    file, blocks = _file_and_blocks(items)
    sheet = load_sheet(file)
    values, bare = _assignments(blocks, sheet)
    if values:
        raise SheetError("unfix takes block IDs only; use `lbw sheet set` to change values")
    sheet = sheet.unfix(bare)
    save_sheet(file, sheet)
    _print_state(file, sheet)


def _file_and_blocks(items: list[str]) -> tuple[Path, list[str]]:
    if len(items) < 2:
        raise SheetError("give the sheet file and the blocks (FILE BLOCKS...), or --project NAME BLOCKS...")
    return Path(items[0]), items[1:]


def _store(workspace: Path) -> Store:
    from lbw.services.projects import open_workspace

    return open_workspace(workspace, create=False)


def _fix_project(project: str, workspace: Path, items: list[str], value: float | None, keep: bool) -> None:
    """Each item in turn: ID=VALUE, a block ID (at --value or its weight), or a cell label (take / --keep)."""
    from lbw.services.projects import fix_block, fix_cell, get_project

    store = _store(workspace)
    view = get_project(store, project)
    for item in items:
        for token in item.replace(",", " ").split():
            block, sep, raw = token.partition("=")
            if sep:
                if keep:
                    raise SheetError("--keep goes with cell labels, not ID=VALUE")
                number = parse_number(raw, what=f"value for {block}")
                view = fix_block(store, project, block, number, expected_version=view.version)
            elif token.lower() == ALL or canonical_block_id(token) in view.sheet.layout:
                if keep:
                    raise SheetError("--keep goes with cell labels such as SubIN05_0, not block IDs")
                ids = view.sheet.layout.ids if token.lower() == ALL else (canonical_block_id(token),)
                for block_id in ids:
                    view = fix_block(store, project, block_id, value, expected_version=view.version)
            else:
                if value is not None:
                    raise SheetError(f"--value goes with block IDs; {token!r} is a cell label (its value is in it)")
                view = fix_cell(store, project, token, take=not keep, source="command",
                                expected_version=view.version)
    _print_project_state(view)


def _print_project_state(view: ProjectView) -> None:
    print(shown(f"saved project {view.name} (version {view.version}): {view.sheet.status()}"))
    print(shown(view.sheet.weight_line()))


def show_command(
    file: Path = typer.Argument(..., help="Sheet file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every output."),
    only: str | None = typer.Option(None, "--only", help="Print one output alone."),
    legacy_tag: bool = typer.Option(False, "--legacy-tag", help="Old positional prompt tag."),
    dims: DimsOption = None,
    alphas: AlphasOption = None,
    conv_dims: ConvDimsOption = None,
    conv_alphas: ConvAlphasOption = None,
) -> None:
    """Show a sheet file's state and every output."""
    sheet = load_sheet(file)
    block_dims = parse_block_dims(dims, alphas, conv_dims, conv_alphas, layout=sheet.layout)
    print_outputs(sheet, as_json=as_json, only=only, legacy_tag=legacy_tag, dims=block_dims)


def _print_state(file: Path, sheet: Sheet) -> None:
    print(shown(f"saved {file}: {sheet.status()}"))
    print(shown(sheet.weight_line()))


def hints_command(
    names: str | None = typer.Option(None, "--show", help="Rows to show side by side, e.g. Face_c,ALL."),
    presets: Path | None = typer.Option(None, "--presets", help="Add your own preset file's rows."),
    sheet_file: Path | None = typer.Option(None, "--sheet", help="Show beside this sheet file."),
    weights: str | None = typer.Option(None, "--weights", "-w", help="Show beside these weights."),
    layout: str = typer.Option("26", "--layout", help="Layout for the side-by-side table without a sheet."),
) -> None:
    """List the hint rows (LBW defaults, the sheet's hints, your presets) or show some side by side."""
    if sheet_file is not None and weights is not None:
        raise SheetError("give --sheet or --weights, not both")
    rows = hint_rows(load_presets(presets) if presets is not None else None)
    current = load_sheet(sheet_file).weights if sheet_file is not None else None
    if weights is not None:
        current = parse_weights(weights)
    if names is None and current is None:
        _list_hints(rows)
        return
    chosen = select_hints(rows, [n.strip() for n in (names or "").split(",") if n.strip()])
    target = current.layout if current is not None else layout_option(layout, "--layout")
    _print_side_by_side(current, chosen, target)


def _list_hints(rows: Sequence[HintRow]) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    source = None
    for row in rows:
        if row.source != source:
            source = row.source
            console.print(f"[bold cyan]{markup(source)}[/]")
        print(shown(row.weights.format()))
    console.print("[dim]show rows beside a sheet: lbw hints --show Face_c,ALL --sheet FILE[/]")


def _print_side_by_side(current: BlockWeights | None, chosen: Sequence[HintRow], layout: Layout) -> None:
    from rich.console import Console
    from rich.table import Table

    table_data = hint_table(chosen, layout)
    table = Table(title=f"hints on {layout.name}")
    table.add_column("block")
    if current is not None:
        table.add_column(markup(current.name or "current"), justify="right", style="bold")
    for row in table_data.rows:
        table.add_column(markup(row.name), justify="right")
    for index, block_id in enumerate(layout.ids):
        cells = [row.cells[index] for row in table_data.rows]
        if current is not None:
            cells.insert(0, current.vector_text().split(",")[index])
        table.add_row(block_id, *cells)
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    for row in table_data.rows:
        if row.note:
            console.print(f"  [dim]{markup(row.name)}: {markup(row.note)}[/]")
    for left in table_data.left_out:
        console.print(f"  [yellow]left out (another model family):[/] {markup(left)}")


def register(app: typer.Typer) -> None:
    """Add the ``sheet`` command group and the ``hints`` command to ``app``."""
    group = typer.Typer(help="The LoRA Block Weight Plot Helper sheet.", no_args_is_help=True)
    group.command("render")(render_command)
    group.command("new")(new_command)
    group.command("set")(set_command)
    group.command("fix")(fix_command)
    group.command("unfix")(unfix_command)
    group.command("show")(show_command)
    app.add_typer(group, name="sheet")
    app.command("hints")(hints_command)
