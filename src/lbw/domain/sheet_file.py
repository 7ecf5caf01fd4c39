"""A small, hand-editable TOML file for a sheet, so the tuning state lives across sessions.

Read with ``tomllib``; written by hand-formatting (one aligned line per block). A block may also be written
as a bare number (``IN01 = 0.5``: that weight, not fixed). ``MID`` is accepted for ``M00``.

Example:
    >>> text = sheet_to_toml(Sheet.new("Face", XL12))
    >>> sheet_from_toml(text) == Sheet.new("Face", XL12)
    True
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from lbw.domain.layouts import canonical_block_id, layout_named
from lbw.domain.numbers import format_number
from lbw.domain.sheet import Sheet
from lbw.errors import LbwError, SheetError

_TOP_KEYS = ("name", "layout", "step", "lora", "lower", "upper", "blocks")
_HEADER = """\
# lbw sheet (LoRA Block Weight Plot Helper). Edit by hand or with `lbw sheet set|fix|unfix FILE`.
# fixed = true: the block is decided and left out of the Sub/Add variants and the EBA blocks.
"""


def sheet_to_toml(sheet: Sheet) -> str:
    """The sheet as TOML text (values in shortest decimal form).

    Example:
        >>> sheet_to_toml(Sheet.new("A", XL12)).splitlines()[8]
        'BASE  = { weight = 1, fixed = false }'
    """
    lines = [
        _HEADER.rstrip("\n"),
        f"name = {json.dumps(sheet.name, ensure_ascii=False)}",
        f'layout = "{sheet.layout.name}"',
        f"step = {format_number(sheet.step)}",
        _optional(
            "lora",
            None if sheet.lora is None else json.dumps(sheet.lora, ensure_ascii=False),
            "LoRA name for the prompt tag",
        ),
        _optional("lower", _number_or_none(sheet.lower), "variants never go below this"),
        _optional("upper", _number_or_none(sheet.upper), "variants never go above this"),
        "",
        "[blocks]",
    ]
    width = max(len(b) for b in sheet.layout.ids)
    for block_id, value in zip(sheet.layout.ids, sheet.values, strict=True):
        fixed = "true" if block_id in sheet.fixed else "false"
        lines.append(f"{block_id.ljust(width)} = {{ weight = {format_number(value)}, fixed = {fixed} }}")
    return "\n".join(lines) + "\n"


def sheet_from_toml(text: str, where: str | None = None) -> Sheet:
    """Parse sheet TOML; every problem is a SheetError naming the file and the key.

    Example:
        >>> sheet_from_toml('name = "A"\\nlayout = "12"\\n[blocks]\\n' + "".join(
        ...     f"{b} = 1\\n" for b in XL12.ids)).layout.name
        'XL12'
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SheetError(f"not valid TOML: {error}", where=where) from None
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise SheetError(f"unknown key {unknown[0]!r}; expected {', '.join(_TOP_KEYS)}", where=where)
    for key in ("name", "layout", "blocks"):
        if key not in data:
            raise SheetError(f"missing key {key!r}", where=where)
    try:
        layout = layout_named(_typed(data, "layout", str, where))
        values, fixed = _read_blocks(data["blocks"], layout.ids, where)
        return Sheet(
            name=_typed(data, "name", str, where),
            layout=layout,
            values=values,
            fixed=fixed,
            step=_number(data.get("step", 0.5), "step", where),
            lower=None if "lower" not in data else _number(data["lower"], "lower", where),
            upper=None if "upper" not in data else _number(data["upper"], "upper", where),
            lora=None if "lora" not in data else _typed(data, "lora", str, where),
        )
    except SheetError as error:
        if error.where:
            raise
        raise SheetError(error.message, where=where) from None
    except LbwError as error:
        raise SheetError(error.message, where=where) from None


def _read_blocks(
    blocks: Any, ids: tuple[str, ...], where: str | None
) -> tuple[tuple[float, ...], frozenset[str]]:
    if not isinstance(blocks, dict):
        raise SheetError("'blocks' must be a table: [blocks]", where=where)
    values: dict[str, float] = {}
    fixed: set[str] = set()
    for raw_id, entry in blocks.items():
        block_id = canonical_block_id(raw_id)
        if block_id not in ids:
            raise SheetError(f"block {raw_id!r} is not in this layout ({','.join(ids)})", where=where)
        if block_id in values:
            raise SheetError(f"block {block_id} appears twice", where=where)
        key = f"blocks.{raw_id}"
        if isinstance(entry, dict):
            extra = [k for k in entry if k not in ("weight", "fixed")]
            if extra or "weight" not in entry:
                raise SheetError(f"{key} must be {{ weight = NUMBER, fixed = true|false }}", where=where)
            values[block_id] = _number(entry["weight"], f"{key}.weight", where)
            is_fixed = entry.get("fixed", False)
            if not isinstance(is_fixed, bool):
                raise SheetError(f"{key}.fixed must be true or false, got {is_fixed!r}", where=where)
            if is_fixed:
                fixed.add(block_id)
        else:
            values[block_id] = _number(entry, key, where)
    missing = [b for b in ids if b not in values]
    if missing:
        raise SheetError(f"blocks missing: {','.join(missing)}", where=where)
    return tuple(values[b] for b in ids), frozenset(fixed)


def _typed(data: dict[str, Any], key: str, kind: type, where: str | None) -> Any:
    value = data[key]
    if not isinstance(value, kind):
        raise SheetError(f"{key!r} must be a {kind.__name__}, got {value!r}", where=where)
    return value


def _number(value: Any, key: str, where: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SheetError(f"{key} must be a number, got {value!r}", where=where)
    try:
        return float(value)
    except OverflowError:
        raise SheetError(f"{key} is too large", where=where) from None


def _number_or_none(value: float | None) -> str | None:
    return None if value is None else format_number(value)


def _optional(key: str, value: str | None, comment: str) -> str:
    if value is None:
        return f"# {key} = ...  ({comment})"
    return f"{key} = {value}  # {comment}"
