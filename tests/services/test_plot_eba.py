"""Services: the analyzer end to end (Diff % checked on the saved images), sheet and preset plots, re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.domain.sheet_file import sheet_from_toml
from lbw.errors import LbwError
from lbw.files.lora_file import LoraFile
from lbw.render.analysis import Thresholds
from lbw.render.backends.diffusers_backend import DiffusersBackend
from lbw.render.plan import LoraSpec
from lbw.services.analyze import eba_plan, run_eba
from lbw.services.demo_render import demo_settings
from lbw.services.plot import load_plan_source, plan_from_presets, plan_from_sheet, plot


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from lbw.services.demo_render import build_demo_assets

    torch.set_num_threads(1)
    return build_demo_assets(tmp_path_factory.mktemp("assets"))


def _rgb(path: Path) -> list[list[tuple[int, int, int]]]:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return [[rgb.getpixel((x, y)) for x in range(rgb.width)] for y in range(rgb.height)]


def _independent_diff(probe: Path, source: Path, threshold: int) -> float:
    """Oracle from pixel lists (no numpy): share of channel samples with |difference| > threshold."""
    a, b = _rgb(probe), _rgb(source)
    samples = [abs(p - s) for row_a, row_b in zip(a, b, strict=True) for pa, pb in zip(row_a, row_b, strict=True)
               for p, s in zip(pa, pb, strict=True)]
    return 100.0 * sum(1 for d in samples if d > threshold) / len(samples)


def test_eba_end_to_end(assets, tmp_path):
    model, lora = assets
    spec = LoraSpec(path=str(lora), name="tiny")
    plan = eba_plan(spec, model=str(model), settings=demo_settings((1,)), threshold=20, name="Tiny",
                    roi="0.25,0.25,0.75,0.75", thresholds=Thresholds(important=5, unneeded=1))
    report = run_eba(plan, DiffusersBackend(device="cpu"), tmp_path)
    present = {m.block for m in LoraFile.open(lora).modules if m.block}
    assert report.run.rendered == 1 + len(present)  # blocks without modules reuse the source image
    data = json.loads((tmp_path / "analysis.json").read_text())
    by_block = {entry["block"]: entry for entry in data["blocks"]}
    assert set(by_block) == set(SD26.ids)
    cells = {job.cell.label: path for job, path in report.run.cell_paths.items()}
    for block in ("IN01", "OUT05", "IN00", "M00"):
        expected = _independent_diff(cells[block], cells["source"], 20)
        assert by_block[block]["diff_percent"] == pytest.approx(expected, abs=1e-12)
    assert by_block["IN00"]["diff_percent"] == 0.0  # no module in IN00: identical to the source
    scores = [entry["roi_diff_percent"] for entry in data["blocks"]]  # ranked by the region's Diff %
    assert scores == sorted(scores, reverse=True)
    for entry in data["blocks"]:
        assert entry["class"] == Thresholds(5, 1).classify(entry["roi_diff_percent"])
    sheet = sheet_from_toml((tmp_path / "suggested-sheet.toml").read_text())
    for block in SD26.ids:
        expected_value = {"important": 1.0, "unneeded": 0.0, "unclear": 0.5}[by_block[block]["class"]]
        assert sheet.value(block) == expected_value
        assert (block in sheet.fixed) == (by_block[block]["class"] != "unclear")
    grid = Image.open(report.seeds[0].grid)
    assert "lbw_plan" in grid.text and grid.height > 26 * 64
    diff = np.asarray(Image.open(report.seeds[0].diff_images["IN01"]))
    probe, source = (np.asarray(Image.open(cells[b]).convert("RGB"), int) for b in ("IN01", "source"))
    assert np.array_equal(diff, np.abs(probe - source))


def test_plot_from_sheet_rerun_and_grid_plan(assets, tmp_path):
    model, lora = assets
    sheet = Sheet.new("Face", SD26, 0.5).fix([b for b in SD26.ids if b not in ("IN01", "OUT03", "OUT11")])
    spec = LoraSpec(path=str(lora), name="tiny")
    plan = plan_from_sheet(sheet, "subadd", settings=demo_settings((1,)), loras=(spec,), model=str(model))
    assert [c.label for c in plan.cells] == ["Sub", "SubIN01_0", "SubOUT03_0", "SubOUT11_0",
                                             "Add", "AddIN01_1", "AddOUT03_1", "AddOUT11_1"]
    result = plot(plan, DiffusersBackend(device="cpu"), tmp_path)
    assert (result.rendered, result.reused) == (7, 1)  # Add equals Sub: rendered once
    assert load_plan_source(result.grids[0]) == plan
    again = plot(load_plan_source(tmp_path / "plan.json"), DiffusersBackend(device="cpu"), tmp_path)
    assert (again.rendered, again.reused) == (0, 8)
    names = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert names[:2] == ["000_Sub_seed1.png", "001_SubIN01_0_seed1.png"]


def test_presets_plan_refuses_unknown_names():
    text = "A:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\nB:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n"
    plan = plan_from_presets(text, ["B", "A"], settings=demo_settings(), loras=(LoraSpec(name="x"),))
    assert [c.label for c in plan.cells] == ["B", "A"] and plan.layout == "SD17"
    with pytest.raises(LbwError, match="C"):
        plan_from_presets(text, ["C"], settings=demo_settings(), loras=(LoraSpec(name="x"),))


def test_eba_plan_reruns_its_analysis_from_json_and_grid(assets, tmp_path):
    model, lora = assets
    blocks = ("IN01", "IN02", "OUT11")
    plan = eba_plan(LoraSpec(path=str(lora), name="tiny"), model=str(model), settings=demo_settings((1,)),
                    blocks=blocks, probe=0.0, threshold=10, diff_color="white", transpose=True, roi="8,8,56,56",
                    thresholds=Thresholds(important=20, unneeded=2), name="Tiny")
    first = plot(plan, DiffusersBackend(device="cpu"), tmp_path)
    assert load_plan_source(tmp_path / "plan.json") == plan  # every analysis option travels in the plan
    assert load_plan_source(first.seeds[0].grid) == plan
    again = plot(load_plan_source(first.seeds[0].grid), DiffusersBackend(device="cpu"), tmp_path)
    assert (again.run.rendered, again.run.reused) == (0, 4)
    assert again.changes == first.changes and again.classes == first.classes
    data = json.loads((tmp_path / "analysis.json").read_text())
    assert data["threshold"] == 10 and data["region"] == "8,8,56,56" and data["range"] == [0.0, 1.0]
    assert data["classification"] == {"important_at_least": 20, "unneeded_below": 2, "score": "region Diff %"}
    cells = {job.cell.label: path for job, path in again.run.cell_paths.items()}
    for change in again.changes:
        expected = _independent_diff(cells[change.block], cells["source"], 10)
        assert change.diff_percent == pytest.approx(expected, abs=1e-12)
    white = np.asarray(Image.open(again.seeds[0].diff_images["OUT11"]), int)
    probe, source = (np.asarray(Image.open(cells[b]).convert("RGB"), int) for b in ("OUT11", "source"))
    assert np.array_equal(white, 255 - np.abs(probe - source))  # LBW's white background: inverted
    # Transposed ("change X-Y"): blocks are columns, so the source row shows the source once per block, side by side.
    spots = _places(np.asarray(Image.open(again.seeds[0].grid).convert("RGB")), source.astype(np.uint8))
    assert len(spots) == 3 and len({y for y, _ in spots}) == 1


def _places(grid: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners where ``tile`` appears pixel for pixel in ``grid``."""
    height, width = tile.shape[:2]
    rows = np.lib.stride_tricks.sliding_window_view(grid, (1, width, 3))[..., 0, 0, :, :]
    candidates = np.argwhere((rows == tile[0]).all(axis=(2, 3)))
    return [(int(y), int(x)) for y, x in candidates
            if y + height <= grid.shape[0] and np.array_equal(grid[y : y + height, x : x + width], tile)]


def test_eba_row_labels_round_like_lbw():
    from lbw.render.analysis import BlockChange
    from lbw.render.eba import row_text

    assert row_text(BlockChange("IN01", 12.34567)) == "IN01\nDiff : 12.346%"
    assert row_text(BlockChange("IN02", 12.5)) == "IN02\nDiff : 12.5%"  # str(round(x, 3)), as LBW prints it
    assert row_text(BlockChange("IN03", 0.0)) == "IN03\nDiff : 0.0%"
    assert row_text(BlockChange("M00", 1.0005)) == "M00\nDiff : 1.0%"  # 1.0005 is 1.000499... in binary
    assert row_text(BlockChange("OUT00", 4.0, 2.0, 25.0)) == (
        "OUT00\nDiff : 4.0%\nregion : 2.000%\n25.0% of change inside")
