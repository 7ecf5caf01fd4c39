"""``lbw plot``: build a plan from a sheet, presets or a saved plan, pick a backend, render the grid.

Example:
    >>> sheet = read_sheet("gobuhime.toml")
    >>> plan = plan_from_sheet(sheet, "sub", settings=Settings(prompt="1girl", seeds=(1,)),
    ...                        loras=(LoraSpec(path="gobuhime.safetensors"),), model="model/")
    >>> result = plot(plan, make_backend("diffusers"), "out/sub")
    >>> result.grids[0].name
    'grid.png'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbw.domain.presets import read_presets
from lbw.domain.sheet import LIST_KINDS, Sheet, variants
from lbw.domain.sheet_file import sheet_from_toml
from lbw.errors import RenderError
from lbw.render.backends import BACKEND_NAMES
from lbw.render.backends.base import Backend, StepCallback
from lbw.render.grid import PLAN_CHUNK, read_png_text
from lbw.render.plan import Axis, Cell, LoraSpec, Plan, Settings, load_plan, plan_from_json
from lbw.render.runner import CellCallback, RunResult, run_plan
from lbw.services.analyze import EbaReport, run_eba


def read_sheet(path: str | Path) -> Sheet:
    """Read a sheet TOML file (``lbw sheet new`` writes them)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RenderError("sheet file not found", where=str(path)) from None
    return sheet_from_toml(text, where=str(path))


def plan_from_sheet(
    sheet: Sheet,
    kind: str,
    *,
    settings: Settings,
    loras: Sequence[LoraSpec],
    model: str | None = None,
    axis: Axis | None = None,
) -> Plan:
    """A plan with one cell per entry of the sheet's Sub/Add/SubAdd/AddSub list (base lines included)."""
    if kind not in LIST_KINDS:
        raise RenderError(f"unknown list {kind!r}; expected one of {', '.join(LIST_KINDS)}")
    entries = variants(sheet, kind).entries  # type: ignore[arg-type]
    cells = tuple(Cell(v.name, v.weights.numbers(), v.block_id) for v in entries)
    return Plan(
        kind=kind,
        layout=sheet.layout.name,
        cells=cells,
        settings=settings,
        loras=tuple(loras),
        model=model,
        axis=axis,
        name=sheet.name,
    )


def plan_from_presets(
    presets_text: str,
    names: Sequence[str],
    *,
    settings: Settings,
    loras: Sequence[LoraSpec],
    model: str | None = None,
    axis: Axis | None = None,
    where: str | None = None,
    name: str = "presets",
) -> Plan:
    """A plan with one cell per named preset (all presets in file order when ``names`` is empty).

    Presets must share one layout; unknown names are errors (never silently full strength).
    """
    document = read_presets(presets_text, where=where)
    chosen = list(names) or list(document.names())
    if not chosen:
        raise RenderError("the presets file has no valid preset", where=where)
    weights = [document.get(n) for n in chosen]
    layouts = {w.layout.name for w in weights}
    if len(layouts) != 1:
        raise RenderError(
            f"presets mix layouts ({', '.join(sorted(layouts))}); plot one layout at a time", where=where
        )
    cells = tuple(Cell(n, w.numbers()) for n, w in zip(chosen, weights, strict=True))
    return Plan(
        kind="presets",
        layout=layouts.pop(),
        cells=cells,
        settings=settings,
        loras=tuple(loras),
        model=model,
        axis=axis,
        name=name,
    )


def load_plan_source(path: str | Path) -> Plan:
    """A saved plan: ``plan.json`` or a grid PNG carrying its plan in the ``lbw_plan`` chunk."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        if not path.is_file():
            raise RenderError("grid image not found", where=str(path))
        text = read_png_text(path).get(PLAN_CHUNK)
        if text is None:
            raise RenderError("this PNG carries no lbw plan", where=str(path))
        return plan_from_json(text, where=str(path))
    return load_plan(path)


def make_backend(name: str, ray: Any = None, **options: Any) -> Backend:
    """A backend by name with its options (``device``, ``batch_size``, ``model_config`` / ``url``, ...); ``ray``
    (``lbw.render.distributed.RayOptions``): the diffusers backend's cells rendered over Ray workers.

    An HTTP backend's ``url`` may name several servers separated by commas: the cells are then spread over them
    (``lbw.render.pool.ServerPool``).
    """
    if ray is not None:
        if name != "diffusers":
            raise RenderError(f"Ray distributes the diffusers backend; {name} renders on its own server")
        from lbw.render.distributed import RayBackend

        return RayBackend(options, ray)
    if name == "diffusers":
        from lbw.render.backends.diffusers_backend import DiffusersBackend

        return DiffusersBackend(**options)
    if name == "a1111":
        from lbw.render.backends.a1111 import A1111Backend

        return _http_backend(A1111Backend, options)
    if name == "comfyui":
        from lbw.render.backends.comfyui import ComfyUIBackend

        return _http_backend(ComfyUIBackend, options)
    raise RenderError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")


def _http_backend(kind: Any, options: dict[str, Any]) -> Backend:
    """One ``kind`` backend for one server URL, or a pool of them for several."""
    if options.get("url") is None:
        return kind(**options)
    from lbw.render.plan import server_urls

    urls = server_urls(options.pop("url"))
    if len(urls) == 1:
        return kind(url=urls[0], **options)
    from lbw.render.pool import POOL_RETRIES, ServerPool

    options.setdefault("retries", POOL_RETRIES)
    return ServerPool([kind(url=url, **options) for url in urls], urls)


def plot(
    plan: Plan,
    backend: Backend,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    on_cell: CellCallback | None = None,
    on_step: StepCallback | None = None,
    force: bool = False,
) -> RunResult | EbaReport:
    """Render any plan into ``out_dir`` (cached, resumable) and close the backend.

    An ``eba`` plan is analyzed (``run_eba``: metrics, diff images, grids, suggested sheet); every other kind
    gets the plot grid (``run_plan``). ``force``: replace a suggested sheet the user edited.
    """
    try:
        if plan.kind == "eba":
            return run_eba(plan, backend, out_dir, cache_dir=cache_dir, on_cell=on_cell, on_step=on_step,
                           force=force)
        return run_plan(plan, backend, out_dir, cache_dir=cache_dir, on_cell=on_cell, on_step=on_step)
    finally:
        backend.close()
