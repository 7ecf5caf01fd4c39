"""Text from outside (files, servers, the command line) made safe to print: control characters made visible.

A terminal acts on what it is sent: ``ESC ] 0 ; ... BEL`` sets the window title, ``ESC [ 2 J`` clears the screen,
a C1 ``CSI`` (U+009B) starts an escape sequence on some terminals, ``U+202E`` (RIGHT-TO-LEFT OVERRIDE) makes text
read backwards. A name or a metadata value from a file must never do any of that. ``printable`` replaces every such
character with a visible escape, ``\\x1b`` / ``\\u202e`` / ``\\udcfe``:

- C0 controls U+0000-U+001F (``\\t``, ``\\n``, ``\\r`` as themselves unless kept), DEL U+007F, C1 U+0080-U+009F;
- bidirectional formatting: U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069;
- line and paragraph separators U+2028, U+2029 (a "one line" message stays one line);
- lone surrogates U+D800-U+DFFF (``os.fsdecode`` turns bytes that are not UTF-8, e.g. in ``argv``, into these;
  a strict UTF-8 stream cannot write them).

Everything else, accents, CJK, emoji, passes unchanged. ``json_text`` is ``json.dumps`` whose output is safe in the
same way and always encodable: such characters become ``\\uXXXX`` escapes, so the JSON stays valid and reads back
to the same strings.

Example:
    >>> printable("title\\x1b]0;pwned\\x07 and \\u202etxt.exe")
    'title\\\\x1b]0;pwned\\\\x07 and \\\\u202etxt.exe'
    >>> printable("ab\\udcfe"), printable("two\\nlines"), printable("two\\nlines", keep="\\n")
    ('ab\\\\udcfe', 'two\\\\nlines', 'two\\nlines')
    >>> json_text({"k": "\\x9b31m\\udcfe"})
    '{"k": "\\\\u009b31m\\\\udcfe"}'
"""

from __future__ import annotations

import json
import re
from typing import Any

# Characters a terminal may act on, or that a strict UTF-8 stream cannot write.
UNSAFE_CHARACTERS = (
    "\x00-\x1f\x7f-\x9f"  # C0, DEL, C1
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional formatting
    "\u2028\u2029"  # line / paragraph separator
    "\ud800-\udfff"  # lone surrogates (surrogateescape'd bytes)
)
_UNSAFE = re.compile(f"[{UNSAFE_CHARACTERS}]")
# In json.dumps output C0 controls are already escaped; the rest of the class may still appear raw in strings.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape_character(char: str) -> str:
    """The visible form of one character: ``\\n``, ``\\x1b``, ``\\u202e`` (Python's own notation).

    Example:
        >>> escape_character("\\x1b"), escape_character("\\u202e")
        ('\\\\x1b', '\\\\u202e')
    """
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, *, keep: str = "") -> str:
    """``str(text)`` with every unsafe character (see the module doc) replaced by its visible escape.

    ``keep`` lists characters to leave as they are, e.g. ``"\\n"`` for text that may span lines.

    Example:
        >>> printable("x\\x1b[2Jy")
        'x\\\\x1b[2Jy'
    """
    value = text if isinstance(text, str) else str(text)
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else escape_character(m.group()), value)


def is_printable(text: str) -> bool:
    """True if ``printable(text)`` would change nothing.

    Example:
        >>> is_printable("Gobuhime"), is_printable("a\\x07")
        (True, False)
    """
    return _UNSAFE.search(text) is None


def json_text(data: Any, *, indent: int | None = None, sort_keys: bool = False, allow_nan: bool = True) -> str:
    """``json.dumps(data, ensure_ascii=False)`` with unsafe characters as ``\\uXXXX`` escapes.

    The result is encodable as strict UTF-8 and safe to print; ``json.loads`` gives ``data`` back. With
    ``allow_nan=False`` NaN and infinities are refused (``ValueError``), so the text is strictly valid JSON.

    Example:
        >>> json_text(["\\u202e", "é"])
        '["\\\\u202e", "é"]'
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False, sort_keys=sort_keys, allow_nan=allow_nan)
    if _UNSAFE_IN_JSON.search(text) is None:
        return text
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
