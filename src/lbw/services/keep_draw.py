"""A keep mask drawn on a cell (the workbench's Auto section): the painted layers of an image editor made into the
project's drawn mask, ``<workspace>/projects/<id>/keep-mask.png``, which the tune then uses as ``keep_mask``.

The editor's value is what ``gr.ImageEditor(type="numpy")`` sends, ``{"background": array, "layers": [array, ...],
"composite": array}``: a pixel is kept where any layer is painted above 50% alpha (the brush's colour does not
matter; the background, the cell, is never part of the mask). Layers of another size than the render are resized
with nearest-neighbour. The file is written only inside the workspace (under the project's own folder), never at a
path the page sends.

Example:
    >>> mask = mask_from_editor({"background": cell, "layers": [painted]}, 64, 64)
    >>> path, kept, total = save_drawn_mask(store, "Face", {"layers": [painted]})
    >>> path.name, kept, total
    ('keep-mask.png', 1024, 4096)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lbw.errors import LbwError, ProjectError
from lbw.store import Store

DRAWN_MASK_FILE = "keep-mask.png"
MAX_LAYERS = 16


def mask_from_editor(value: Any, width: int, height: int) -> np.ndarray:
    """The boolean (height, width) keep mask of an image editor's value: kept where a layer is painted (alpha above
    50%); refused (ProjectError) when nothing is painted or everything is."""
    from PIL import Image

    from lbw.render.masks import check_mask

    layers = value.get("layers") if isinstance(value, Mapping) else None
    if not isinstance(layers, list | tuple) or not layers:
        raise ProjectError("nothing is painted: paint the keep region on the cell with the brush first")
    if len(layers) > MAX_LAYERS:
        raise ProjectError(f"the drawing has {len(layers)} layers; at most {MAX_LAYERS}")
    mask = np.zeros((height, width), dtype=bool)
    for layer in layers:
        if layer is None:
            continue
        pixels = np.asarray(layer)
        if pixels.ndim != 3 or pixels.shape[2] != 4 or pixels.dtype != np.uint8:
            raise ProjectError(f"a layer of the drawing is not an RGBA image (shape {pixels.shape}, {pixels.dtype})")
        painted = pixels[..., 3] > 127
        if painted.shape != (height, width):
            image = Image.fromarray(painted.astype(np.uint8) * 255, mode="L")
            painted = np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 0
        mask |= painted
    if not mask.any():
        raise ProjectError("nothing is painted: paint the keep region on the cell with the brush first")
    try:
        return check_mask(mask, "the drawn mask")
    except LbwError as error:
        raise ProjectError(error.message) from None


def drawn_mask_path(store: Store, name: str) -> Path:
    """Where project ``name``'s drawn mask lives (whether or not it exists)."""
    from lbw.services.projects import get_project
    from lbw.services.tune_state import tune_folder

    return tune_folder(store.workspace, get_project(store, name).id).parent / DRAWN_MASK_FILE


def drawn_mask(store: Store, name: str) -> Path | None:
    """Project ``name``'s drawn mask, or None when none was saved."""
    path = drawn_mask_path(store, name)
    return path if path.is_file() else None


def save_drawn_mask(store: Store, name: str, value: Any) -> tuple[Path, int, int]:
    """Make the editor's ``value`` project ``name``'s drawn mask (at its render size); (the file, kept pixels, all
    pixels)."""
    from lbw.render.masks import save_mask
    from lbw.services.projects import get_project

    view = get_project(store, name)
    mask = mask_from_editor(value, view.settings.width, view.settings.height)
    path = drawn_mask_path(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_mask(mask, path), int(mask.sum()), int(mask.size)


def editor_background(store: Store, name: str) -> Path | None:
    """The cell to draw on: the ALL cell of the project's latest iteration that has one (its first seed), else
    that iteration's first cell; None before anything was rendered."""
    from lbw.services.projects import get_iteration, list_iterations

    for summary in reversed(list_iterations(store, name)):
        view = get_iteration(store, name, summary.number)
        cells = [cell for cell in view.cells if Path(cell.image).is_file()]
        if not cells:
            continue
        full = [cell for cell in cells if cell.label == "ALL"]
        return Path((full or cells)[0].image)
    return None


def drawn_mask_counts(store: Store, name: str) -> tuple[int, int] | None:
    """(kept pixels, all pixels) of project ``name``'s drawn mask at its render size; None when there is none or it
    no longer reads as a mask (the tune then says why)."""
    from lbw.render.masks import read_mask
    from lbw.services.projects import get_project

    path = drawn_mask(store, name)
    if path is None:
        return None
    settings = get_project(store, name).settings
    try:
        mask = read_mask(path, settings.width, settings.height)
    except LbwError:
        return None
    return int(mask.sum()), int(mask.size)
