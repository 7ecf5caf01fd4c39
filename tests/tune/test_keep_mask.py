"""Keep masks: the PNG rules and refusals (``lbw.render.masks``), and ``run_tune`` with a mask on the tiny model."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.errors import ProjectError, RenderError
from lbw.render.masks import bounding_box, mask_digest, outline, read_mask, save_mask
from lbw.render.scores import keep_mask
from lbw.services.demo_render import DEMO_PROMPT
from lbw.services.projects import ProjectSettings, create_project, get_project, open_workspace
from lbw.services.tune import TuneOptions, run_tune

OPEN = ("BASE", "IN01", "OUT00", "OUT03", "OUT07", "OUT11")
BOX = "0.25,0.2,0.75,0.7"
BOX_MASK = keep_mask(BOX, 64, 64)  # pixels 16..47 x 13..44
NOISE = (np.random.default_rng(0).random((64, 64)) > 0.5).astype(np.uint8) * 255  # about 1 KB as a PNG


def _project(tmp_path: Path, assets):
    model, lora = assets
    settings = ProjectSettings(lora=str(lora), model=str(model), prompt=DEMO_PROMPT, negative="lowres", width=64,
                               height=64, steps=2, seeds=(1,))
    store = open_workspace(tmp_path / "ws")
    create_project(store, "Face", settings, Sheet.new("Face", SD26).fix([b for b in SD26.ids if b not in OPEN]))
    return store


class Stop(KeyboardInterrupt):
    pass


class StopAt:
    """``on_cell`` that stops the tune (as Ctrl-C would) once ``at`` cells were rendered."""

    def __init__(self, at: int) -> None:
        self.at, self.rendered = at, 0

    def __call__(self, done, total, label, cached):
        self.rendered += 0 if cached else 1
        if self.rendered >= self.at:
            raise Stop()


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path, format="PNG")
    return path


def test_greyscale_alpha_and_sixteen_bit_masks_keep_the_pixels_above_half(tmp_path):
    grey = np.zeros((8, 8), np.uint8)
    grey[2:5, 1:4] = 200
    grey[6, 6] = 127                                            # at most 50%: not kept
    assert np.array_equal(read_mask(_png(tmp_path / "g.png", grey), 8, 8), grey > 127)
    rgba = np.zeros((8, 8, 4), np.uint8)                       # black everywhere: the alpha decides
    rgba[..., 3] = 40
    rgba[1:3, 1:7, 3] = 255
    assert int(read_mask(_png(tmp_path / "a.png", rgba), 8, 8).sum()) == 12
    opaque = np.full((8, 8, 4), 255, np.uint8)                 # alpha without transparency: the luminance decides
    opaque[..., :3] = 0
    opaque[0, :, :3] = 255
    assert read_mask(_png(tmp_path / "o.png", opaque), 8, 8).sum(axis=1).tolist() == [8, 0, 0, 0, 0, 0, 0, 0]
    deep = np.zeros((8, 8), np.uint16)
    deep[:, :2] = 40000
    deep[:, 2] = 30000
    found = read_mask(_png(tmp_path / "d.png", deep), 8, 8)
    assert found[:, :2].all() and not found[:, 2:].any()


def test_a_mask_of_another_size_is_resized_with_nearest_neighbour(tmp_path):
    small = np.zeros((4, 4), np.uint8)
    small[1, 2] = 255
    found = read_mask(_png(tmp_path / "s.png", small), 8, 8)
    assert found.sum() == 4 and found[2:4, 4:6].all()         # one pixel -> its 2x2 block, no grey edge
    assert bounding_box(found).as_text() == "4,2,6,4"
    path = save_mask(found, tmp_path / "copy.png")
    assert mask_digest(read_mask(path, 8, 8)) == mask_digest(found)
    assert np.array_equal(outline(BOX_MASK), BOX_MASK & ~keep_mask("17,14,47,44", 64, 64))  # the box's border


def _huge_png(path: Path) -> Path:
    """A PNG header claiming 20000 x 20000 pixels (beyond Pillow's decompression-bomb limit), no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b"GIF89a not a png"), "not a readable PNG keep mask"),
    (lambda p: p.write_bytes(_png(p, NOISE).read_bytes()[:500]), "not a readable PNG keep mask (image file is "
                                                                   "truncated"),
    (lambda p: _png(p, np.zeros((64, 64), np.uint8)), "the keep mask keeps no pixel"),
    (lambda p: _png(p, np.full((16, 16), 255, np.uint8)), "keeps every pixel of the 64x64 image: nothing is left"),
    (_huge_png, "refused: Image size (400000000 pixels) exceeds limit"),
    (lambda p: p.mkdir(), "not a readable PNG keep mask"),
])
def test_bad_masks_are_refused_in_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "mask.png"
    make(path)
    with pytest.raises(RenderError) as caught:
        read_mask(path, 64, 64)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    with pytest.raises(RenderError, match="cannot read the keep mask"):
        read_mask(tmp_path / "missing.png", 64, 64)


