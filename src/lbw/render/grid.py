"""Grid images: cells under column headers and beside row headers, saved as PNG with the plan embedded.

Labels scale with the cell size (readable at 512 px cells, still legible at 64 px), long labels wrap; Japanese
(or any non-Latin) labels and titles draw with a CJK font found at run time (``lbw.render.fonts``).
The plan travels inside the PNG as an ``lbw_plan`` text chunk, so a grid alone says how it was made.

Example:
    >>> grid = compose_grid([[a, b]], row_labels=["Sub"], column_labels=["seed 1", "seed 2"])
    >>> save_png(grid, "out/grid.png", text={"lbw_plan": plan_json})
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from lbw.errors import RenderError
from lbw.files.atomic import write_bytes_atomic
from lbw.render.fonts import label_font, needs_wide_font

PLAN_CHUNK = "lbw_plan"
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
EMPTY = (200, 200, 200)


def font_size_for(cell_width: int) -> int:
    """Label font size for a cell width: 1/20 of it, between 12 and 32 px (512 px cells -> 25 px)."""
    return max(12, min(32, cell_width // 20))


def compose_grid(
    images: Sequence[Sequence[Image.Image | None]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    title: str | None = None,
    gap: int = 4,
) -> Image.Image:
    """Lay ``images[row][column]`` out with labels; ``None`` cells are drawn grey (not rendered yet).

    Every image must have the size of the first one. Labels may contain newlines.
    """
    present = [image for row in images for image in row if image is not None]
    if not present:
        raise RenderError("a grid needs at least one image")
    cell_w, cell_h = present[0].size
    if any(image.size != (cell_w, cell_h) for image in present):
        raise RenderError("grid images differ in size")
    rows, columns = len(images), max(len(row) for row in images)
    if len(row_labels) != rows or len(column_labels) != columns:
        raise RenderError(
            f"grid has {rows}x{columns} cells but {len(row_labels)}x{len(column_labels)} labels"
        )
    font = label_font(font_size_for(cell_w), [*row_labels, *column_labels, title or ""])
    line_h = font.size + font.size // 3
    pad = max(gap, font.size // 2)  # space between a label and its cells
    row_texts = [_wrap(label, font, max(cell_w * 2, 160)) for label in row_labels]
    column_texts = [_wrap(label, font, cell_w) for label in column_labels]
    left = max(_text_width(text, font) for text in row_texts) + gap + pad
    top = max(len(text.splitlines()) for text in column_texts) * line_h + gap + pad
    width = left + columns * (cell_w + gap) + gap
    if title:  # wrapped to the grid (at least 240 px), and the grid widened for a word longer than that
        title = _wrap(title, font, max(width - 2 * gap, 240))
        width = max(width, _text_width(title, font) + 2 * gap)
    title_h = (len(title.splitlines()) * line_h + gap) if title else 0
    height = title_h + top + rows * (cell_h + gap) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((gap, gap), title, font=font, fill=INK, spacing=line_h - font.size)
    for c, text in enumerate(column_texts):
        x = left + c * (cell_w + gap)
        draw.multiline_text(
            (x + cell_w // 2, title_h + top - pad),
            text,
            font=font,
            fill=INK,
            anchor="md",
            align="center",
            spacing=line_h - font.size,
        )
    for r, row in enumerate(images):
        y = title_h + top + r * (cell_h + gap)
        draw.multiline_text(
            (left - pad, y + cell_h // 2),
            row_texts[r],
            font=font,
            fill=INK,
            anchor="rm",
            align="right",
            spacing=line_h - font.size,
        )
        for c in range(columns):
            x = left + c * (cell_w + gap)
            image = row[c] if c < len(row) else None
            if image is None:
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=EMPTY)
            else:
                canvas.paste(image.convert("RGB"), (x, y))
    return canvas


def _text_width(text: str, font: ImageFont.FreeTypeFont) -> int:
    return max(int(font.getlength(line)) for line in text.splitlines() or [""])


def _wrap(label: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """Greedy word wrap of each line to ``width`` pixels (Latin words longer than a line stay whole; Japanese,
    written without spaces, breaks between characters)."""
    lines: list[str] = []
    for paragraph in label.splitlines() or [""]:
        current = ""
        for word in _words(paragraph, font, width):
            candidate = f"{current} {word}" if current else word
            if current and font.getlength(candidate) > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return "\n".join(lines)


def _words(paragraph: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    words: list[str] = []
    for word in paragraph.split(" "):
        if font.getlength(word) <= width or not needs_wide_font(word):
            words.append(word)
            continue
        piece = ""
        for ch in word:
            if piece and font.getlength(piece + ch) > width:
                words.append(piece)
                piece = ch
            else:
                piece += ch
        words.append(piece)
    return words


def png_bytes(image: Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    """PNG-encode ``image`` with international text chunks (``iTXt``) for ``text``."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | Path, text: Mapping[str, str] | None = None) -> Path:
    """Write ``image`` as PNG atomically, with optional text chunks; returns the path."""
    path = Path(path)
    write_bytes_atomic(path, png_bytes(image, text))
    return path


def read_png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG that come before its image data (where ``save_png`` puts them), e.g. a grid's
    ``lbw_plan``. No pixel is decoded.

    Hostile files are refused with a RenderError naming the file: a size beyond Pillow's decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS``, errors above twice that; a grid that large is re-run from its
    ``plan.json``), a compressed text chunk over ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MiB) once decompressed, text
    over ``PngImagePlugin.MAX_TEXT_MEMORY`` (64 MiB) in all, a file that is not a PNG or is cut short.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only pixels past twice are refused
            with Image.open(path, formats=["PNG"]) as image:
                return {str(k): str(v) for k, v in image.info.items() if isinstance(v, str)}
    except Image.DecompressionBombError as error:
        raise RenderError(
            f"refused: {error} (a grid that large is re-run from the plan.json saved next to it)", where=str(path)
        ) from None
    except ValueError as error:  # MAX_TEXT_CHUNK / MAX_TEXT_MEMORY
        raise RenderError(f"refused: a text chunk is too large ({error})", where=str(path)) from None
    except (OSError, SyntaxError, EOFError, struct.error, zlib.error) as error:
        raise RenderError(f"cannot read PNG: {error}", where=str(path)) from None
