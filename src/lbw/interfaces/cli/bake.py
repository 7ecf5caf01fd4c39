"""``lbw bake``, ``lbw merge``, ``lbw verify``: exact block-weight baking, merging, and proof.

torch and safetensors are imported inside the commands only, so ``lbw --help`` stays instant.
Exit codes: 0 success, 1 a verification that failed, 2 a user error (``lbw: error: ...``).

Example:
    $ lbw bake face.safetensors --weights OUTALL -o face-out.safetensors
    $ lbw merge a.safetensors:0.8:OUTALL b.safetensors:0.5 -o ab.safetensors
    $ lbw verify face-out.safetensors --against face.safetensors --weights OUTALL
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lbw.domain.text import json_text
from lbw.errors import LbwError
from lbw.interfaces.cli.safe import markup, shown

if TYPE_CHECKING:
    from rich.console import Console

    from lbw.services.merge import MergeReport
    from lbw.services.resolve import FactorPlan
    from lbw.services.verify import VerifyReport

WEIGHTS_HELP = "Preset name, inline vector (12/17/20/26/61 values, NAME: optional) or sheet file (.toml)."


def register(app: typer.Typer) -> None:
    """Add ``lbw bake``, ``lbw merge`` and ``lbw verify`` to ``app``."""
    app.command("bake")(bake_command)
    app.command("merge")(merge_command)
    app.command("verify")(verify_command)


def bake_command(
    source: Path = typer.Argument(..., help="LoRA file to bake (.safetensors); never modified."),
    weights: str | None = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file."),
    strength: float = typer.Option(1.0, "--strength", "-s", help="Multiplier for TE and UNet (LBW's m)."),
    te: float | None = typer.Option(None, "--te", help="Text-encoder multiplier (default: --strength)."),
    unet: float | None = typer.Option(None, "--unet", help="UNet multiplier (default: --strength)."),
    presets: Path | None = typer.Option(None, "--presets", help="Presets file (lbwpresets.txt) searched first."),
    x: float = typer.Option(1.0, "--x", help="Value of X in the weights (X, X+d, X-d)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for random R/U weights (else they are refused)."),
    keep_zero: bool = typer.Option(False, "--keep-zero", help="Keep modules of blocks at weight 0 (zeroed)."),
    balanced: bool = typer.Option(False, "--balanced", help="Split the factor as √|c| over up and down (LoRA)."),
    dora: str = typer.Option("refuse", "--dora", help="DoRA modules: refuse, or dense (exact full diff)."),
    model: Path | None = typer.Option(None, "--model", help="Base checkpoint (.safetensors) for --dora dense."),
    dtype: str | None = typer.Option(None, "--dtype", help="Output dtype fp16|bf16|fp32 (default: input's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (never the input)."),
    project: str | None = typer.Option(None, "--project", help="Bake this project's sheet (instead of -w)."),
    workspace: Path = typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                                   help="Workspace folder of the projects (or LBW_WORKSPACE)."),
) -> None:
    """Apply block weights to a LoRA exactly: at multiplier 1 the output does what the weights did."""
    from lbw.files.lora_file import LoraFile
    from lbw.services.bake import BakeOptions, bake_file, check_destination
    from lbw.services.resolve import load_weights, resolve_for_file

    if dora not in ("refuse", "dense"):
        raise typer.BadParameter("expected refuse or dense", param_hint="--dora")
    check_destination(output, [source], force=force)
    if project is not None:
        from dataclasses import replace

        from lbw.services.projects import weights_text

        text = weights_text(weights, project=project, workspace=workspace)
        assert text is not None
        loaded = replace(load_weights(text, x=x, seed=seed), source=f"project {project}")
    elif weights is None:
        raise LbwError("give the weights (-w: a preset, a vector or a sheet file) or --project NAME")
    else:
        loaded = load_weights(weights, presets_file=presets, x=x, seed=seed)
    options = BakeOptions(keep_zero=keep_zero, balanced=balanced, dora=dora,  # type: ignore[arg-type]
                          model=model, dtype=dtype, force=force)
    console = _console()
    with LoraFile.open(source) as lora:
        plan = resolve_for_file(loaded.weights, lora.modules, lora.architecture,
                                te=strength if te is None else te, unet=strength if unet is None else unet,
                                where=str(source))
        console.print(f"{shown(source.name)}: {lora.architecture}, {len(lora.modules)} modules; "
                      f"weights from {shown(loaded.source)}")
        show_plan(console, plan)
        with progress_bar(f"baking {markup(source.name)}") as tick:
            report = bake_file(lora, plan, output, options=options, progress=tick)
    removed = f", {len(report.removed)} removed at weight 0" if report.removed else ""
    dense = f", {len(report.dora_dense)} DoRA modules stored as full diffs" if report.dora_dense else ""
    console.print(f"wrote {shown(report.written.path)} ({_size(report.written.size)}): "
                  f"{report.modules_out} of {report.modules_in} modules{removed}{dense}")
    console.print(f"sshs_model_hash {report.written.model_hash}  sshs_legacy_hash {report.written.legacy_hash}")


def merge_command(
    inputs: list[str] = typer.Argument(..., help="FILE[:strength[:weights]] per LoRA, or SuperMerger's "
                                       "name1:ratio1:Blocks1,name2:ratio2:Blocks2."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file."),
    rank: int | None = typer.Option(None, "--rank", min=1, help="Compress each module to at most this rank."),
    conv_rank: int | None = typer.Option(None, "--conv-rank", min=1, help="Rank limit for k×k convs."),
    presets: Path | None = typer.Option(None, "--presets", help="Presets file (lbwpresets.txt) searched first."),
    lora_dir: Path | None = typer.Option(None, "--lora-dir", help="Folder to find bare LoRA names in."),
    model: Path | None = typer.Option(None, "--model", help="Base checkpoint for DoRA/IA3 with --rank."),
    dtype: str | None = typer.Option(None, "--dtype", help="Output dtype fp16|bf16|fp32 (default: first input's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output (never an input)."),
) -> None:
    """Merge LoRAs with per-LoRA strength and block weights into one LoRA, exactly (or by SVD with --rank)."""
    from lbw.services.merge import MergeOptions, merge
    from lbw.services.sources import Defaults, open_source, split_specs

    if conv_rank is not None and rank is None:
        raise typer.BadParameter("--conv-rank needs --rank", param_hint="--conv-rank")
    specs = split_specs(inputs, lora_dir=lora_dir)
    sources = [open_source(spec, Defaults(presets_file=presets)) for spec in specs]
    console = _console()
    for source in sources:
        console.print(f"{shown(source.spec.path.name)}: {source.lora.architecture}, {len(source.lora.modules)} "
                      f"modules, strength {_num(source.plan.unet)}, weights from {shown(source.weights_source)}")
        show_plan(console, source.plan)
    options = MergeOptions(rank=rank, conv_rank=conv_rank, model=model, dtype=dtype, force=force)
    try:
        with progress_bar("merging") as tick:
            report = merge(sources, output, options=options, progress=tick)
    finally:
        for source in sources:
            source.lora.close()
    show_merge(console, report, rank)


def verify_command(
    file: Path = typer.Argument(..., help="The baked or merged file to check."),
    against: list[str] = typer.Option(..., "--against", "-a", help="Source FILE[:strength[:weights]]; repeat "
                                      "for several."),
    weights: str | None = typer.Option(None, "--weights", "-w", help="Weights for sources without their own."),
    strength: float = typer.Option(1.0, "--strength", "-s", help="Multiplier for sources without their own."),
    te: float | None = typer.Option(None, "--te", help="Text-encoder multiplier (default: --strength)."),
    unet: float | None = typer.Option(None, "--unet", help="UNet multiplier (default: --strength)."),
    presets: Path | None = typer.Option(None, "--presets", help="Presets file (lbwpresets.txt) searched first."),
    x: float = typer.Option(1.0, "--x", help="Value of X in the weights."),
    seed: int | None = typer.Option(None, "--seed", help="Seed the bake used for R/U weights."),
    tolerance: float | None = typer.Option(None, "--tolerance", help="Largest relative error allowed "
                                           "(default by dtype: fp32 1e-5, fp16 2e-3, bf16 1.6e-2)."),
    model: Path | None = typer.Option(None, "--model", help="Base checkpoint (needed for DoRA; IA3 on ΔW)."),
    lora_dir: Path | None = typer.Option(None, "--lora-dir", help="Folder to find bare LoRA names in."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> int:
    """Check, block by block, that FILE's ΔW equals the weighted sum of its sources' ΔW (exit 1 if not)."""
    from lbw.services.sources import Defaults, open_source, split_specs
    from lbw.services.verify import verify

    defaults = Defaults(te=strength if te is None else te, unet=strength if unet is None else unet,
                        weights=weights, presets_file=presets, x=x, seed=seed)
    sources = [open_source(spec, defaults) for spec in split_specs(against, lora_dir=lora_dir)]
    try:
        with progress_bar(f"verifying {markup(file.name)}", enabled=not as_json) as tick:
            report = verify(file, sources, tolerance=tolerance, model=model, progress=tick)
    finally:
        for source in sources:
            source.lora.close()
    if as_json:
        print(json_text(report.to_json(), indent=2))
    else:
        show_verify(_console(), report)
    if not report.passed:
        raise typer.Exit(1)
    return 0


def show_plan(console: Console, plan: FactorPlan) -> None:
    """The resolved per-block factors as a table, then any notes."""
    from rich.table import Table

    from lbw.services.resolve import format_factor_table

    console.print(f"resolved factors of {plan.weights.layout.name} {shown(plan.applied_text())} "
                  f"(te {_num(plan.te)}, unet {_num(plan.unet)}):", soft_wrap=True)
    table = Table()
    for column, justify in (("block", "left"), ("ratio", "right"), ("× multiplier", "right"),
                            ("= factor", "right"), ("modules", "right"), ("note", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in format_factor_table(plan):
        table.add_row(*(shown(cell) for cell in row))
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {shown(note)}")


def show_merge(console: Console, report: MergeReport, rank: int | None) -> None:
    """What the merge wrote, and the compression error per block when --rank was given."""
    console.print(f"wrote {shown(report.written.path)} ({_size(report.written.size)}): {report.modules_out} modules "
                  f"({report.joined} joined, {report.carried} carried over, {report.summed} summed)")
    if rank is not None:
        from rich.table import Table

        table = Table(title=f"SVD to rank ≤ {rank}: relative Frobenius error ||ΔW − ΔW_r|| / ||ΔW||",
                      title_justify="left")
        for column in ("block", "modules", "compressed", "error"):
            table.add_column(column, justify="left" if column == "block" else "right")
        for block in report.blocks:
            table.add_row(block.block, str(block.modules), str(block.compressed), f"{block.error:.3e}")
        table.add_row("overall", "", str(report.compressed), f"{report.overall_error:.3e}")
        console.print(table)
    console.print(f"sshs_model_hash {report.written.model_hash}  sshs_legacy_hash {report.written.legacy_hash}")


def show_verify(console: Console, report: VerifyReport) -> None:
    """Per-block largest relative error, the failing modules, and the verdict."""
    from rich.table import Table

    table = Table(title=f"{shown(report.path.name)}: largest relative error per block (tolerance {report.tolerance:g})",
                  title_justify="left")
    for column in ("block", "modules", "max error", "worst module"):
        table.add_column(column, justify="right" if column in ("modules", "max error") else "left")
    for block in report.blocks:
        mark = "" if block.max_error <= report.tolerance else "  ✗"
        table.add_row(block.block, str(block.modules), f"{block.max_error:.3e}{mark}", shown(block.worst))
    console.print(table)
    failures = [m for m in report.modules if m.error > report.tolerance]
    for check in failures[:10]:
        console.print(f"  {check.status}: {shown(check.name)} ({check.block}) error {check.error:.3e}")
    if len(failures) > 10:
        console.print(f"  ... and {len(failures) - 10} more")
    verdict = "PASS" if report.passed else "FAIL"
    console.print(f"{verdict}: max relative error {report.max_error:.3e}, tolerance {report.tolerance:g}")


@contextmanager
def progress_bar(label: str, *, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr while a long step runs (terminal only); yields ``tick(done, total)``."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


def _console() -> Console:
    from rich.console import Console

    # markup=False: names from files are printed as they are (escaped by shown()), never read as rich markup
    return Console(width=None if sys.stdout.isatty() else 120, highlight=False, soft_wrap=True, markup=False)


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _num(value: float) -> str:
    from lbw.domain.numbers import format_number

    return format_number(value)
