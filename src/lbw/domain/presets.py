"""LBW preset files (``lbwpresets.txt``): read exactly as the web UI extension does, report, add/replace, write.

How the extension (hako-mikan/sd-webui-lora-block-weight, ``scripts/lora_block_weight.py``) loads the file:

- the text is split with ``str.splitlines()`` (so ``\\r``, ``\\f``, ``\\x1c``, U+2028... also end a line);
- a line is **ignored** if it contains ``#`` anywhere, has no ``:``, or if its **whole** comma count (the name's
  commas included) is not 11, 16, 19, 25 or 60;
- otherwise it is filed under ``line.split(":", 1)[0].strip()`` with the value ``line.split(":", 1)[1]``; a later
  line with the same name replaces the value and keeps the first line's place in the tag list;
- ``lbw=NAME`` in a prompt looks ``NAME`` up exactly (case, spaces). The values are parsed only then: a value it
  cannot convert makes LBW fail for that prompt.

``read_presets`` classifies every line that way and ``problems()`` says, line by line, what LBW does with it:
errors for lines LBW ignores or cannot use, warnings for lines that load but surprise (a name with ``=``, which
the web UI's tag parser cannot pass to ``lbw=``; spaces around a name; a byte order mark before the first name;
a comment after a preset, which LBW drops with the whole line; a name given twice). An unknown preset name is an
error in lbw (LBW would run the LoRA at full strength).

Example:
    >>> doc = read_presets("# mine\\nFace:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1\\nbroken line\\n")
    >>> doc.names(), [(p.line, p.message[:16]) for p in doc.problems()]
    (('Face',), [(3, "no ':' (expected")])
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass, replace
from typing import Literal

from lbw.domain.weights import BlockWeights, parse_weights, validate_name
from lbw.errors import LbwError, PresetError, WeightsError

LineKind = Literal["preset", "broken", "comment", "blank", "invalid"]

# What LBW accepts: a whole-line comma count of n - 1 for these n.
LBW_VALUE_COUNTS = (12, 17, 20, 26, 61)
# str.splitlines() boundaries, each kept so lines are written back byte for byte.
_LINE_BREAK = re.compile("(\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029])")
_LBW_X = re.compile(r"X([+-])?([\d.]+)?")
BOM = "\ufeff"

_SD17_DEFAULTS = (
    ("NONE", "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"),
    ("ALL", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"),
    ("INS", "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0"),
    ("IND", "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0"),
    ("INALL", "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0"),
    ("MIDD", "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0"),
    ("OUTD", "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"),
    ("OUTS", "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1"),
    ("OUTALL", "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"),
    ("ALL0.5", "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"),
)
# LBW's DEF_WEIGHT_PRESET (lbw-semantics §7), FLUXALL = 61 ones.
DEFAULT_PRESETS_TEXT = (
    "".join(f"{n}:{v}\n" for n, v in _SD17_DEFAULTS) + "FLUXALL:" + ",".join(["1"] * 61) + "\n"
)


@dataclass(frozen=True)
class PresetLine:
    """One line of a preset file.

    ``kind``: ``preset`` (LBW loads and can use it), ``broken`` (LBW loads it under ``name`` but fails when a
    prompt uses it), ``invalid`` (LBW ignores it), ``comment`` (contains ``#``: ignored), ``blank``.
    ``name`` is the name LBW files it under; ``weights`` carries that name when lbw can write it back (names with
    ``=`` or ``>`` load in LBW but are kept unnamed here). ``ending`` is the line break that followed the line.
    """

    line: int
    text: str
    kind: LineKind
    weights: BlockWeights | None = None
    problem: str | None = None
    name: str | None = None
    warnings: tuple[str, ...] = ()
    ending: str = "\n"


@dataclass(frozen=True)
class Problem:
    """A finding about a preset file; ``severity`` is ``error`` (LBW ignores or cannot use the line) or
    ``warning``."""

    line: int
    message: str
    severity: Literal["error", "warning"]

    def format(self, where: str | None = None) -> str:
        """``FILE:LINE: severity: message``."""
        prefix = f"{where}:" if where else "line "
        return f"{prefix}{self.line}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class PresetDocument:
    """A preset file as lines; comments, blank lines and line breaks are kept for writing back."""

    lines: tuple[PresetLine, ...]
    where: str | None = None
    bom: bool = False

    def table(self) -> dict[str, PresetLine]:
        """LBW's table: name -> the last line filed under it (usable or not), in first-appearance order."""
        table: dict[str, PresetLine] = {}
        for line in self.lines:
            if line.kind in ("preset", "broken") and line.name is not None:
                table[line.name] = line
        return table

    def presets(self) -> dict[str, BlockWeights]:
        """Usable presets by LBW name, in the order of LBW's tag list; a later line with the same name wins (as in
        LBW, also when that later line is one LBW cannot use: then the name is not usable at all)."""
        return {
            name: line.weights
            for name, line in self.table().items()
            if line.kind == "preset" and line.weights is not None
        }

    def names(self) -> tuple[str, ...]:
        """Usable preset names, in the order LBW's tag list shows them."""
        return tuple(self.presets())

    def get(self, name: str) -> BlockWeights:
        """The preset ``name`` (exact, case-sensitive); unknown or unusable is a PresetError, never weight 1.

        Example:
            >>> default_presets().get("OUTALL").layout.name
            'SD17'
        """
        table = self.table()
        line = table.get(name)
        if line is not None and line.kind == "preset" and line.weights is not None:
            return line.weights
        source = self.where or "the presets"
        if line is not None:
            raise PresetError(f"preset {name!r} (line {line.line} of {source}) cannot be used: {line.problem}")
        presets = self.presets()
        close = difflib.get_close_matches(name, presets, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PresetError(f"unknown preset {name!r} in {source} ({len(presets)} presets){hint}")

    def problems(self) -> list[Problem]:
        """Every finding, by line: lines LBW ignores or cannot use (errors), then surprises (warnings)."""
        found: list[Problem] = []
        first_seen: dict[str, int] = {}
        first_preset = next((ln for ln in self.lines if ln.kind in ("preset", "broken")), None)
        for line in self.lines:
            if line.kind in ("invalid", "broken"):
                found.append(Problem(line.line, line.problem or "invalid line", "error"))
            elif line.kind == "comment" and not line.text.lstrip().startswith("#"):
                found.append(
                    Problem(line.line, "contains '#': LBW ignores the whole line, not only the comment", "warning")
                )
            if self.bom and line is first_preset and line.line == 1:
                found.append(Problem(line.line, _bom_warning(line.name or ""), "warning"))
            found.extend(Problem(line.line, warning, "warning") for warning in line.warnings)
            if line.kind in ("preset", "broken") and line.name is not None:
                if line.name in first_seen:
                    found.append(
                        Problem(
                            line.line, f"{line.name!r} replaces the preset of line {first_seen[line.name]}", "warning"
                        )
                    )
                first_seen.setdefault(line.name, line.line)
        return found

    def with_preset(self, weights: BlockWeights, *, replace_existing: bool = False) -> PresetDocument:
        """Add ``weights`` (it must be named) at the end, or replace the effective line of that name.

        Example:
            >>> doc = default_presets().with_preset(parse_weights("Mine:1,1,1,1,1,1,1,1,1,1,1,1"))
            >>> doc.names()[-1]
            'Mine'
        """
        if weights.name is None:
            raise PresetError("a preset needs a name: write NAME:v1,v2,...")
        new_line = PresetLine(0, weights.format(), "preset", weights, name=weights.name)
        positions = [
            i for i, ln in enumerate(self.lines) if ln.kind in ("preset", "broken") and ln.name == weights.name
        ]
        if not positions:
            lines = list(self.lines)
            if lines and not lines[-1].ending:  # the file did not end with a line break
                lines[-1] = replace(lines[-1], ending="\n")
            return replace(self, lines=(*lines, new_line))
        if not replace_existing:
            raise PresetError(
                f"preset {weights.name!r} already exists (line {self.lines[positions[-1]].line}); "
                "use replace (--replace) to overwrite it",
                where=self.where,
            )
        lines = list(self.lines)
        old = self.lines[positions[-1]]
        lines[positions[-1]] = replace(new_line, line=old.line, ending=old.ending)
        return replace(self, lines=tuple(lines))

    def text(self) -> str:
        """The file text: original lines and line breaks kept verbatim (a byte order mark too), added or replaced
        presets formatted and ended with ``\\n``."""
        return (BOM if self.bom else "") + "".join(f"{line.text}{line.ending}" for line in self.lines)


def read_presets(text: str, where: str | None = None) -> PresetDocument:
    """Parse preset-file text as LBW loads it; nothing is skipped silently: see ``problems()``.

    Give the text as read (``newline=""`` keeps ``\\r\\n``, which LBW treats as one line break like ``\\n``).

    Example:
        >>> read_presets("A:1,1,1,1,1,1,1,1,1,1,1,1\\n").get("A").layout.name
        'XL12'
    """
    bom = text.startswith(BOM)
    parts = _LINE_BREAK.split(text[1:] if bom else text)
    texts, endings = parts[0::2], [*parts[1::2], ""]
    if texts[-1] == "":  # the text ended with a line break: no line after it
        texts.pop()
        endings.pop()
    lines = tuple(
        _read_line(number, raw, ending) for number, (raw, ending) in enumerate(zip(texts, endings, strict=True), 1)
    )
    return PresetDocument(lines, where, bom)


def default_presets() -> PresetDocument:
    """LBW's built-in presets (NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5, FLUXALL)."""
    return read_presets(DEFAULT_PRESETS_TEXT, where="built-in presets")


def _read_line(number: int, text: str, ending: str) -> PresetLine:
    if not text.strip():
        return PresetLine(number, text, "blank", ending=ending)
    if "#" in text:
        return PresetLine(number, text, "comment", ending=ending)
    if ":" not in text:
        problem = "no ':' (expected NAME:v1,v2,...); LBW ignores it"
        return PresetLine(number, text, "invalid", problem=problem, ending=ending)
    head, _, value = text.partition(":")
    commas = text.count(",")
    if commas + 1 not in LBW_VALUE_COUNTS:
        if "," in head:
            problem = (
                f"the line has {commas} commas, the name's included (LBW counts the whole line); "
                "it needs 11, 16, 19, 25 or 60: LBW ignores it"
            )
        else:
            problem = f"found {commas + 1} values; a weight vector has 12, 17, 20, 26 or 61 values; LBW ignores it"
        return PresetLine(number, text, "invalid", problem=problem, ending=ending)
    name = head.strip()
    offset = len(head) + 1
    values = value.split(",")
    if len(values) not in LBW_VALUE_COUNTS:  # the name holds some of the line's commas
        problem = (
            f"the name {name!r} holds {head.count(',')} of the line's commas: LBW loads the line under that name "
            f"with {len(values)} values and fails when a prompt uses it"
        )
        return PresetLine(number, text, "broken", problem=problem, name=name, ending=ending)
    try:
        weights = parse_weights(value)
    except WeightsError as error:
        position = f" (at position {error.position + offset})" if error.position is not None else ""
        consequence = (
            "and would use the value as Python's float() reads it"
            if all(_lbw_converts(v) for v in values)
            else "but a prompt using it fails in LBW"
        )
        problem = f"{error.message}{position}; LBW loads the line as {name!r} {consequence}"
        return PresetLine(number, text, "broken", problem=problem, name=name, ending=ending)
    with contextlib.suppress(LbwError):  # LBW loads names lbw would not write (``n=1``): kept in ``name`` only
        weights = weights.with_name(validate_name(name))
    return PresetLine(number, text, "preset", weights, name=name, warnings=_name_warnings(head, name), ending=ending)


def _name_warnings(head: str, name: str) -> tuple[str, ...]:
    """What LBW does with a name that loads but surprises."""
    warnings: list[str] = []
    if not name:
        warnings.append("empty name: LBW files the line under '', which only an empty `lbw=` selects")
    if head != name:
        warnings.append(
            f"spaces around the name {head!r}: LBW strips them (`lbw={name}` works), but its tag list shows "
            "them until 'Reload Tags', and `lbw=` with the spaces finds nothing (full strength)"
        )
    if "=" in name:
        warnings.append(
            f"the name {name!r} contains '=': LBW loads it, but in a prompt `lbw={name}` holds a second '=', so the "
            "web UI reads that item as a multiplier and fails ('could not convert string to float')"
        )
    if ">" in name:
        warnings.append(f"the name {name!r} contains '>': a prompt tag ends at '>', so no prompt can name it")
    return tuple(warnings)


def _bom_warning(name: str) -> str:
    return (
        f"the file starts with a byte order mark: LBW reads it as part of the first name ('\\ufeff{name}'), "
        f"so `lbw={name}` finds nothing and runs at full strength; save the file as UTF-8 without BOM"
    )


def _lbw_converts(token: str) -> bool:
    """True if LBW's own conversion of one value succeeds (``R``, ``U``, ``X...``, or Python's ``float``)."""
    text = token.strip()
    if text in ("R", "U"):
        return True
    if not text:
        return False
    if text[0] == "X":
        match = _LBW_X.search(text)
        if match is not None and match.group(1):
            try:
                float(match.group(2))
            except (TypeError, ValueError):
                return False
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
