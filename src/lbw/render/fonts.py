"""Fonts for grid labels and titles: a CJK-capable TrueType/OpenType font found at run time.

Pillow's built-in font draws Latin text only; a Japanese sheet name or label would come out as empty boxes.
``label_font`` returns the built-in font for Latin text (grids look as they always did) and a CJK font as soon
as any text needs one. The CJK font is found, in order, from ``$LBW_FONT`` (a font file), fontconfig
(``fc-match :lang=ja``, checked against ``fc-list :lang=ja`` because fc-match always answers something) and
the Debian packages' paths (``fonts-ipaexfont-gothic``, ``fonts-noto-cjk``, ...). Without one, labels still
draw with the built-in font and one ``FontWarning`` says what to install.

Example:
    >>> font = label_font(25, ["seed 1", "ゴブ姫 (sub)"])
    >>> Path(font.path).name  # doctest: +SKIP
    'ipaexg.ttf'
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_ENV = "LBW_FONT"
# Debian / Ubuntu paths of the usual Japanese-capable fonts, preferred first.
KNOWN_FONTS = (
    "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf",
    "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf",
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/takao-gothic/TakaoPGothic.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
INSTALL_HINT = (
    "install one (Debian/Ubuntu: apt-get install fonts-ipaexfont-gothic, or fonts-noto-cjk; `make test` does it "
    f"as root) or set {FONT_ENV}=/path/to/font.ttf"
)
_FONT_SUFFIXES = (".ttf", ".ttc", ".otf", ".otc")


class FontWarning(UserWarning):
    """No CJK-capable font: Japanese (or other non-Latin) text in grids draws as boxes."""


@dataclass(frozen=True)
class FontFile:
    """A font file and the face inside it (``index`` > 0 only for collections such as ``.ttc``)."""

    path: Path
    index: int = 0
    source: str = "path"  # "env", "fontconfig" or "path"


def needs_wide_font(text: str) -> bool:
    """True when ``text`` has characters past Latin Extended-A, which the built-in font cannot draw.

    Example:
        >>> needs_wide_font("SubIN05_0"), needs_wide_font("ゴブ姫")
        (False, True)
    """
    return any(ord(ch) > 0x17F for ch in text)


@lru_cache(maxsize=1)
def find_cjk_font() -> FontFile | None:
    """The CJK font to draw with (cached for the process), or None when this machine has none."""
    env = os.environ.get(FONT_ENV, "").strip()
    if env:
        candidate = Path(env)
        if candidate.is_file() and _loads(candidate, 0):
            return FontFile(candidate, 0, "env")
        warnings.warn(f"{FONT_ENV}={env!r} is not a readable font file; looking for another", FontWarning, stacklevel=2)
    found = _from_fontconfig()
    if found is not None:
        return found
    for known in KNOWN_FONTS:
        path = Path(known)
        if path.is_file() and _loads(path, 0):
            return FontFile(path, 0, "path")
    return None


def cjk_font_message() -> str:
    """One line for a status bar or ``lbw web``'s start: which CJK font grids use, or what to install."""
    font = find_cjk_font()
    if font is None:
        return f"no CJK font found: Japanese text in grids draws as boxes; {INSTALL_HINT}"
    return f"CJK font for grids: {font.path} (from {font.source})"


_warned = False


def label_font(size: int, texts: Iterable[str] = ()) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` px for ``texts``: the built-in font for Latin text, a CJK font when any text needs it.

    Without a CJK font the built-in one is returned and one FontWarning (per process) names what to install.
    """
    global _warned
    if any(needs_wide_font(text) for text in texts):
        font = find_cjk_font()
        if font is not None:
            return _truetype(str(font.path), font.index, size)
        if not _warned:
            _warned = True
            warnings.warn(f"no CJK font found: non-Latin labels draw as boxes; {INSTALL_HINT}", FontWarning,
                          stacklevel=2)
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=64)
def _truetype(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size, index=index)


def _loads(path: Path, index: int) -> bool:
    if path.suffix.lower() not in _FONT_SUFFIXES:
        return False
    try:
        ImageFont.truetype(str(path), size=12, index=index)
    except (OSError, ValueError):
        return False
    return True


def _fc(*args: str) -> str:
    exe = shutil.which(args[0])
    if exe is None:
        return ""
    try:
        done = subprocess.run([exe, *args[1:]], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else ""


def _parse(lines: str) -> list[FontFile]:
    fonts = []
    for line in lines.splitlines():
        file, _, index = line.rpartition("|")
        if file and index.strip().isdigit():
            fonts.append(FontFile(Path(file), int(index), "fontconfig"))
    return fonts


def _from_fontconfig() -> FontFile | None:
    """fc-match's choice for Japanese when fc-list confirms it covers Japanese, else the first that does."""
    capable = _parse(_fc("fc-list", "-f", "%{file}|%{index}\n", ":lang=ja"))
    if not capable:
        return None
    chosen = _parse(_fc("fc-match", "-f", "%{file}|%{index}\n", ":lang=ja"))
    ordered = [f for f in chosen if f in capable] + sorted(capable, key=_preference)
    for font in ordered:
        if font.path.is_file() and _loads(font.path, font.index):
            return font
    return None


def _preference(font: FontFile) -> tuple[int, str]:
    name = font.path.name.lower()
    rank = 0 if "gothic" in name or "ipaexg" in name or "sans" in name else 1
    return (rank, str(font.path))
