"""Plot plans: what to render (cells x seeds x an optional second axis) and with which settings.

A plan is plain data. It is saved as JSON next to its outputs (``plan.json``) and can be loaded and re-run;
the content cache makes a re-run render only the jobs whose inputs changed.

A plan read from a file (or from a grid PNG someone sent) is checked before anything runs: at most
``MAX_PLAN_BYTES`` of JSON, nested at most ``MAX_JSON_DEPTH`` deep, every field of the expected type, numbers
finite and in range (seeds ``0..2**32-1``, steps ``1..MAX_STEPS``, width/height ``8..MAX_SIDE``...); anything else
is a one-line RenderError naming the file and the field.

Example:
    >>> cells = (Cell("ALL", (1.0,) * 17), Cell("NONE", (0.0,) * 17))
    >>> settings = Settings(prompt="1girl", seeds=(1, 2))
    >>> plan = Plan(kind="presets", layout="SD17", cells=cells, settings=settings)
    >>> len(plan.jobs())
    4
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lbw.domain.layouts import LAYOUTS, Layout
from lbw.domain.text import json_text
from lbw.errors import RenderError
from lbw.files.atomic import write_text_atomic
from lbw.render.backends import BACKEND_NAMES
from lbw.render.samplers import resolve_sampler

PLAN_FORMAT = 1
PLAN_KINDS = ("sub", "add", "subadd", "addsub", "eba", "presets", "custom")
AXIS_KINDS = ("strength", "checkpoint")

# Limits for plans read from files (a real plan is a few KB and a few levels deep).
MAX_PLAN_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 16
MAX_NUMBER_DIGITS = 32
MAX_SEED = 2**32 - 1  # what every backend accepts (A1111 and LBW draw seeds below 2**32)
MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_CFG = 100.0
MAX_CLIP_SKIP = 24
MAX_THRESHOLD = 255  # 8-bit differences: above 255 nothing can count
MAX_URL = 2048
MAX_SERVERS = 64  # servers in one pool (``--url A,B,...``)
A1111_MODES = ("presets", "inline", "xyz")


@dataclass(frozen=True)
class Settings:
    """Generation settings shared by every cell. ``clip_skip`` uses the web UI convention (1 = last layer)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "Euler"
    scheduler: str | None = None
    width: int = 512
    height: int = 512
    clip_skip: int = 1
    seeds: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class LoraSpec:
    """The cells' weights apply to the tuned LoRA; others use ``weights`` (None: all 1).

    ``path`` is a local file (diffusers backend, hashing, Inspire conversion); ``name`` is the name a web UI
    knows it by (defaults to the file stem).
    """

    path: str | None = None
    name: str = ""
    strength: float = 1.0
    te_strength: float | None = None
    tuned: bool = True
    weights: tuple[float, ...] | None = None

    @property
    def text_strength(self) -> float:
        """The text-encoder multiplier (the UNet strength unless set apart)."""
        return self.strength if self.te_strength is None else self.te_strength


@dataclass(frozen=True)
class Cell:
    """A label and a full block-weight vector in the plan's layout; ``block``: the block varied, if any."""

    label: str
    values: tuple[float, ...]
    block: str | None = None


@dataclass(frozen=True)
class Axis:
    """The optional second axis: LoRA strength multipliers or checkpoints."""

    kind: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class EbaSpec:
    """Effective Block Analyzer parameters.

    LBW's Range ``probe,base``, Blocks, threshold, diff colour and "change X-Y" (``transpose``), plus lbw's
    region of interest (``roi``: ``x0,y0,x1,y1`` in pixels or fractions) and classification thresholds, so a
    saved plan re-runs the same analysis.
    """

    probe: float = 0.5
    base: float = 1.0
    blocks: tuple[str, ...] = ()
    threshold: int = 20
    diff_color: str = "black"
    transpose: bool = False
    roi: str | None = None
    important: float = 5.0
    unneeded: float = 1.0


@dataclass(frozen=True)
class BackendSpec:
    """The backend a plan was rendered with, so that re-running the plan (or its grid PNG) repeats it: the
    backend's name, the server URL of the HTTP backends (``public_url``: never a user, password, query or
    fragment) and the a1111 mode."""

    name: str = "diffusers"
    url: str | None = None
    mode: str | None = None


