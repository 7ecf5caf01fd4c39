"""Actions the workbench pages need beyond the project services: LoRA and model lists inside the server's folders,
the per-block ‖ΔW‖ shares, a connection test, the demo project, bake + verify + metadata of a project's sheet, and
a grid of an iteration with the page's language. Every path from a page goes through ``Roots.check`` here, so a
page callback only passes text along; the CLI can call every one of these functions too.

Example:
    >>> roots = Roots(workspace=Path("lbw-workspace"), loras=(Path("loras"),), models=(Path("models"),))
    >>> [entry.shown for entry in lora_catalogue(roots)]
    ['face.safetensors', 'styles/ink.safetensors']
    >>> guard_settings(roots, {"lora": "../../etc/passwd"})
    Traceback (most recent call last):
    lbw.services.roots.PathRefused: ../../etc/passwd: refused: '..' is not allowed in a path
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbw.errors import LbwError, ProjectError
from lbw.services.roots import PathRefused, Roots

if TYPE_CHECKING:
    from PIL import Image

    from lbw.services.bake import BakeReport
    from lbw.services.meta import MetaEditResult
    from lbw.services.projects import AnalysisView, IterationView, ProjectSettings, ProjectView, Store
    from lbw.services.verify import VerifyReport

LORA_SUFFIXES = (".safetensors",)
MODEL_SUFFIXES = (".safetensors", ".ckpt")  # .ckpt only for servers: lbw never unpickles
DEMO_PROJECT = "demo"
BAKED_FOLDER = "baked"


# ----------------------------------------------------------------------------------------------- LoRAs


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file in a LoRA folder: what ``inspect`` says about it (or why it cannot be read)."""

    path: Path
    shown: str
    architecture: str
    layout: str
    rank: str
    size: int
    kinds: str
    error: str | None = None


_cache_lock = threading.Lock()
_entry_cache: dict[tuple[str, int, int], LoraEntry] = {}
_share_cache: dict[tuple[str, int, int], tuple[tuple[str, float], ...]] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


def lora_catalogue(roots: Roots, *, limit: int = 1000) -> list[LoraEntry]:
    """Every ``.safetensors`` under the LoRA folders with architecture, layout, rank, size and adapter kinds
    (headers only; cached by path, time and size). A file lbw refuses is listed with its reason."""
    from lbw.services.inspect import inspect_file

    entries = []
    for path in roots.walk("lora", LORA_SUFFIXES, limit=limit):
        key = _stamp(path)
        with _cache_lock:
            cached = _entry_cache.get(key)
        if cached is None:
            shown = roots.relative(path)
            try:
                report = inspect_file(path, norms=False, hashes=False)
                ranks = sorted({r for stats in report.blocks.values() for r in stats.ranks} | report.unmapped.ranks)
                rank = "-" if not ranks else str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
                cached = LoraEntry(path, shown, report.architecture, report.layout.name, rank, report.file_size,
                                   ", ".join(report.adapter_types))
            except LbwError as error:
                cached = LoraEntry(path, shown, "?", "?", "-", key[2], "-", error.message)
            with _cache_lock:
                _entry_cache[key] = cached
        entries.append(cached)
    return entries


def block_shares(path: str | os.PathLike[str], roots: Roots) -> tuple[tuple[str, float], ...]:
    """(block, percent of the LoRA's Σ‖ΔW‖_F) in layout order, ``unmapped`` last when present (cached)."""
    from lbw.services.inspect import inspect_file

    real = roots.check(path, kind="lora", must_exist=True)
    key = _stamp(real)
    with _cache_lock:
        cached = _share_cache.get(key)
    if cached is not None:
        return cached
    report = inspect_file(real, hashes=False)
    shares = [(block, stats.share) for block, stats in report.blocks.items() if stats.modules]
    if report.unmapped.modules:
        shares.append(("unmapped", report.unmapped.share))
    result = tuple(shares)
    with _cache_lock:
        _share_cache[key] = result
    return result


