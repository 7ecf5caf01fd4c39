"""The keep region of ``lbw tune``: a box or a mask PNG, resolved once into the boolean mask the scores use.

Exactly one of ``keep_box`` and ``keep_mask`` may be given (both: one clear error). When neither is, an unfinished
or finished tune that used a mask continues with its own copy of it (``run-NNNN/keep-mask.png``, written when the
tune starts, so a resumed tune does not depend on the user's file staying put); otherwise the project's region
(``settings.roi``, a box) is used. A mask enters the tune's fingerprint as the sha256 of the mask as used
(``lbw.render.masks.mask_digest``): another mask is other options. The project's region (what the tutorial's
analyzer measures) becomes the box itself, or the mask's bounding box (the analyzer knows boxes only).

Example:
    >>> region = keep_region(options, view, folder, state)
    >>> region.fingerprint, region.roi, int(region.mask.sum())
    ({'keep_mask': '6a0f...'}, '16,13,48,45', 1024)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lbw.errors import LbwError, ProjectError
from lbw.services.project_types import ProjectView

KEEP_MASK_FILE = "keep-mask.png"


@dataclass(frozen=True)
class KeepRegion:
    """The resolved keep region: the mask, the box text (``x0,y0,x1,y1`` in pixels; None for a mask), the mask's
    sha256 and the file it was read from (None for a box), and the project region it sets (``roi``)."""

    mask: np.ndarray
    box: str | None
    digest: str | None
    source: Path | None
    roi: str

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What enters the tune's fingerprint: the box, or the mask's sha256."""
        return {"keep_box": self.box} if self.digest is None else {"keep_mask": self.digest}

    @property
    def kept(self) -> int:
        """Kept pixels."""
        return int(self.mask.sum())

    def describe(self, copy: Path | None = None) -> str:
        """``keep box 16,13,48,45`` or ``keep mask <file> (1024 of 64x64 pixels)``."""
        if self.digest is None:
            return f"keep box {self.box}"
        height, width = self.mask.shape
        return f"keep mask {copy or self.source} ({self.kept} of {width}x{height} pixels)"


def keep_region(options: Any, view: ProjectView, folder: Path, state: Mapping[str, Any] | None) -> KeepRegion:
    """The keep region of a tune of ``view`` with ``options`` (``keep_box``, ``keep_mask``); ``folder`` and
    ``state``: the tune's folder and the state it would continue (None for a new tune)."""
    from lbw.render.analysis import Box
    from lbw.render.masks import bounding_box, mask_digest, read_mask
    from lbw.render.scores import keep_mask
    from lbw.services.tune_state import run_folder

    width, height = view.settings.width, view.settings.height
    if options.keep_box is not None and options.keep_mask is not None:
        raise ProjectError("give the keep region as a box (--keep-box) or a mask (--keep-mask), not both")
    path = None if options.keep_mask is None else Path(options.keep_mask)
    if path is None and options.keep_box is None and state is not None:
        digest = (state.get("fingerprint") or {}).get("keep_mask")
        run = state.get("run")
        if isinstance(digest, str) and isinstance(run, int) and not isinstance(run, bool):
            copy = run_folder(folder, run) / KEEP_MASK_FILE
            if copy.is_file():
                path = copy
    if path is not None:
        mask = _user_error(lambda: read_mask(path, width, height))
        return KeepRegion(mask, None, mask_digest(mask), path, bounding_box(mask).as_text())
    box = options.keep_box if options.keep_box is not None else view.settings.roi
    if not box:
        raise ProjectError(f"project {view.name!r} has no region: give --keep-box x0,y0,x1,y1 (the part of the "
                           "image the LoRA is for, e.g. the face; fractions or pixels) or --keep-mask PNG")
    mask = _user_error(lambda: keep_mask(box, width, height))
    return KeepRegion(mask, Box.parse(box, width, height).as_text(), None, None, box)


def copy_mask(region: KeepRegion, out: Path) -> Path | None:
    """Write a mask region's mask into the run folder ``out`` (unless the copy there is already it); the path, or
    None for a box."""
    from lbw.render.masks import mask_digest, read_mask, save_mask

    if region.digest is None:
        return None
    copy = out / KEEP_MASK_FILE
    if copy.is_file():
        try:
            if mask_digest(read_mask(copy, region.mask.shape[1], region.mask.shape[0])) == region.digest:
                return copy
        except LbwError:
            pass  # damaged: written again below
    out.mkdir(parents=True, exist_ok=True)
    return save_mask(region.mask, copy)


def _user_error(make: Any) -> Any:
    try:
        return make()
    except LbwError as error:
        raise ProjectError(error.message, where=error.where) from None
