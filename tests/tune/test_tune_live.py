"""``lbw.services.tune_live``: the Auto form read into options, the live watch, the score rows, the last tune read
back; a real tune on the tiny model followed by a watch, cancelled, read back and continued."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.domain.tune_rule import ScoreSummary
from lbw.errors import Cancelled, ProjectError
from lbw.services.demo_render import DEMO_PROMPT
from lbw.services.projects import ProjectSettings, create_project, get_project, list_iterations, open_workspace
from lbw.services.tune import DEFAULT_BUDGET, TuneEvent, TuneOptions, report_data, run_tune
from lbw.services.tune_live import (
    ReportSummary,
    TuneNow,
    TuneWatch,
    last_tune,
    report_summary,
    score_rows,
    tune_form,
    tune_grid,
)

OPEN = ("BASE", "IN01", "OUT00", "OUT03", "OUT07", "OUT11")
BOX = "0.25,0.2,0.75,0.7"


def _project(tmp_path: Path, assets, name: str = "Face", **changes):
    model, lora = assets
    settings = ProjectSettings(lora=str(lora), model=str(model), prompt=DEMO_PROMPT, negative="lowres", width=64,
                               height=64, steps=2, seeds=(1,), roi=BOX)
    store = open_workspace(tmp_path / "ws")
    sheet = Sheet.new(name, SD26).fix([b for b in SD26.ids if b not in OPEN])
    create_project(store, name, settings.with_changes(changes) if changes else settings, sheet)
    return store


# ------------------------------------------------------------------------------------------------- the form


def test_the_form_becomes_options(assets, tmp_path):
    view = get_project(_project(tmp_path, assets), "Face")
    options = tune_form(view, keep_box=" 0.3,0.1,0.7,0.5 ", budget=40.0, strategy="tutorial", threshold="0.8",
                        held_out="-", restart=True)
    assert options == TuneOptions(keep_box="0.3,0.1,0.7,0.5", budget=40, strategy="tutorial", threshold=0.8,
                                  held_out_seeds=(), restart=True)
    # empty fields: the project's region, the default held-out seeds; the defaults of lbw tune
    options = tune_form(view, keep_box="", held_out="  ")
    assert (options.keep_box, options.held_out_seeds, options.budget, options.strategy, options.threshold) == \
        (None, None, DEFAULT_BUDGET, "both", 0.9)
    assert tune_form(view, held_out="7, 8").held_out_seeds == (7, 8)
    assert tune_form(view, keep_box="10,10,40,40").keep_box == "10,10,40,40"  # pixels


@pytest.mark.parametrize(("fields", "message"), [
    ({"keep_box": "0,0,1"}, "keep box '0,0,1': expected four numbers x0,y0,x1,y1, found 3"),
    ({"keep_box": "nan,0,1,1"}, "keep box 'nan,0,1,1': expected four finite numbers"),
    ({"keep_box": "0,0,1e400,1"}, "expected four finite numbers"),
    ({"keep_box": "0,0,1,1"}, "covers the whole 64x64 image"),
    ({"keep_box": "5,5,5,9"}, "is empty inside a 64x64 image"),
    ({"keep_box": "1," * 200}, "at most 200 characters"),
    ({"budget": "abc"}, "the budget: 'abc' is not a number"),
    ({"budget": None}, "the budget: give a number"),
    ({"budget": 2.5}, "the budget: 2.5 is not a whole number of cells"),
    ({"budget": 0}, "the budget must be a number of cells from 1 to"),
    ({"budget": "inf"}, "is not a finite number"),
    ({"budget": True}, "the budget: give a number"),
    ({"threshold": 0}, "the threshold must be above 0 and at most 1, got 0"),
    ({"threshold": "1.5"}, "got 1.5"),
    ({"threshold": "nan"}, "the threshold: 'nan' is not a finite number"),
    ({"strategy": "greedy"}, "unknown strategy 'greedy'; expected one of tutorial, search, both, random"),
    ({"held_out": "3, x"}, "held-out seeds: seed 'x' is not a whole number (or - for none)"),
])
def test_form_mistakes_are_one_line(assets, tmp_path, fields, message):
    view = get_project(_project(tmp_path, assets), "Face")
    with pytest.raises(ProjectError) as caught:
        tune_form(view, **fields)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_region_and_no_prompt_are_refused_before_anything_runs(assets, tmp_path):
    store = _project(tmp_path, assets, roi=None)
    view = get_project(store, "Face")
    with pytest.raises(ProjectError, match="project 'Face' has no region: give the keep box x0,y0,x1,y1"):
        tune_form(view)
    assert tune_form(view, keep_box=BOX).keep_box == BOX
    store = _project(tmp_path / "b", assets, prompt="")
    with pytest.raises(ProjectError, match="prompt"):
        tune_form(get_project(store, "Face"))


# ------------------------------------------------------------------------------------------------- the watch


def test_the_watch_counts_rendered_cells_and_keeps_the_best_so_far():
    watch = TuneWatch(budget=40)
    assert watch.now() == TuneNow(budget=40)
    watch.on_cell(1, 2, "ALL", False)
    watch.on_cell(2, 2, "ALL", True)  # from the cache: free
    watch.on_cell(2, 2, "", False)  # no label: not a cell of the plan
    assert (watch.now().cells, watch.now().rendered) == (1, 1)
    best = ScoreSummary(0.91, 0.4)
    watch.on_event(TuneEvent("tutorial", "step 0.5 round 1", 12, 40, best, (1.0,) * 26))
    watch.on_cell(1, 4, "SubIN01", False)
    now = watch.now()
    assert (now.phase, now.text, now.cells, now.budget, now.rendered, now.best, now.events) == \
        ("tutorial", "step 0.5 round 1", 13, 40, 2, best, 1)
    assert now.eta(10.0) == pytest.approx(27 * 5.0)  # 27 cells left at 5 s a cell
    assert TuneNow(budget=40).eta(10.0) is None and now.eta(0.0) is None


# ------------------------------------------------------------------------------------------------- results


def test_score_rows_of_a_report():
    data = {"rows": [
        {"name": "ALL", "tuning": {"effect": 1.0, "side": 1.0, "effect_sd": 0.0, "side_sd": 0.0, "seeds": 1},
         "held_out": None},
        {"name": "search", "tuning": {"effect": 0.8704, "side": 0.9431, "effect_sd": 0.0541, "side_sd": 0.015,
                                      "seeds": 2},
         "held_out": {"effect": 0.837, "side": 0.956, "effect_sd": 0.118, "side_sd": 0.022, "seeds": 2}},
    ]}
    assert score_rows(data) == [["ALL", "1.000", "-", "1.000", "-"],
                                ["search", "0.870±0.054", "0.837±0.118", "0.943±0.015", "0.956±0.022"]]


def test_score_rows_of_a_damaged_report_show_dashes():
    data = {"rows": ["x", None, {"name": "OFF", "tuning": {"effect": "1", "side": float("nan"), "seeds": True},
                                 "held_out": {"effect": 0.5, "side": 0.25, "effect_sd": None, "seeds": 3}}]}
    assert score_rows(data) == [["OFF", "-", "0.500", "-", "0.250"]]
    assert score_rows({}) == [] and score_rows({"rows": 5}) == []
    about = report_summary({"winner": ["x"], "weights": "Face:1,0", "threshold": float("inf"), "keep_box": 5,
                            "tuning_seeds": [1, True, "2", 3], "held_out_seeds": {"a": 1}, "iterations": 7,
                            "notes": ["budget", 4]})
    assert about == ReportSummary("", "Face:1,0", "", "", (1, 3), (), (), ("budget",))


# ------------------------------------------------------------------------------------------------- a real tune


def test_a_tune_followed_cancelled_read_back_and_continued(assets, tmp_path):
    store = _project(tmp_path, assets)
    assert last_tune(store, "Face") is None
    options = replace(tune_form(get_project(store, "Face"), budget=30, strategy="tutorial", held_out="-"),
                      analyzer_threshold=20)  # LBW's 20 levels: the tiny model's classes these numbers assume
    cancel = threading.Event()
    watch = TuneWatch(options.budget)

    def on_event(event: TuneEvent) -> None:
        watch.on_event(event)
        if event.phase == "tutorial":  # after the analyzer: stop, as the page's Cancel does
            cancel.set()

    with pytest.raises(Cancelled):
        run_tune(store, "Face", options, progress=on_event, on_cell=watch.on_cell, cancel=cancel)
    stopped = last_tune(store, "Face")
    assert stopped is not None and not stopped.finished and stopped.report is None and stopped.grid is None
    assert (stopped.cells, stopped.budget) == (watch.now().cells, 30)
    assert stopped.cells == 2 + len(OPEN)  # ALL and OFF, then one lowered cell per open block (its base is ALL)
    first = watch.now()
    assert (first.phase, first.events, first.best) == ("tutorial", 2, None)  # references, analyzer; no round yet
    assert first.text.startswith("analyzer: iteration 1: 3 important")

    watch = TuneWatch(options.budget)  # Auto again: the same options continue
    report = run_tune(store, "Face", options, progress=watch.on_event, on_cell=watch.on_cell)
    assert watch.now().cells == report.cells <= 30
    assert watch.now().rendered == report.cells - stopped.cells  # nothing rendered twice
    assert watch.now().phase == "evaluation" and watch.now().best is not None
    done = last_tune(store, "Face")
    assert done is not None and done.finished and done.cells == report.cells and done.run == 1
    assert done.report == json.loads(report.report.read_text(encoding="utf-8"))
    assert done.report["weights"] == report.weights == get_project(store, "Face").sheet.weight_line()
    assert done.grid == report.grid and done.grid.is_file()
    assert score_rows(done.report) == score_rows(report_data(report))
    about = report_summary(done.report)
    assert about == ReportSummary("tutorial", report.weights, "0.9", report.keep_box, (1,), (), report.iterations,
                                  report.notes)
    assert [row[0] for row in score_rows(done.report)] == ["ALL", "tutorial", "OFF"]
    numbers = {it.number for it in list_iterations(store, "Face")}
    assert set(report.iterations) <= numbers and report.iterations


def test_the_before_after_grid_is_redrawn_in_the_pages_language_from_the_reports_cells(assets, tmp_path):
    import numpy as np
    from PIL import Image

    from lbw.services.tune_report import GridWords

    store = _project(tmp_path, assets)
    assert tune_grid(store, "Face", "ja", GridWords()) is None  # no tune yet
    report = run_tune(store, "Face", TuneOptions(budget=14, strategy="search", held_out_seeds=(2,)))
    data = json.loads(report.report.read_text(encoding="utf-8"))
    assert set(data["grid_cells"]) == {"ALL", "search", "OFF"} and set(data["grid_cells"]["OFF"]) == {"1", "2"}
    words = GridWords(title="{name}: 比較 ({region})", box="残す領域 {box}", scores="効果 {effect:.2f}",
                      seed="シード {seed}", tuning="調整用", held_out="検証用", rows={"OFF": "LoRA なし"})
    assert tune_grid(store, "Face", "en", words) == report.grid  # English: the grid the tune wrote
    japanese = tune_grid(store, "Face", "ja", words)
    assert japanese == report.grid.with_name("before-after.ja.png")
    with Image.open(report.grid) as english, Image.open(japanese) as drawn:
        assert drawn.size != english.size  # other words, other label widths
        english_pixels, drawn_pixels = np.asarray(english.convert("RGB")), np.asarray(drawn.convert("RGB"))
    # the cells are the same pictures: the bottom-right cell (LoRA off, held-out seed 2) matches pixel for pixel
    assert np.array_equal(english_pixels[-64:, -64:], drawn_pixels[-64:, -64:])
    stamp = japanese.stat().st_mtime_ns
    assert tune_grid(store, "Face", "ja", words) == japanese and japanese.stat().st_mtime_ns == stamp  # drawn once
    # a cell gone from the cache is named; the page then shows the English grid with that line
    (store.workspace / data["grid_cells"]["OFF"]["2"]).unlink()
    with pytest.raises(ProjectError, match=r"the tune.s OFF image at seed 2 is gone: .*run the tune again"):
        tune_grid(store, "Face", "de", words)


def test_a_damaged_report_is_named(assets, tmp_path):
    store = _project(tmp_path, assets)
    options = TuneOptions(budget=12, strategy="search", held_out_seeds=())
    report = run_tune(store, "Face", options)
    report.report.write_text('{"lbw_tune_report": 1, "a": 1, "a": 2}', encoding="utf-8")
    with pytest.raises(ProjectError, match=r"report\.json: tune report has the key 'a' twice"):
        last_tune(store, "Face")
    report.report.write_text('[1]', encoding="utf-8")
    with pytest.raises(ProjectError, match='not a tune report'):
        last_tune(store, "Face")
