"""Diff %, diff images, heatmaps, regions, classification; grids and their embedded plan."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lbw.errors import RenderError
from lbw.render.analysis import (
    Box,
    Thresholds,
    block_change,
    classify,
    diff_image,
    diff_percent,
    heatmap_overlay,
    rank,
)
from lbw.render.grid import PLAN_CHUNK, compose_grid, font_size_for, read_png_text, save_png


def _pair(seed: int = 0, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    probe = np.clip(source.astype(int) + rng.integers(-40, 41, source.shape), 0, 255).astype(np.uint8)
    return probe, source


def _loop_diff_percent(probe: np.ndarray, source: np.ndarray, threshold: int) -> float:
    """Independent oracle: walk every channel sample in Python."""
    count = 0
    height, width, _ = probe.shape
    for y in range(height):
        for x in range(width):
            for c in range(3):
                if abs(int(probe[y, x, c]) - int(source[y, x, c])) > threshold:
                    count += 1
    return 100.0 * count / (height * width * 3)


@pytest.mark.parametrize("threshold", [0, 10, 20, 39])
def test_diff_percent_matches_sample_count(threshold):
    probe, source = _pair(threshold)
    assert diff_percent(probe, source, threshold) == _loop_diff_percent(probe, source, threshold)


def test_threshold_is_strict_and_counts_channels():
    source = np.zeros((1, 2, 3), np.uint8)
    probe = source.copy()
    probe[0, 0] = (20, 21, 255)
    assert diff_percent(probe, source) == pytest.approx(100 * 2 / 6)
    assert diff_percent(source, probe) == pytest.approx(100 * 2 / 6)  # absolute difference, no wrap-around


def test_region_numbers():
    source = np.zeros((10, 10, 3), np.uint8)
    probe = source.copy()
    probe[0:2, 0:10] = 100  # 20 pixels changed, 4 of them inside the box
    box = Box.parse("0,0,2,5", 10, 10)
    change = block_change("IN01", probe, source, 20, box)
    assert change.diff_percent == pytest.approx(20.0)
    assert change.roi_diff_percent == pytest.approx(100 * 4 / 10)
    assert change.roi_share_percent == pytest.approx(100 * 4 / 20)
    assert change.score == change.roi_diff_percent
    assert Box.parse("0.25,0,0.75,0.5", 512, 512) == Box(128, 0, 384, 256)
    with pytest.raises(RenderError, match="expected four numbers"):
        Box.parse("1,2,3", 10, 10)
    with pytest.raises(RenderError, match="is empty"):
        Box.parse("5,5,5,9", 10, 10)
    for text in ("nan,0,1,1", "0,inf,1,1", "0,0,1e400,1"):  # not a crash in round()
        with pytest.raises(RenderError, match="four finite numbers"):
            Box.parse(text, 10, 10)


def test_diff_image_and_heatmap():
    probe, source = _pair(3)
    black = np.asarray(diff_image(probe, source))
    assert np.array_equal(black, np.abs(probe.astype(int) - source.astype(int)).astype(np.uint8))
    assert np.array_equal(np.asarray(diff_image(probe, source, "white")), 255 - black)
    with pytest.raises(RenderError, match="black or white"):
        diff_image(probe, source, "red")
    same = np.asarray(heatmap_overlay(source, source))
    assert np.array_equal(same, source)  # no change: the source shows through untouched
    assert not np.array_equal(np.asarray(heatmap_overlay(probe, source)), source)


def test_classification_and_ranking():
    probe, source = _pair(1)
    changes = [block_change(b, p, source) for b, p in (("IN01", probe), ("IN02", source))]
    rule = Thresholds(important=5.0, unneeded=1.0)
    assert classify(changes, rule) == {"IN01": "important", "IN02": "unneeded"}
    assert [c.block for c in rank(changes)] == ["IN01", "IN02"]
    assert Thresholds(5, 1).classify(3.0) == "unclear" and Thresholds(5, 1).classify(1.0) == "unclear"
    assert Thresholds(5, 1).classify(5.0) == "important"
    assert "important: Diff % >= 5" in rule.describe()
    with pytest.raises(RenderError, match="must not exceed"):
        Thresholds(important=1, unneeded=2)


def test_grid_layout_and_plan_chunk(tmp_path):
    cell = Image.new("RGB", (64, 48), (10, 200, 30))
    grid = compose_grid([[cell, None], [cell, cell]], ["Sub", "SubIN01_0\nIN01 = 0"], ["seed 1", "seed 2"],
                        title="face (sub)")
    assert grid.width > 2 * 64 and grid.height > 2 * 48
    pixels = np.asarray(grid)
    assert (pixels == (10, 200, 30)).all(axis=2).sum() == 3 * 64 * 48  # three cells pasted whole
    path = save_png(grid, tmp_path / "grid.png", {PLAN_CHUNK: '{"lbw_plan": 1}'})
    assert read_png_text(path) == {PLAN_CHUNK: '{"lbw_plan": 1}'}
    assert font_size_for(512) == 25 and font_size_for(64) == 12
    with pytest.raises(RenderError, match="2x2 cells but 1x2 labels"):
        compose_grid([[cell, cell], [cell, cell]], ["a"], ["x", "y"])


def test_labels_are_readable_at_512_px_cells():
    cell = Image.new("RGB", (512, 512), (120, 160, 200))
    grid = compose_grid([[cell, cell]], ["SubIN01_0\nIN01 = 0"], ["seed 1", "seed 2"], title="face (sub)")
    pixels = np.asarray(grid).astype(int)
    ink = (pixels.sum(axis=2) < 200)  # dark text on white
    cells = np.argwhere((pixels == (120, 160, 200)).all(axis=2))
    top, left = cells.min(axis=0)
    header = np.argwhere(ink[:top, left:left + 512])
    assert header[:, 0].max() - header[:, 0].min() >= 17  # "seed 1": 25 px font, glyphs about 18 px tall
    assert top - header[:, 0].max() >= 12  # half a line between the header and the cells
    label = np.argwhere(ink[top:top + 512, :left])
    assert label[:, 0].max() - label[:, 0].min() >= 45  # two lines of row label
    assert left - label[:, 1].max() >= 12  # the row label does not touch the cells


def test_a_title_longer_than_a_narrow_grid_wraps_and_is_never_cut():
    cell = Image.new("RGB", (64, 64), (120, 160, 200))
    title = "auto: ALL vs tuned vs LoRA off (keep box 21,13,43,38) " + "x" * 60  # one word longer than any line
    plain = np.asarray(compose_grid([[cell], [cell]], ["ALL", "OFF"], ["seed 1"]))
    grid = np.asarray(compose_grid([[cell], [cell]], ["ALL", "OFF"], ["seed 1"], title=title))
    ink = (grid.sum(axis=2) < 3 * 128)
    band = ink[: grid.shape[0] - plain.shape[0]]  # the title's lines, above the labelled cells
    assert grid.shape[0] - plain.shape[0] > 3 * 10  # three lines (the long word alone on the last)
    assert band.any() and not band[:, -2:].any()  # the canvas is wide enough for the longest line
    assert grid.shape[1] > plain.shape[1]