def test_a_mask_tune_scores_as_the_box_tune_when_the_mask_is_that_box_and_resumes_from_its_copy(assets, tmp_path):
    options = TuneOptions(keep_box=BOX, budget=14, strategy="search", held_out_seeds=(2,))
    boxed = run_tune(_project(tmp_path / "box", assets), "Face", options)
    user = _png(tmp_path / "face.png", np.where(BOX_MASK, 255, 0).astype(np.uint8))
    store = _project(tmp_path / "mask", assets)
    masked = replace(options, keep_box=None, keep_mask=str(user))
    with pytest.raises(Stop):
        run_tune(store, "Face", masked, on_cell=StopAt(5))
    user.unlink()                                   # the user's file is gone: the tune continues from its copy
    report = run_tune(store, "Face", replace(masked, keep_mask=None))
    assert [(r.name, r.tuning, r.held_out) for r in report.rows] == [
        (r.name, r.tuning, r.held_out) for r in boxed.rows]
    assert report.values == boxed.values and report.keep_box is None
    copy = store.workspace / "projects" / "1" / "tune" / "run-0001" / "keep-mask.png"
    assert report.keep_mask.file == copy and report.keep_mask.kept_pixels == 32 * 32
    assert report.keep_mask.bounding_box == "16,13,48,45" and report.keep_mask.sha256 == mask_digest(BOX_MASK)
    data = json.loads(report.report.read_text(encoding="utf-8"))
    assert data["keep_box"] is None and data["keep_mask"]["sha256"] == mask_digest(BOX_MASK)
    state = json.loads((store.workspace / "projects" / "1" / "tune" / "state.json").read_text())
    assert state["fingerprint"]["keep_mask"] == mask_digest(BOX_MASK) and "keep_box" not in state["fingerprint"]
    assert get_project(store, "Face").settings.roi == "16,13,48,45"         # the analyzer's region: its bounds
    # the grid outlines the mask in white, as it outlines the box
    with Image.open(report.grid) as grid, Image.open(boxed.grid) as other:
        assert grid.size == other.size
        assert np.array_equal(np.asarray(grid)[-200:], np.asarray(other)[-200:])  # the cells, below the titles


def test_a_changed_mask_is_other_options_and_both_regions_at_once_are_refused(assets, tmp_path):
    store = _project(tmp_path, assets)
    user = _png(tmp_path / "face.png", np.where(BOX_MASK, 255, 0).astype(np.uint8))
    options = TuneOptions(keep_mask=user, budget=14, strategy="search", held_out_seeds=(2,))
    with pytest.raises(Stop):
        run_tune(store, "Face", options, on_cell=StopAt(1))
    changed = BOX_MASK.copy()
    changed[0, 0] = True
    _png(user, np.where(changed, 255, 0).astype(np.uint8))
    with pytest.raises(ProjectError, match=r"unfinished tune with other options or settings \(.*keep_mask "
                                           f"{mask_digest(BOX_MASK)}.*pass --restart"):
        run_tune(store, "Face", options)
    with pytest.raises(ProjectError) as caught:
        run_tune(store, "Face", replace(options, keep_box=BOX))
    assert str(caught.value) == ("give the keep region as a box (--keep-box) or a mask (--keep-mask), not both")
    empty = _png(tmp_path / "empty.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ProjectError, match=f"^{empty}: the keep mask keeps no pixel"):
        run_tune(store, "Face", replace(options, keep_mask=empty, restart=True))


def test_the_editors_painted_layers_become_the_projects_drawn_mask(assets, tmp_path):
    from lbw.services.keep_draw import (
        drawn_mask,
        drawn_mask_counts,
        editor_background,
        mask_from_editor,
        save_drawn_mask,
    )
    from lbw.services.tune_live import report_summary, tune_form

    layer = np.zeros((32, 32, 4), np.uint8)                    # half the render size: resized with nearest
    layer[4:10, 8:12] = (255, 59, 48, 255)                     # a painted stroke (colour does not matter)
    layer[20, 20] = (255, 59, 48, 100)                         # a faint edge: not kept
    other = np.zeros((32, 32, 4), np.uint8)
    other[0, 0, 3] = 200
    value = {"background": np.full((32, 32, 3), 255, np.uint8), "layers": [layer, None, other], "composite": None}
    mask = mask_from_editor(value, 64, 64)
    assert mask.sum() == (6 * 4 + 1) * 4 and mask[8:20, 16:24].all() and mask[0:2, 0:2].all()
    for bad, message in (({"layers": []}, "nothing is painted"), ({"layers": [np.zeros((8, 8, 4), np.uint8)]},
                         "nothing is painted"), ("x", "nothing is painted"),
                         ({"layers": [np.full((8, 8, 4), 255, np.uint8)]}, "keeps every pixel"),
                         ({"layers": [np.zeros((8, 8), np.uint8)]}, "is not an RGBA image")):
        with pytest.raises(ProjectError, match=message):
            mask_from_editor(bad, 64, 64)
    store = _project(tmp_path, assets)
    assert drawn_mask(store, "Face") is None and editor_background(store, "Face") is None
    path, kept, total = save_drawn_mask(store, "Face", value)
    assert path == store.workspace / "projects" / "1" / "keep-mask.png" == drawn_mask(store, "Face")
    assert (kept, total) == (100, 4096) == drawn_mask_counts(store, "Face")
    assert np.array_equal(read_mask(path, 64, 64), mask)
    view = get_project(store, "Face")
    assert tune_form(view, keep_mask=path).keep_mask == path
    with pytest.raises(ProjectError, match="not both"):
        tune_form(view, keep_box=BOX, keep_mask=path)
    summary = report_summary({"keep_box": None, "keep_mask": {"file": "/x/run-0001/keep-mask.png", "kept_pixels": 100,
                                                               "bounding_box": "0,0,24,20"}})
    assert summary.keep_box == "mask keep-mask.png (100 px within 0,0,24,20)"
