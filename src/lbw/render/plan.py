"""Plot plans: what to render (cells x seeds x an optional second axis) and with which settings.

A plan is plain data. It is saved as JSON next to its outputs (``plan.json``) and can be loaded and re-run;
the content cache makes a re-run render only the jobs whose inputs changed.

Example:
    >>> cells = (Cell("ALL", (1.0,) * 17), Cell("NONE", (0.0,) * 17))
    >>> settings = Settings(prompt="1girl", seeds=(1, 2))
    >>> plan = Plan(kind="presets", layout="SD17", cells=cells, settings=settings)
    >>> len(plan.jobs())
    4
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lbw.domain.layouts import LAYOUTS, Layout
from lbw.errors import RenderError
from lbw.files.atomic import write_text_atomic
from lbw.render.samplers import resolve_sampler

PLAN_FORMAT = 1
PLAN_KINDS = ("sub", "add", "subadd", "addsub", "eba", "presets", "custom")
AXIS_KINDS = ("strength", "checkpoint")


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
    if settings.steps < 1 or settings.width < 8 or settings.height < 8:
        raise RenderError("steps must be >= 1 and width/height >= 8")
    if settings.width % 8 or settings.height % 8:
        raise RenderError(f"width and height must be multiples of 8, got {settings.width}x{settings.height}")
    if settings.clip_skip < 1:
        raise RenderError(f"clip skip counts from 1 (the last layer), got {settings.clip_skip}")
    resolve_sampler(settings.sampler, settings.scheduler)
    if plan.eba is not None:
        if plan.eba.threshold < 0:
            raise RenderError(f"the analyzer threshold must be >= 0, got {plan.eba.threshold}")
        if plan.eba.diff_color not in ("black", "white"):
            raise RenderError(f"diff colour must be black or white, got {plan.eba.diff_color!r}")
    if plan.axis is not None:
        if plan.axis.kind not in AXIS_KINDS:
            raise RenderError(f"unknown axis {plan.axis.kind!r}; expected one of {', '.join(AXIS_KINDS)}")
        if not plan.axis.values:
            raise RenderError(f"the {plan.axis.kind} axis has no values")
    if sum(1 for lora in plan.loras if lora.tuned) > 1:
        raise RenderError("only one LoRA of a plan can be tuned (the one the cells' weights apply to)")


# ---------------------------------------------------------------------------------------------- JSON


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data, with a format marker."""
    data = asdict(plan)
    return {"lbw_plan": PLAN_FORMAT, **data}


def plan_to_json(plan: Plan) -> str:
    """Pretty JSON text of the plan (stable key order)."""
    return json.dumps(plan_to_dict(plan), indent=2, ensure_ascii=False) + "\n"


def plan_from_dict(data: dict[str, Any], *, where: str | None = None) -> Plan:
    """Rebuild a plan from ``plan_to_dict`` output; raises RenderError naming the bad field."""
    if not isinstance(data, dict) or data.get("lbw_plan") != PLAN_FORMAT:
        raise RenderError(f'not an lbw plan (expected "lbw_plan": {PLAN_FORMAT})', where=where)
    try:
        settings = dict(data.get("settings") or {})
        settings["seeds"] = tuple(int(s) for s in settings.get("seeds", (1,)))
        loras = tuple(
            LoraSpec(**{**lora, "weights": None if lora.get("weights") is None else _floats(lora["weights"])})
            for lora in data.get("loras", ())
        )
        cells = tuple(Cell(str(c["label"]), _floats(c["values"]), c.get("block")) for c in data["cells"])
        axis = data.get("axis")
        eba = data.get("eba")
        return Plan(
            kind=str(data["kind"]),
            layout=str(data["layout"]),
            cells=cells,
            settings=Settings(**settings),
            loras=loras,
            model=data.get("model"),
            axis=Axis(str(axis["kind"]), tuple(axis["values"])) if axis else None,
            eba=EbaSpec(**{**eba, "blocks": tuple(eba.get("blocks", ()))}) if eba else None,
            name=str(data.get("name", "plot")),
        )
    except RenderError as error:
        raise RenderError(error.message, where=where, position=error.position) from None
    except (KeyError, TypeError, ValueError) as error:
        raise RenderError(f"malformed plan field: {error}", where=where) from None


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan as JSON (atomically) and return the path."""
    path = Path(path)
    write_text_atomic(path, plan_to_json(plan))
    return path


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON file written by ``save_plan``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RenderError("plan file not found", where=str(path)) from None
    except UnicodeDecodeError:
        raise RenderError("not a UTF-8 JSON plan file", where=str(path)) from None
    return plan_from_json(text, where=str(path))


def plan_from_json(text: str, *, where: str | None = None) -> Plan:
    """Rebuild a plan from ``plan_to_json`` text; RenderError (naming ``where``) on bad JSON or fields."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RenderError(f"invalid plan JSON: {error}", where=where) from None
    return plan_from_dict(data, where=where)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
