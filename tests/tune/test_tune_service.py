"""``run_tune`` on the tiny model: the budget, decisions in the project's history, resume after Ctrl-C, refusals."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.errors import ProjectError
from lbw.services.demo_render import DEMO_PROMPT
from lbw.services.projects import (
    ProjectSettings,
    create_project,
    get_iteration,
    get_project,
    open_workspace,
    project_log,
)
from lbw.services.tune import TuneOptions, default_held_out, run_tune

OPEN = ("BASE", "IN01", "OUT00", "OUT03", "OUT07", "OUT11")
BOX = "0.25,0.2,0.75,0.7"


class Counting:
    """The real diffusers backend on the CPU, noting the identity of every image it renders."""

    def __init__(self) -> None:
        from lbw.services.plot import make_backend

        self.inner = make_backend("diffusers", device="cpu")
        self.name = self.inner.name
        self.rendered: list[str] = []

    def prepare(self, plan):
        self.inner.prepare(plan)

    def identity(self, plan, hasher):
        return self.inner.identity(plan, hasher)

    def job_identity(self, plan, job):
        return self.inner.job_identity(plan, job)

    def render(self, plan, jobs, on_step=None):
        for job, image in self.inner.render(plan, jobs, on_step):
            self.rendered.append(json.dumps(self.inner.job_identity(plan, job), sort_keys=True))
            yield job, image

    def close(self):
        self.inner.close()


def _project(tmp_path: Path, assets, name: str = "Face", **changes):
    model, lora = assets
    settings = ProjectSettings(lora=str(lora), model=str(model), prompt=DEMO_PROMPT, negative="lowres", width=64,
                               height=64, steps=2, seeds=(1,))
    store = open_workspace(tmp_path / "ws")
    sheet = Sheet.new(name, SD26).fix([b for b in SD26.ids if b not in OPEN])
    create_project(store, name, settings.with_changes(changes) if changes else settings, sheet)
    return store


# The tutorial's analyzer at LBW's 20 levels (the default is 5 for 64-px renders): the tiny model's noise images
# then give the classes these tests were written for. Their start sheet keeps 0.41 of the effect: at threshold 0.4
# the Sub rounds run (``test_the_tutorial_raises_blocks...`` runs the same at 0.9: SubAdd).
OPTIONS = TuneOptions(keep_box=BOX, budget=40, held_out_seeds=(2,), analyzer_threshold=20, threshold=0.4)


def test_a_tune_stays_within_its_budget_and_records_every_decision_with_why(assets, tmp_path):
    store = _project(tmp_path, assets)
    backend, events = Counting(), []
    report = run_tune(store, "Face", OPTIONS, backend=backend, progress=events.append)
    # the budget: every image the backend drew is counted, none twice, and the phases stay within their shares
    assert len(backend.rendered) == len(set(backend.rendered)) == report.cells <= 40
    counts = report.counts
    assert counts["references"] == 4 and counts["evaluation"] <= 4           # ALL, OFF and results at 2 seeds
    assert counts["tutorial"] <= (40 - 8) // 2 and counts["search"] <= 40 - 8 - counts["tutorial"]
    assert events[-1].cells == report.cells and events[0].phase == "references"
    assert all(e.cells <= e.budget == 40 for e in events)
    # the table: ALL and OFF have their known scores; the winner is the better strategy on the tuning seeds
    rows = {row.name: row for row in report.rows}
    assert list(rows) == ["ALL", "tutorial", "search", "OFF"]
    assert (rows["ALL"].tuning.effect, rows["ALL"].tuning.side) == (1.0, 1.0)
    assert (rows["OFF"].held_out.effect, rows["OFF"].held_out.side) == (0.0, 0.0)
    assert report.tuning_seeds == (1,) and report.held_out_seeds == (2,) and rows["search"].held_out.n == 1
    # the project's sheet is the winner's, every tunable block fixed
    view = get_project(store, "Face")
    assert view.sheet.values == report.values == rows[report.winner].weights
    assert view.sheet.is_done and view.sheet.weight_line() == report.weights
    assert view.settings.roi == BOX and view.settings.seeds == (1,)
    # every round is an iteration whose decisions carry the scores and why
    analysis, first_round = report.iterations[0], report.iterations[1]
    assert get_iteration(store, "Face", analysis).kind == "eba"
    decisions = get_iteration(store, "Face", first_round).decisions
    assert all(d.source == "auto" for d in decisions)
    assert all(d.detail["why"] for d in decisions if d.block is not None)
    rounds = [d for d in decisions if d.action in ("take", "keep")]
    assert {d.block for d in rounds} == {"OUT00", "OUT03", "OUT11"}         # the analyzer's unclear blocks
    for decision in rounds:
        tune = decision.detail["tune"]
        assert tune["strategy"] == "tutorial" and tune["step"] == 0.5 and tune["iteration"] == first_round
        assert 0.0 <= tune["effect"] <= 1.0 and tune["side"] >= 0.0 and tune["tried"][-1]["rule"] == tune["rule"]
        assert decision.detail["cell"] == f"Sub{decision.block}_0" and decision.describe().endswith(
            f": {decision.detail['why']}")
    log = [entry.text for entry in project_log(store, "Face")]
    assert any(text.startswith("settings: ") for text in log)                 # the keep box became the region
    # the grid: ALL, tutorial, search, LoRA off x seed 1 (tuning), seed 2 (held out); the report file
    with Image.open(report.grid) as grid:
        assert grid.width > 2 * 64 and grid.height > 4 * 64
    data = json.loads(report.report.read_text(encoding="utf-8"))
    assert data["weights"] == report.weights and data["cells"] == counts and data["rows"][0]["name"] == "ALL"
    # a re-run of the finished tune renders nothing and reports the same
    again = run_tune(store, "Face", OPTIONS, backend=backend)
    assert len(backend.rendered) == report.cells and again.values == report.values and again.counts == counts


class Stop(KeyboardInterrupt):
    pass


def test_an_interrupted_tune_continues_without_rendering_anything_twice(assets, tmp_path):
    whole = Counting()
    expected = run_tune(_project(tmp_path / "a", assets), "Face", OPTIONS, backend=whole)
    store = _project(tmp_path / "b", assets)
    backend = Counting()
    for stop_at in (6, 20):  # in the analyzer run (after the 4 references), then in the search

        def on_cell(done, total, label, cached, stop_at=stop_at):
            if len(backend.rendered) >= stop_at:
                raise Stop()

        with pytest.raises(Stop):
            run_tune(store, "Face", OPTIONS, backend=backend, on_cell=on_cell)
        state = json.loads((store.workspace / "projects" / "1" / "tune" / "state.json").read_text())
        assert state["status"] == "running" and sum(state["counts"].values()) == len(backend.rendered)
    report = run_tune(store, "Face", OPTIONS, backend=backend)
    assert len(backend.rendered) == len(set(backend.rendered)) == len(whole.rendered)
    assert sorted(backend.rendered) == sorted(whole.rendered)
    assert report.values == expected.values and report.counts == expected.counts
    assert [(r.name, r.tuning, r.held_out) for r in report.rows] == [
        (r.name, r.tuning, r.held_out) for r in expected.rows]


def test_refusals(assets, tmp_path):
    store = _project(tmp_path, assets)
    with pytest.raises(ProjectError, match="has no region: give --keep-box"):
        run_tune(store, "Face", TuneOptions())
    with pytest.raises(ProjectError, match="seed 1 is both a tuning and a held-out seed"):
        run_tune(store, "Face", TuneOptions(keep_box=BOX, held_out_seeds=(1, 5)))
    with pytest.raises(ProjectError, match="--budget 8 is too small: ALL and LoRA off at 2 seeds and the final "
                                           "evaluation take up to 8 cells"):
        run_tune(store, "Face", TuneOptions(keep_box=BOX, budget=8, held_out_seeds=(2,)))
    with pytest.raises(ProjectError, match="unknown strategy 'greedy'"):
        run_tune(store, "Face", TuneOptions(keep_box=BOX, strategy="greedy"))
    with pytest.raises(ProjectError, match="the threshold must be a number above 0 and at most 1"):
        run_tune(store, "Face", TuneOptions(keep_box=BOX, threshold=1.5))
    with pytest.raises(ProjectError, match="keep box '0,0,1,1' covers the whole 64x64 image"):
        run_tune(store, "Face", TuneOptions(keep_box="0,0,1,1"))
    with pytest.raises(ProjectError, match="unknown scorer 'clip'"):
        run_tune(store, "Face", TuneOptions(keep_box=BOX, scorer="clip"))
    with pytest.raises(ProjectError, match="the analyzer threshold must be an integer from 0 to 255"):
        run_tune(store, "Face", TuneOptions(keep_box=BOX, analyzer_threshold=256))
    assert not (store.workspace / "projects" / "1" / "tune").exists()     # refused before anything was written
    assert default_held_out((1, 2)) == (3, 4) and default_held_out((2**32 - 1,)) == (0, 1)


def test_the_tutorials_analyzer_threshold_defaults_to_the_projects(assets, tmp_path):
    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    for size, expected in ((64, 5), (160, 20)):
        store = _project(tmp_path / str(size), assets, width=size, height=size)
        with pytest.raises(Stop):  # the state is written before the first cell
            run_tune(store, "Face", TuneOptions(keep_box=BOX, budget=40, held_out_seeds=(2,)), on_cell=stop)
        state = json.loads((store.workspace / "projects" / "1" / "tune" / "state.json").read_text())
        assert state["fingerprint"]["analyzer_threshold"] == expected


def test_an_unfinished_tune_is_continued_only_with_its_options(assets, tmp_path):
    store = _project(tmp_path, assets)
    backend = Counting()

    def stop(*event):
        if backend.rendered:
            raise Stop()

    with pytest.raises(Stop):
        run_tune(store, "Face", OPTIONS, backend=backend, on_cell=stop)
    with pytest.raises(ProjectError, match=r"unfinished tune with other options or settings .*threshold 0\.4.*; run "
                                           r"it with those to continue it, or pass --restart"):
        run_tune(store, "Face", replace(OPTIONS, threshold=0.8), backend=backend)
    with pytest.raises(Stop):
        run_tune(store, "Face", replace(OPTIONS, threshold=0.8, restart=True), backend=backend, on_cell=stop)
    state = json.loads((store.workspace / "projects" / "1" / "tune" / "state.json").read_text())
    assert state["run"] == 2 and state["fingerprint"]["threshold"] == 0.8


def test_the_search_stays_inside_the_sheets_bounds(assets, tmp_path):

    from lbw.services.projects import replace_sheet

    store = _project(tmp_path, assets)
    view = get_project(store, "Face")
    replace_sheet(store, "Face", replace(view.sheet, lower=0.3, upper=0.9,
                                         values=tuple(min(v, 0.9) for v in view.sheet.values)),
                  expected_version=view.version)
    report = run_tune(store, "Face", TuneOptions(keep_box=BOX, budget=24, strategy="search", held_out_seeds=(2,)),
                      backend=Counting())
    assert report.counts["search"] == 24 - 4 - 2 and [row.name for row in report.rows] == ["ALL", "search", "OFF"]
    tuned = dict(zip(SD26.ids, report.values, strict=True))
    assert all(0.375 <= tuned[b] <= 0.875 for b in OPEN) and all(tuned[b] == 0.9 for b in SD26.ids if b not in OPEN)


LENIENT = '''
import numpy as np


class Lenient:
    """A test scorer: the effect is always kept; side effect = mean |C - OFF| / mean |ALL - OFF| outside the box."""

    def score(self, candidate, full, off, keep):
        outside = ~keep
        lora = np.abs(full.astype(float) - off.astype(float))[outside].mean()
        left = np.abs(candidate.astype(float) - off.astype(float))[outside].mean()
        return (1.0, float(left / lora) if lora else 0.0)
'''


@pytest.fixture()
def lenient(tmp_path, monkeypatch):
    """The scorer ``lenient``, installed as a distribution declaring it in the ``lbw.scorers`` entry points."""
    folder = tmp_path / "site"
    dist = folder / "lbw_lenient-1.0.dist-info"
    dist.mkdir(parents=True)
    (folder / "lbw_lenient.py").write_text(LENIENT, encoding="utf-8")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lbw-lenient\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[lbw.scorers]\nlenient = lbw_lenient:Lenient\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    return "lenient"


def test_the_tutorial_takes_lowerings_halves_the_step_and_resumes_between_decisions(assets, tmp_path, lenient):
    options = TuneOptions(keep_box=BOX, budget=200, strategy="tutorial", held_out_seeds=(2,), scorer=lenient,
                          analyzer_threshold=20)
    whole = Counting()
    expected = run_tune(_project(tmp_path / "a", assets), "Face", options, backend=whole)
    store = _project(tmp_path / "b", assets)
    backend = Counting()
    stops = [14, 30]  # rendered cells at which Ctrl-C lands: in the first Sub round, then at step 0.125

    def on_cell(*event):
        if stops and len(backend.rendered) >= stops[0]:
            stops.pop(0)
            raise Stop()

    for _ in range(2):
        with pytest.raises(Stop):
            run_tune(store, "Face", options, backend=backend, on_cell=on_cell)
    report = run_tune(store, "Face", options, backend=backend)
    assert sorted(backend.rendered) == sorted(whole.rendered) and report.values == expected.values
    assert report.cells == expected.cells < 200 and report.notes == ()          # the tutorial finished
    log = project_log(store, "Face")
    takes = [e.decision for e in log if e.decision is not None and e.decision.action == "take"]
    assert takes and all(d.new_value < d.old_value and d.fixed for d in takes)
    assert {d.detail["tune"]["step"] for d in takes} <= {0.5, 0.25, 0.125}
    assert all(d.detail["why"].startswith("lowering keeps the effect (1.000 >= 0.9) and reduces the side effect")
               for d in takes)
    steps = [e.text for e in log if e.text.startswith("step ")]
    assert steps == ["step 0.5 -> 0.25 (auto)", "step 0.25 -> 0.125 (auto)"]
    assert any(e.text.startswith("unfix ") and "go deeper: step 0.25" in e.text for e in log)
    assert sum(1 for e in log if e.decision is not None and e.decision.action == "keep") >= 1
    view = get_project(store, "Face")
    assert view.sheet.is_done and view.sheet.values == report.values
    tutorial = next(row for row in report.rows if row.name == "tutorial")
    assert tutorial.tuning.effect == 1.0 and tutorial.tuning.side < 1.0
    assert sum(1 for e in log if e.kind == "iteration") == len(report.iterations)


def test_the_random_baseline_spends_its_budget_on_distinct_draws_and_is_reported_as_its_own_row(assets, tmp_path):
    store = _project(tmp_path, assets)
    engine = Counting()
    report = run_tune(store, "Face", TuneOptions(keep_box=BOX, budget=20, strategy="random", held_out_seeds=(2,)),
                      backend=engine)
    assert [row.name for row in report.rows] == ["ALL", "random", "OFF"]
    assert report.counts["random"] == 20 - 4 - 2 and report.counts.get("search", 0) == 0
    assert len(engine.rendered) == len(set(engine.rendered)) == report.cells <= 20
    data = json.loads(report.report.read_text(encoding="utf-8"))
    assert data["random"]["trials"] >= 14 and data["random"]["stopped"].startswith("budget")
    tuned = dict(zip(SD26.ids, report.values, strict=True))
    assert all(tuned[b] in {i / 8 for i in range(9)} for b in OPEN)  # drawn on the search's grid
    assert all(tuned[b] == 1.0 for b in SD26.ids if b not in OPEN)  # fixed blocks keep the values they had


def test_the_tutorial_raises_blocks_when_the_analyzers_sheet_loses_the_effect_and_resumes(assets, tmp_path):
    # the analyzer's sheet keeps 0.411 of the effect, no lowering brings it back: SubAdd rounds raise blocks
    options = replace(OPTIONS, threshold=0.9, strategy="tutorial", budget=120)
    whole = Counting()
    expected = run_tune(_project(tmp_path / "a", assets), "Face", options, backend=whole)
    store = _project(tmp_path / "b", assets)
    backend = Counting()
    stops = [15]  # rendered cells at which Ctrl-C lands: in the first SubAdd round

    def on_cell(*event):
        if stops and len(backend.rendered) >= stops[0]:
            stops.pop(0)
            raise Stop()

    with pytest.raises(Stop):
        run_tune(store, "Face", options, backend=backend, on_cell=on_cell)
    report = run_tune(store, "Face", options, backend=backend)
    assert sorted(backend.rendered) == sorted(whole.rendered) and report.values == expected.values
    log = project_log(store, "Face")
    decisions = [e.decision for e in log if e.decision is not None]
    assert [d.detail["new"] for d in decisions if d.action == "bounds"] == [[0.0, 1.0]]
    raises = [d for d in decisions if d.action == "raise"]
    assert [(d.block, d.old_value, d.new_value) for d in raises] == [("OUT03", 0.5, 1.0), ("OUT11", 0.5, 1.0),
                                                                      ("OUT00", 0.5, 1.0)]
    first = raises[0].detail
    assert first["cell"] == "AddOUT03_1" and first["tune"]["list"] == "subadd" and first["tune"]["rule"] == "raise"
    assert round(first["tune"]["base"]["effect"], 3) == 0.411 and round(first["tune"]["effect"], 3) == 0.619
    assert first["why"].startswith("raised (OUT03, OUT11, OUT00) to bring the effect back: 0.996 >= 0.9 predicted "
                                   "from 0.411 (each raise's gain added)")
    opened = [d for d in decisions if d.action == "unfix" and "SubAdd" in d.detail["why"]]
    assert opened == []  # the analyzer left no block at 0: the open blocks were the ones to raise
    kinds = [get_iteration(store, "Face", n).kind for n in report.iterations]
    assert kinds[:4] == ["eba", "sub", "subadd", "sub"] and kinds.count("subadd") == 1
    # after the raises the Sub rounds go on: a lowering at step 0.25 that keeps the effect
    takes = [d for d in decisions if d.action == "take"]
    assert [(d.block, d.old_value, d.new_value) for d in takes] == [("OUT11", 1.0, 0.75)]
    tutorial = next(row for row in report.rows if row.name == "tutorial")
    assert tutorial.tuning.effect >= 0.9 and report.notes == ()


def test_subadd_opens_the_blocks_at_0_and_says_so_when_no_raise_brings_the_effect_back(assets, tmp_path):
    # at 60 levels the analyzer classes 4 blocks unneeded (0, fixed) and 2 unclear: the sheet keeps nothing of the
    # effect; SubAdd opens the 0-blocks, no raise by 0.5 helps (the tiny model's effect stays 0), the step ends
    options = replace(OPTIONS, threshold=0.9, strategy="tutorial", budget=60, analyzer_threshold=60)
    store = _project(tmp_path, assets)
    report = run_tune(store, "Face", options, backend=Counting())
    decisions = [e.decision for e in project_log(store, "Face") if e.decision is not None]
    opened = [d for d in decisions if d.action == "unfix" and "(SubAdd)" in d.detail["why"]]
    assert {d.block for d in opened if d.detail["tune"]["step"] == 0.5} == {"OUT00", "OUT03", "OUT07", "OUT11"}
    assert all(d.old_value == 0.0 and d.detail["why"].startswith("the sheet keeps 0.000 < 0.9 and no lowering "
                                                                 "brings it back: opened to try raising it by")
               for d in opened)
    assert all(re.search(r"; the analyzer ranks it \d of 6$", d.detail["why"]) for d in opened)
    ended = [d for d in decisions if d.action == "keep" and d.detail["tune"]["list"] == "subadd"]
    assert ended and all(d.detail["why"].endswith("the sheet keeps 0.000 < 0.9 and neither lowering nor raising "
                                                  "brings it back") for d in ended)
    assert not any(d.action == "raise" for d in decisions) and report.notes == ()
    assert get_project(store, "Face").sheet.is_done
