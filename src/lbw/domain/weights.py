"""Block weight vectors: parse, look up, format, resolve R/U/X.

A ``BlockWeights`` is an immutable layout + values (+ optional name). The layout follows from the number of
values (12, 17, 20, 26 or 61). LBW's special tokens stay symbolic (``Special``) until ``resolve(seed, x)``.

Example:
    >>> w = parse_weights("Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")
    >>> w.layout.name, w["M00"], w["MID"], w.format()
    ('SD17', 0.0, 0.0, 'Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1')
    >>> parse_weights("R:" + ",".join(["R"] * 12)).resolve(seed=1).is_symbolic
    False
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from lbw.domain.layouts import Layout, canonical_block_id, layout_for_length
from lbw.domain.numbers import format_number, is_number_text, parse_number, round_weight
from lbw.domain.text import is_printable, printable
from lbw.errors import WeightsError

# Characters that break a preset line, a Prompt S/R list or a prompt tag when they appear in a name.
FORBIDDEN_NAME_CHARS = "#,:<>=\n\r\t"

_X_TOKEN = re.compile(r"X(?:([+-])((?:\d+(?:\.\d*)?|\.\d+)))?")

# The ranges LBW's code really uses (lbw-semantics §4.2): R in [0, 1), U in [-0.5, 1.5], 3 decimals.
U_RANGE = (-0.5, 1.5)
RANDOM_DECIMALS = 3


@dataclass(frozen=True)
class Special:
    """A symbolic LBW token: ``R`` or ``U`` (random) or ``X`` with an offset (``X+0.5``)."""

    kind: Literal["R", "U", "X"]
    offset: float = 0.0

    def __str__(self) -> str:
        if self.kind != "X" or self.offset == 0:
            return self.kind
        sign = "+" if self.offset > 0 else "-"
        return f"X{sign}{format_number(abs(self.offset))}"


Value: TypeAlias = float | Special


def format_value(value: Value) -> str:
    """Text of one weight: shortest number or the symbolic token.

    Example:
        >>> format_value(0.5), format_value(Special("X", -0.25))
        ('0.5', 'X-0.25')
    """
    return str(value) if isinstance(value, Special) else format_number(value)


def parse_value(token: str, *, index: int = 1, position: int | None = None) -> Value:
    """Parse one element of a weight vector (number, ``R``, ``U``, ``X``, ``X+d``, ``X-d``).

    ``index`` is the 1-based value number used in the error message; ``position`` the character column.

    Example:
        >>> parse_value(" 0.5 "), parse_value("X+.5")
        (0.5, Special(kind='X', offset=0.5))
    """
    text = token.strip()
    if not text:
        raise WeightsError(f"value {index} is empty", position=position)
    if text in ("R", "U"):
        return Special(text)  # type: ignore[arg-type]
    match = _X_TOKEN.fullmatch(text)
    if match:
        sign, amount = match.groups()
        offset = 0.0 if amount is None else float(amount) * (-1 if sign == "-" else 1)
        return Special("X", round_weight(offset))
    if is_number_text(text):
        return round_weight(parse_number(text, what=f"value {index}", position=position))
    hint = (
        " (LBW tokens are upper case)" if text.upper() in ("R", "U") or text.upper().startswith("X") else ""
    )
    raise WeightsError(
        f"value {index} {text!r} is not a number, R, U, X, X+d or X-d{hint}", position=position
    )


def validate_name(name: str, *, what: str = "name") -> str:
    """Strip ``name`` and refuse empty names or characters that break preset lines and prompt tags.

    Example:
        >>> validate_name(" Gobuhime ")
        'Gobuhime'
    """
    stripped = name.strip()
    if not stripped:
        raise WeightsError(f"{what} is empty")
    bad = sorted({c for c in stripped if c in FORBIDDEN_NAME_CHARS})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise WeightsError(f"{what} {stripped!r} contains {shown}; these break preset lines and prompt tags")
    if not is_printable(stripped):  # control characters, line breaks LBW splits on, bidi overrides, bad bytes
        raise WeightsError(f"{what} '{printable(stripped)}' contains control characters")
    return stripped


@dataclass(frozen=True)
class BlockWeights:
    """An immutable weight vector over a layout, optionally named (the LBW preset/tag name)."""

    layout: Layout
    values: tuple[Value, ...]
    name: str | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.layout):
            raise WeightsError(
                f"layout {self.layout.name} needs {len(self.layout)} values, got {len(self.values)}"
            )
        if self.name is not None:
            object.__setattr__(self, "name", validate_name(self.name))
        object.__setattr__(self, "values", tuple(_normalise(v) for v in self.values))

    @classmethod
    def filled(cls, layout: Layout, value: float, name: str | None = None) -> BlockWeights:
        """Every block at ``value``.

        Example:
            >>> BlockWeights.filled(SD17, 1, "ALL").format()
            'ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1'
        """
        return cls(layout, (float(value),) * len(layout), name)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, block_id: str) -> Value:
        return self.values[self.layout.index(canonical_block_id(block_id))]

    def items(self) -> Iterator[tuple[str, Value]]:
        """(block ID, value) pairs in layout order."""
        return zip(self.layout.ids, self.values, strict=True)

    @property
    def is_symbolic(self) -> bool:
        """True if any value is still R, U or X."""
        return any(isinstance(v, Special) for v in self.values)

    def numbers(self) -> tuple[float, ...]:
        """The values as floats; raises WeightsError if R/U/X are still unresolved.

        Example:
            >>> parse_weights("1,0.5,1,1,1,1,1,1,1,1,1,1").numbers()[:2]
            (1.0, 0.5)
        """
        symbolic = [bid for bid, v in self.items() if isinstance(v, Special)]
        if symbolic:
            raise WeightsError(
                f"{', '.join(symbolic)} still hold R/U/X; resolve them with a seed (and x) first",
                where=self.name,
            )
        return tuple(float(v) for v in self.values)  # type: ignore[arg-type]

    def with_value(self, block_id: str, value: Value) -> BlockWeights:
        """A copy with one block changed (``MID`` accepted for ``M00``)."""
        index = self.layout.index(canonical_block_id(block_id))
        values = list(self.values)
        values[index] = value
        return BlockWeights(self.layout, tuple(values), self.name)

    def with_name(self, name: str | None) -> BlockWeights:
        """A copy with another name (``None``: a bare vector)."""
        return BlockWeights(self.layout, self.values, name)

    def resolve(self, seed: int, x: float = 1.0) -> BlockWeights:
        """Replace R/U/X with numbers drawn from ``random.Random(seed)`` in block order, X = ``x``.

        R: uniform [0, 1), U: uniform [-0.5, 1.5], both rounded to 3 decimals (LBW's code ranges).

        Example:
            >>> parse_weights("X,X+0.5,X-1,1,1,1,1,1,1,1,1,1").resolve(seed=0, x=0.5).vector_text()
            '0.5,1,-0.5,1,1,1,1,1,1,1,1,1'
        """
        rng = random.Random(seed)
        resolved: list[float] = []
        for value in self.values:
            if not isinstance(value, Special):
                resolved.append(value)
            elif value.kind == "R":
                resolved.append(round(rng.random(), RANDOM_DECIMALS))  # [0, 1)
            elif value.kind == "U":
                resolved.append(round(rng.uniform(*U_RANGE), RANDOM_DECIMALS))
            else:
                resolved.append(float(x) + value.offset)
        return BlockWeights(self.layout, tuple(resolved), self.name)

    def vector_text(self) -> str:
        """The values only, comma-joined, no spaces."""
        return ",".join(format_value(v) for v in self.values)

    def format(self) -> str:
        """``NAME:v1,...`` (or the bare vector when unnamed)."""
        vector = self.vector_text()
        return f"{self.name}:{vector}" if self.name else vector

    def __str__(self) -> str:
        return self.format()


def _normalise(value: Value) -> Value:
    if isinstance(value, Special):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WeightsError(f"weight {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise WeightsError("weight is too large to be a float") from None
    format_number(number)  # refuses inf/nan
    return round_weight(number)


def parse_weights(text: str, *, where: str | None = None) -> BlockWeights:
    """Parse ``NAME:v1,...,vN`` or a bare ``v1,...,vN``; N picks the layout (12/17/20/26/61).

    Errors name the bad value and its character column (1-based) in ``text``.

    Example:
        >>> parse_weights("DUMMY17:1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11")["OUT11"]
        11.0
    """
    name: str | None = None
    body_start = 0
    if ":" in text:
        head, _, _ = text.partition(":")
        try:
            name = validate_name(head, what="preset name")
        except WeightsError as error:
            raise WeightsError(error.message, where=where, position=1) from None
        body_start = len(head) + 1
    tokens = _split_tokens(text, body_start)
    if len(tokens) == 1 and not tokens[0][0].strip():
        raise WeightsError("no values after the name" if name else "no values", where=where)
    values = []
    for index, (token, column) in enumerate(tokens, start=1):
        try:
            values.append(parse_value(token, index=index, position=column))
        except WeightsError as error:
            raise WeightsError(error.message, where=where, position=error.position) from None
    try:
        layout = layout_for_length(len(values))
    except WeightsError as error:
        raise WeightsError(error.message, where=where, position=tokens[-1][1]) from None
    return BlockWeights(layout, tuple(values), name)


def _split_tokens(text: str, start: int) -> list[tuple[str, int]]:
    """Comma-split ``text[start:]`` into (token, 1-based column of its first non-space char)."""
    tokens: list[tuple[str, int]] = []
    begin = start
    for piece in text[start:].split(","):
        leading = len(piece) - len(piece.lstrip())
        tokens.append((piece, begin + leading + 1))
        begin += len(piece) + 1
    return tokens


def weights_from_numbers(layout: Layout, values: Sequence[float], name: str | None = None) -> BlockWeights:
    """Build numeric weights, checking the count against ``layout``.

    Example:
        >>> weights_from_numbers(XL12, [1] * 12).vector_text()
        '1,1,1,1,1,1,1,1,1,1,1,1'
    """
    return BlockWeights(layout, tuple(float(v) for v in values), name)