def public_url(url: str) -> str:
    """``url`` reduced to scheme, host, port and path: what a plan may record (no credentials, no tokens).

    Example:
        >>> public_url("http://me:secret@127.0.0.1:7860/sd/?token=abc#x")
        'http://127.0.0.1:7860/sd/'
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise RenderError(f"server URL {_short(url)}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RenderError(f"server URL {_short(url)}: expected http://HOST:PORT or https://HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"


def server_urls(text: str) -> tuple[str, ...]:
    """The server URLs of a ``--url`` value: one URL, or a pool of several separated by commas.

    Each must be an ``http(s)`` URL (``public_url`` checks it); empty entries and a server named twice are refused.

    Example:
        >>> server_urls("http://10.0.0.2:7860, http://10.0.0.3:7860")
        ('http://10.0.0.2:7860', 'http://10.0.0.3:7860')
    """
    urls = tuple(part.strip() for part in text.split(","))
    if any(not url for url in urls):
        raise RenderError(f"server URL list {_short(text)}: an empty entry (separate several servers with commas)")
    if len(urls) > MAX_SERVERS:
        raise RenderError(f"server URL list: {len(urls)} servers, at most {MAX_SERVERS}")
    seen: dict[str, str] = {}
    for url in urls:
        if len(url) > MAX_URL:
            raise RenderError(f"server URL {_short(url)}: longer than {MAX_URL} characters")
        public = public_url(url)
        if public in seen:
            raise RenderError(f"server URL list: {_short(public)} is named twice")
        seen[public] = url
    return urls


def public_urls(text: str) -> str:
    """``public_url`` of every server of a ``--url`` value, joined by commas: what a plan records.

    Example:
        >>> public_urls("http://me:pw@10.0.0.2:7860,http://10.0.0.3:7860/?token=1")
        'http://10.0.0.2:7860,http://10.0.0.3:7860/'
    """
    return ",".join(public_url(url) for url in server_urls(text))


@dataclass(frozen=True)
class Job:
    """One image to render: a cell at a seed (and an axis value)."""

    cell_index: int
    cell: Cell
    seed: int
    axis_value: Any = None


@dataclass(frozen=True)
class Plan:
    """Cells x seeds x optional axis, with settings, model, LoRAs and (for ``eba``) analyzer parameters."""

    kind: str
    layout: str
    cells: tuple[Cell, ...]
    settings: Settings = field(default_factory=Settings)
    loras: tuple[LoraSpec, ...] = ()
    model: str | None = None
    axis: Axis | None = None
    eba: EbaSpec | None = None
    name: str = "plot"
    backend: BackendSpec | None = None

    def __post_init__(self) -> None:
        validate_plan(self)

    @property
    def layout_obj(self) -> Layout:
        """The block layout of the cells' vectors."""
        return LAYOUTS[self.layout]

    def jobs(self) -> list[Job]:
        """Every (cell, seed, axis value), axis outermost, then cells, then seeds.

        Example: 2 cells x 2 seeds -> 4 jobs.
        """
        axis_values = self.axis.values if self.axis else (None,)
        return [
            Job(index, cell, seed, value)
            for value in axis_values
            for index, cell in enumerate(self.cells)
            for seed in self.settings.seeds
        ]

    def with_settings(self, **changes: Any) -> Plan:
        """A copy with some settings replaced (``plan.with_settings(steps=4)``)."""
        return replace(self, settings=replace(self.settings, **changes))


EMPTY_PROMPT = ("the prompt is empty: a LoRA usually needs its trigger words to show any effect; give one "
                "(--prompt) or pass --allow-empty-prompt")


def require_prompt(prompt: str, allow_empty: bool = False) -> None:
    """Refuse an empty (or blank) prompt unless ``allow_empty``: without its trigger a LoRA often changes nothing,
    and an analyzer run would then call every block unneeded."""
    if not prompt.strip() and not allow_empty:
        raise RenderError(EMPTY_PROMPT)


