"""``lbw project``: projects on the command line (the same services the web workbench calls).

Example:
    $ lbw project new Face --lora face.safetensors --model ./model --prompt "1girl, face" --steps 20
    $ lbw eba --project Face                      # analyzer run, recorded as iteration 1
    $ lbw project start-sheet Face 1              # the sheet from its classes
    $ lbw plot --project Face                     # the Sub grid: iteration 2
    $ lbw sheet fix --project Face SubIN05_0      # take that cell's value for IN05
    $ lbw plot --project Face --mode subadd       # iteration 3
    $ lbw project log Face
    $ lbw project undo Face 2
"""

from __future__ import annotations

import functools
import inspect
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lbw.domain.numbers import format_number
from lbw.domain.text import json_text
from lbw.errors import ProjectError
from lbw.interfaces.cli.safe import markup, shown

if TYPE_CHECKING:
    from lbw.services.project_types import IterationView, ProjectView
    from lbw.store import Store

DEFAULT_WORKSPACE = Path("lbw-workspace")
WorkspaceOption = Annotated[
    Path,
    typer.Option("--workspace", envvar="LBW_WORKSPACE", help="Workspace folder of the projects (or LBW_WORKSPACE)."),
]

# Setting options of `project new` and `project set`: (parameter, setting key, type, option).
_SETTINGS: tuple[tuple[str, str, Any, Any], ...] = (
    ("lora", "lora", str | None, typer.Option(None, "--lora", help="The tuned LoRA (file, or a server's name).")),
    ("lora_name", "lora_name", str | None, typer.Option(None, "--lora-name", help="Name the web UI knows it by.")),
    ("other", "other_loras", list[str], typer.Option([], "--other", help="Another LoRA rendered with it: "
                                                      "FILE[:STRENGTH] (repeatable).")),
    ("model", "model", str | None, typer.Option(None, "--model", "-m", help="Checkpoint (a local folder/.safetensors "
                                                "for diffusers; the server's name for a1111/comfyui).")),
    ("backend", "backend", str | None, typer.Option(None, "--backend", "-b", help="diffusers, a1111 or comfyui.")),
    ("url", "url", str | None, typer.Option(None, "--url", help="Server URL (a1111 :7860, comfyui :8188); several, "
                                            "comma-separated, for a pool of servers.")),
    ("a1111_mode", "a1111_mode", str | None, typer.Option(None, "--a1111-mode", help="presets, inline or xyz.")),
    ("prompt", "prompt", str | None, typer.Option(None, "--prompt", "-p")),
    ("negative", "negative", str | None, typer.Option(None, "--negative", "-n")),
    ("seeds", "seeds", str | None, typer.Option(None, "--seeds", help="Comma-separated seeds.")),
    ("width", "width", int | None, typer.Option(None, "--width")),
    ("height", "height", int | None, typer.Option(None, "--height")),
    ("steps", "steps", int | None, typer.Option(None, "--steps")),
    ("cfg", "cfg", float | None, typer.Option(None, "--cfg")),
    ("sampler", "sampler", str | None, typer.Option(None, "--sampler", help="Web UI name, e.g. 'DPM++ 2M'.")),
    ("schedule", "scheduler", str | None, typer.Option(None, "--schedule", help="Automatic, Normal or Karras.")),
    ("clip_skip", "clip_skip", int | None, typer.Option(None, "--clip-skip", help="1 = last layer.")),
    ("strength", "strength", float | None, typer.Option(None, "--strength", help="Strength of the tuned LoRA.")),
    ("te_strength", "te_strength", float | None, typer.Option(None, "--te-strength", help="Text-encoder strength.")),
    ("roi", "roi", str | None, typer.Option(None, "--roi", help="Analyzer region x0,y0,x1,y1 (pixels or 0..1).")),
)
SETTING_PARAMETERS = frozenset(name for name, _, _, _ in _SETTINGS)


