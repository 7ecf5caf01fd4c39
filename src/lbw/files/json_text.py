"""Parse JSON that came from a file or a metadata value, and describe any part of it in a short printable line.

``json.loads`` alone lets hostile but valid JSON through as crashes or as values nothing downstream can use:
deep nesting raises RecursionError, an integer longer than Python's digit limit (4300 by default) raises a bare
ValueError, a repeated key silently keeps the last value, and a ``\\ud800`` escape yields a str with an unpaired
UTF-16 surrogate that cannot be printed or written as UTF-8. ``load_json`` turns each into one ``LbwError`` line:
nesting and long integers are refused, keys repeated with different values are refused (repeats with the same
value are harmless and kept once), and any unpaired surrogate is refused. Rust's serde_json, which reads
safetensors headers for the safetensors library (and so for A1111, ComfyUI and diffusers), refuses unpaired
surrogates too, so such a file is not one those programs can load.

``preview`` and ``quoted`` render a parsed value or a string in bounded, printable form for error messages.

Example:
    >>> load_json('{"a": [1, 2]}', where="x.json", what="sidecar")
    {'a': [1, 2]}
    >>> load_json('{"a": 1, "a": 2}', where="x.json", what="sidecar")
    Traceback (most recent call last):
    lbw.errors.LoraFileError: x.json: sidecar has the key 'a' twice with different values (duplicate key)
    >>> preview([[[[1]]], "x" * 100, 10**200])
    "[[[…]], 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'…, <integer of 201 digits>]"
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from lbw.errors import LbwError, LoraFileError

# An escape that can produce a surrogate; text without one cannot hold an unpaired surrogate after parsing.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Duplicate(Exception):
    """Raised inside the object hook; turned into the caller's error class with ``where``."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def load_json(text: str, *, where: str, what: str, error: type[LbwError] = LoraFileError) -> Any:
    """Parse ``text`` (a JSON document read from ``where``; ``what`` names it in messages) or raise ``error``.

    Example:
        >>> load_json('{"a": "\\\\ud800"}', where="a.safetensors", what="header")
        Traceback (most recent call last):
        lbw.errors.LoraFileError: a.safetensors: header string '\\ud800' (under key 'a') holds an unpaired UTF-16 ...
    """
    try:
        data = json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as problem:
        at = f"line {problem.lineno} column {problem.colno}" if "\n" in text else f"character {problem.pos}"
        raise error(f"{what} is not valid JSON: {problem.msg} at {at}", where=where) from None
    except RecursionError:
        raise error(f"{what} nests lists or objects too deeply to read (hundreds of levels)", where=where) from None
    except _Duplicate as duplicate:
        raise error(f"{what} has the key {quoted(duplicate.key)} twice with different values (duplicate key)",
                    where=where) from None
    except ValueError as problem:  # an integer longer than sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        detail = f"more than {limit} digits" if "digits" in str(problem) else str(problem)[:80]
        raise error(f"{what} holds a number too long to read ({detail})", where=where) from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_surrogates(data, where, what, error)
    return data


def quoted(text: str, limit: int = 200) -> str:
    """``repr`` of at most ``limit`` characters of ``text`` (``…`` marks a cut); control characters and
    surrogates come out escaped, so the result always prints.

    Example:
        >>> quoted("ab\\ud800" + "c" * 100, limit=4)
        "'ab\\\\ud800c'…"
    """
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def preview(value: object, limit: int = 80) -> str:
    """A short printable rendering of a parsed JSON value: three levels deep, four items per container,
    strings and long integers shortened; at most ``limit`` characters.

    Example:
        >>> preview({"shape": [320, 8, 1, 1, 1, 1]})
        "{'shape': [320, 8, 1, 1, …]}"
    """
    text = _render(value, 0)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _render(value: object, depth: int) -> str:
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() < 128:
            return str(value)
        return f"<integer of {math.floor(value.bit_length() * math.log10(2)) + 1} digits>"
    if isinstance(value, str):
        return quoted(value, 40)
    if isinstance(value, list | dict):
        if depth >= 2:
            return "[…]" if isinstance(value, list) else "{…}"
        items = list(value.items())[:4] if isinstance(value, dict) else list(value[:4])
        if isinstance(value, dict):
            shown = [f"{quoted(k, 40)}: {_render(v, depth + 1)}" for k, v in items]
        else:
            shown = [_render(item, depth + 1) for item in items]
        if len(value) > 4:
            shown.append("…")
        inner = ", ".join(shown)
        return f"[{inner}]" if isinstance(value, list) else f"{{{inner}}}"
    return type(value).__name__


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = dict(pairs)
    if len(result) == len(pairs):  # no repeated key: the common case, built in C
        return result
    result = {}
    for key, value in pairs:
        if key in result and result[key] != value:
            raise _Duplicate(key)
        result[key] = value
    return result


def _refuse_surrogates(data: object, where: str, what: str, error: type[LbwError]) -> None:
    """Walk ``data`` without recursion; refuse the first key or string holding an unpaired surrogate."""
    stack: list[tuple[object, str | None]] = [(data, None)]
    while stack:
        value, parent = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                under = f" (under key {quoted(parent)})" if parent is not None else ""
                raise error(f"{what} string {quoted(value)}{under} holds an unpaired UTF-16 surrogate escape: not "
                            "valid Unicode, refused", where=where)
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    raise error(f"{what} key {quoted(key)} holds an unpaired UTF-16 surrogate escape: not valid "
                                "Unicode, refused", where=where)
                stack.append((item, key))
        elif isinstance(value, list):
            stack.extend((item, parent) for item in value)
