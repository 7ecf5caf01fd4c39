"""Exact, shortest decimal text for weights, and strict number parsing.

Weights are printed after rounding to 6 decimals, in the shortest form that reads back to the same float:
``1`` (never ``1.0``), ``0.5``, ``-0.25``, ``0.3`` (never ``0.30000000000000004``), no exponent.

Example:
    >>> format_number(0.1 + 0.2)
    '0.3'
    >>> format_number(1.0), format_number(-0.0), format_number(2.5e-7)
    ('1', '0', '0')
    >>> parse_number("-.5")
    -0.5
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from lbw.errors import WeightsError

DECIMALS = 6

# What LBW's float() accepts for a weight, minus inf/nan/underscores:
# sign, digits, optional fraction and exponent.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def round_weight(value: float) -> float:
    """Round to 6 decimals (the precision lbw prints), turning ``-0.0`` into ``0.0``.

    Example:
        >>> round_weight(0.7 - 0.1)
        0.6
    """
    rounded = round(float(value), DECIMALS)
    return 0.0 if rounded == 0 else rounded


def format_number(value: float) -> str:
    """Shortest decimal text of ``value`` rounded to 6 decimals; refuses inf and nan.

    Example:
        >>> format_number(0.25), format_number(3.0), format_number(1e20)
        ('0.25', '3', '100000000000000000000')
    """
    if not math.isfinite(value):
        raise WeightsError(f"weight {value!r} is not a finite number")
    text = repr(round_weight(value))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def is_number_text(text: str) -> bool:
    """True if ``text`` is a plain decimal number (``1``, ``-0.5``, ``.25``, ``1e-3``).

    Example:
        >>> is_number_text("0.5"), is_number_text("nan"), is_number_text("1_0")
        (True, False, False)
    """
    return _NUMBER.fullmatch(text) is not None


def parse_number(text: str, *, what: str = "value", position: int | None = None) -> float:
    """Parse a plain decimal number; raises WeightsError naming ``what`` and ``position`` otherwise.

    Example:
        >>> parse_number("0.25")
        0.25
    """
    stripped = text.strip()
    if not is_number_text(stripped):
        raise WeightsError(f"{what} {stripped!r} is not a number", position=position)
    value = float(stripped)
    if not math.isfinite(value):
        raise WeightsError(f"{what} {stripped!r} is too large", position=position)
    return value