def _with_settings(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the setting options; they reach it as one dict of given settings, ``settings``."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "settings"]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, _, t, o in _SETTINGS]

    @functools.wraps(command)
    def wrapper(**given: Any) -> None:
        command(**{p.name: given[p.name] for p in own}, settings=setting_changes(given))

    wrapper.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
    return wrapper


def setting_changes(given: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the line as ``{setting: value}`` (empty text clears an optional setting)."""
    changes: dict[str, Any] = {}
    for name, key, _, _ in _SETTINGS:
        value = given.get(name)
        if value is None or (name == "other" and not value):
            continue
        if name == "seeds":
            value = _seeds(value)
        elif name == "other":
            value = [_other(item) for item in value]
        elif key in ("lora", "model", "url", "scheduler", "roi") and value == "":
            value = None
        changes[key] = value
    return changes


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ProjectError(f"--seeds {text!r}: expected integers separated by commas") from None
    if not seeds:
        raise ProjectError("--seeds is empty")
    return seeds


def _other(item: str) -> dict[str, Any]:
    path, sep, tail = item.rpartition(":")
    if sep:
        try:
            return {"path": path, "strength": float(tail)}
        except ValueError:
            pass
    return {"path": item, "strength": 1.0}


def open_store(workspace: Path, *, create: bool = False) -> Store:
    """The workspace (not created by commands that only read)."""
    from lbw.services.projects import open_workspace

    return open_workspace(workspace, create=create)


def quoted(text: str) -> str:
    """A name as it would be typed in a shell (printable)."""
    return shown(shlex.quote(text))


# ------------------------------------------------------------------------------------------- commands


@_with_settings
def new_command(
    name: str = typer.Argument(..., help="Project name."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Start from this sheet file (TOML)."),
    from_settings: Path | None = typer.Option(None, "--settings", help="Start from an exported settings.json."),
    layout: str = typer.Option("26", "--layout", help="Layout of a new sheet: 26, 17, 20 or 12."),
    mode: str = typer.Option("sub", "--mode", help="sub, add, subadd or addsub."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    settings: dict[str, Any] | None = None,
) -> None:
    """Create a project: the LoRA, model, backend and render settings, and a sheet (new, or from --sheet)."""
    from lbw.interfaces.cli.sheet import load_sheet
    from lbw.interfaces.cli.weights import layout_option
    from lbw.services.projects import ProjectSettings, create_project, read_settings_file

    base = read_settings_file(from_settings) if from_settings is not None else ProjectSettings()
    chosen = base.with_changes(settings or {}, where="the command line")
    start = load_sheet(sheet) if sheet is not None else None
    store = open_store(workspace, create=True)
    view = create_project(store, name, chosen, start, mode=mode, layout=layout_option(layout, "--layout"))
    print(shown(f"created project {view.name} in {store.workspace}"))
    _print_project(view, brief=True)
    if not view.settings.prompt.strip():
        typer.echo("lbw: note: the prompt is empty; renders refuse it until you set one "
                   f"(lbw project set {quoted(view.name)} --prompt ...)", err=True)


@_with_settings
def set_command(
    name: str = typer.Argument(..., help="Project name."),
    mode: str | None = typer.Option(None, "--mode", help="sub, add, subadd or addsub."),
    step: float | None = typer.Option(None, "--step", help="The sheet's step (AddSubValue)."),
    lower: float | None = typer.Option(None, "--lower", help="Variants never go below this."),
    upper: float | None = typer.Option(None, "--upper", help="Variants never go above this."),
    no_bounds: bool = typer.Option(False, "--no-bounds", help="Remove both bounds."),
    clear: list[str] = typer.Option([], "--clear", help="Reset a setting to its default (repeatable)."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Replace the sheet with this file's (same layout)."),
    archive: bool | None = typer.Option(None, "--archive/--unarchive", help="Hide the project from the list."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    settings: dict[str, Any] | None = None,
) -> None:
    """Change a project's settings, mode, step, bounds or sheet (each change is recorded in its log)."""
    from dataclasses import fields

    from lbw.interfaces.cli.sheet import load_sheet
    from lbw.services import projects as ps

    store = open_store(workspace)
    view = ps.get_project(store, name)
    changes = dict(settings or {})
    defaults = {f.name: f.default for f in fields(ps.ProjectSettings)}
    for key in clear:
        if key not in defaults:
            raise ProjectError(f"--clear {key!r}: not a setting; settings: {', '.join(defaults)}")
        changes[key] = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
    if changes:
        view = ps.update_settings(store, name, changes, expected_version=view.version)
    if sheet is not None:
        view = ps.replace_sheet(store, name, load_sheet(sheet), expected_version=view.version)
    if mode is not None:
        view = ps.set_mode(store, name, mode, expected_version=view.version)
    if step is not None:
        view = ps.set_step(store, name, step, expected_version=view.version)
    if no_bounds or lower is not None or upper is not None:
        low = None if no_bounds else (view.sheet.lower if lower is None else lower)
        high = None if no_bounds else (view.sheet.upper if upper is None else upper)
        view = ps.set_bounds(store, name, low, high, expected_version=view.version)
    if archive is not None:
        view = ps.set_archived(store, name, archive, expected_version=view.version)
    print(shown(f"saved project {view.name} (version {view.version})"))
    _print_project(view, brief=True)


def show_command(
    name: str = typer.Argument(..., help="Project name."),
    iteration: int | None = typer.Option(None, "--iteration", "-i", help="Show this iteration (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Show a project: settings, sheet, mode and its latest (or chosen) iteration with Diff % per cell."""
    from lbw.services.projects import get_iteration, get_project

    store = open_store(workspace)
    view = get_project(store, name)
    shown_iteration = None
    if iteration is not None or view.iteration_count:
        shown_iteration = get_iteration(store, name, iteration)
    if as_json:
        typer.echo(json_text(project_json(view, shown_iteration), indent=2))
        return
    _print_project(view)
    if shown_iteration is not None:
        print()
        print_iteration(view, shown_iteration)


def list_command(
    all_projects: bool = typer.Option(False, "--all", help="Include archived projects."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """List the workspace's projects."""
    from lbw.services.projects import list_projects

    views = list_projects(open_store(workspace), archived=all_projects)
    if not views:
        print("no projects; create one with `lbw project new NAME --lora FILE --model MODEL --prompt TEXT`")
    for view in views:
        archived = ", archived" if view.archived else ""
        print(shown(f"{view.name}: {view.sheet.status()}; mode {view.mode}; {view.iteration_count} iterations; "
                    f"version {view.version}{archived}"))


def export_command(
    name: str = typer.Argument(..., help="Project name."),
    dest: Path = typer.Argument(..., help="Folder to write sheet.toml and settings.json into."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Export the sheet (TOML, for `lbw sheet` and `bake -w`) and the settings (JSON, for `project new`)."""
    from lbw.services.projects import export_project

    result = export_project(open_store(workspace), name, dest, force=force)
    print(f"sheet: {shown(result.sheet)}")
    print(f"settings: {shown(result.settings)}")


def log_command(
    name: str = typer.Argument(..., help="Project name."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Iterations and decisions, oldest first."""
    from lbw.services.projects import project_log

    for entry in project_log(open_store(workspace), name):
        indent = "" if entry.kind == "iteration" else "  "
        print(shown(f"{entry.created[:19].replace('T', ' ')}  {indent}{entry.text}"))


def undo_command(
    name: str = typer.Argument(..., help="Project name."),
    iteration: int = typer.Argument(..., help="Go back to the sheet this iteration was rendered from."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Go back to an iteration's sheet and mode (recorded as a decision; nothing is deleted)."""
    from lbw.services.projects import get_project, undo_to

    store = open_store(workspace)
    view = undo_to(store, name, iteration, expected_version=get_project(store, name).version)
    print(shown(f"project {view.name}: back to the sheet of iteration {iteration} (mode {view.mode})"))
    print(shown(view.sheet.status()))
    print(shown(view.sheet.weight_line()))


def start_sheet_command(
    name: str = typer.Argument(..., help="Project name."),
    iteration: int | None = typer.Argument(None, help="Analyzer iteration (default: the latest one)."),
    important: float | None = typer.Option(None, "--important", help="Diff % at or above: important."),
    unneeded: float | None = typer.Option(None, "--unneeded", help="Diff % below: unneeded."),
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Set the sheet from an analyzer run: important 1 fixed, unneeded 0 fixed, unclear 0.5 open."""
    from lbw.services.projects import get_project, list_iterations, start_sheet_from_analysis

    store = open_store(workspace)
    view = get_project(store, name)
    if iteration is None:
        runs = [it.number for it in list_iterations(store, name) if it.kind == "eba"]
        if not runs:
            raise ProjectError(f"project {view.name!r} has no analyzer run; run `lbw eba --project NAME` first")
        iteration = runs[-1]
    view = start_sheet_from_analysis(store, name, iteration, important=important, unneeded=unneeded,
                                     expected_version=view.version)
    print(shown(f"project {view.name}: sheet set from analyzer iteration {iteration}"))
    print(shown(view.sheet.status()))
    print(shown(view.sheet.weight_line()))
    print(shown(f"next: lbw plot --project {quoted(view.name)}"))


# -------------------------------------------------------------------------------------------- printing


def _print_project(view: ProjectView, *, brief: bool = False) -> None:
    from rich.console import Console

    from lbw.interfaces.cli.sheet import print_block_table

    s = view.settings
    print(shown(f"project {view.name} (version {view.version}, mode {view.mode}, {view.iteration_count} "
                f"iterations) in {view.workspace}"))
    others = "".join(f", + {o.path} at {format_number(o.strength)}" for o in s.other_loras)
    print(shown(f"  LoRA: {s.lora or '(none)'} at {format_number(s.strength)}{others}"))
    print(shown(f"  model: {s.model or '(none)'}; backend {s.backend}" + (f" at {s.url}" if s.url else "")))
    print(shown(f"  prompt: {s.prompt or '(empty)'}"))
    if s.negative:
        print(shown(f"  negative: {s.negative}"))
    te = "" if s.te_strength is None else f", TE strength {format_number(s.te_strength)}"
    print(shown(f"  seeds {','.join(str(x) for x in s.seeds)}; {s.width}x{s.height}; {s.steps} steps; CFG "
                f"{format_number(s.cfg)}; {s.sampler}{' ' + s.scheduler if s.scheduler else ''}; clip skip "
                f"{s.clip_skip}{te}" + (f"; region {s.roi}" if s.roi else "")))
    if brief:
        print(shown(view.sheet.weight_line()))
        print(shown(view.sheet.status()))
        return
    console = Console(highlight=False, soft_wrap=True)
    bounds = ""
    if view.sheet.lower is not None or view.sheet.upper is not None:
        low = "-inf" if view.sheet.lower is None else format_number(view.sheet.lower)
        high = "inf" if view.sheet.upper is None else format_number(view.sheet.upper)
        bounds = f", bounds {low}..{high}"
    console.print(f"[bold]sheet {markup(view.sheet.name)}[/] ({view.sheet.layout.name}, step "
                  f"{format_number(view.sheet.step)}{bounds})")
    print_block_table(console, view.sheet)
    print(shown(view.sheet.weight_line()))
    print(shown(view.sheet.status()))
    if not view.sheet.is_done:
        print(shown(f"next: lbw plot --project {quoted(view.name)}  (mode {view.mode})"))


def print_iteration(view: ProjectView, it: IterationView) -> None:
    """An iteration: its grid, then one line per cell with its Diff % (or its analyzer table)."""
    from rich.console import Console
    from rich.table import Table

    counts = ""
    if "rendered" in it.extra_files:
        counts = f" ({it.extra_files['rendered']} rendered, {it.extra_files['reused']} from the cache)"
    print(shown(f"iteration {it.number} of project {view.name}: {it.kind}, {len(it.cells)} cells{counts}"))
    for grid in it.grids:
        print(f"grid: {shown(grid)}")
    console = Console(highlight=False, soft_wrap=True)
    if it.analysis is not None:
        print_analysis(console, it)
        return
    table = Table(box=None, pad_edge=False)
    for column, justify in (("cell", "left"), ("seed", "right"), ("Diff %", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for cell in it.cells:
        diff = f"base ({cell.label})" if cell.diff_percent is None else f"{cell.diff_percent:.3f}"
        table.add_row(markup(cell.label), str(cell.seed), diff if cell.diff_percent is not None else "base")
    console.print(table)
    print(f"cells: {shown(it.folder / 'cells')}  (Diff % against the base cell of each list, same seed)")
    for decision in it.decisions:
        print(shown(f"  then: {decision.describe()}"))
    if view.latest is not None and it.number == view.latest.number and not view.sheet.is_done:
        print(shown(f"fix a block: lbw sheet fix --project {quoted(view.name)} CELL  (take the cell's value; "
                    "--keep: the base value; or BLOCK --value V)"))


def print_analysis(console: Any, it: IterationView) -> None:
    """The analyzer's ranked table of an iteration, and what to do next."""
    from rich.table import Table

    analysis = it.analysis
    assert analysis is not None
    table = Table(title="Effective Block Analyzer (largest change first)")
    table.add_column("#", justify="right")
    table.add_column("block")
    table.add_column("Diff %", justify="right")
    region = analysis.region is not None
    if region:
        table.add_column("region Diff %", justify="right")
        table.add_column("share in region %", justify="right")
    table.add_column("class")
    for row in analysis.rows:
        cells = [str(row.rank), markup(row.block), f"{row.diff_percent:.3f}"]
        if region:
            cells += [f"{row.roi_diff_percent or 0:.3f}", f"{row.roi_share_percent or 0:.1f}"]
        cells.append(markup(row.category))
        table.add_row(*cells)
    console.print(table)
    print(f"classification: important: Diff % >= {analysis.important:g}; unneeded: Diff % < {analysis.unneeded:g}")


def project_json(view: ProjectView, it: IterationView | None) -> dict[str, Any]:
    """The ``project show --json`` object."""
    from lbw.store.records import sheet_to_data

    data: dict[str, Any] = {
        "name": view.name,
        "version": view.version,
        "mode": view.mode,
        "archived": view.archived,
        "workspace": str(view.workspace),
        "settings": view.settings.to_dict(),
        "sheet": sheet_to_data(view.sheet),
        "weight": view.sheet.weight_line(),
        "status": view.sheet.status(),
        "iterations": view.iteration_count,
        "iteration": None,
    }
    if it is not None:
        data["iteration"] = {
            "number": it.number,
            "kind": it.kind,
            "grids": [str(g) for g in it.grids],
            "cells": [{"label": c.label, "block": c.block, "value": c.value, "seed": c.seed, "image": str(c.image),
                       "sha256": c.sha256, "diff_percent": c.diff_percent, "base": c.base_label} for c in it.cells],
            "analysis": None if it.analysis is None else [
                {"block": r.block, "diff_percent": r.diff_percent, "roi_diff_percent": r.roi_diff_percent,
                 "class": r.category} for r in it.analysis.rows],
            "decisions": [d.describe() for d in it.decisions],
        }
    return data


def register(app: typer.Typer) -> None:
    """Add the ``project`` command group to ``app``."""
    group = typer.Typer(help="Projects: a tuning's LoRA, settings, sheet and history in one workspace.",
                        no_args_is_help=True)
    group.command("new")(new_command)
    group.command("set")(set_command)
    group.command("show")(show_command)
    group.command("list")(list_command)
    group.command("export")(export_command)
    group.command("log")(log_command)
    group.command("undo")(undo_command)
    group.command("start-sheet")(start_sheet_command)
    app.add_typer(group, name="project")
