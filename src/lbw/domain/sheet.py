"""The LoRA Block Weight Plot Helper sheet: weights, Fix flags, a step, and every output of the original.

A ``Sheet`` is immutable; its operations return a new sheet. Outputs (plot-helper.md §2):
WEIGHT, the Sub/Add/SubAdd/AddSub preset texts with their Prompt S/R lists, the Effective Block Analyzer
"Blocks", the sd-scripts block arguments and the LoRA prompt tag. A variant identical to its base (a block
already at a bound) is left out and reported in ``skipped``; variants outside 0..1 are flagged, never clamped
unless bounds are set.

Example:
    >>> sheet = Sheet.from_weights(parse_weights("S:1,0.5,1,1,1,1,1,1,1,1,1,1"), fixed={"BASE", "IN05"})
    >>> variants(sheet, "sub").prompt_sr()
    'Sub, SubIN04_0.5, SubIN07_0.5, SubIN08_0.5, SubM00_0.5, SubOUT00_0.5, SubOUT01_0.5, SubOUT02_0.5, ...'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from lbw.domain.layouts import SD17, SD26, XL12, XL20, Layout, canonical_block_id
from lbw.domain.numbers import format_number, round_weight
from lbw.domain.prompt import lora_tag
from lbw.domain.sdscripts import BlockDims, TrainingArgs, network_args
from lbw.domain.weights import BlockWeights, validate_name
from lbw.errors import LbwError, SheetError

SHEET_LAYOUTS: tuple[Layout, ...] = (SD26, SD17, XL20, XL12)
DEFAULT_STEP = 0.5

VariantKind = Literal["sub", "add"]
ListKind = Literal["sub", "add", "subadd", "addsub"]
LIST_KINDS: tuple[ListKind, ...] = ("sub", "add", "subadd", "addsub")
BASE_TAGS: dict[VariantKind, str] = {"sub": "Sub", "add": "Add"}

# The JSON keys of ``lbw sheet render --json`` (the CLI contract), in order.
OUTPUT_KEYS: tuple[str, ...] = (
    "weight",
    "sub_weights",
    "sub_prompt_sr",
    "add_weights",
    "add_prompt_sr",
    "subadd_weights",
    "subadd_prompt_sr",
    "addsub_weights",
    "addsub_prompt_sr",
    "eba_blocks",
    "sd_scripts",
    "prompt_tag",
)


@dataclass(frozen=True)
class Sheet:
    """Name, layout, one weight and one Fix flag per block, the step (AddSubValue) and optional bounds."""

    name: str
    layout: Layout
    values: tuple[float, ...]
    fixed: frozenset[str] = field(default_factory=frozenset)
    step: float = DEFAULT_STEP
    lower: float | None = None
    upper: float | None = None
    lora: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _sheet_name(self.name))
        if self.layout not in SHEET_LAYOUTS:
            raise SheetError(f"a sheet uses SD26, SD17, XL20 or XL12, not {self.layout.name}")
        if len(self.values) != len(self.layout):
            raise SheetError(f"{self.layout.name} needs {len(self.layout)} values, got {len(self.values)}")
        object.__setattr__(self, "values", tuple(_finite(v, "weight") for v in self.values))
        object.__setattr__(self, "fixed", frozenset(self._ids(self.fixed)))
        step = _finite(self.step, "step")
        if step <= 0:
            raise SheetError(f"step must be > 0, got {format_number(step)}")
        object.__setattr__(self, "step", step)
        self._check_bounds()

    def _check_bounds(self) -> None:
        lower = None if self.lower is None else _finite(self.lower, "lower bound")
        upper = None if self.upper is None else _finite(self.upper, "upper bound")
        if lower is not None and upper is not None and lower > upper:
            raise SheetError(
                f"lower bound {format_number(lower)} is above upper bound {format_number(upper)}"
            )
        outside = [
            f"{bid}={format_number(v)}"
            for bid, v in zip(self.layout.ids, self.values, strict=True)
            if (lower is not None and v < lower) or (upper is not None and v > upper)
        ]
        if outside:
            raise SheetError(f"values outside the bounds: {', '.join(outside)}")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @classmethod
    def new(cls, name: str, layout: Layout = SD26, value: float = 1.0, step: float = DEFAULT_STEP) -> Sheet:
        """A sheet with every block at ``value`` and nothing fixed.

        Example:
            >>> Sheet.new("Face").weight_line()
            'Face:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1'
        """
        return cls(name, layout, (float(value),) * len(layout), step=step)

    @classmethod
    def from_weights(
        cls,
        weights: BlockWeights,
        *,
        fixed: Iterable[str] = (),
        step: float = DEFAULT_STEP,
        name: str | None = None,
    ) -> Sheet:
        """A sheet from a weight vector (its name, or ``name``), with the given blocks fixed."""
        sheet_name = name or weights.name
        if not sheet_name:
            raise SheetError("the sheet needs a name: write the weights as NAME:v1,... or give a name")
        return cls(sheet_name, weights.layout, weights.numbers(), frozenset(fixed), step)

    def _ids(self, block_ids: Iterable[str]) -> list[str]:
        ids = [canonical_block_id(b) for b in block_ids]
        unknown = [b for b in ids if b not in self.layout]
        if unknown:
            raise SheetError(
                f"block {', '.join(unknown)} is not in {self.layout.name} ({','.join(self.layout.ids)})"
            )
        return ids

    @property
    def weights(self) -> BlockWeights:
        """The current weights, named after the sheet."""
        return BlockWeights(self.layout, self.values, self.name)

    def value(self, block_id: str) -> float:
        """Current weight of one block (``MID`` accepted)."""
        return self.values[self.layout.index(self._ids([block_id])[0])]

    @property
    def unfixed_ids(self) -> tuple[str, ...]:
        """Unfixed block IDs in layout order."""
        return tuple(b for b in self.layout.ids if b not in self.fixed)

    @property
    def is_done(self) -> bool:
        """True when every block is fixed: WEIGHT is final."""
        return not self.unfixed_ids

    def status(self) -> str:
        """One line: done, or how many blocks are still open.

        Example:
            >>> Sheet.new("A", XL12).status()
            'open: 12 of 12 blocks unfixed (BASE,IN04,IN05,IN07,IN08,M00,OUT00,OUT01,OUT02,OUT03,OUT04,OUT05)'
        """
        if self.is_done:
            return f"done: all {len(self.layout)} blocks are fixed; WEIGHT is final"
        open_ids = self.unfixed_ids
        return f"open: {len(open_ids)} of {len(self.layout)} blocks unfixed ({','.join(open_ids)})"

    def set_values(self, updates: dict[str, float], *, fix: bool | None = None) -> Sheet:
        """Set some blocks' weights; ``fix=True`` also fixes them, ``fix=False`` unfixes them."""
        ids = self._ids(updates)
        values = list(self.values)
        for bid, value in zip(ids, updates.values(), strict=True):
            values[self.layout.index(bid)] = _finite(value, f"weight of {bid}")
        fixed = set(self.fixed)
        if fix is True:
            fixed.update(ids)
        elif fix is False:
            fixed.difference_update(ids)
        return replace(self, values=tuple(values), fixed=frozenset(fixed))

    def fix(self, block_ids: Iterable[str]) -> Sheet:
        """Fix the given blocks (their values stay)."""
        return replace(self, fixed=self.fixed | set(self._ids(block_ids)))

    def unfix(self, block_ids: Iterable[str]) -> Sheet:
        """Unfix the given blocks."""
        return replace(self, fixed=self.fixed - set(self._ids(block_ids)))

    def set_all_unfixed(self, value: float) -> Sheet:
        """Set every unfixed block to ``value`` (fixed blocks keep theirs)."""
        return self.set_values(dict.fromkeys(self.unfixed_ids, value))

    def weight_line(self) -> str:
        """WEIGHT: ``NAME:v1,...`` in layout order."""
        return self.weights.format()

    def eba_blocks(self) -> str:
        """Effective Block Analyzer "Blocks": unfixed IDs joined by ``,`` (empty when done)."""
        return ",".join(self.unfixed_ids)


