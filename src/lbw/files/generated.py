"""Files lbw writes for the user to edit (a suggested sheet): a first-line stamp tells lbw's own text from an edit.

``write_generated`` prefixes the text with ``# lbw wrote this file; sha256 of the lines below: <hex>``. Before
writing again, ``check_overwrite`` reads the file: when the stamp is there and the hash still matches, the file is
exactly what lbw wrote and may be replaced; otherwise (edited, or not written by lbw) it is kept unless ``force``,
with one OutputError naming the file. Only for text formats with ``#`` comments (TOML).

Example:
    >>> write_generated(Path("suggested-sheet.toml"), text)        # first run
    >>> write_generated(Path("suggested-sheet.toml"), text)        # unedited: replaced
    >>> # ... the user edits the file ...
    >>> write_generated(Path("suggested-sheet.toml"), text)
    OutputError: suggested-sheet.toml: edited since lbw wrote it; move it away or pass --force to overwrite it
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lbw.errors import OutputError
from lbw.files.atomic import write_text_atomic

STAMP = "# lbw wrote this file; sha256 of the lines below: "
MAX_CHECK_BYTES = 4 * 1024 * 1024


def stamped(text: str) -> str:
    """``text`` with the stamp line in front."""
    return f"{STAMP}{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n{text}"


def is_unedited(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds exactly what ``write_generated`` wrote (stamp present, hash matching)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CHECK_BYTES + 1)
    except OSError:
        return False
    if len(raw) > MAX_CHECK_BYTES:
        return False
    first, _, rest = raw.partition(b"\n")
    stamp = STAMP.encode("utf-8")
    if not first.startswith(stamp):
        return False
    return first[len(stamp):].decode("ascii", "replace") == hashlib.sha256(rest).hexdigest()


def check_overwrite(path: str | os.PathLike[str], *, force: bool = False) -> None:
    """OutputError when ``path`` exists, is not lbw's unedited output, and ``force`` is not given."""
    path = Path(path)
    if force or not os.path.lexists(path):
        return
    if path.is_dir():
        raise OutputError("is a folder; expected a file lbw may write", where=str(path))
    if not is_unedited(path):
        raise OutputError("edited since lbw wrote it (or not written by lbw); move it away or pass --force to "
                          "overwrite it", where=str(path))


def write_generated(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Path:
    """Write ``text`` stamped, unless an edited file is there (see ``check_overwrite``)."""
    check_overwrite(path, force=force)
    write_text_atomic(path, stamped(text))
    return Path(path)
