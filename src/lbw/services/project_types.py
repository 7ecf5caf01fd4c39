"""The data of a project as the services hand it out: settings, views of a project, its iterations and decisions.

``ProjectSettings`` is what a project renders with (the LoRA and the others beside it, the model, the backend and
its URL, prompt, seeds, size, steps, CFG, sampler, clip skip, strengths, region of interest). It is stored as a
JSON object; ``from_dict`` refuses unknown keys and wrong types, naming the key. The views are frozen snapshots
with absolute image paths (checked to stay inside the workspace), ready for the CLI and the web pages.

Example:
    >>> settings = ProjectSettings(lora="face.safetensors", model="model/", prompt="1girl", seeds=(1, 2))
    >>> ProjectSettings.from_dict(settings.to_dict()) == settings
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lbw.domain.sheet import LIST_KINDS, Sheet
from lbw.errors import ProjectError

BACKENDS = ("diffusers", "a1111", "comfyui")
A1111_MODES = ("presets", "inline", "xyz")
MODES = LIST_KINDS  # sub, add, subadd, addsub
SOURCES = ("command", "click", "auto")
MAX_PROMPT = 20_000
MAX_NAME = 100


@dataclass(frozen=True)
class OtherLora:
    """A LoRA rendered beside the tuned one at a fixed strength (its block weights all 1)."""

    path: str
    strength: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class ProjectSettings:
    """Everything a render of the project needs besides the sheet.

    ``lora``: the tuned LoRA (a local file, or for a1111/comfyui the name the server knows; ``lora_name``
    overrides that name); ``model``: a local checkpoint (diffusers) or the server's checkpoint name; ``url``: the
    a1111/comfyui server (default 127.0.0.1:7860 / :8188); ``roi``: the analyzer's region ``x0,y0,x1,y1``.
    """

    lora: str | None = None
    lora_name: str = ""
    other_loras: tuple[OtherLora, ...] = ()
    model: str | None = None
    backend: str = "diffusers"
    url: str | None = None
    a1111_mode: str = "presets"
    prompt: str = ""
    negative: str = ""
    seeds: tuple[int, ...] = (1,)
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "Euler"
    scheduler: str | None = None
    clip_skip: int = 1
    strength: float = 1.0
    te_strength: float | None = None
    roi: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (lists for tuples)."""
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        data["other_loras"] = [asdict(o) for o in self.other_loras]
        return data

    @classmethod
    def from_dict(cls, data: Any, *, where: str | None = None) -> ProjectSettings:
        """Settings from ``to_dict`` data (keys may be missing: defaults); ProjectError naming a bad key."""
        if not isinstance(data, dict):
            raise ProjectError("settings must be an object of named values", where=where)
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ProjectError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}", where=where)
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _read_setting(key, value, where)
        return cls(**values)

    def with_changes(self, changes: dict[str, Any], *, where: str | None = None) -> ProjectSettings:
        """A copy with ``changes`` (setting name -> value) applied and type-checked."""
        return ProjectSettings.from_dict({**self.to_dict(), **changes}, where=where)


_STR = ("lora_name", "backend", "a1111_mode", "prompt", "negative", "sampler")
_OPTIONAL_STR = ("lora", "model", "url", "scheduler", "roi")
_INT = ("width", "height", "steps", "clip_skip")
_FLOAT = ("cfg", "strength")


def _read_setting(key: str, value: Any, where: str | None) -> Any:
    def bad(expected: str) -> ProjectError:
        return ProjectError(f"setting {key!r}: expected {expected}, got {_short(value)}", where=where)

    if key in _STR or (key in _OPTIONAL_STR and value is not None):
        if not isinstance(value, str):
            raise bad("text")
        if len(value) > MAX_PROMPT:
            raise bad(f"at most {MAX_PROMPT} characters")
        if "\x00" in value:
            raise bad("text without NUL characters")
        return value
    if key in _OPTIONAL_STR:
        return None
    if key in _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if key in _FLOAT or (key == "te_strength" and value is not None):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if key == "te_strength":
        return None
    if key == "seeds":
        if not isinstance(value, list | tuple) or not value:
            raise bad("a non-empty list of integers")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in value):
            raise bad("a list of integers")
        return tuple(value)
    if key == "other_loras":
        if not isinstance(value, list | tuple):
            raise bad("a list of {path, strength}")
        return tuple(_other_lora(item, where) for item in value)
    raise ProjectError(f"unknown setting {key!r}", where=where)  # pragma: no cover - checked by the caller


def _other_lora(item: Any, where: str | None) -> OtherLora:
    if isinstance(item, OtherLora):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
        raise ProjectError(f"setting 'other_loras': each entry needs a path, got {_short(item)}", where=where)
    unknown = sorted(set(item) - {"path", "strength", "name"})
    if unknown:
        raise ProjectError(f"setting 'other_loras': unknown key {unknown[0]!r}", where=where)
    strength = item.get("strength", 1.0)
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength):
        raise ProjectError(f"setting 'other_loras': strength must be a finite number, got {_short(strength)}",
                           where=where)
    name = item.get("name", "")
    if not isinstance(name, str):
        raise ProjectError(f"setting 'other_loras': name must be text, got {_short(name)}", where=where)
    return OtherLora(item["path"], float(strength), name)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


# ---------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class CellView:
    """One image of an iteration: label (``SubIN05_0``), the block it varies and that block's value, the seed,
    the image (absolute path and the path stored, relative to the workspace), its SHA-256, and Diff % against
    the iteration's base cell of the same seed (``base_label``; None for a base cell)."""

    position: int
    label: str
    block: str | None
    value: float | None
    seed: int
    image: Path
    path: str
    sha256: str
    diff_percent: float | None
    base_label: str | None