def model_choices(roots: Roots, *, limit: int = 1000) -> list[tuple[str, Path]]:
    """(shown name, path) of every model under the model folders: diffusers folders (``model_index.json``) and
    single ``.safetensors`` checkpoints."""
    found: list[tuple[str, Path]] = []
    for folder in roots.folders("model"):
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            if "model_index.json" in filenames and roots.contains(here, "model"):
                found.append((roots.relative(roots.check(here, kind="model")), roots.check(here, kind="model")))
                dirnames[:] = []  # a diffusers folder's parts are not models of their own
                continue
            for name in sorted(filenames):
                if name.lower().endswith(".safetensors") and roots.contains(here / name, "model"):
                    real = roots.check(here / name, kind="model")
                    found.append((roots.relative(real), real))
            if len(found) >= limit:
                return found[:limit]
    return found


# ------------------------------------------------------------------------------------------ settings


def guard_settings(roots: Roots, changes: Mapping[str, Any], *, backend: str = "diffusers") -> dict[str, Any]:
    """``changes`` with every local path checked against the server's folders (PathRefused otherwise).

    For the diffusers backend the LoRA must lie in a LoRA folder and the model in a model folder. For a1111 and
    comfyui they are names the server knows; a name that happens to be an existing local path (``/etc/passwd``)
    is still checked, so nothing outside the folders is ever opened or hashed.
    """
    result = dict(changes)
    backend = str(result.get("backend", backend))
    for key, kind in (("lora", "lora"), ("model", "model")):
        value = result.get(key)
        if value in (None, ""):
            result[key] = None
            continue
        text = str(value)
        if backend == "diffusers" or _looks_local(text):
            result[key] = str(roots.check(text, kind=kind, must_exist=backend == "diffusers"))
    others = result.get("other_loras")
    if others:
        checked = []
        for item in others:
            data = dict(item) if isinstance(item, Mapping) else {"path": getattr(item, "path", item),
                                                                 "strength": getattr(item, "strength", 1.0)}
            path = str(data.get("path", ""))
            if backend == "diffusers" or _looks_local(path):
                data["path"] = str(roots.check(path, kind="lora", must_exist=backend == "diffusers"))
            checked.append(data)
        result["other_loras"] = checked
    return result


def _looks_local(text: str) -> bool:
    if text.startswith(("/", "~", "\\")) or ".." in text.replace("\\", "/").split("/") or "\x00" in text:
        return True
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return True


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1, 2,3"`` -> (1, 2, 3); ProjectError naming the bad item.

    Example:
        >>> parse_seeds("1, 2,3")
        (1, 2, 3)
    """
    items = [item.strip() for item in str(text).replace(";", ",").split(",") if item.strip()]
    if not items:
        raise ProjectError("give at least one seed, e.g. 1 or 1,2,3")
    seeds = []
    for item in items[:64]:
        if not item.lstrip("-").isdigit() or len(item) > 12:
            raise ProjectError(f"seed {item[:20]!r} is not a whole number")
        seeds.append(int(item))
    if len(items) > 64:
        raise ProjectError(f"at most 64 seeds, got {len(items)}")
    return tuple(seeds)


def device_key(settings: ProjectSettings, backend_options: Mapping[str, Any] | None = None) -> str:
    """The device a render of these settings occupies: the local device for diffusers, else the server (each server
    of a pool, joined by ``RESOURCES``). Renders that share a device run one at a time (``lbw.services.jobs``).

    Example:
        >>> device_key(replace_settings(settings, backend="comfyui", url="http://b:8188,http://a:8188/"))
        'comfyui:http://a:8188 + comfyui:http://b:8188'
    """
    if settings.backend == "diffusers":
        from lbw.services.inspect import resolve_device

        device = str((backend_options or {}).get("device") or "auto")
        try:
            return f"diffusers:{resolve_device(device)}"
        except LbwError:
            return f"diffusers:{device}"
    from lbw.render.plan import public_url, server_urls
    from lbw.services.jobs import RESOURCES
    from lbw.services.project_render import DEFAULT_URLS

    text = settings.url or DEFAULT_URLS.get(settings.backend, "")
    try:  # a pool occupies each of its servers: a job on "A,B" and one on "A" never run together
        servers = sorted({public_url(url).rstrip("/") for url in server_urls(text)})
    except LbwError:
        return f"{settings.backend}:{text}"
    return RESOURCES.join(f"{settings.backend}:{url}" for url in servers)


def check_connection(store: Store, name: str, backend_options: Mapping[str, Any] | None = None) -> str:
    """Prepare the project's backend for its current plan (the model, the LoRAs, the server and its extension
    checked; nothing rendered) and say what was found; the backend's RenderError otherwise."""
    from lbw.services.project_render import make_project_backend, project_plan
    from lbw.services.projects import get_project

    view = get_project(store, name)
    plan = project_plan(view.sheet, view.settings, view.mode)
    backend = make_project_backend(view.settings, backend_options)
    try:
        backend.prepare(plan)
    finally:
        backend.close()
    where = view.settings.url or "local" if view.settings.backend != "diffusers" else "local files"
    model = view.settings.model or "(the server's current model)"
    loras = ", ".join(spec.name for spec in plan.loras)
    return f"{view.settings.backend} ({where}): model {model}, LoRA {loras}"


