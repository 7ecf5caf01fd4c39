"""Block lists and vector helpers for plots: LBW's EBA "Blocks" field and layout expansion.

Example:
    >>> parse_block_list("IN01,IN04-IN05,M00")
    ('IN01', 'IN04', 'IN05', 'M00')
    >>> parse_block_list("17ALL")[:3]
    ('BASE', 'IN01', 'IN02')
    >>> expand_to_full("SD17", (1.0,) * 17)[:3]
    (1.0, 0.0, 1.0)
"""

from __future__ import annotations

from lbw.domain.layouts import FULL_OF_SHORT, LAYOUTS, SD26, canonical_block_id
from lbw.errors import RenderError

_ALL_KEYWORDS = {"12ALL": "XL12", "17ALL": "SD17", "20ALL": "XL20", "26ALL": "SD26"}


def parse_block_list(text: str) -> tuple[str, ...]:
    """Parse LBW's Blocks field: IDs, ``A-B`` ranges over the 26 IDs, spaces or commas, leading ``NOT``.

    ``12ALL``/``17ALL``/``20ALL``/``26ALL`` expand to that layout's IDs. ``MID`` is read as ``M00``.
    Raises RenderError naming the bad token.
    """
    stripped = text.strip()
    if stripped.upper() in _ALL_KEYWORDS:
        return LAYOUTS[_ALL_KEYWORDS[stripped.upper()]].ids
    tokens = [t for t in stripped.replace(",", " ").split() if t]
    if not tokens:
        raise RenderError("the block list is empty")
    invert = tokens[0].upper() == "NOT"
    if invert:
        tokens = tokens[1:]
    chosen: list[str] = []
    for position, token in enumerate(tokens):
        for block in _expand_token(token, position):
            if block not in chosen:
                chosen.append(block)
    if invert:
        return tuple(b for b in SD26.ids if b not in chosen)
    return tuple(b for b in SD26.ids if b in chosen)


def _expand_token(token: str, position: int) -> list[str]:
    if "-" in token:
        start_text, _, stop_text = token.partition("-")
        start, stop = _block(start_text, position), _block(stop_text, position)
        lo, hi = SD26.ids.index(start), SD26.ids.index(stop)
        if lo > hi:
            raise RenderError(f"block range {token!r} runs backwards", position=position)
        return list(SD26.ids[lo : hi + 1])
    return [_block(token, position)]


def _block(text: str, position: int) -> str:
    block = canonical_block_id(text)
    if block not in SD26.ids:
        raise RenderError(
            f"unknown block {text!r}; expected BASE, IN00..IN11, M00 or OUT00..OUT11", position=position
        )
    return block


def expand_to_full(layout: str, values: tuple[float, ...]) -> tuple[float, ...]:
    """A 17/12 vector zero-filled to 26/20 by block ID (LBW's rule); full layouts are returned unchanged."""
    short = LAYOUTS[layout]
    full = FULL_OF_SHORT.get(layout)
    if full is None:
        return tuple(values)
    by_id = dict(zip(short.ids, values, strict=True))
    return tuple(by_id.get(block, 0.0) for block in full.ids)


def weight_of(layout: str, values: tuple[float, ...], block: str) -> float:
    """The ratio of ``block`` (a 26/20-layout ID) under LBW's fill rule: absent from a short layout -> 0."""
    ids = LAYOUTS[layout].ids
    return values[ids.index(block)] if block in ids else 0.0


def format_value(value: float) -> str:
    """Shortest decimal text after rounding to 6 decimals (``1``, ``0.5``, ``-0.25``)."""
    rounded = round(float(value), 6)
    if rounded == int(rounded):
        return str(int(rounded))
    return repr(rounded)
