"""Images from a server: decoded only after their header shows the plan's size (no decompression bombs).

Example:
    >>> image = decode_image(base64_png, "SubIN04_0", (512, 512))
    >>> image.mode
    'RGB'
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from lbw.errors import RenderError
from lbw.render.backends.http import one_line

FORMATS = ("PNG", "JPEG", "WEBP")


def decode_image(data: str, label: str, size: tuple[int, int], source: str = "the web UI") -> Image.Image:
    """A base64 (or data-URL) PNG/JPEG/WebP as RGB; its size must be the plan's (within the latent's 8 px)
    before any pixel is decoded."""
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
    except (ValueError, binascii.Error):
        raise RenderError(f"{source} sent an image for {label!r} that is not base64") from None
    return open_image(raw, label, size, source)


def open_image(raw: bytes, label: str, size: tuple[int, int], source: str) -> Image.Image:
    """PNG/JPEG/WebP bytes as an RGB image of the plan's ``size`` (checked from the header, before decoding)."""
    try:
        with Image.open(io.BytesIO(raw), formats=FORMATS) as image:
            width, height = image.size
            if abs(width - size[0]) >= 8 or abs(height - size[1]) >= 8:
                raise RenderError(
                    f"{source} sent a {width}x{height} image for {label!r}; the plan asks for {size[0]}x{size[1]}"
                )
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = one_line(str(error), 200)
        raise RenderError(f"{source} sent an image for {label!r} lbw cannot decode: {reason}") from None