# ---------------------------------------------------------------------------------------------- demo


def open_demo_project(store: Store, assets: Path, *, name: str = DEMO_PROJECT, seeds: Sequence[int] = (1, 2),
                      tiny: bool | None = None) -> ProjectView:
    """The demo project, created once: the built-in world's model and gobuhime LoRA with the world's sampling
    settings when the world's weights are installed (``tiny=False``), else the tiny random-weight model and LoRA
    (built under ``assets`` if missing)."""
    from lbw.services.projects import create_project, get_project, list_projects

    if any(view.name == name for view in list_projects(store, archived=True)):
        return get_project(store, name)
    return create_project(store, name, demo_settings(assets, seeds, tiny=tiny))


def demo_settings(assets: Path, seeds: Sequence[int] = (1, 2), *, tiny: bool | None = None) -> ProjectSettings:
    """The demo project's settings (see ``open_demo_project``); ``tiny=None``: the world when it is installed."""
    from lbw.services.demo_render import (
        DEMO_PROMPT,
        FACE_REGION,
        build_demo_assets,
        world_demo_assets,
        world_settings,
    )
    from lbw.services.projects import ProjectSettings
    from lbw.world.assets import shipped

    if tiny is None:
        tiny = not shipped()
    if tiny:
        model, lora = build_demo_assets(assets)
        return ProjectSettings(lora=str(lora), model=str(model), backend="diffusers", prompt=DEMO_PROMPT,
                               negative="lowres", seeds=tuple(seeds), width=64, height=64, steps=4, cfg=7.0,
                               sampler="Euler", clip_skip=1)
    model, lora = world_demo_assets()
    world = world_settings(tuple(seeds))
    return ProjectSettings(lora=str(lora), model=str(model), backend="diffusers", prompt=world.prompt,
                           negative=world.negative_prompt, seeds=tuple(seeds), width=world.width,
                           height=world.height, steps=world.steps, cfg=world.cfg, sampler=world.sampler,
                           clip_skip=1, roi=FACE_REGION)


# ------------------------------------------------------------------------------------------ analyses


def latest_analysis(store: Store, name: str) -> tuple[int, AnalysisView] | None:
    """(iteration number, table) of the project's latest analyzer run, or None."""
    view = _latest_analysis_run(store, name)
    return (view.number, view.analysis) if view is not None and view.analysis is not None else None


def analysis_pixel_threshold(store: Store, name: str) -> int | None:
    """The pixel threshold (levels of 255) the project's latest analyzer run measured with, from its plan; None
    before the first run. The Analyze tab shows it, so a run is repeated as it was."""
    from lbw.render.plan import plan_from_json

    view = _latest_analysis_run(store, name)
    if view is None:
        return None
    plan = plan_from_json(view.plan_json, where=f"iteration {view.number}")
    return None if plan.eba is None else int(plan.eba.threshold)


def _latest_analysis_run(store: Store, name: str) -> IterationView | None:
    from lbw.services.projects import get_iteration, list_iterations

    runs = [it for it in list_iterations(store, name) if it.kind == "eba"]
    return get_iteration(store, name, runs[-1].number) if runs else None


def analysis_images(store: Store, view: IterationView, block: str) -> list[tuple[Path, str]]:
    """The diff image and heatmap of ``block`` for every seed of an analyzer iteration: (path, caption)."""
    images: list[tuple[Path, str]] = []
    for key, what in (("diff_images", "diff"), ("heatmaps", "heatmap")):
        per_seed = view.extra_files.get(key) or {}
        if not isinstance(per_seed, dict):
            continue
        for seed, blocks in per_seed.items():
            if isinstance(blocks, dict) and isinstance(blocks.get(block), str):
                images.append((store.path_of(blocks[block]), f"{block} {what} seed {seed}"))
    return images


# --------------------------------------------------------------------------------------------- grids


def iteration_grid(
    view: IterationView,
    *,
    title: str,
    column: Callable[[int], str],
    row: Callable[[str, str | None, float | None], str] | None = None,
) -> Image.Image:
    """An iteration's cells composed as a grid (rows = cells, columns = seeds) with the caller's words, so a
    page draws its titles and headers in its own language (Japanese with the CJK font)."""
    from PIL import Image

    from lbw.render.grid import compose_grid

    seeds = sorted({cell.seed for cell in view.cells})
    labels: list[str] = []
    rows: list[list[Image.Image | None]] = []
    positions: dict[int, int] = {}
    for cell in view.cells:
        if cell.position not in positions:
            positions[cell.position] = len(rows)
            value = None if cell.value is None else cell.value
            labels.append(row(cell.label, cell.block, value) if row else cell.label)
            rows.append([None] * len(seeds))
        with Image.open(cell.image) as image:
            rows[positions[cell.position]][seeds.index(cell.seed)] = image.convert("RGB")
    return compose_grid(rows, labels, [column(seed) for seed in seeds], title=title)


def localized_grid_path(grid: Path, lang: str) -> Path:
    """Where the grid of an iteration in language ``lang`` lives: ``grid.<lang>.png`` beside its ``grid.png``."""
    from lbw.render.paths import safe_component

    return grid.parent / f"grid.{safe_component(lang, fallback='xx', limit=8)}.png"


def localized_grid(
    view: IterationView, lang: str, *, title: str, column: Callable[[int], str]
) -> Path:
    """The iteration's grid drawn with the page's words (``iteration_grid``), written once beside the grid the
    render wrote, with the plan embedded like every lbw grid; the path."""
    from lbw.render.grid import PLAN_CHUNK, save_png

    if view.grid is None:
        raise ProjectError(f"iteration {view.number} has no grid")
    path = localized_grid_path(view.grid, lang)
    if not path.is_file():
        image = iteration_grid(view, title=title, column=column, row=_row_label)
        save_png(image, path, {PLAN_CHUNK: view.plan_json})
    return path


def _row_label(label: str, block: str | None, value: float | None) -> str:
    from lbw.domain.numbers import format_number

    if block is None or value is None:
        return label
    return f"{label}\n{block} = {format_number(value)}"


# ---------------------------------------------------------------------------------------------- bake


@dataclass(frozen=True)
class BakeResult:
    """A bake of a project's sheet: the report, the verification, the output relative to the workspace."""

    report: BakeReport
    verification: VerifyReport
    shown: str


def default_bake_name(view: ProjectView) -> str:
    """``baked/<lora stem>-<sheet name>.safetensors``."""
    from lbw.render.paths import safe_component

    stem = Path(view.settings.lora or "lora").stem
    return f"{BAKED_FOLDER}/{safe_component(f'{stem}-{view.sheet.name}', fallback='baked')}.safetensors"


def factor_rows(store: Store, name: str, roots: Roots) -> list[tuple[str, str, str, str, str, str]]:
    """The bake's factor table for the project's sheet (block, ratio, multiplier, factor, modules, note)."""
    from lbw.services.projects import get_project
    from lbw.services.resolve import format_factor_table, resolve_for_file

    view = get_project(store, name)
    source = roots.check(view.settings.lora or "", kind="lora", must_exist=True)
    modules, architecture = _modules_of(source)
    plan = resolve_for_file(view.sheet.weights, modules, architecture, where=str(source))
    return format_factor_table(plan)


_modules_cache: dict[tuple[str, int, int], tuple[tuple[Any, ...], str]] = {}


