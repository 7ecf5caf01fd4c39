"""``lbw presets``: list, show, add, check LBW preset files (``lbwpresets.txt``); instant, no heavy imports.

Example:
    $ lbw presets check lbwpresets.txt
    lbwpresets.txt:4: error: no ':' (expected NAME:v1,v2,...); LBW ignores it
    lbwpresets.txt: 11 presets, 1 error, 0 warnings
"""

from __future__ import annotations

from pathlib import Path

import typer

from lbw.domain.presets import DEFAULT_PRESETS_TEXT, PresetDocument, default_presets, read_presets
from lbw.domain.weights import parse_weights
from lbw.errors import LbwError, OutputError, PresetError
from lbw.files.atomic import write_text_atomic
from lbw.interfaces.cli.safe import VectorCommand, markup, shown

MAX_TEXT_BYTES = 16 * 1024 * 1024  # a presets or sheet file is a few KB; refuse a stray huge file or a device


def read_text_file(path: Path, error: type[LbwError]) -> str:
    """Read a UTF-8 text file (line breaks as they are), turning OS and decoding problems and a file over 16 MiB
    into ``error`` naming the file."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            text = handle.read(MAX_TEXT_BYTES + 1)
        if len(text) > MAX_TEXT_BYTES:
            raise error(f"larger than {MAX_TEXT_BYTES // 2**20} MiB; not a presets or sheet file", where=str(path))
        return text
    except FileNotFoundError:
        raise error("file not found", where=str(path)) from None
    except IsADirectoryError:
        raise error("is a folder, expected a file", where=str(path)) from None
    except UnicodeDecodeError as problem:
        raise error(f"not UTF-8 text (byte {problem.start})", where=str(path)) from None
    except OSError as problem:
        raise error(f"cannot read: {problem.strerror}", where=str(path)) from None


def write_text_file(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically; a folder or an OS problem is an OutputError naming the file."""
    if path.is_dir():
        raise OutputError("is a folder, expected a file", where=str(path))
    try:
        write_text_atomic(path, text)
    except OSError as problem:
        raise OutputError(f"cannot write: {problem.strerror}", where=str(path)) from None


def load_presets(path: Path | None) -> PresetDocument:
    """The presets in ``path``, or LBW's built-in defaults when ``path`` is None."""
    if path is None:
        return default_presets()
    return read_presets(read_text_file(path, PresetError), where=str(path))


def _summary(doc: PresetDocument) -> str:
    problems = doc.problems()
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    return (
        f"{doc.where}: {len(doc.names())} presets, {errors} error{'s' * (errors != 1)}, "
        f"{warnings} warning{'s' * (warnings != 1)}"
    )


def list_command(
    file: Path | None = typer.Argument(None, help="Preset file (default: LBW's built-in presets)."),
) -> None:
    """List the valid presets of a file: name, layout, line."""
    from rich.console import Console
    from rich.table import Table

    doc = load_presets(file)
    table = Table(title=markup(doc.where))
    for column in ("name", "layout", "line"):
        table.add_column(column, justify="right" if column == "line" else "left")
    lines = doc.table()
    for name, weights in doc.presets().items():
        table.add_row(markup(name), weights.layout.name, str(lines[name].line))
    Console(highlight=False).print(table)
    if doc.problems():
        typer.echo(f"lbw: note: {shown(_summary(doc))}; run `lbw presets check` for details", err=True)


def show_command(
    file: Path = typer.Argument(..., help="Preset file."),
    names: list[str] = typer.Argument(..., help="Preset names (case-sensitive)."),
) -> None:
    """Print the named presets as NAME:v1,... lines (an unknown name is an error)."""
    doc = load_presets(file)
    for name in names:
        print(shown(f"{name}:{doc.get(name).vector_text()}"))


def add_command(
    file: Path = typer.Argument(..., help="Preset file (created if missing)."),
    weights: str = typer.Argument(..., help='The preset: "NAME:v1,...".'),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing preset of that name."),
) -> None:
    """Add (or replace) a preset; comments and other lines are kept; the file is written atomically."""
    preset = parse_weights(weights)
    doc = load_presets(file) if file.exists() else PresetDocument((), where=str(file))
    updated = doc.with_preset(preset, replace_existing=replace)
    write_text_file(file, updated.text())
    verb = "replaced" if preset.name in doc.names() else "added"
    print(shown(f"{verb} {preset.name} ({preset.layout.name}) in {file}"))


def check_command(
    file: Path = typer.Argument(..., help="Preset file to check."),
) -> None:
    """Report every line LBW would ignore, duplicates and inline '#'; exit 1 if any line is invalid."""
    doc = load_presets(file)
    problems = doc.problems()
    for problem in problems:
        print(shown(problem.format(str(file))))
    print(shown(_summary(doc)))
    if any(p.severity == "error" for p in problems):
        raise typer.Exit(1)


def defaults_command() -> None:
    """Print LBW's built-in presets (the text LBW writes when its preset file is missing)."""
    print(DEFAULT_PRESETS_TEXT, end="")


def init_command(
    file: Path = typer.Argument(..., help="Preset file to create with LBW's defaults."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write LBW's default presets to a new file."""
    if file.exists() and not force:
        raise OutputError("exists; pass --force to overwrite", where=str(file))
    write_text_file(file, DEFAULT_PRESETS_TEXT)
    print(shown(f"wrote {len(default_presets().names())} default presets to {file}"))


def register(app: typer.Typer) -> None:
    """Add the ``presets`` command group to ``app``."""
    group = typer.Typer(
        help="LBW preset files (lbwpresets.txt): list, show, add, check.", no_args_is_help=True
    )
    group.command("list")(list_command)
    group.command("show")(show_command)
    group.command("add", cls=VectorCommand)(add_command)
    group.command("check")(check_command)
    group.command("defaults")(defaults_command)
    group.command("init")(init_command)
    app.add_typer(group, name="presets")
