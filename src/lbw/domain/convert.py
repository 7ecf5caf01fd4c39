"""Conversions between the short and full layouts: SD 17 <-> 26, SDXL 12 <-> 20.

Expanding places each value by block ID and fills the missing blocks (default 0, LBW's own rule).
Shrinking refuses to drop a non-zero (or symbolic) value unless ``allow_drop=True``; the result then lists
what was dropped. SD and SDXL layouts never convert into each other, nor does Flux.

Example:
    >>> w = parse_weights("DUMMY17:1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11")
    >>> convert(w, SD26).weights.vector_text()
    '1,0,1,2,0,4,5,0,7,8,0,0,0,1,0,0,0,3,4,5,6,7,8,9,10,11'
"""

from __future__ import annotations

from dataclasses import dataclass

from lbw.domain.layouts import FULL_OF_SHORT, SHORT_OF_FULL, Layout
from lbw.domain.numbers import format_number
from lbw.domain.weights import BlockWeights, Value, format_value
from lbw.errors import WeightsError


@dataclass(frozen=True)
class Conversion:
    """A converted vector plus what the conversion filled in or dropped (block ID, value)."""

    weights: BlockWeights
    source: str
    filled: tuple[tuple[str, float], ...] = ()
    dropped: tuple[tuple[str, Value], ...] = ()

    def notes(self) -> tuple[str, ...]:
        """Human-readable lines describing fills and drops (empty when nothing happened).

        Example:
            >>> convert(parse_weights("1," * 16 + "1"), SD26).notes()[0][:31]
            'filled 9 blocks absent from SD17'
        """
        lines = []
        if self.filled:
            ids = ",".join(bid for bid, _ in self.filled)
            value = format_number(self.filled[0][1])
            lines.append(f"filled {len(self.filled)} blocks absent from {self.source} with {value}: {ids}")
        if self.dropped:
            shown = ", ".join(f"{bid}={format_value(v)}" for bid, v in self.dropped)
            lines.append(f"dropped {len(self.dropped)} non-zero blocks: {shown}")
        return tuple(lines)


def expand(weights: BlockWeights, fill: float = 0.0) -> Conversion:
    """17 -> 26 or 12 -> 20 with ``fill`` in the new blocks; full layouts and Flux pass through unchanged.

    Example:
        >>> expand(parse_weights("1,1,1,1,1,1,1,1,1,1,1,1"), fill=0.5).weights.vector_text()
        '1,0.5,0.5,0.5,0.5,1,1,0.5,0.5,1,1,1,1,1,1,1,1,0.5,0.5,0.5'
    """
    full = FULL_OF_SHORT.get(weights.layout.name)
    if full is None:
        return Conversion(weights, weights.layout.name)
    return convert(weights, full, fill=fill)


def convert(
    weights: BlockWeights, target: Layout, *, fill: float = 0.0, allow_drop: bool = False
) -> Conversion:
    """Convert ``weights`` to ``target`` (same model family only), keeping the name.

    Example:
        >>> convert(parse_weights("1,0,1,1,1,1,0,0,0,0,0,1,1,1,1,1,1,1,1,1"), XL12).weights.vector_text()
        '1,0,0,0,0,1,1,1,1,1,1,1'
    """
    source = weights.layout
    if source.name == target.name:
        return Conversion(weights, source.name)
    if FULL_OF_SHORT.get(source.name) == target:
        return _widen(weights, target, float(fill))
    if SHORT_OF_FULL.get(source.name) == target:
        return _narrow(weights, target, allow_drop)
    raise WeightsError(
        f"cannot convert {source.name} to {target.name}: only SD17<->SD26 and XL12<->XL20 convert "
        "(the block IDs of other pairs mean different model parts)",
        where=weights.name,
    )


def _widen(weights: BlockWeights, target: Layout, fill: float) -> Conversion:
    values: list[Value] = []
    filled: list[tuple[str, float]] = []
    for block_id in target.ids:
        if block_id in weights.layout:
            values.append(weights[block_id])
        else:
            values.append(fill)
            filled.append((block_id, fill))
    return Conversion(
        BlockWeights(target, tuple(values), weights.name), weights.layout.name, filled=tuple(filled)
    )


def _narrow(weights: BlockWeights, target: Layout, allow_drop: bool) -> Conversion:
    dropped = tuple(
        (bid, v) for bid, v in weights.items() if bid not in target and (not isinstance(v, float) or v != 0)
    )
    if dropped and not allow_drop:
        shown = ", ".join(f"{bid}={format_value(v)}" for bid, v in dropped)
        raise WeightsError(
            f"converting to {target.name} would drop non-zero blocks {shown}; "
            "pass allow_drop (--allow-drop) to drop them",
            where=weights.name,
        )
    values = tuple(weights[bid] for bid in target.ids)
    return Conversion(BlockWeights(target, values, weights.name), weights.layout.name, dropped=dropped)