def _modules_of(path: Path) -> tuple[tuple[Any, ...], str]:
    """A LoRA's modules and architecture, read once per file version (path, time, size): the factor table is
    redrawn after every click, and resolving needs only the modules' names and blocks, never their tensors."""
    from lbw.files.lora_file import LoraFile

    key = _stamp(path)
    with _cache_lock:
        cached = _modules_cache.get(key)
    if cached is None:
        with LoraFile.open(path) as lora:
            cached = (tuple(lora.modules), lora.architecture)
        with _cache_lock:
            if len(_modules_cache) > 32:
                _modules_cache.clear()
            _modules_cache[key] = cached
    return cached


def bake_project(
    store: Store,
    name: str,
    roots: Roots,
    dest: str,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BakeResult:
    """Bake the project's sheet into ``dest`` (inside the workspace) and verify the result block by block."""
    from lbw.services.bake import BakeOptions, bake
    from lbw.services.projects import get_project
    from lbw.services.sources import Defaults, SourceSpec, open_source
    from lbw.services.verify import verify

    view = get_project(store, name)
    source = roots.check(view.settings.lora or "", kind="lora", must_exist=True)
    target = roots.check(dest, kind="workspace")
    if target.suffix.lower() != ".safetensors":
        raise PathRefused("the output must end in .safetensors", where=dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    report = bake(source, target, view.sheet.weights, options=BakeOptions(force=force), progress=progress)
    line = view.sheet.weight_line()
    opened = open_source(SourceSpec(source, None, line, f"{source}::{line}"), Defaults())
    try:
        checked = verify(target, [opened])
    finally:
        opened.lora.close()
    return BakeResult(report, checked, roots.relative(target))


def baked_files(roots: Roots) -> list[str]:
    """LoRA files under the workspace's ``baked/`` folder (what the page bakes and may describe), newest first."""
    folder = roots.workspace / BAKED_FOLDER
    if not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*.safetensors") if roots.contains(p, "workspace") and p.is_file()
             and not p.is_symlink()]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [roots.relative(p) for p in files]


@dataclass(frozen=True)
class MetaForm:
    """What the Bake & share page's metadata form sends."""

    display_name: str = ""
    author: str = ""
    keywords: str = ""
    url: str = ""
    description: str = ""
    cover: str = ""  # a cell image, relative to the workspace
    weights: bool = True
    sidecar: bool = True


def write_metadata(store: Store, name: str, roots: Roots, file: str, form: MetaForm) -> MetaEditResult:
    """Write the form into a LoRA file in the workspace (a cover image from a rendered cell, the tuned weights
    as ``lbw_block_weights``, the web UI sidecar ``.json``); hashes recomputed, a backup kept."""
    from lbw.services.meta import MetaChanges, SidecarChanges, edit_meta
    from lbw.services.projects import get_project

    view = get_project(store, name)
    target = roots.check(file, kind="workspace", must_exist=True)
    if roots.relative(target) not in baked_files(roots):
        raise PathRefused(f"only files the workbench baked (under {BAKED_FOLDER}/) are edited here", where=file)
    cover = None
    if form.cover.strip():
        cover = roots.check(form.cover.strip(), kind="workspace", must_exist=True)
        if cover.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise PathRefused("a cover must be a PNG, JPEG or WebP image", where=form.cover)

    def text(value: str) -> str | None:
        return value.strip() or None

    changes = MetaChanges(display_name=text(form.display_name), author=text(form.author),
                          keywords=text(form.keywords), source=text(form.url), description=text(form.description),
                          cover=cover, weights=view.sheet.weight_line() if form.weights else None)
    sidecar = None
    if form.sidecar:
        sidecar = SidecarChanges(activation_text=text(form.keywords), preferred_weight=view.settings.strength,
                                 notes=text(form.description))
    if changes.is_empty() and sidecar is None:
        raise ProjectError("nothing to write: fill in a field or tick a box")
    return edit_meta(target, changes, sidecar=sidecar)


def with_seeds_text(settings: ProjectSettings) -> str:
    """The seeds as the page shows them: ``1, 2``."""
    return ", ".join(str(s) for s in settings.seeds)


def replace_settings(settings: ProjectSettings, **changes: Any) -> ProjectSettings:
    """A copy of ``settings`` with ``changes`` (for previews)."""
    return replace(settings, **changes)
