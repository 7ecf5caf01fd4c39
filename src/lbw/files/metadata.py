"""LoRA metadata: groups, the Additional Networks user fields, ``modelspec.*``, block weights, covers, sidecars.

Pure functions over ``dict[str, str]`` (safetensors metadata is strings only) plus the small file helpers for
cover images and the web UI's ``<name>.json`` sidecar. Writing the LoRA itself is ``lbw.files.writer``'s job.

Keys (lora-files.md §8):
- training ``ss_*`` (sd-scripts), user ``ssmd_*`` (Additional Networks editor), ``modelspec.*`` (Stability
  ModelSpec), hashes ``sshs_*``, lbw's own ``lbw_*``, other.
- ``ssmd_cover_images`` is a JSON list of base64 PNG strings (no ``data:`` prefix); only the first is used.
- ``modelspec.thumbnail`` is a data URL; ``lbw_block_weights`` holds ``NAME:v1,...`` and ``lbw_block_layout``
  the layout name (``SD17``, ``XL12``, ...).

Example:
    >>> group_metadata({"ss_network_dim": "8", "ssmd_author": "me"})["user"]
    {'ssmd_author': 'me'}
    >>> block_weights_entries("Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")["lbw_block_layout"]
    'SD17'
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import LbwError, WeightsError
from lbw.files.atomic import write_text_atomic
from lbw.files.json_text import load_json

GROUPS = ("training", "user", "modelspec", "hashes", "lbw", "other")

ADDNET_KEYS: dict[str, str] = {
    "display_name": "ssmd_display_name",
    "author": "ssmd_author",
    "source": "ssmd_source",
    "keywords": "ssmd_keywords",
    "description": "ssmd_description",
    "rating": "ssmd_rating",
    "tags": "ssmd_tags",
    "cover": "ssmd_cover_images",
}
MODELSPEC_KEYS: dict[str, str] = {
    "title": "modelspec.title",
    "author": "modelspec.author",
    "description": "modelspec.description",
    "trigger_phrase": "modelspec.trigger_phrase",
    "usage_hint": "modelspec.usage_hint",
    "license": "modelspec.license",
    "tags": "modelspec.tags",
    "thumbnail": "modelspec.thumbnail",
}
BLOCK_WEIGHTS_KEY = "lbw_block_weights"
BAKED_WEIGHTS_KEY = "lbw_baked_weights"  # written by `lbw bake`: the weights are in the tensors
BLOCK_LAYOUT_KEY = "lbw_block_layout"
COVER_KEY = ADDNET_KEYS["cover"]
THUMBNAIL_KEY = MODELSPEC_KEYS["thumbnail"]
IMAGE_KEYS = (COVER_KEY, THUMBNAIL_KEY)

# The A1111 sidecar's keys (extensions-builtin/Lora user metadata editor) and its "sd version" values.
SIDECAR_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "SD3", "Unknown")

# Which weight layouts suit which base model (from ss_base_model_version / modelspec.architecture).
_LAYOUT_FAMILIES = {"sd": ("SD17", "SD26"), "sdxl": ("XL12", "XL20"), "flux": ("FLUX61",)}
_IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}


def metadata_group(key: str) -> str:
    """The group of a metadata key: training, user, modelspec, hashes, lbw or other.

    >>> metadata_group("sshs_model_hash"), metadata_group("ss_network_dim"), metadata_group("format")
    ('hashes', 'training', 'other')
    """
    if key.startswith("sshs_"):
        return "hashes"
    if key.startswith("ssmd_"):
        return "user"
    if key.startswith("ss_"):
        return "training"
    if key.startswith("modelspec."):
        return "modelspec"
    if key.startswith("lbw_"):
        return "lbw"
    return "other"


def group_metadata(metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Metadata split into ``GROUPS`` (every group present, keys sorted inside each).

    >>> group_metadata({"ss_network_dim": "8", "sshs_model_hash": "ab"})["hashes"]
    {'sshs_model_hash': 'ab'}
    """
    groups: dict[str, dict[str, str]] = {name: {} for name in GROUPS}
    for key in sorted(metadata):
        groups[metadata_group(key)][key] = metadata[key]
    return groups


def rating_value(rating: int | str) -> str:
    """Validate an Additional Networks rating (integer 0..10) and return it as stored (``"7"``).

    >>> rating_value(7), rating_value("10")
    ('7', '10')
    """
    text = str(rating).strip()
    if not text.isdigit() or not 0 <= int(text) <= 10:
        raise LbwError(f"rating must be a whole number from 0 to 10, found {rating!r}", where="ssmd_rating")
    return str(int(text))


def block_weights_entries(text: str) -> dict[str, str]:
    """The metadata entries recording tuned block weights: ``lbw_block_weights`` (``NAME:values``, numbers
    only) and ``lbw_block_layout``.

    >>> block_weights_entries("XL:1,0,0,1,1,1,1,1,1,0,0,0")
    {'lbw_block_weights': 'XL:1,0,0,1,1,1,1,1,1,0,0,0', 'lbw_block_layout': 'XL12'}
    """
    weights = parse_weights(text, where="--weights")
    weights.numbers()  # refuses unresolved R/U/X: a file records the weights actually used
    return {BLOCK_WEIGHTS_KEY: weights.format(), BLOCK_LAYOUT_KEY: weights.layout.name}


