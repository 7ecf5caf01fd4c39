"""LBW preset files (``lbwpresets.txt``): read with line-numbered problems, keep comments, add/replace, write.

LBW's rules (lbw-semantics §4.1): one ``NAME:v1,...`` per line; a line with ``#`` anywhere is ignored (a
comment); a line without ``:`` or with a value count other than 12/17/20/26/61 is ignored; a later line with
the same name replaces the earlier one. lbw reads the same way but reports every ignored line instead of
skipping it silently, and an unknown preset name is an error (LBW would run the LoRA at full strength).

Example:
    >>> doc = read_presets("# mine\\nFace:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1\\nbroken line\\n")
    >>> doc.names(), [(p.line, p.message[:16]) for p in doc.problems()]
    (('Face',), [(3, "no ':' (expected")])
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Literal

from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import LbwError, PresetError

LineKind = Literal["preset", "comment", "blank", "invalid"]

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
    """One line of a preset file: its 1-based number (0 when added), text, kind and parsed weights."""

    line: int
    text: str
    kind: LineKind
    weights: BlockWeights | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Problem:
    """A finding about a preset file; ``severity`` is ``error`` (LBW ignores the line) or ``warning``."""

    line: int
    message: str
    severity: Literal["error", "warning"]

    def format(self, where: str | None = None) -> str:
        """``FILE:LINE: severity: message``."""
        prefix = f"{where}:" if where else "line "
        return f"{prefix}{self.line}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class PresetDocument:
    """A preset file as lines; comments and blank lines are kept for writing back."""

    lines: tuple[PresetLine, ...]
    where: str | None = None

    def presets(self) -> dict[str, BlockWeights]:
        """Valid presets by name, in file order; a later line with the same name wins (as in LBW)."""
        found: dict[str, BlockWeights] = {}
        for line in self.lines:
            if line.weights is not None and line.weights.name is not None:
                found.pop(line.weights.name, None)
                found[line.weights.name] = line.weights
        return found

    def names(self) -> tuple[str, ...]:
        """Valid preset names, in the order LBW's tag list shows them."""
        return tuple(self.presets())

    def get(self, name: str) -> BlockWeights:
        """The preset ``name`` (case-sensitive); an unknown name is a PresetError, never weight 1.

        Example:
            >>> default_presets().get("OUTALL").layout.name
            'SD17'
        """
        presets = self.presets()
        if name in presets:
            return presets[name]
        close = difflib.get_close_matches(name, presets, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        source = self.where or "the presets"
        raise PresetError(f"unknown preset {name!r} in {source} ({len(presets)} presets){hint}")

    def problems(self) -> list[Problem]:
        """Invalid lines (errors), inline ``#`` after a preset and duplicate names (warnings), by line."""
        found: list[Problem] = []
        first_seen: dict[str, int] = {}
        for line in self.lines:
            if line.kind == "invalid":
                found.append(Problem(line.line, line.problem or "invalid line", "error"))
            elif line.kind == "comment" and not line.text.lstrip().startswith("#"):
                found.append(
                    Problem(
                        line.line, "contains '#': LBW ignores the whole line, not only the comment", "warning"
                    )
                )
            elif line.weights is not None and line.weights.name is not None:
                name = line.weights.name
                if name in first_seen:
                    found.append(
                        Problem(
                            line.line, f"{name!r} replaces the preset of line {first_seen[name]}", "warning"
                        )
                    )
                first_seen.setdefault(name, line.line)
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
        new_line = PresetLine(0, weights.format(), "preset", weights)
        positions = [
            i for i, ln in enumerate(self.lines) if ln.weights is not None and ln.weights.name == weights.name
        ]
        if not positions:
            return replace(self, lines=(*self.lines, new_line))
        if not replace_existing:
            raise PresetError(
                f"preset {weights.name!r} already exists (line {self.lines[positions[-1]].line}); "
                "use replace (--replace) to overwrite it",
                where=self.where,
            )
        lines = list(self.lines)
        lines[positions[-1]] = replace(new_line, line=self.lines[positions[-1]].line)
        return replace(self, lines=tuple(lines))

    def text(self) -> str:
        """The file text: original lines kept verbatim, added/replaced presets formatted, ``\\n`` endings."""
        return "".join(f"{line.text}\n" for line in self.lines)


def read_presets(text: str, where: str | None = None) -> PresetDocument:
    """Parse preset-file text; nothing is skipped silently: see ``problems()``.

    Example:
        >>> read_presets("A:1,1,1,1,1,1,1,1,1,1,1,1\\n").get("A").layout.name
        'XL12'
    """
    raw_lines = text.removeprefix("\ufeff").split("\n")
    if raw_lines[-1] == "":
        raw_lines.pop()
    lines = tuple(_read_line(number, raw) for number, raw in enumerate(raw_lines, start=1))
    return PresetDocument(lines, where)


def default_presets() -> PresetDocument:
    """LBW's built-in presets (NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5, FLUXALL)."""
    return read_presets(DEFAULT_PRESETS_TEXT, where="built-in presets")


def _read_line(number: int, raw: str) -> PresetLine:
    text = raw.rstrip("\r")
    if not text.strip():
        return PresetLine(number, text, "blank")
    if "#" in text:
        return PresetLine(number, text, "comment")
    if ":" not in text:
        return PresetLine(number, text, "invalid", problem="no ':' (expected NAME:v1,v2,...); LBW ignores it")
    try:
        weights = parse_weights(text)
    except LbwError as error:
        return PresetLine(number, text, "invalid", problem=f"{error}; LBW ignores it")
    return PresetLine(number, text, "preset", weights)
