"""Hint rows: reference weight vectors shown beside a sheet.

Sources: LBW's default presets, the original sheet's hint rows, and the user's own preset file.

Rows are converted to the sheet's layout for display: 17 -> 26 and 12 -> 20 zero-filled as LBW does, 26 -> 17
and 20 -> 12 shown on the short layout's blocks only; rows of another model family are left out and reported.

Example:
    >>> table = hint_table(hint_rows(), SD26)
    >>> table.rows[0].name, table.rows[0].cells[:3]
    ('NONE', ('0', '0', '0'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lbw.domain.convert import convert
from lbw.domain.layouts import FULL_OF_SHORT, SHORT_OF_FULL, Layout
from lbw.domain.presets import PresetDocument, default_presets, read_presets
from lbw.domain.weights import BlockWeights, format_value
from lbw.errors import PresetError

# The hint rows readable in the original sheet's screenshots (plot-helper.md §4), LBW-26 order.
SHEET_HINTS_TEXT = """\
Char876_c:0.8,0.6,0.7,0.8,0.7,0.7,0.6,0.6,0.6,0.8,0.6,0.6,0.6,0.8,0.7,0.6,0.8,0.8,0.8,0.8,0.7,0.7,0.7,0.6,0.6,0.7
Char654_c:0.6,0.4,0.5,0.6,0.5,0.5,0.4,0.4,0.4,0.6,0.4,0.4,0.4,0.6,0.5,0.4,0.6,0.6,0.6,0.6,0.5,0.5,0.5,0.4,0.4,0.5
Char432_c:0.4,0.2,0.3,0.4,0.3,0.3,0.2,0.2,0.2,0.4,0.2,0.2,0.2,0.4,0.3,0.2,0.4,0.4,0.4,0.4,0.3,0.3,0.3,0.2,0.2,0.3
Face_c:0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1
Body_c:0,1,1,1,0,1,0,0,0,1,0,0,0,0,0,0,1,1,1,1,1,1,1,0,0,1
FaceBM5_c:1,1,1,1,1,1,0,0,0,1,0,0,0,1,1,0,1,1,1,1,1,1,1,0,0,1
Face_4:1,0.5,0.5,1,0.5,1,1,0,0.5,0.5,0,0,0,0.5,0.5,0,0.5,0.5,0.5,0,0.5,0.5,1,0,0,0.5
UpperBody_4:1,0.5,0.5,0.5,0,1,1,0.5,0.5,0,0.5,0,0,1,0.5,0,0.5,0.5,0,0,0,0,0,0,0,0
Face_k:1,0.5,0,0.5,0.5,1,1,0.5,1,1,0.5,0.5,0.5,0.5,0.5,0.5,0.5,1,1,1,1,0.5,1,0.5,0.5,0.5
Face_s:1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0
"""


@dataclass(frozen=True)
class HintRow:
    """A reference vector and where it comes from (``LBW default``, ``sheet hint`` or a file name)."""

    weights: BlockWeights
    source: str

    @property
    def name(self) -> str:
        """The row's preset name."""
        return self.weights.name or ""


@dataclass(frozen=True)
class HintCells:
    """One displayed row: name, source, the values as text on the table's layout, and a conversion note."""

    name: str
    source: str
    cells: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class HintTable:
    """Rows laid out on one layout's block IDs; rows of another family are listed in ``left_out``."""

    layout: Layout
    rows: tuple[HintCells, ...]
    left_out: tuple[str, ...] = ()


def sheet_hints() -> PresetDocument:
    """The original sheet's hint rows as a preset document."""
    return read_presets(SHEET_HINTS_TEXT, where="sheet hints")


def hint_rows(user: PresetDocument | None = None) -> tuple[HintRow, ...]:
    """LBW default presets, then the sheet's hint rows, then the user's presets (if given).

    Example:
        >>> [r.name for r in hint_rows()][-1]
        'Face_s'
    """
    rows = [HintRow(w, "LBW default") for w in default_presets().presets().values()]
    rows += [HintRow(w, "sheet hint") for w in sheet_hints().presets().values()]
    if user is not None:
        rows += [HintRow(w, user.where or "user presets") for w in user.presets().values()]
    return tuple(rows)


def select_hints(rows: Sequence[HintRow], names: Sequence[str]) -> tuple[HintRow, ...]:
    """The rows named ``names``, in that order; an unknown name is a PresetError.

    Example:
        >>> [r.name for r in select_hints(hint_rows(), ["Face_c", "ALL"])]
        ['Face_c', 'ALL']
    """
    by_name = {r.name: r for r in rows}  # a later source (user file) wins, as in LBW
    missing = [n for n in names if n not in by_name]
    if missing:
        raise PresetError(f"unknown hint row {', '.join(map(repr, missing))}; `lbw hints` lists them")
    return tuple(by_name[n] for n in names)


def hint_table(rows: Sequence[HintRow], layout: Layout) -> HintTable:
    """Lay ``rows`` out on ``layout`` for side-by-side display with a sheet of that layout."""
    cells: list[HintCells] = []
    left_out: list[str] = []
    for row in rows:
        shown = _on_layout(row.weights, layout)
        if shown is None:
            left_out.append(f"{row.name} ({row.weights.layout.name})")
            continue
        weights, note = shown
        cells.append(HintCells(row.name, row.source, tuple(format_value(v) for v in weights.values), note))
    return HintTable(layout, tuple(cells), tuple(left_out))


def _on_layout(weights: BlockWeights, layout: Layout) -> tuple[BlockWeights, str] | None:
    source = weights.layout
    if source == layout:
        return weights, ""
    if FULL_OF_SHORT.get(source.name) == layout:
        return convert(weights, layout).weights, f"{source.name}, 0 in the other blocks (LBW's fill)"
    if SHORT_OF_FULL.get(source.name) == layout:
        return convert(
            weights, layout, allow_drop=True
        ).weights, f"{source.name}, shown on {layout.name} blocks"
    return None