def read_block_weights(metadata: Mapping[str, str]) -> BlockWeights | None:
    """The block weights recorded in ``metadata`` (None when absent); a stored layout that disagrees with the
    number of values is an error."""
    text = metadata.get(BLOCK_WEIGHTS_KEY)
    if text is None:
        return None
    weights = parse_weights(text, where=BLOCK_WEIGHTS_KEY)
    stored = metadata.get(BLOCK_LAYOUT_KEY)
    if stored is not None and stored != weights.layout.name:
        raise WeightsError(f"{BLOCK_LAYOUT_KEY} says {stored} but the weights have {len(weights)} values "
                           f"({weights.layout.name})", where=BLOCK_WEIGHTS_KEY)
    return weights


def base_family(metadata: Mapping[str, str]) -> str | None:
    """"sd", "sdxl" or "flux" from ``ss_base_model_version`` / ``modelspec.architecture``; None if unknown."""
    version = metadata.get("ss_base_model_version", "")
    architecture = metadata.get("modelspec.architecture", "")
    if version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("flux") or architecture.startswith("flux"):
        return "flux"
    if version.startswith("sd_v") or architecture.startswith(("stable-diffusion-v1", "stable-diffusion-v2")):
        return "sd"
    return None


def check_weights_fit(metadata: Mapping[str, str], layout_name: str) -> None:
    """Refuse a weight layout that cannot apply to the file's base model (when its metadata names one).

    >>> check_weights_fit({"ss_base_model_version": "sdxl_base_v1-0"}, "SD17")
    Traceback (most recent call last):
    lbw.errors.WeightsError: --weights: layout SD17 is for SD1/SD2; this file is SDXL: use 12 or 20 values
    """
    family = base_family(metadata)
    if family is None or layout_name in _LAYOUT_FAMILIES[family]:
        return
    counts = {"sd": "17 or 26", "sdxl": "12 or 20", "flux": "61"}[family]
    owner = next(f for f, layouts in _LAYOUT_FAMILIES.items() if layout_name in layouts)
    names = {"sd": "SD1/SD2", "sdxl": "SDXL", "flux": "FLUX"}
    raise WeightsError(f"layout {layout_name} is for {names[owner]}; this file is {names[family]}: use "
                       f"{counts} values", where="--weights")


def read_image(path: str | os.PathLike[str]) -> tuple[bytes, str, tuple[int, int]]:
    """Read and verify a PNG or JPEG: (bytes, format "PNG"/"JPEG", (width, height))."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LbwError(f"cannot read image: {error.strerror}", where=str(path)) from None
    try:
        with _bomb_checks_as_errors(), Image.open(io.BytesIO(data)) as image:
            image_format, size = image.format, image.size
            image.verify()
    except UnidentifiedImageError:
        raise LbwError("not a readable image; expected PNG or JPEG", where=str(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LbwError(f"image is too large for a cover (more than {Image.MAX_IMAGE_PIXELS:,} pixels)",
                       where=str(path)) from None
    except Exception as error:  # Pillow's decoders raise many types on damaged data (IndexError, ValueError, ...)
        raise LbwError(f"damaged image ({_damage(error)})", where=str(path)) from None
    if image_format not in _IMAGE_FORMATS:
        raise LbwError(f"is a {image_format} image; expected PNG or JPEG", where=str(path))
    return data, image_format, size


def png_bytes(path: str | os.PathLike[str]) -> bytes:
    """The image at ``path`` as PNG bytes: a PNG is kept byte for byte (text chunks included), a JPEG is
    converted with Pillow at its own resolution (CMYK and other modes become RGB)."""
    from PIL import Image

    data, image_format, _ = read_image(path)
    if image_format == "PNG":
        return data
    try:
        with _bomb_checks_as_errors(), Image.open(io.BytesIO(data)) as image:
            converted = image if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert("RGB")
            buffer = io.BytesIO()
            converted.save(buffer, "PNG")
    except Exception as error:  # a JPEG that verified but does not decode (truncated scan data, ...)
        raise LbwError(f"damaged image ({_damage(error)})", where=str(path)) from None
    return buffer.getvalue()


def cover_images_value(path: str | os.PathLike[str]) -> str:
    """The ``ssmd_cover_images`` value for an image file: a JSON list of one base64 PNG string, as the
    Additional Networks editor writes it.

    >>> json.loads(cover_images_value("cover.jpg"))[0][:12]
    'iVBORw0KGgoA'
    """
    return json.dumps([base64.b64encode(png_bytes(path)).decode("ascii")])


def decode_cover(value: str) -> bytes:
    """The first image of an ``ssmd_cover_images`` value (readers accept a ``data:`` prefix); raises LbwError
    when the value is not a JSON list of base64 strings or the list is empty."""
    try:
        images = load_json(value, where=COVER_KEY, what="value", error=LbwError)
    except LbwError as error:
        raise LbwError(f"is not a JSON list ({error.message})", where=COVER_KEY) from None
    if not isinstance(images, list) or not images or not isinstance(images[0], str):
        raise LbwError("holds no image; expected a JSON list of base64 PNG strings", where=COVER_KEY)
    return _decode_base64(images[0], COVER_KEY)


def image_data_url(path: str | os.PathLike[str]) -> str:
    """A ``data:image/png;base64,…`` (or ``image/jpeg``) URL of a PNG/JPEG file, for ``modelspec.thumbnail``."""
    data, image_format, _ = read_image(path)
    return f"data:{_IMAGE_FORMATS[image_format]};base64,{base64.b64encode(data).decode('ascii')}"


def describe_image_value(key: str, value: str) -> str:
    """A one-line summary of a cover/thumbnail value: ``PNG 512x768, 48,213 bytes`` (or what is wrong)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = decode_cover(value) if key == COVER_KEY else _decode_base64(value, key)
        with _bomb_checks_as_errors(), Image.open(io.BytesIO(data)) as image:
            return f"{image.format} {image.width}x{image.height}, {len(data):,} bytes"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"unreadable image (more than {Image.MAX_IMAGE_PIXELS:,} pixels: a decompression bomb?)"
    except (LbwError, UnidentifiedImageError) as error:
        return f"unreadable image ({error})"
    except Exception as error:  # Pillow's decoders raise many types on damaged data
        return f"unreadable image ({_damage(error)})"