@dataclass(frozen=True)
class AnalysisBlockView:
    """One row of the analyzer's ranked table, classified with the thresholds asked for."""

    rank: int
    block: str
    diff_percent: float
    roi_diff_percent: float | None
    roi_share_percent: float | None
    category: str  # important, unneeded or unclear

    @property
    def score(self) -> float:
        """What the classification uses: the region's Diff % when a region was given, else the Diff %."""
        return self.diff_percent if self.roi_diff_percent is None else self.roi_diff_percent


@dataclass(frozen=True)
class AnalysisView:
    """An analyzer iteration's table with its classification; ``no_change`` when no block changed anything."""

    rows: tuple[AnalysisBlockView, ...]
    important: float
    unneeded: float
    region: str | None
    max_diff_percent: float

    @property
    def no_change(self) -> bool:
        """True when no block changed the image at all (max Diff % = 0): nothing to suggest."""
        return self.max_diff_percent == 0.0

    def classes(self) -> dict[str, str]:
        """Block ID -> category."""
        return {row.block: row.category for row in self.rows}


@dataclass(frozen=True)
class DecisionView:
    """A decision: ``action`` (fix, unfix, set, take, keep, mode, step, bounds, undo, analysis, sheet),
    the block and its old/new value and Fix flag (None for project-wide decisions), ``source`` (command, click,
    auto), the iteration it followed, the time; ``detail`` holds what else matters (the cell label, the mode)."""

    id: int
    action: str
    source: str
    block: str | None
    old_value: float | None
    new_value: float | None
    old_fixed: bool | None
    fixed: bool | None
    iteration: int | None
    detail: dict[str, Any]
    created: str

    def describe(self) -> str:
        """One line for the log: ``take IN05 1 -> 0 fixed (click, cell SubIN05_0)``."""
        from lbw.domain.numbers import format_number

        def number(value: float | None) -> str:
            return "-" if value is None else format_number(value)

        if self.block is not None:
            flag = {True: " fixed", False: " unfixed", None: ""}[self.fixed]
            text = f"{self.action} {self.block} {number(self.old_value)} -> {number(self.new_value)}{flag}"
        elif self.action == "settings" and isinstance(self.detail.get("changed"), dict):
            changes = [f"{key} {_detail_value(_pair(value)[0])} -> {_detail_value(_pair(value)[1])}"
                       for key, value in self.detail["changed"].items()]
            text = f"settings: {'; '.join(changes)}"
        elif "old" in self.detail or "new" in self.detail:
            text = f"{self.action} {_detail_value(self.detail.get('old'))} -> {_detail_value(self.detail.get('new'))}"
        else:
            text = self.action
        extras = [self.source]
        if "cell" in self.detail:
            extras.append(f"cell {self.detail['cell']}")
        if self.action in ("undo", "analysis") and "iteration" in self.detail:
            extras.append(f"to iteration {self.detail['iteration']}" if self.action == "undo"
                          else f"from iteration {self.detail['iteration']}")
        why = self.detail.get("why")
        reason = f": {why}" if isinstance(why, str) and why else ""  # decisions of `lbw tune` say why
        return f"{text} ({', '.join(str(e) for e in extras)}){reason}"


def _pair(value: Any) -> tuple[Any, Any]:
    return (value[0], value[1]) if isinstance(value, list) and len(value) == 2 else (None, value)


def _detail_value(value: Any) -> str:
    if isinstance(value, list) and all(v is None or isinstance(v, int | float) for v in value):
        return "..".join("-" if v is None else f"{v:g}" for v in value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class IterationSummary:
    """An iteration in a list: number, kind (sub/add/subadd/addsub/eba), cells, grid, when."""

    number: int
    kind: str
    cell_count: int
    grid: Path | None
    created: str
    finished: str | None


@dataclass(frozen=True)
class IterationView:
    """An iteration in full: the sheet it started from, its plan (JSON text), cells, grids, the decisions taken
    after it, and for an analyzer run its table (``analysis``)."""

    number: int
    kind: str
    sheet_before: Sheet
    plan_json: str
    folder: Path
    grid: Path | None
    grids: tuple[Path, ...]
    cells: tuple[CellView, ...]
    decisions: tuple[DecisionView, ...]
    created: str
    finished: str | None
    analysis: AnalysisView | None = None
    extra_files: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> IterationSummary:
        """The list entry of this iteration."""
        return IterationSummary(self.number, self.kind, len(self.cells), self.grid, self.created, self.finished)

    def cell(self, label: str, seed: int | None = None) -> CellView:
        """The first cell with this label (and seed)."""
        for cell in self.cells:
            if cell.label == label and (seed is None or cell.seed == seed):
                return cell
        raise ProjectError(f"iteration {self.number} has no cell {label!r}")


@dataclass(frozen=True)
class ProjectView:
    """A project as the pages and commands show it. ``version`` goes with every change the caller makes."""

    id: int
    name: str
    version: int
    settings: ProjectSettings
    sheet: Sheet
    mode: str
    archived: bool
    iteration_count: int
    latest: IterationSummary | None
    created: str
    updated: str
    workspace: Path

    def with_sheet(self, sheet: Sheet) -> ProjectView:
        """A copy with another sheet (for previews; nothing is stored)."""
        return replace(self, sheet=sheet)


@dataclass(frozen=True)
class LogEntry:
    """One line of ``project_log``: an iteration or a decision, oldest first."""

    created: str
    kind: str  # "iteration" or "decision"
    iteration: int | None
    text: str
    decision: DecisionView | None = None