def validate_plan(plan: Plan) -> None:
    """Raise RenderError naming the first inconsistency of ``plan``."""
    if plan.kind not in PLAN_KINDS:
        raise RenderError(f"unknown plan kind {plan.kind!r}; expected one of {', '.join(PLAN_KINDS)}")
    if plan.layout not in LAYOUTS:
        raise RenderError(f"unknown layout {plan.layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not plan.cells:
        raise RenderError("a plan needs at least one cell")
    size = len(LAYOUTS[plan.layout])
    for position, cell in enumerate(plan.cells):
        if len(cell.values) != size:
            raise RenderError(
                f"cell {cell.label!r} has {len(cell.values)} values; layout {plan.layout} needs {size}",
                position=position,
            )
    settings = plan.settings
    if not settings.seeds:
        raise RenderError("a plan needs at least one seed")
    for seed in settings.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise RenderError(f"seed {_short(seed)} is not an integer from 0 to {MAX_SEED}")
    for name, value, low, high in (
        ("steps", settings.steps, 1, MAX_STEPS),
        ("width", settings.width, 8, MAX_SIDE),
        ("height", settings.height, 8, MAX_SIDE),
        ("clip skip", settings.clip_skip, 1, MAX_CLIP_SKIP),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RenderError(f"{name} must be an integer, got {_short(value)}")
        if name == "clip skip" and value < 1:
            raise RenderError(f"clip skip counts from 1 (the last layer), got {value}")
        if name in ("width", "height") and value < 8:
            raise RenderError("steps must be >= 1 and width/height >= 8")
        if not low <= value <= high:
            raise RenderError(f"{name} must be from {low} to {high}, got {_short(value)}")
    if settings.width % 8 or settings.height % 8:
        raise RenderError(f"width and height must be multiples of 8, got {settings.width}x{settings.height}")
    _check_number("cfg", settings.cfg, 0.0, MAX_CFG)
    for position, cell in enumerate(plan.cells):
        for value in cell.values:
            _check_number(f"cell {cell.label!r} value", value, position=position)
    for lora in plan.loras:
        _check_number(f"LoRA {lora.name!r} strength", lora.strength)
        if lora.te_strength is not None:
            _check_number(f"LoRA {lora.name!r} text-encoder strength", lora.te_strength)
        for value in lora.weights or ():
            _check_number(f"LoRA {lora.name!r} weight", value)
    resolve_sampler(settings.sampler, settings.scheduler)
    if plan.eba is not None:
        if plan.eba.threshold < 0:
            raise RenderError(f"the analyzer threshold must be >= 0, got {plan.eba.threshold}")
        if plan.eba.threshold > MAX_THRESHOLD:
            raise RenderError(f"the analyzer threshold must be <= {MAX_THRESHOLD}, got {_short(plan.eba.threshold)}")
        for name in ("probe", "base", "important", "unneeded"):
            _check_number(f"analyzer {name}", getattr(plan.eba, name))
        if plan.eba.diff_color not in ("black", "white"):
            raise RenderError(f"diff colour must be black or white, got {plan.eba.diff_color!r}")
    if plan.axis is not None:
        if plan.axis.kind not in AXIS_KINDS:
            raise RenderError(f"unknown axis {plan.axis.kind!r}; expected one of {', '.join(AXIS_KINDS)}")
        if not plan.axis.values:
            raise RenderError(f"the {plan.axis.kind} axis has no values")
        if plan.axis.kind == "strength":
            for value in plan.axis.values:
                _check_number("strength axis value", value)
    if sum(1 for lora in plan.loras if lora.tuned) > 1:
        raise RenderError("only one LoRA of a plan can be tuned (the one the cells' weights apply to)")
    if plan.backend is not None:
        _check_backend(plan.backend)


def _check_backend(backend: BackendSpec) -> None:
    if backend.name not in BACKEND_NAMES:
        raise RenderError(f"unknown backend {_short(backend.name)}; expected one of {', '.join(BACKEND_NAMES)}")
    if backend.url is not None:
        if backend.name == "diffusers":
            raise RenderError("the diffusers backend takes no server URL")
        if len(backend.url) > MAX_URL * MAX_SERVERS or public_urls(backend.url) != backend.url:
            raise RenderError(f"backend URL {_short(backend.url)}: expected http(s)://HOST:PORT[/PATH] without "
                              "credentials, query or fragment")
    if backend.mode is not None and (backend.name != "a1111" or backend.mode not in A1111_MODES):
        raise RenderError(f"backend mode {_short(backend.mode)}: only a1111 has modes ({', '.join(A1111_MODES)})")


# ---------------------------------------------------------------------------------------------- JSON


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data, with a format marker."""
    data = asdict(plan)
    if data["backend"] is None:  # plans made before backends were recorded read the same
        del data["backend"]
    return {"lbw_plan": PLAN_FORMAT, **data}


def plan_to_json(plan: Plan) -> str:
    """Pretty JSON text of the plan (stable key order); characters a terminal acts on are ``\\u`` escapes, so
    the text is always valid UTF-8 (a path with bytes that are not UTF-8 reads back unchanged)."""
    return json_text(plan_to_dict(plan), indent=2, allow_nan=False) + "\n"


def plan_from_dict(data: dict[str, Any], *, where: str | None = None) -> Plan:
    """Rebuild a plan from ``plan_to_dict`` output; raises RenderError naming the bad field.

    Every field is type-checked (``settings.seeds[0]: expected an integer, found "1"``); unknown fields are
    refused; the plan is then validated (ranges, layout sizes, sampler).
    """
    if not isinstance(data, dict) or data.get("lbw_plan") != PLAN_FORMAT:
        raise RenderError(f'not an lbw plan (expected "lbw_plan": {PLAN_FORMAT})', where=where)
    try:
        _known(data, {"lbw_plan", *(f.name for f in fields(Plan))}, "")
        settings = _read_settings(_get(data, "settings", dict, "settings", {}))
        loras = tuple(_read_lora(item, f"loras[{i}]") for i, item in enumerate(_get(data, "loras", list, "loras", [])))
        cells = tuple(_read_cell(item, f"cells[{i}]") for i, item in enumerate(_get(data, "cells", list, "cells")))
        axis = _get(data, "axis", dict, "axis", None)
        eba = _get(data, "eba", dict, "eba", None)
        backend = _get(data, "backend", dict, "backend", None)
        return Plan(
            kind=_get(data, "kind", str, "kind"),
            layout=_get(data, "layout", str, "layout"),
            cells=cells,
            settings=settings,
            loras=loras,
            model=_get(data, "model", str, "model", None),
            axis=_read_axis(axis) if axis is not None else None,
            eba=_read_eba(eba) if eba is not None else None,
            name=_get(data, "name", str, "name", "plot"),
            backend=_read_backend(backend) if backend is not None else None,
        )
    except RenderError as error:
        raise RenderError(error.message, where=where, position=error.position) from None


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan as JSON (atomically) and return the path."""
    path = Path(path)
    write_text_atomic(path, plan_to_json(plan))
    return path


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON file written by ``save_plan`` (at most ``MAX_PLAN_BYTES``; a device or a huge file is
    refused without reading it all)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise RenderError("plan file not found", where=str(path)) from None
    except IsADirectoryError:
        raise RenderError("is a folder, expected a plan file", where=str(path)) from None
    except OSError as error:
        raise RenderError(f"cannot read: {error.strerror}", where=str(path)) from None
    if len(raw) > MAX_PLAN_BYTES:
        raise RenderError(f"larger than {MAX_PLAN_BYTES // 2**20} MiB; not an lbw plan", where=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RenderError("not a UTF-8 JSON plan file", where=str(path)) from None
    return plan_from_json(text, where=str(path))


def plan_from_json(text: str, *, where: str | None = None) -> Plan:
    """Rebuild a plan from ``plan_to_json`` text; RenderError (naming ``where``) on bad JSON or fields.

    Refused before any field is read: text over ``MAX_PLAN_BYTES``, nesting deeper than ``MAX_JSON_DEPTH``,
    ``NaN``/``Infinity``, numbers with more than ``MAX_NUMBER_DIGITS`` digits or out of float range.
    """
    if len(text) > MAX_PLAN_BYTES:
        raise RenderError(f"the plan is larger than {MAX_PLAN_BYTES // 2**20} MiB; not an lbw plan", where=where)
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_json_int, parse_float=_json_float)
    except json.JSONDecodeError as error:
        raise RenderError(f"invalid plan JSON: {error}", where=where) from None
    except RecursionError:
        raise RenderError(f"invalid plan JSON: nested deeper than {MAX_JSON_DEPTH} levels", where=where) from None
    except RenderError as error:
        raise RenderError(f"invalid plan JSON: {error.message}", where=where) from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise RenderError(f"invalid plan JSON: nested deeper than {MAX_JSON_DEPTH} levels", where=where)
    return plan_from_dict(data, where=where)


# ------------------------------------------------------------------------------------- strict reading


def _no_constant(name: str) -> Any:
    raise RenderError(f"{name} is not a JSON number")


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise RenderError(f"a number with {len(text.lstrip('-'))} digits")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > 2 * MAX_NUMBER_DIGITS:
        raise RenderError(f"a number written with {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise RenderError(f"{_short(text)} is out of range")
    return value


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON (iterative: a hostile file cannot exhaust the stack here)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)
    return deepest


_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


def _short(value: Any) -> str:
    """A bounded, printable rendering of a value for an error message."""
    try:
        text = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else type(value).__name__
    except ValueError:  # an integer too long to print
        text = type(value).__name__
    return text if len(text) <= 40 else f"{text[:37]}..."


def _get(data: dict[str, Any], key: str, kind: type, path: str, default: Any = _MISSING) -> Any:
    """``data[key]`` checked to be ``kind`` (None allowed when the default is None)."""
    if key not in data:
        if default is _MISSING:
            raise RenderError(f"missing plan field {path!r}")
        return default
    return _typed(data[key], kind, path, nullable=default is None)


def _typed(value: Any, kind: type, path: str, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise RenderError(f"plan field {path}: expected {_TYPE_NAMES[kind]}, found {_short(value)}")
    return float(value) if kind is float else value


def _known(data: dict[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = f" in {path}" if path else ""
        raise RenderError(f"unknown plan field {_short(unknown[0])}{where}")


def _items(values: Any, kind: type, path: str) -> tuple[Any, ...]:
    return tuple(_typed(v, kind, f"{path}[{i}]") for i, v in enumerate(_typed(values, list, path)))


def _read_settings(data: dict[str, Any]) -> Settings:
    _known(data, {f.name for f in fields(Settings)}, "settings")
    readers: dict[str, Callable[[Any, str], Any]] = {
        "prompt": lambda v, p: _typed(v, str, p),
        "negative_prompt": lambda v, p: _typed(v, str, p),
        "steps": lambda v, p: _typed(v, int, p),
        "cfg": lambda v, p: _typed(v, float, p),
        "sampler": lambda v, p: _typed(v, str, p),
        "scheduler": lambda v, p: _typed(v, str, p, nullable=True),
        "width": lambda v, p: _typed(v, int, p),
        "height": lambda v, p: _typed(v, int, p),
        "clip_skip": lambda v, p: _typed(v, int, p),
        "seeds": lambda v, p: _items(v, int, p),
    }
    return Settings(**{key: readers[key](value, f"settings.{key}") for key, value in data.items()})


def _read_lora(data: Any, path: str) -> LoraSpec:
    data = _typed(data, dict, path)
    _known(data, {f.name for f in fields(LoraSpec)}, path)
    weights = _get(data, "weights", list, f"{path}.weights", None)
    return LoraSpec(
        path=_get(data, "path", str, f"{path}.path", None),
        name=_get(data, "name", str, f"{path}.name", ""),
        strength=_get(data, "strength", float, f"{path}.strength", 1.0),
        te_strength=_get(data, "te_strength", float, f"{path}.te_strength", None),
        tuned=_get(data, "tuned", bool, f"{path}.tuned", True),
        weights=None if weights is None else _items(weights, float, f"{path}.weights"),
    )


def _read_cell(data: Any, path: str) -> Cell:
    data = _typed(data, dict, path)
    _known(data, {f.name for f in fields(Cell)}, path)
    return Cell(
        _get(data, "label", str, f"{path}.label"),
        _items(_get(data, "values", list, f"{path}.values"), float, f"{path}.values"),
        _get(data, "block", str, f"{path}.block", None),
    )


def _read_axis(data: dict[str, Any]) -> Axis:
    _known(data, {"kind", "values"}, "axis")
    kind = _get(data, "kind", str, "axis.kind")
    values = _items(_get(data, "values", list, "axis.values"), float if kind == "strength" else str, "axis.values")
    return Axis(kind, values)


def _read_eba(data: dict[str, Any]) -> EbaSpec:
    _known(data, {f.name for f in fields(EbaSpec)}, "eba")
    kinds: dict[str, type] = {"probe": float, "base": float, "threshold": int, "diff_color": str, "transpose": bool,
                              "important": float, "unneeded": float}
    values: dict[str, Any] = {key: _get(data, key, kind, f"eba.{key}") for key, kind in kinds.items() if key in data}
    if "roi" in data:
        values["roi"] = _get(data, "roi", str, "eba.roi", None)
    if "blocks" in data:
        values["blocks"] = _items(data["blocks"], str, "eba.blocks")
    return EbaSpec(**values)


def _read_backend(data: dict[str, Any]) -> BackendSpec:
    _known(data, {f.name for f in fields(BackendSpec)}, "backend")
    return BackendSpec(
        name=_get(data, "name", str, "backend.name"),
        url=_get(data, "url", str, "backend.url", None),
        mode=_get(data, "mode", str, "backend.mode", None),
    )


def _check_number(what: str, value: Any, low: float | None = None, high: float | None = None,
                  *, position: int | None = None) -> None:
    """``value`` must be a finite real number (in ``low..high`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RenderError(f"{what} must be a finite number, got {_short(value)}", position=position)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RenderError(f"{what} must be from {low:g} to {high:g}, got {_short(value)}", position=position)