@dataclass(frozen=True)
class Variant:
    """One preset line of a Sub/Add list; ``block_id`` is None for the base line."""

    weights: BlockWeights
    block_id: str | None = None
    out_of_range: bool = False

    @property
    def name(self) -> str:
        """The preset/tag name (``Sub``, ``SubIN01_0``)."""
        return self.weights.name or ""


@dataclass(frozen=True)
class Skipped:
    """A variant left out because it equals the base (the block is at a bound)."""

    kind: VariantKind
    block_id: str
    value: float
    reason: str

    def describe(self) -> str:
        """One line for reports."""
        return f"{BASE_TAGS[self.kind]}{self.block_id}: {self.reason}; left out (it equals the base)"


@dataclass(frozen=True)
class VariantList:
    """A preset list: the base line, the variants, and what was left out."""

    entries: tuple[Variant, ...]
    skipped: tuple[Skipped, ...] = ()

    def preset_text(self) -> str:
        """LBW preset text, one line per entry (no trailing newline)."""
        return "\n".join(v.weights.format() for v in self.entries)

    def prompt_sr(self) -> str:
        """The X/Y/Z "Prompt S/R" values: the names joined by ``", "``."""
        return ", ".join(v.name for v in self.entries)

    def __add__(self, other: VariantList) -> VariantList:
        return VariantList(self.entries + other.entries, self.skipped + other.skipped)