def _damage(error: Exception) -> str:
    """What Pillow said about damaged image data, short (the exception type when it is not an OSError)."""
    text = str(error)[:100]
    return text if isinstance(error, OSError | SyntaxError) and text else f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def _bomb_checks_as_errors() -> Iterator[None]:
    """Pillow's decompression-bomb warning (an image over ``MAX_IMAGE_PIXELS``) raised as an error, not printed."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def sd_version(metadata: Mapping[str, str]) -> str:
    """The sidecar's "sd version" as A1111 derives it: SDXL for ``ss_base_model_version`` ``sdxl_*``, SD2 for
    ``ss_v2 == "True"``, SD1 when there is any metadata, else Unknown. One exception: a FLUX LoRA (by
    ``ss_base_model_version`` or ``modelspec.architecture``) is Unknown, which no UI hides, rather than the SD1
    that A1111's rule would give it.

    >>> sd_version({"ss_base_model_version": "sdxl_base_v1-0"}), sd_version({}), sd_version({"ss_v2": "False"})
    ('SDXL', 'Unknown', 'SD1')
    """
    if base_family(metadata) == "flux":
        return "Unknown"
    if metadata.get("ss_base_model_version", "").startswith("sdxl_"):
        return "SDXL"
    if metadata.get("ss_v2") == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


def sidecar_path(lora_path: str | os.PathLike[str]) -> Path:
    """``<name>.json`` next to the LoRA (``style.safetensors`` → ``style.json``)."""
    path = Path(lora_path)
    return path.with_suffix(".json")


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar JSON object at ``path``, or None when there is no file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise LbwError(f"cannot read sidecar ({error})", where=str(path)) from None
    data = load_json(text, where=str(path), what="sidecar", error=LbwError)
    if not isinstance(data, dict):
        raise LbwError(f"sidecar must be a JSON object, found {type(data).__name__}", where=str(path))
    return data


def update_sidecar(existing: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` with ``changes`` applied (keys of ``SIDECAR_KEYS``; other existing keys are kept).

    "preferred weight" must be a finite number (A1111's editor offers 0..2, 0 = default multiplier);
    "sd version" one of ``SD_VERSIONS`` (any case).

    >>> update_sidecar({"notes": "x"}, {"activation text": "gobuhime", "preferred weight": 0.8})
    {'notes': 'x', 'activation text': 'gobuhime', 'preferred weight': 0.8}
    """
    result = dict(existing or {})
    for key, value in changes.items():
        if key not in SIDECAR_KEYS:
            raise LbwError(f"unknown sidecar key {key!r}; expected one of {', '.join(SIDECAR_KEYS)}")
        if key == "preferred weight":
            value = _weight_number(value)
        elif key == "sd version":
            value = _sd_version_name(str(value))
        elif not isinstance(value, str):
            raise LbwError(f"sidecar {key!r} must be text, found {type(value).__name__}")
        result[key] = value
    return result


def write_sidecar(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write the sidecar JSON atomically (UTF-8, indent 4, like A1111)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(dict(data), indent=4, ensure_ascii=False) + "\n")
    return path


def _decode_base64(value: str, key: str) -> bytes:
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LbwError("is not valid base64 image data", where=key) from None


def _weight_number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LbwError(f"preferred weight must be a number, found {value!r}") from None
    if not math.isfinite(number):
        raise LbwError(f"preferred weight must be finite, found {value!r}")
    return number


def _sd_version_name(value: str) -> str:
    for name in SD_VERSIONS:
        if value.strip().lower() == name.lower():
            return name
    raise LbwError(f"sd version must be one of {', '.join(SD_VERSIONS)}, found {value!r}")
