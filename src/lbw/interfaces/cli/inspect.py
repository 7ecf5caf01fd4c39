"""``lbw inspect FILE [FILE_B] [--json]``: what a LoRA is, its blocks as a bar chart, metadata and hashes.

torch and safetensors are imported inside the command only, so ``lbw --help`` stays instant.

Example:
    $ lbw inspect style.safetensors
    $ lbw inspect style.safetensors --json
    $ lbw inspect v1.safetensors v2.safetensors      # block by block, ratio v2/v1
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lbw.domain.text import json_text
from lbw.interfaces.cli.safe import markup

if TYPE_CHECKING:
    from rich.console import Console

    from lbw.services.inspect import CompareReport, InspectReport

BAR_WIDTH = 30
VALUE_WIDTH = 90  # metadata values longer than this are cut in the terminal (never in --json)
NAMES_SHOWN = 8  # module names listed per "loaded by no host" line (all of them in --json)


def register(app: typer.Typer) -> None:
    """Add ``lbw inspect`` to ``app``."""
    app.command("inspect")(inspect_command)


def inspect_command(
    file: Path = typer.Argument(..., help="LoRA file (.safetensors)."),
    other: Path | None = typer.Argument(None, help="A second file: compare the two block by block."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    device: str = typer.Option("auto", "--device", help="Where to compute norms: auto, cpu, cuda, cuda:1."),
    norms: bool = typer.Option(True, "--norms/--no-norms", help="Compute ||ΔW||_F per block."),
    hashes: bool = typer.Option(True, "--hash/--no-hash", help="Hash the data region (sshs_model_hash)."),
    metadata_values: bool = typer.Option(False, "--all-metadata", help="Show long metadata values in full."),
) -> None:
    """Architecture, naming, adapter types, layout, per-block strength chart, metadata and hashes."""
    from lbw.services.inspect import compare_reports, inspect_file

    reports = []
    for path in (file, other) if other is not None else (file,):
        with _progress(f"measuring {markup(path.name)}", enabled=not as_json or sys.stderr.isatty()) as tick:
            reports.append(inspect_file(path, device=device, norms=norms, hashes=hashes, progress=tick))
    console = _console()
    if other is None:
        if as_json:
            print(json_text(reports[0].to_json(), indent=2))
        else:
            show_report(console, reports[0], full_values=metadata_values)
        return
    comparison = compare_reports(reports[0], reports[1])
    if as_json:
        print(json_text(comparison.to_json(), indent=2))
    else:
        show_comparison(console, comparison)


def show_report(console: Console, report: InspectReport, *, full_values: bool = False) -> None:
    """Print the summary, the per-block table with bars, the metadata groups and the hash check."""
    console.print(f"[bold]{markup(str(report.path))}[/bold]")
    dtypes = ", ".join(f"{name} x{count}" for name, count in report.dtypes.items())
    summary = (
        ("architecture", f"{report.architecture}  ({_architecture_evidence(report)})"),
        ("naming", f"names {_families(report)}; keys {report.naming}"),
        ("adapter types", ", ".join(report.adapter_types) or "-"),
        ("layout", f"{report.layout.name} ({len(report.layout)} values); Inspire vector: "
                   f"{report.inspire_length} values"),
        ("Inspire blocks", ",".join(f"{bucket}.{number}" for bucket, number in report.inspire_blocks) or "-"),
        ("modules", f"{report.module_count} ({len(report.unmapped_modules)} unmapped"
                    + (f", {len(report.not_loaded_modules)} loaded by no host)" if report.not_loaded_modules else ")")),
        ("tensors", f"{report.tensor_count} ({dtypes}); {report.parameter_count:,} parameters"),
        ("file size", f"{report.file_size:,} bytes ({report.file_size / 1e6:.1f} MB)"),
    )
    for label, value in summary:
        console.print(f"[cyan]{label:<15}[/cyan]{markup(value)}", soft_wrap=True)
    console.print(_block_table(report))
    for note in report.notes:
        console.print(f"[dim]note: {markup(note)}[/dim]", soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {markup(warning)}", soft_wrap=True)
    if report.unmapped_modules:
        console.print(f"unmapped modules (LBW keeps them at strength 1): {markup(', '.join(report.unmapped_modules))}",
                      soft_wrap=True)
    _show_hosts(console, report)
    _show_metadata(console, report, full_values)
    _show_hashes(console, report.hashes)


def show_comparison(console: Console, comparison: CompareReport) -> None:
    """Print two files block by block: modules, norms and the ratio B/A with bars."""
    from rich import box
    from rich.table import Table

    a, b = comparison.a, comparison.b
    for label, report in (("A", a), ("B", b)):
        console.print(f"[bold]{label}[/bold] {markup(str(report.path))}  ({report.architecture}, "
                      f"{report.layout.name}, {report.module_count} modules)", soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in ("block", "modules A", "modules B", "ΣΔW A", "ΣΔW B", "B/A"):
        table.add_column(header, justify="left" if header == "block" else "right")
    table.add_column("A ▒ / B █", no_wrap=True)
    top = max([row.a.norm for row in comparison.rows] + [row.b.norm for row in comparison.rows] + [0.0])
    for row in comparison.rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.3f}"
        bars = _bar(row.a.norm, top, "▒") + "\n" + _bar(row.b.norm, top, "█")
        table.add_row(row.block, str(row.a.modules), str(row.b.modules), f"{row.a.norm:.4g}",
                      f"{row.b.norm:.4g}", ratio, bars)
    console.print(table)
    console.print(f"total ΣΔW: A {a.total_norm:.4g}, B {b.total_norm:.4g}")
    own = [f"{label}: {warning}" for label, report in (("A", a), ("B", b)) for warning in report.warnings]
    for warning in [*comparison.warnings, *own]:
        console.print(f"[yellow]warning:[/yellow] {markup(warning)}", soft_wrap=True)


def _block_table(report: InspectReport) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in ("block", "modules", "params", "ranks", "alphas", "ΣΔW", "share"):
        table.add_column(header, justify="left" if header == "block" else "right")
    table.add_column("", no_wrap=True)
    rows = [*report.blocks.values(), *([report.unmapped] if report.unmapped.modules else []),
            *([report.not_loaded] if report.not_loaded.modules else [])]
    top = max([stats.share for stats in rows] + [0.0])
    measured = report.total_norm > 0  # 0: --no-norms, or only IA3 modules (no norm without the base model)
    for stats in rows:
        norm, share = (f"{stats.norm:.4g}", f"{stats.share:.1f}%") if measured else ("-", "-")
        table.add_row(stats.block, str(stats.modules), f"{stats.params:,}", _numbers(stats.ranks),
                      _numbers(stats.alphas), norm, share, _bar(stats.share, top, "█"))
    return table


def _families(report: InspectReport) -> str:
    """``onetrainer 672, kohya 72`` (see docs/naming.md)."""
    return ", ".join(f"{family} {count}" for family, count in report.families.items()) or "-"


def _show_hosts(console: Console, report: InspectReport) -> None:
    """One line per host: what it loads of this file; the modules no host loads, in full."""
    if not report.hosts:
        console.print(f"hosts: lbw cannot tell which hosts load this file (architecture {report.architecture})",
                      soft_wrap=True)
        return
    for host in report.hosts:
        colour = "yellow" if host.not_loaded or host.refuses_file else "green"
        console.print(f"[{colour}]host {host.host:<10}[/{colour}]{markup(host.summary())}", soft_wrap=True)
    names = report.not_loaded_modules
    if names:
        shown = ", ".join(names[:NAMES_SHOWN])
        more = f" … and {len(names) - NAMES_SHOWN} more (--json lists them all)" if len(names) > NAMES_SHOWN else ""
        console.print(f"{len(names)} modules loaded by no host (no weight reaches them; bake and merge keep them "
                      f"untouched): {markup(shown)}{more}", soft_wrap=True)


def _architecture_evidence(report: InspectReport) -> str:
    """Why the architecture was chosen: the key evidence and the metadata keys that agree (a disagreement is
    one of the warnings)."""
    from lbw.files.architecture import metadata_architectures

    evidence = "; ".join(report.architecture_evidence) or "no evidence"
    if not report.architecture_evidence or report.architecture_evidence[0].startswith("metadata "):
        return evidence  # nothing in the keys: the metadata decided
    flat = {key: value for group in report.metadata.values() for key, value in group.items()}
    agreeing = [key for key, arch in metadata_architectures(flat).items() if arch == report.architecture]
    return f"keys: {evidence}" + (f"; metadata agrees: {', '.join(agreeing)}" if agreeing else "")


def _show_metadata(console: Console, report: InspectReport, full_values: bool) -> None:
    from lbw.files.metadata import IMAGE_KEYS, describe_image_value

    titles = {"training": "training (ss_*)", "user": "user (ssmd_*)", "modelspec": "modelspec.*",
              "hashes": "hashes (sshs_*)", "lbw": "tuned block weights (lbw_*)", "other": "other"}
    if not any(report.metadata.values()):
        console.print("metadata: none")
        return
    for group, entries in report.metadata.items():
        if not entries:
            continue
        console.print(f"[bold]{titles.get(group, group)}[/bold] ({len(entries)} keys)")
        for key, value in entries.items():
            if key in IMAGE_KEYS and value and not full_values:
                shown = describe_image_value(key, value)
            elif full_values:
                shown = value
            else:
                shown = " ".join(value.split())  # one line per key: multi-line JSON is folded
                if len(shown) > VALUE_WIDTH:
                    shown = f"{shown[:VALUE_WIDTH]}… ({len(value):,} characters)"
            console.print(f"  [cyan]{markup(key)}[/cyan] = {markup(shown)}", soft_wrap=True)


def _show_hashes(console: Console, hashes: dict[str, Any]) -> None:
    if not hashes:
        return
    for label, stored, computed, match in (
        ("sshs_model_hash", hashes.get("stored"), hashes.get("computed"), hashes.get("match")),
        ("sshs_legacy_hash", hashes.get("legacy_stored"), hashes.get("legacy_computed"), hashes.get("legacy_match")),
    ):
        if match is None:
            verdict = "[dim]not stored[/dim]"
        elif match:
            verdict = "[green]matches the file[/green]"
        else:
            verdict = "[red bold]MISMATCH: the stored hash is stale[/red bold]"
        console.print(f"{label}: stored {markup(stored or '-')}, computed {markup(computed)}  {verdict}",
                      soft_wrap=True)


def _numbers(values: set[int] | set[float]) -> str:
    if not values:
        return "-"
    from lbw.domain.numbers import format_number

    ordered = sorted(values)
    shown = [format_number(v) for v in ordered[:3]]
    return ",".join(shown) + ("…" if len(ordered) > 3 else "")


def _bar(value: float, top: float, char: str) -> str:
    if top <= 0 or value <= 0:
        return ""
    return char * max(1, round(BAR_WIDTH * value / top))


def _console() -> Console:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120, highlight=False)


class _progress:
    """A rich progress bar on stderr (only on a terminal); yields the ``tick(done, total)`` callback."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=None)

        def tick(done: int, total: int) -> None:
            self._bar.update(self._task, completed=done, total=total)

        return tick

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