def variants(sheet: Sheet, kind: ListKind) -> VariantList:
    """The Sub, Add, SubAdd (Sub then Add) or AddSub (Add then Sub) list of ``sheet``.

    Example:
        >>> sheet = Sheet.new("A", XL12).fix(["BASE", "IN04", "IN05", "IN07", "IN08", "M00"])
        >>> variants(sheet, "add").prompt_sr()
        'Add, AddOUT00_1.5, AddOUT01_1.5, AddOUT02_1.5, AddOUT03_1.5, AddOUT04_1.5, AddOUT05_1.5'
    """
    if kind == "subadd":
        return variants(sheet, "sub") + variants(sheet, "add")
    if kind == "addsub":
        return variants(sheet, "add") + variants(sheet, "sub")
    if kind not in BASE_TAGS:
        raise SheetError(f"unknown list {kind!r}; expected one of {', '.join(LIST_KINDS)}")
    tag = BASE_TAGS[kind]
    sign = -1 if kind == "sub" else 1
    entries = [Variant(sheet.weights.with_name(tag))]
    skipped: list[Skipped] = []
    for block_id in sheet.unfixed_ids:
        old = sheet.value(block_id)
        new = _bounded(round_weight(old + sign * sheet.step), sheet.lower, sheet.upper)
        if new == old:
            skipped.append(Skipped(kind, block_id, old, _bound_reason(sheet, kind)))
            continue
        name = f"{tag}{block_id}_{format_number(new)}"
        weights = BlockWeights(sheet.layout, sheet.values, name).with_value(block_id, new)
        entries.append(Variant(weights, block_id, out_of_range=not 0 <= new <= 1))
    return VariantList(tuple(entries), tuple(skipped))


@dataclass(frozen=True)
class SheetOutputs:
    """Every output of a sheet; ``as_dict()`` gives the ``--json`` object."""

    weight: str
    lists: dict[ListKind, VariantList]
    eba_blocks: str
    sd_scripts: TrainingArgs
    prompt_tag: str
    add_prompt_tag: str

    def as_dict(self) -> dict[str, str]:
        """The 12 outputs keyed exactly as ``OUTPUT_KEYS``."""
        result = {"weight": self.weight}
        for kind in LIST_KINDS:
            result[f"{kind}_weights"] = self.lists[kind].preset_text()
            result[f"{kind}_prompt_sr"] = self.lists[kind].prompt_sr()
        result.update(
            eba_blocks=self.eba_blocks, sd_scripts=self.sd_scripts.text(), prompt_tag=self.prompt_tag
        )
        return result

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Variants left out of the Sub and Add lists."""
        return self.lists["sub"].skipped + self.lists["add"].skipped

    @property
    def out_of_range(self) -> tuple[Variant, ...]:
        """Variants whose changed block is below 0 or above 1 (allowed by LBW, worth a look)."""
        return tuple(v for kind in ("sub", "add") for v in self.lists[kind].entries if v.out_of_range)


def sheet_outputs(sheet: Sheet, *, legacy_tag: bool = False, dims: BlockDims | None = None) -> SheetOutputs:
    """Compute every output of ``sheet``; the prompt tags use ``sheet.lora`` (default: the sheet name).

    ``dims`` adds ``block_dims``/``block_alphas`` (and the conv forms) to the sd-scripts arguments.

    Example:
        >>> sheet_outputs(Sheet.new("A", XL12)).prompt_tag
        '<lora:A:1:lbw=Sub>'
    """
    lists: dict[ListKind, VariantList] = {kind: variants(sheet, kind) for kind in LIST_KINDS}
    lora = sheet.lora or sheet.name
    return SheetOutputs(
        weight=sheet.weight_line(),
        lists=lists,
        eba_blocks=sheet.eba_blocks(),
        sd_scripts=network_args(sheet.weights, dims),
        prompt_tag=lora_tag(lora, BASE_TAGS["sub"], legacy=legacy_tag),
        add_prompt_tag=lora_tag(lora, BASE_TAGS["add"], legacy=legacy_tag),
    )


def _bounded(value: float, lower: float | None, upper: float | None) -> float:
    if lower is not None:
        value = max(value, lower)
    if upper is not None:
        value = min(value, upper)
    return value


def _bound_reason(sheet: Sheet, kind: VariantKind) -> str:
    word, bound = ("lower", sheet.lower) if kind == "sub" else ("upper", sheet.upper)
    return f"already at the {word} bound {format_number(bound or 0.0)}"


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SheetError(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SheetError(f"{what} must be a finite number, got {value!r:.40}")
    return round_weight(number)


def _sheet_name(name: str) -> str:
    try:
        return validate_name(name, what="sheet name")
    except LbwError as error:
        raise SheetError(error.message) from None
