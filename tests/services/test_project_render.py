"""Project renders on the tiny model: iterations with Diff % per cell, clicks on cells, the analyzer, cancel."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.errors import Cancelled, ProjectError
from lbw.render.grid import read_png_text
from lbw.services.demo_render import DEMO_PROMPT
from lbw.services.projects import (
    ProjectSettings,
    create_project,
    fix_cell,
    get_iteration,
    get_project,
    list_iterations,
    open_workspace,
    project_log,
    render_iteration,
    run_analysis,
    start_sheet_from_analysis,
    update_settings,
)

CPU = {"device": "cpu"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from lbw.services.demo_render import build_demo_assets

    torch.set_num_threads(1)
    return build_demo_assets(tmp_path_factory.mktemp("assets"))


def _settings(assets, **changes) -> ProjectSettings:
    model, lora = assets
    base = ProjectSettings(lora=str(lora), model=str(model), prompt=DEMO_PROMPT, negative="lowres", width=64,
                           height=64, steps=2, seeds=(1,))
    return base.with_changes(changes) if changes else base


def _open_sheet(*blocks: str) -> Sheet:
    return Sheet.new("Face", SD26).fix([b for b in SD26.ids if b not in blocks])


def _diff(a: Path, b: Path) -> float:
    x, y = (np.asarray(Image.open(p).convert("RGB"), np.int16) for p in (a, b))
    return 100.0 * float((np.abs(x - y) > 20).sum()) / x.size


def test_render_records_an_iteration_then_a_click_and_a_subadd(assets, tmp_path):
    store = open_workspace(tmp_path / "ws")
    view = create_project(store, "Face", _settings(assets), _open_sheet("IN01", "OUT03"))
    seen = []
    it = render_iteration(store, "Face", backend_options=CPU, progress=lambda *event: seen.append(event))
    assert seen[0] == (0, 3, "", False)  # the total, before the first cell is drawn
    assert seen[-1][:2] == (3, 3) and [e[2] for e in seen[1:]] == ["Sub", "SubIN01_0.5", "SubOUT03_0.5"]
    assert (it.number, it.kind) == (1, "sub")
    assert [(c.label, c.block, c.value, c.seed, c.base_label) for c in it.cells] == [
        ("Sub", None, None, 1, None), ("SubIN01_0.5", "IN01", 0.5, 1, "Sub"), ("SubOUT03_0.5", "OUT03", 0.5, 1, "Sub")]
    for cell in it.cells:
        assert cell.image.is_file() and cell.image.is_relative_to(store.workspace)
        assert cell.path == cell.image.relative_to(store.workspace).as_posix()
        assert hashlib.sha256(cell.image.read_bytes()).hexdigest() == cell.sha256
    base = it.cells[0].image
    for cell in it.cells[1:]:
        assert cell.diff_percent == pytest.approx(_diff(cell.image, base), abs=1e-12)
    assert it.cells[1].diff_percent > 0  # the LoRA touches IN01
    assert it.grid is not None and "lbw_plan" in read_png_text(it.grid)
    assert it.sheet_before == view.sheet and list((store.workspace / "projects" / "1" / "staging").iterdir()) == []
    after = get_project(store, "Face")
    assert after.version == view.version and after.latest == it.summary  # a render changes no editable state

    view = fix_cell(store, "Face", "SubIN01_0.5", take=True, expected_version=after.version)
    assert view.sheet.value("IN01") == 0.5 and "IN01" in view.sheet.fixed
    assert [d.detail for d in get_iteration(store, "Face", 1).decisions] == [{"cell": "SubIN01_0.5"}]

    second = render_iteration(store, "Face", mode="subadd", backend_options=CPU)
    assert [c.label for c in second.cells] == ["Sub", "SubOUT03_0.5", "Add", "AddOUT03_1.5"]
    assert [c.base_label for c in second.cells] == [None, "Sub", None, "Add"]
    assert second.sheet_before.value("IN01") == 0.5
    assert second.extra_files["reused"] >= 1  # the Add base equals the Sub base: rendered once
    assert get_project(store, "Face").mode == "subadd"
    assert [s.number for s in list_iterations(store, "Face")] == [1, 2]
    assert [e.text for e in project_log(store, "Face")][-2:] == ["mode sub -> subadd (command)",
                                                                 "iteration 2: subadd, 4 cells, from open: 1 of 26 "
                                                                 "blocks unfixed (OUT03)"]


def test_analysis_iteration_and_the_sheet_it_suggests(assets, tmp_path):
    store = open_workspace(tmp_path / "ws")
    view = create_project(store, "Face", _settings(assets, roi="0.25,0.25,0.75,0.75"), Sheet.new("Face", SD26))
    it = run_analysis(store, "Face", blocks=["IN01", "IN00", "OUT05"], probe=0.0, backend_options=CPU)
    assert it.kind == "eba" and it.analysis is not None and not it.analysis.no_change
    rows = {row.block: row for row in it.analysis.rows}
    assert set(rows) == {"IN01", "IN00", "OUT05"} and rows["IN00"].diff_percent == 0.0
    scores = [row.score for row in it.analysis.rows]
    assert scores == sorted(scores, reverse=True) and it.analysis.region == "0.25,0.25,0.75,0.75"
    source = it.cell("source").image
    for cell in it.cells[1:]:
        assert cell.value == 0.0 and cell.base_label == "source"
        assert cell.diff_percent == pytest.approx(_diff(cell.image, source), abs=1e-12)
    assert it.grids == (it.grid,) and it.grid.is_file()
    assert store.path_of(it.extra_files["diff_images"]["1"]["IN01"]).is_file()
    from lbw.services.workbench import analysis_pixel_threshold

    assert analysis_pixel_threshold(store, "Face") == 20  # what it measured with (run_analysis: LBW's 20)
    run_analysis(store, "Face", blocks=["IN01"], probe=0.0, threshold=12, backend_options=CPU)
    assert analysis_pixel_threshold(store, "Face") == 12  # the latest run's
    view = start_sheet_from_analysis(store, "Face", it.number, expected_version=get_project(store, "Face").version)
    expected = {"important": (1.0, True), "unneeded": (0.0, True), "unclear": (0.5, False)}
    for row in it.analysis.rows:
        assert (view.sheet.value(row.block), row.block in view.sheet.fixed) == expected[row.category]


def test_an_analysis_where_nothing_changes_suggests_nothing(assets, tmp_path):
    store = open_workspace(tmp_path / "ws")
    view = create_project(store, "Flat", _settings(assets, strength=0.0, te_strength=0.0))
    it = run_analysis(store, "Flat", blocks=["IN01", "OUT05"], backend_options=CPU)
    assert it.analysis is not None and it.analysis.no_change and it.analysis.max_diff_percent == 0.0
    assert it.extra_files["suggested_sheet"] is None
    with pytest.raises(ProjectError, match="no block changed the image"):
        start_sheet_from_analysis(store, "Flat", it.number, expected_version=view.version)


def test_cancel_records_nothing_and_the_next_render_reuses_the_cells(assets, tmp_path):
    store = open_workspace(tmp_path / "ws")
    create_project(store, "Face", _settings(assets), _open_sheet("IN01", "IN02", "OUT03"))
    cancel = threading.Event()

    def progress(done, total, label, cached):
        if done == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="cancelled after 2 of 4 cells; nothing was recorded"):
        render_iteration(store, "Face", backend_options=CPU, progress=progress, cancel=cancel)
    assert list_iterations(store, "Face") == []
    assert list((store.workspace / "projects" / "1" / "staging").iterdir()) == []
    it = render_iteration(store, "Face", backend_options=CPU)
    assert (it.number, it.extra_files["reused"], it.extra_files["rendered"]) == (1, 2, 2)


def test_render_refusals(assets, tmp_path):
    store = open_workspace(tmp_path / "ws")
    view = create_project(store, "Face", _settings(assets, prompt=""))
    with pytest.raises(ProjectError, match=r"the prompt is empty.*--allow-empty-prompt"):
        render_iteration(store, "Face", backend_options=CPU)
    with pytest.raises(ProjectError, match="the prompt is empty"):
        run_analysis(store, "Face", backend_options=CPU)
    update_settings(store, "Face", {"lora": None, "prompt": "x"}, expected_version=view.version)
    with pytest.raises(ProjectError, match="the project has no LoRA"):
        render_iteration(store, "Face", backend_options=CPU)
    assert list_iterations(store, "Face") == []
