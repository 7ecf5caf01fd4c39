"""Keep masks for ``lbw tune``: a PNG read into a boolean (height, width) mask of the render, written back, hashed,
outlined.

The rules (``docs/tune.md``): the PNG may have any size; it is resized to the render's size with nearest-neighbour
(no new grey levels, so a kept pixel stays kept). A pixel is kept when its value is above 50%: the alpha channel's
when the image has one with any transparency, else the luminance (ITU-R 601-2, Pillow's ``L``; 16-bit greyscale
on its own 0..65535 scale). Refused with one line naming the file: not a PNG, cut short, larger than
``MAX_MASK_BYTES`` or than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), no pixel kept, every
pixel kept (nothing left outside to measure side effects on).

Example:
    >>> mask = read_mask("face-mask.png", 64, 64)
    >>> int(mask.sum()), mask_digest(mask)[:12]
    (1024, '6a0f3c2d9b1e')
    >>> save_mask(mask, "tune/run-0001/keep-mask.png")
"""

from __future__ import annotations

import hashlib
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from lbw.errors import RenderError
from lbw.render.analysis import Box

MAX_MASK_BYTES = 64 * 1024 * 1024
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def read_mask(path: str | Path, width: int, height: int) -> np.ndarray:
    """The keep mask in the PNG ``path`` at the render size ``width`` x ``height`` (see the module's rules)."""
    where = str(path)
    try:
        size = Path(path).stat().st_size
    except OSError as error:
        raise RenderError(f"cannot read the keep mask: {error.strerror or error}", where=where) from None
    if size > MAX_MASK_BYTES:
        raise RenderError(f"the keep mask is larger than {MAX_MASK_BYTES} bytes", where=where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused from the limit on, not twice
            with Image.open(path, formats=["PNG"]) as image:
                image.load()
                levels = _levels(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RenderError(f"refused: {error}", where=where) from None
    except (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error) as error:
        raise RenderError(f"not a readable PNG keep mask ({error})", where=where) from None
    if levels.shape != (height, width):
        grey = Image.fromarray(levels.astype(np.uint8) * 255, mode="L")
        levels = np.asarray(grey.resize((width, height), Image.Resampling.NEAREST)) > 0
    return check_mask(levels, where)


def _levels(image: Image.Image) -> np.ndarray:
    """Kept pixels at the image's own size: alpha > 50% when some pixel is transparent, else luminance > 50%."""
    if image.mode in SIXTEEN_BIT:
        return np.asarray(image, dtype=np.float64) > 65535 / 2
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if int(alpha.min()) < 255:
            return alpha > 127
    return np.asarray(image.convert("L")) > 127


def check_mask(mask: np.ndarray, where: str) -> np.ndarray:
    """``mask`` (boolean, 2-D) when it keeps some pixels and leaves some outside; RenderError naming ``where``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.size:
        raise RenderError(f"the keep mask must be a 2-D image, got shape {mask.shape}", where=where)
    if not mask.any():
        raise RenderError("the keep mask keeps no pixel (every pixel is at most 50% alpha or luminance)",
                          where=where)
    if mask.all():
        raise RenderError(f"the keep mask keeps every pixel of the {mask.shape[1]}x{mask.shape[0]} image: nothing "
                          "is left outside it to measure side effects on", where=where)
    return mask


def mask_image(mask: np.ndarray) -> Image.Image:
    """The mask as a greyscale image: kept pixels white (255), the rest black."""
    return Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")


def save_mask(mask: np.ndarray, path: str | Path) -> Path:
    """Write the mask as a greyscale PNG (atomically); ``read_mask`` reads it back equal."""
    from lbw.render.grid import save_png

    return save_png(mask_image(mask), path)


def mask_digest(mask: np.ndarray) -> str:
    """sha256 of the mask as used (its size and kept pixels), so two files with the same pixels are the same mask.

    Example:
        >>> mask_digest(np.eye(4, dtype=bool)) == mask_digest(np.eye(4, dtype=bool))
        True
    """
    mask = np.asarray(mask, dtype=bool)
    head = f"{mask.shape[1]}x{mask.shape[0]}:".encode("ascii")
    return hashlib.sha256(head + np.packbits(mask).tobytes()).hexdigest()


def bounding_box(mask: np.ndarray) -> Box:
    """The smallest box holding every kept pixel (right/bottom exclusive).

    Example:
        >>> bounding_box(np.pad(np.ones((2, 3), bool), 1)).as_text()
        '1,1,4,3'
    """
    rows, columns = np.nonzero(np.asarray(mask, dtype=bool))
    if not rows.size:
        raise RenderError("the keep mask keeps no pixel")
    return Box(int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1)


def outline(mask: np.ndarray) -> np.ndarray:
    """The kept pixels on the mask's edge: kept, with a 4-neighbour outside the mask or the image. For a box this
    is the box's one-pixel border.

    Example:
        >>> int(outline(np.ones((3, 3), bool)).sum())
        8
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner
