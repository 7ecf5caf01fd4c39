"""``lbw plot`` and ``lbw eba``: render Sub/Add grids and the Effective Block Analyzer.

Heavy imports (torch, diffusers, numpy, PIL) happen inside the command bodies only.

Example:
    $ lbw plot face.toml --list sub --lora face.safetensors --model ./model --prompt "1girl" -o out/sub
    $ lbw plot out/sub/plan.json --seeds 1,2,3        # re-run in out/sub: only new cells render
    $ lbw eba face.safetensors --model ./model --prompt "1girl" --roi 0.25,0,0.75,0.5 -o out/eba
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lbw.errors import RenderError
from lbw.interfaces.cli.safe import Interrupted, markup, shown

if TYPE_CHECKING:
    from lbw.render.plan import Plan, Settings

_BACKEND_HELP = "diffusers (local checkpoint), a1111 (web UI/Forge --api), comfyui (Inspire pack)"


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        seeds = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise RenderError(f"--seeds {text!r}: expected integers separated by commas") from None
    if not seeds:
        raise RenderError("--seeds is empty")
    return seeds


def _axis(text: str | None) -> Any:
    from lbw.render.plan import Axis

    if text is None:
        return None
    kind, _, values = text.partition(":")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if kind == "strength":
        try:
            return Axis("strength", tuple(float(v) for v in items))
        except ValueError:
            raise RenderError(f"--axis {text!r}: strengths must be numbers") from None
    if kind == "checkpoint":
        return Axis("checkpoint", tuple(str(Path(v).resolve()) if Path(v).exists() else v for v in items))
    raise RenderError(f"--axis {text!r}: expected strength:V1,V2,... or checkpoint:A,B,...")


def _settings(base: Settings | None, **given: Any) -> Settings:
    """Plan settings: ``base`` (a loaded plan's, or the defaults) with every option given on the line."""
    from dataclasses import replace

    from lbw.render.plan import Settings

    start = base or Settings()
    changes = {key: value for key, value in given.items() if value is not None}
    return replace(start, **changes)


def _lora_specs(
    paths: list[str], names: list[str], strength: float, te_strength: float | None
) -> tuple[Any, ...]:
    from lbw.render.plan import LoraSpec

    if names and len(names) != len(paths):
        raise RenderError(f"--lora-name given {len(names)} times for {len(paths)} --lora values")
    specs = []
    for index, value in enumerate(paths):
        path = Path(value)
        local = str(path.resolve()) if path.exists() else None
        name = names[index] if names else path.stem if path.suffix else value
        specs.append(
            LoraSpec(
                path=local,
                name=name,
                strength=strength if index == 0 else 1.0,
                te_strength=te_strength if index == 0 else None,
                tuned=index == 0,
            )
        )
    return tuple(specs)


def _backend(options: dict[str, Any]) -> Any:
    """The backend named by ``--backend`` with the options that apply to it."""
    from lbw.services.plot import make_backend

    name = options["backend"] or "diffusers"
    ray = _ray_options(options)
    if ray is not None and name != "diffusers":
        raise RenderError(f"--ray distributes the diffusers backend; {name} renders on its own server (--url)")
    _threads(options)
    if name == "diffusers":
        return make_backend(
            name,
            device=options["device"],
            batch_size=options["batch_size"],
            model_config=options["model_config"],
            dtype=options["dtype"],
            lora_mode=options["lora_mode"] or "batched",
            **({"ray": ray} if ray is not None else {}),
        )
    limits = {key: options[key] for key in ("timeout", "connect_timeout", "deadline") if options[key] is not None}
    if name == "a1111":
        mode = options["a1111_mode"] or "presets"
        return make_backend(name, url=options["url"] or "http://127.0.0.1:7860", mode=mode, **limits)
    if name == "comfyui":
        return make_backend(name, url=options["url"] or "http://127.0.0.1:8188", **limits)
    return make_backend(name)


def _ray_options(options: dict[str, Any]) -> Any:
    """``RayOptions`` when ``--ray`` or ``--ray-address`` is given (``--workers`` only with them), else None."""
    if not options["ray"] and options["ray_address"] is None:
        if options["workers"] is not None:
            raise RenderError("--workers goes with --ray or --ray-address")
        return None
    from lbw.render.distributed import RayOptions

    return RayOptions(address=options["ray_address"], workers=options["workers"], threads=options["threads"])


def _recorded_backend(plan: Plan, options: dict[str, Any]) -> dict[str, Any]:
    """The options with the backend a saved plan recorded, unless ``--backend`` names one: a re-run repeats the
    plan's backend, server URL and a1111 mode (each unless given on the command line)."""
    recorded = plan.backend
    if recorded is None or options["backend"] not in (None, recorded.name):
        return options
    merged = dict(options, backend=recorded.name)
    if merged["url"] is None:
        merged["url"] = recorded.url
    if merged["a1111_mode"] is None:
        merged["a1111_mode"] = recorded.mode
    return merged


def _backend_spec(options: dict[str, Any]) -> Any:
    """What a plan records of the backend it is rendered with (the URL without credentials or query)."""
    from lbw.render.plan import BackendSpec, public_urls

    name = options["backend"] or "diffusers"
    if name == "diffusers":
        return BackendSpec(name)
    url = options["url"] or {"a1111": "http://127.0.0.1:7860", "comfyui": "http://127.0.0.1:8188"}[name]
    return BackendSpec(name, public_urls(url), (options["a1111_mode"] or "presets") if name == "a1111" else None)


def _threads(options: dict[str, Any]) -> None:
    if options["threads"] is not None:
        import torch

        torch.set_num_threads(options["threads"])


def _render(plan: Plan, options: dict[str, Any], out: Path, *, force: bool = False) -> Any:
    """Render ``plan`` with progress bars; on Ctrl-C say (in the one ``interrupted`` line) what is kept. The plan
    records the backend it is rendered with (``plan.json``, the grid PNG)."""
    from dataclasses import replace

    from lbw.render.plan import require_prompt
    from lbw.services.plot import plot

    require_prompt(plan.settings.prompt, options["allow_empty_prompt"])
    options = _recorded_backend(plan, options)
    engine = _backend(options)
    plan = replace(plan, backend=_backend_spec(options))
    cache = options["cache"] or out / "cache"
    progress = RenderProgress("cells")
    try:
        with progress:
            return plot(plan, engine, out, cache_dir=cache, on_cell=progress.on_cell, on_step=progress.on_step,
                        force=force)
    except KeyboardInterrupt:
        if not progress.total:  # before the first cell: nothing of this run to keep
            raise
        raise Interrupted(
            f"stopped after {progress.done} of {progress.total} cells; finished cells are kept in "
            f"{cache}: run the same command again to resume"
        ) from None


# Options that are project settings: with --project they are refused (the project's own settings apply).
_PROJECT_SETTING_OPTIONS = {
    "model": "--model", "backend": "--backend", "strength": "--strength", "te_strength": "--te-strength",
    "prompt": "--prompt", "negative": "--negative", "steps": "--steps", "cfg": "--cfg", "sampler": "--sampler",
    "schedule": "--schedule", "width": "--width", "height": "--height", "clip_skip": "--clip-skip", "seeds": "--seeds",
    "url": "--url", "a1111_mode": "--a1111-mode", "cache": "--cache",
}
# Options that belong to the machine, passed to the project's backend.
_MACHINE_OPTIONS = ("device", "batch_size", "model_config", "dtype", "lora_mode", "timeout", "connect_timeout",
                    "deadline")


def _project_run(options: dict[str, Any], given: dict[str, Any], run: Callable[..., Any]) -> Any:
    """Run ``run(store, name, **callbacks)`` for ``--project`` with progress bars; print the iteration."""
    from lbw.interfaces.cli.project import open_store, print_iteration
    from lbw.services.projects import get_project

    project = options["project"]
    refused = [flag for key, flag in _PROJECT_SETTING_OPTIONS.items() if options.get(key) is not None]
    refused += [flag for flag, value in given.items() if value]
    if refused:
        raise RenderError(f"{', '.join(refused)}: with --project the project's settings apply; change them with "
                          f"`lbw project set NAME {refused[0]} ...`")
    store = open_store(options["workspace"])
    get_project(store, project)  # an unknown project is refused before torch loads
    _threads(options)
    machine = {key: options[key] for key in _MACHINE_OPTIONS if options.get(key) is not None}
    if (ray := _ray_options(options)) is not None:
        machine["ray"] = ray
    progress = RenderProgress("cells")
    try:
        with progress:
            it = run(store, project, progress=progress.on_cell, on_step=progress.on_step, backend_options=machine,
                     allow_empty_prompt=options["allow_empty_prompt"])
    except KeyboardInterrupt:
        if not progress.total:
            raise
        raise Interrupted(
            f"stopped after {progress.done} of {progress.total} cells; nothing was recorded; finished cells are "
            f"kept in the workspace cache: run the same command again to resume"
        ) from None
    view = get_project(store, project)
    print_iteration(view, it)
    return it


class RenderProgress:
    """Rich progress bars on stderr: one for cells, one for the steps of the current cell.

    The bars are drawn only when stderr is a terminal (a log file or a pipe gets no bar drawings), and appear with
    the first rendered or cached cell, so a run refused before rendering (a missing model, an unreachable server)
    prints only its one-line error.
    """

    def __init__(self, total_label: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.cells = self.progress.add_task(total_label, total=None)
        self.steps = self.progress.add_task("steps", total=100, visible=False)
        self.enabled = self.progress.console.is_terminal
        self.started = False
        self.done = 0
        self.total = 0

    def __enter__(self) -> RenderProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.stop()

    def _start(self) -> None:
        if self.enabled and not self.started:
            self.started = True
            self.progress.start()

    def on_cell(self, done: int, total: int, label: str, cached: bool) -> None:
        """Runner callback: ``done`` of ``total`` cells finished, the last one ``label``."""
        self._start()
        state = "cached" if cached else "rendered"
        self.done, self.total = done, total
        described = f"cells ({markup(label)} {state})" if label else "cells"
        self.progress.update(self.cells, completed=done, total=total, description=described)

    def on_step(self, fraction: float, label: str, cells: int = 1) -> None:
        """Backend callback: ``fraction`` of the current cell (or batch of ``cells`` cells, or request) done."""
        self._start()
        self.progress.update(self.steps, completed=round(fraction * 100), visible=True, description=markup(label))

    def print(self, text: str) -> None:
        """A line of rich markup above the bars (or on stderr before they appear); outside data must be escaped
        with ``markup()`` by the caller."""
        self.progress.console.print(text, soft_wrap=True, highlight=False)


def print_plot(result: Any) -> None:
    print(f"grid: {shown(result.grids[0])}" if result.grids else "grid: (none)")
    print(f"cells: {shown(result.out_dir / 'cells')} ({result.rendered} rendered, {result.reused} from the cache)")
    print(f"plan: {shown(result.plan_path)}")


def print_eba(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Effective Block Analyzer (largest change first)")
    table.add_column("#", justify="right")
    table.add_column("block")
    table.add_column("Diff %", justify="right")
    if report.roi is not None:
        table.add_column("region Diff %", justify="right")
        table.add_column("share in region %", justify="right")
    table.add_column("suggested")
    for position, change in enumerate(report.ranked, 1):
        row = [str(position), markup(change.block), f"{change.diff_percent:.3f}"]
        if report.roi is not None:
            row += [f"{change.roi_diff_percent:.3f}", f"{change.roi_share_percent:.1f}"]
        row.append(markup(report.classes[change.block]))
        table.add_row(*row)
    console = Console(soft_wrap=True)
    console.print(table)
    score = "region Diff %" if report.roi is not None else "Diff %"
    print(f"classification ({score}): {shown(report.thresholds.describe())}")
    for seed in report.seeds:
        print(f"grid: {shown(seed.grid)}")
    if report.sheet is None:
        from lbw.services.analyze import NO_CHANGE

        print(f"suggested sheet: none: {NO_CHANGE}")
        typer.echo(f"lbw: warning: {NO_CHANGE}", err=True)
    else:
        print(f"suggested weights: {shown(report.sheet.weight_line())}")
        print(f"suggested sheet: {shown(report.sheet_path)}  (important = 1 fixed, unneeded = 0 fixed, "
              "unclear = 0.5)")
    print(f"analysis: {shown(report.report_path)}")


def _print_project_analysis_end(project: str, it: Any) -> None:
    """After a project's analyzer run: what to do next, or why there is nothing to suggest."""
    from lbw.interfaces.cli.project import quoted
    from lbw.services.projects import NO_CHANGE_MESSAGE

    if it.analysis.no_change:
        print(f"suggested sheet: none: {NO_CHANGE_MESSAGE}")
        typer.echo(f"lbw: warning: {NO_CHANGE_MESSAGE}", err=True)
        return
    print(shown(f"start the sheet from it: lbw project start-sheet {quoted(project)} {it.number}  (important = 1 "
                "fixed, unneeded = 0 fixed, unclear = 0.5)"))


# Options both commands take: (name, type, typer option). ``_shared_options`` adds them to a command.
_SHARED: tuple[tuple[str, Any, Any], ...] = (
    ("model", str | None, typer.Option(None, "--model", "-m", help="Checkpoint (diffusers folder/.safetensors; "
                                       "a1111/comfyui: the server's name).")),
    ("backend", str | None, typer.Option(None, "--backend", "-b", help=_BACKEND_HELP + " (default diffusers)")),
    ("strength", float | None, typer.Option(None, "--strength", help="Strength of the tuned LoRA (UNet; default 1).")),
    ("te_strength", float | None, typer.Option(None, "--te-strength", help="Text-encoder strength.")),
    ("model_config", Path | None, typer.Option(None, "--model-config", help="Configs of a single file.")),
    ("prompt", str | None, typer.Option(None, "--prompt", "-p")),
    ("negative", str | None, typer.Option(None, "--negative", "-n")),
    ("steps", int | None, typer.Option(None, "--steps", help="Default 20.")),
    ("cfg", float | None, typer.Option(None, "--cfg", help="Default 7.")),
    ("sampler", str | None, typer.Option(None, "--sampler", help="Web UI name, e.g. 'DPM++ 2M' (default Euler).")),
    ("schedule", str | None, typer.Option(None, "--schedule", help="Automatic, Normal or Karras.")),
    ("width", int | None, typer.Option(None, "--width", help="Default 512.")),
    ("height", int | None, typer.Option(None, "--height", help="Default 512.")),
    ("clip_skip", int | None, typer.Option(None, "--clip-skip", help="Web UI convention: 1 = last layer.")),
    ("seeds", str | None, typer.Option(None, "--seeds", help="Comma-separated seeds (default 1).")),
    ("cache", Path | None, typer.Option(None, "--cache", help="Cache folder (default OUT/cache).")),
    ("device", str, typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda, cuda:N.")),
    ("dtype", str | None, typer.Option(None, "--dtype", help="fp32, fp16 or bf16 (default fp16 on CUDA).")),
    ("batch_size", int | None, typer.Option(None, "--batch-size", help="diffusers: images per batch (default: "
                                            "from free memory; halved if memory runs out).")),
    ("lora_mode", str | None, typer.Option(None, "--lora-mode", help="diffusers: batched (default: LoRAs applied "
                                           "per batch element, weights untouched, cells share batches) or merge "
                                           "(weights rewritten per cell).")),
    ("threads", int | None, typer.Option(None, "--threads", help="CPU threads for torch (with --ray: per CPU "
                                         "worker).")),
    ("ray", bool, typer.Option(False, "--ray", help="diffusers: render the cells over Ray workers, one per GPU (a "
                               "local Ray started by lbw unless --ray-address; needs lbw[ray]).")),
    ("ray_address", str | None, typer.Option(None, "--ray-address", help="Join a running Ray cluster instead: "
                                             "auto, HOST:6379 or ray://HOST:10001 (implies --ray).")),
    ("workers", int | None, typer.Option(None, "--workers", help="With --ray: how many workers (default: one per "
                                         "GPU, else one per node; CPU workers share the CPUs).")),
    ("url", str | None, typer.Option(None, "--url", help="Server URL (a1111 :7860, comfyui :8188 by default); "
                                     "several, comma-separated, spread the cells over a pool of servers.")),
    ("a1111_mode", str | None, typer.Option(None, "--a1111-mode", help="presets (always-on args, default), inline "
                                            "(lbw= vectors) or xyz (X/Y/Z Prompt S/R).")),
    ("allow_empty_prompt", bool, typer.Option(False, "--allow-empty-prompt", help="Render without a prompt (refused "
                                              "otherwise: a LoRA's trigger usually lives there).")),
    ("project", str | None, typer.Option(None, "--project", help="Render for this project with its settings and "
                                         "record the iteration (see `lbw project`).")),
    ("workspace", Path, typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                                     help="Workspace folder of the projects (or LBW_WORKSPACE).")),
    ("timeout", float | None, typer.Option(None, "--timeout", help="a1111/comfyui: seconds a request may go "
                                           "without an answer or progress (default 300).")),
    ("connect_timeout", float | None, typer.Option(None, "--connect-timeout", help="a1111/comfyui: seconds to "
                                                   "connect (default 10).")),
    ("deadline", float | None, typer.Option(None, "--deadline", help="a1111/comfyui: seconds for the whole run "
                                            "(default: no limit; finished cells stay cached).")),
)


def _shared_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the shared options; they reach it as one dict, ``options``."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "options"]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, t, o in _SHARED]

    @functools.wraps(command)
    def with_options(**given: Any) -> None:
        command(**{p.name: given[p.name] for p in own}, options={n: given[n] for n, _, _ in _SHARED})

    with_options.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    return with_options


def register(app: typer.Typer) -> None:
    """Add ``lbw plot`` and ``lbw eba`` to ``app``."""

    @app.command("plot")
    @_shared_options
    def plot_command(
        source: Path | None = typer.Argument(
            None, help="Sheet (.toml), presets file (.txt), plan.json or a grid PNG (re-runs its plan); none with "
            "--project."
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Output folder (default: lbw-plot; a plan's own folder when re-running)."
        ),
        list_kind: str = typer.Option("sub", "--list", help="Sheet list: sub, add, subadd or addsub."),
        names: str | None = typer.Option(None, "--names", help="Presets to plot (comma-separated; default all)."),
        lora: list[str] = typer.Option([], "--lora", help="LoRA file (or server-side name); the first is tuned."),
        lora_name: list[str] = typer.Option([], "--lora-name", help="Name the web UI knows each --lora by."),
        axis: str | None = typer.Option(None, "--axis", help="strength:0.5,1 or checkpoint:A,B"),
        mode: str | None = typer.Option(None, "--mode", help="With --project: sub, add, subadd or addsub (default: "
                                        "the project's mode; a new mode is kept)."),
        force: bool = typer.Option(False, "--force", help="Re-running an analyzer plan: replace a suggested-sheet.toml "
                                   "you edited."),
        options: dict[str, Any] | None = None,
    ) -> None:
        """Render a sheet's Sub/Add list, presets, or a saved plan (an analyzer plan re-runs the analysis); with
        --project, the project's sheet in its mode with its settings, recorded as its next iteration."""
        from dataclasses import replace

        from lbw.services.plot import load_plan_source, plan_from_presets, plan_from_sheet, read_sheet

        assert options is not None  # given by _shared_options
        if options["project"] is not None:
            from lbw.services.projects import render_iteration

            given = {"SOURCE": source is not None, "--out": out is not None, "--names": names is not None,
                     "--lora": bool(lora), "--lora-name": bool(lora_name), "--axis": axis is not None}
            _project_run(options, given, functools.partial(render_iteration, mode=mode))
            return
        if mode is not None:
            raise RenderError("--mode goes with --project; for a sheet file use --list")
        if source is None:
            raise RenderError("give a sheet, presets file, plan.json or grid PNG to plot, or --project NAME")
        settings = _settings_options(options)
        strength, te_strength, model = _strength(options), options["te_strength"], options["model"]
        suffix = source.suffix.lower()
        if suffix in (".json", ".png"):
            plan: Plan = load_plan_source(source)
            changes: dict[str, Any] = {"settings": _settings(plan.settings, **settings)}
            if lora:
                changes["loras"] = _lora_specs(lora, lora_name, strength, te_strength)
            if model:
                changes["model"] = _model(model)
            if axis:
                changes["axis"] = _axis(axis)
            plan = replace(plan, **changes)
            target = out or source.parent
        else:
            if not lora:
                raise RenderError("--lora is required (the LoRA the weights apply to)")
            common = dict(
                settings=_settings(None, **settings),
                loras=_lora_specs(lora, lora_name, strength, te_strength),
                model=_model(model),
                axis=_axis(axis),
            )
            if suffix == ".toml":
                plan = plan_from_sheet(read_sheet(source), list_kind, **common)
            else:
                text = _read(source)
                wanted = [n.strip() for n in names.split(",") if n.strip()] if names else []
                plan = plan_from_presets(text, wanted, where=str(source), name=source.stem, **common)
            target = out or Path("lbw-plot")
        result = _render(plan, options, target, force=force)
        if plan.kind == "eba":
            print_eba(result)
        else:
            print_plot(result)

    @app.command("eba")
    @_shared_options
    def eba_command(
        lora: str | None = typer.Argument(None, help="The LoRA file (or, for a1111/comfyui, its server-side name); "
                                          "none with --project."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default lbw-eba)."),
        blocks: str | None = typer.Option(None, "--blocks", help="Blocks to test: IDs, ranges, NOT, or 17ALL/26ALL "
                                          "(default 26ALL; with --project the sheet's open blocks)."),
        range_text: str = typer.Option("0.5,1", "--range", help="probe,base (LBW's Range)."),
        threshold: int = typer.Option(20, "--threshold", help="Diff % counts |difference| > threshold."),
        diff_color: str = typer.Option("black", "--diff-color", help="black or white diff background."),
        roi: str | None = typer.Option(None, "--roi", help="Region x0,y0,x1,y1 (pixels or 0..1 fractions)."),
        important: float = typer.Option(5.0, "--important", help="Diff % at or above: important."),
        unneeded: float = typer.Option(1.0, "--unneeded", help="Diff % below: unneeded."),
        transpose: bool = typer.Option(False, "--transpose", help="Blocks as columns (LBW's change X-Y)."),
        lora_name: str | None = typer.Option(None, "--lora-name", help="Name the web UI knows the LoRA by."),
        force: bool = typer.Option(False, "--force", help="Replace a suggested-sheet.toml you edited."),
        options: dict[str, Any] | None = None,
    ) -> None:
        """Effective Block Analyzer: lower each block to the probe value, measure Diff %, rank, classify; with
        --project, on the project's LoRA with its settings, recorded as its next iteration."""
        from lbw.render.analysis import Thresholds
        from lbw.render.blocks import parse_block_list
        from lbw.services.analyze import eba_plan

        assert options is not None  # given by _shared_options
        probe, base = _range(range_text)
        if options["project"] is not None:
            from lbw.services.projects import run_analysis

            given = {"LORA": lora is not None, "--out": out is not None, "--roi": roi is not None,
                     "--lora-name": lora_name is not None, "--force": force}
            it = _project_run(options, given, functools.partial(
                run_analysis, blocks=None if blocks is None else parse_block_list(blocks), probe=probe, base=base,
                threshold=threshold, important=important, unneeded=unneeded, transpose=transpose,
                diff_color=diff_color))
            _print_project_analysis_end(options["project"], it)
            return
        if lora is None:
            raise RenderError("give the LoRA to analyze, or --project NAME")
        spec = _lora_specs([lora], [lora_name] if lora_name else [], _strength(options),
                           options["te_strength"])[0]
        plan = eba_plan(
            spec,
            model=_model(options["model"]),
            settings=_settings(None, **_settings_options(options)),
            blocks=parse_block_list(blocks or "26ALL"),
            probe=probe,
            base=base,
            threshold=threshold,
            diff_color=diff_color,
            transpose=transpose,
            roi=roi,
            thresholds=Thresholds(important, unneeded),
        )
        print_eba(_render(plan, options, out or Path("lbw-eba"), force=force))


def _settings_options(options: dict[str, Any]) -> dict[str, Any]:
    """The plan settings given on the command line (None = not given)."""
    return dict(
        prompt=options["prompt"],
        negative_prompt=options["negative"],
        steps=options["steps"],
        cfg=options["cfg"],
        sampler=options["sampler"],
        scheduler=options["schedule"],
        width=options["width"],
        height=options["height"],
        clip_skip=options["clip_skip"],
        seeds=_seeds(options["seeds"]),
    )


def _strength(options: dict[str, Any]) -> float:
    return 1.0 if options["strength"] is None else float(options["strength"])


def _model(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    return str(path.resolve()) if path.exists() else value


def _range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        probe, base = (float(p) for p in parts)
    except ValueError:
        raise RenderError(f"--range {text!r}: expected two numbers probe,base (e.g. 0.5,1)") from None
    return probe, base


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RenderError("file not found", where=str(path)) from None
    except UnicodeDecodeError:
        raise RenderError(
            "not a UTF-8 text file (expected a sheet .toml, presets .txt or plan .json)", where=str(path)
        ) from None
