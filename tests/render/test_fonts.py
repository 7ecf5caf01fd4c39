"""Japanese labels and titles in grids draw as glyphs with a CJK font found at run time, not as boxes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from lbw.render import fonts
from lbw.render.grid import compose_grid

TITLE = "ゴブ姫 (サブ)"


def _ink(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    canvas = Image.new("L", (80, 80), 255)
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, fill=0)
    return np.asarray(canvas) < 128


def _hide_cjk_fonts(m: pytest.MonkeyPatch, tmp_path) -> None:
    """A machine without a CJK font: fontconfig sees an empty configuration, no known path, no LBW_FONT."""
    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?><fontconfig><cachedir>' + str(tmp_path) + "</cachedir></fontconfig>")
    m.setenv("FONTCONFIG_FILE", str(conf))
    m.delenv(fonts.FONT_ENV, raising=False)
    m.setattr(fonts, "KNOWN_FONTS", ())
    m.setattr(fonts, "_warned", False)
    fonts.find_cjk_font.cache_clear()


@pytest.fixture
def no_cjk_font(monkeypatch, tmp_path):
    _hide_cjk_fonts(monkeypatch, tmp_path)
    yield
    fonts.find_cjk_font.cache_clear()


def _cjk_or_skip() -> fonts.FontFile:
    fonts.find_cjk_font.cache_clear()
    found = fonts.find_cjk_font()
    if found is None:
        pytest.skip(f"no CJK font on this machine ({fonts.INSTALL_HINT})")
    return found


def test_latin_labels_keep_the_built_in_font():
    assert not fonts.needs_wide_font("SubIN05_0\nIN05 = 0.25 seed 1 é")
    assert fonts.needs_wide_font("ゴブ姫") and fonts.needs_wide_font("階層")
    default = ImageFont.load_default(size=20)
    assert fonts.label_font(20, ["seed 1"]).getname() == default.getname()


def test_japanese_glyphs_differ_from_each_other_and_from_boxes(no_cjk_font):
    # Without a CJK font every Japanese character is the same box ("tofu"), and one warning says so.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = fonts.label_font(40, [TITLE])
        fonts.label_font(40, [TITLE])
    assert [w.category for w in caught] == [fonts.FontWarning]
    assert "fonts-ipaexfont-gothic" in str(caught[0].message) and fonts.FONT_ENV in str(caught[0].message)
    assert "no CJK font found" in fonts.cjk_font_message()
    boxes = [_ink(fallback, ch) for ch in "ゴ姫階"]
    assert boxes[0].any() and all((b == boxes[0]).all() for b in boxes)


def test_cjk_font_draws_distinct_glyphs():
    found = _cjk_or_skip()
    assert found.path.is_file() and str(found.path) in fonts.cjk_font_message()
    font = fonts.label_font(40, [TITLE])
    glyphs = [_ink(font, ch) for ch in "ゴ姫階"]
    assert all(g.sum() > 40 for g in glyphs)
    assert not (glyphs[0] == glyphs[1]).all() and not (glyphs[1] == glyphs[2]).all()


def test_grid_with_japanese_title_and_labels(monkeypatch, tmp_path):
    _cjk_or_skip()
    cell = Image.new("RGB", (128, 128), (120, 160, 200))
    rows, labels, columns = [[cell, cell]], ["ゴブ姫_IN05\nIN05 = 0"], ["シード 1", "シード 2"]
    grid = compose_grid(rows, labels, columns, title=TITLE)
    drawn = np.asarray(grid)
    with monkeypatch.context() as m, warnings.catch_warnings():
        _hide_cjk_fonts(m, tmp_path)
        warnings.simplefilter("ignore", fonts.FontWarning)
        tofu = np.asarray(compose_grid(rows, labels, columns, title=TITLE))
    fonts.find_cjk_font.cache_clear()
    band = slice(0, 18)  # the title line
    assert (drawn[band, :120].sum(axis=2) < 500).sum() > 60  # the title has ink
    assert tofu.shape != drawn.shape or (tofu[band] != drawn[band]).any()
    grid.save(tmp_path / "grid-ja.png")


def test_long_japanese_label_wraps_between_characters():
    _cjk_or_skip()
    cell = Image.new("RGB", (64, 64), (120, 160, 200))
    long = "とても長い日本語のラベルはセルの幅で折り返される"
    grid = np.asarray(compose_grid([[cell]], ["Sub"], [long]))
    cells = np.argwhere((grid == (120, 160, 200)).all(axis=2))
    top = cells.min(axis=0)[0]
    assert top > 3 * 12  # several lines of header above the cell
    assert grid.shape[1] < 64 * 4  # the header did not widen the grid: it wrapped
