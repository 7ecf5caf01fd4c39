"""Project services without rendering: settings, sheet actions, cell labels, undo, versions, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lbw
from lbw.domain.layouts import SD17, SD26
from lbw.domain.sheet import Sheet
from lbw.domain.sheet_file import sheet_from_toml
from lbw.errors import OutputError, ProjectError, VersionConflict
from lbw.services.projects import (
    ProjectSettings,
    analysis_table,
    create_project,
    export_project,
    fix_block,
    fix_cell,
    get_iteration,
    get_project,
    list_iterations,
    list_projects,
    open_workspace,
    project_log,
    read_settings_file,
    replace_sheet,
    set_archived,
    set_block,
    set_bounds,
    set_mode,
    set_step,
    start_sheet_from_analysis,
    undo_to,
    unfix_block,
    update_settings,
)
from lbw.store import records as db

OPEN = ("IN01", "IN04", "OUT03")


@pytest.fixture
def store(tmp_path):
    return open_workspace(tmp_path / "ws")


def _sheet() -> Sheet:
    return Sheet.new("Face", SD26).fix([b for b in SD26.ids if b not in OPEN])


def _add_iteration(store, name: str, kind: str = "sub", analysis=(), plan: dict | None = None) -> int:
    """Record an iteration directly (no render): cells of the current sheet's list with made-up Diff %."""
    from lbw.domain.sheet import variants

    with store.write() as con:
        record = db.project_by_name(con, name)
        number = db.next_iteration_number(con, record.id)
        cells = []
        if kind != "eba":
            entries = variants(record.sheet, kind).entries
            for position, variant in enumerate(entries):
                block = variant.block_id
                value = None if block is None else variant.weights.numbers()[SD26.index(block)]
                cells.append(db.CellRecord(position, variant.name, block, value, 1, f"c/{number}/{position}.png",
                                           "0" * 64, None if block is None else 2.5 * position,
                                           None if block is None else "Sub"))
        plan_text = json.dumps(plan or {"layout": record.sheet.layout.name, "cells": [
            {"label": v.name, "values": list(v.weights.numbers())} for v in variants(record.sheet, "sub").entries]})
        db.insert_iteration(con, record.id, number=number, kind=kind, sheet_before=record.sheet, plan=plan_text,
                            folder=f"projects/{record.id}/iterations/{number:04d}-{kind}", grid=None,
                            grid_sha256=None, created=db.now(), cells=cells, analysis=analysis)
        return number


def test_create_show_list_and_settings(store, tmp_path):
    lora = tmp_path / "face.safetensors"
    lora.write_bytes(b"x")
    view = create_project(store, "  顔 Face ", ProjectSettings(lora=str(lora), model="server-model", prompt="1girl"))
    assert (view.name, view.version, view.mode, view.iteration_count, view.latest) == ("顔 Face", 1, "sub", 0, None)
    assert view.settings.lora == str(lora.resolve()) and view.settings.model == "server-model"
    assert view.sheet == Sheet.new("顔 Face", SD26)
    second = create_project(store, "B", sheet=Sheet.new("Bee", SD17), mode="subadd")
    assert (second.sheet.layout, second.mode) == (SD17, "subadd")
    assert [p.name for p in list_projects(store)] == ["B", "顔 Face"]
    with pytest.raises(Exception, match="exists already"):
        create_project(store, "B")
    changed = update_settings(store, "B", {"prompt": "2girls", "seeds": [5, 6], "steps": 8}, expected_version=1)
    assert changed.version == 2 and changed.settings.seeds == (5, 6) and changed.settings.steps == 8
    assert update_settings(store, "B", {"steps": 8}, expected_version=2).version == 2  # no change: nothing written
    for bad, message in (({"stepz": 1}, "unknown setting 'stepz'"), ({"steps": "8"}, "expected an integer"),
                         ({"width": 65}, "multiples of 8"), ({"backend": "x"}, "unknown backend"),
                         ({"url": "file:///etc"}, "must start with http"), ({"seeds": []}, "non-empty"),
                         ({"cfg": float("nan")}, "finite"), ({"roi": "1,2,3"}, "roi"),
                         ({"sampler": "Nope"}, "sampler")):
        with pytest.raises(ProjectError, match=message):
            update_settings(store, "B", bad, expected_version=2)
    assert get_project(store, "B").version == 2
    archived = set_archived(store, "B", expected_version=2)
    assert archived.archived and [p.name for p in list_projects(store)] == ["顔 Face"]
    assert [p.name for p in list_projects(store, archived=True)] == ["B", "顔 Face"]
    with pytest.raises(ProjectError, match="control characters"):
        create_project(store, "bad\x1bname")
    with pytest.raises(Exception, match="no project named 'Fac'; did you mean '顔 Face'"):
        get_project(store, "Fac")


def test_sheet_actions_record_decisions(store):
    view = create_project(store, "P", sheet=_sheet())
    view = fix_block(store, "P", "IN01", 0.0, expected_version=view.version)
    assert view.sheet.value("IN01") == 0.0 and "IN01" in view.sheet.fixed and view.version == 2
    view = fix_cell(store, "P", "SubIN04_0.5", take=True, expected_version=view.version)
    assert view.sheet.value("IN04") == 0.5 and "IN04" in view.sheet.fixed
    view = unfix_block(store, "P", "IN04", expected_version=view.version)
    view = fix_cell(store, "P", "SubIN04_0", take=False, expected_version=view.version)  # keep: at the base
    assert view.sheet.value("IN04") == 0.5 and "IN04" in view.sheet.fixed
    view = set_block(store, "P", "mid", value=0.25, source="click", expected_version=view.version)
    view = set_mode(store, "P", "subadd", expected_version=view.version)
    view = set_step(store, "P", 0.25, expected_version=view.version)
    view = set_bounds(store, "P", 0.0, 1.0, expected_version=view.version)
    assert (view.mode, view.sheet.step, view.sheet.lower, view.sheet.upper, view.version) == ("subadd", 0.25, 0, 1, 9)
    same = fix_block(store, "P", "IN01", expected_version=view.version)  # already fixed: nothing recorded
    assert same.version == view.version
    log = [e.text for e in project_log(store, "P")]
    assert log == [
        "fix IN01 1 -> 0 fixed (command)",
        "take IN04 1 -> 0.5 fixed (click, cell SubIN04_0.5)",
        "unfix IN04 0.5 -> 0.5 unfixed (command)",
        "keep IN04 0.5 -> 0.5 fixed (click, cell SubIN04_0)",
        "set M00 1 -> 0.25 fixed (click)",
        "mode sub -> subadd (command)",
        "step 0.5 -> 0.25 (command)",
        "bounds -..- -> 0..1 (command)",
    ]
    for call, message in (
        (lambda v: fix_block(store, "P", "IN99", 1, expected_version=v), "not in the sheet's layout"),
        (lambda v: fix_block(store, "P", "IN05", float("inf"), expected_version=v), "finite"),
        (lambda v: fix_block(store, "P", "IN05", 2.0, expected_version=v), "outside the bounds"),
        (lambda v: fix_cell(store, "P", "SubOUT07_0", expected_version=v), "no cell 'SubOUT07_0'.*SubOUT03_0.75"),
        (lambda v: set_mode(store, "P", "diagonal", expected_version=v), "unknown mode"),
        (lambda v: set_step(store, "P", 0, expected_version=v), "step must be > 0"),
        (lambda v: fix_block(store, "P", "IN05", source="robot", expected_version=v), "unknown decision source"),
    ):
        with pytest.raises(ProjectError, match=message):
            call(view.version)
    assert get_project(store, "P").version == view.version


def test_cells_of_a_rendered_iteration_and_undo(store):
    view = create_project(store, "P", sheet=_sheet())
    first = _add_iteration(store, "P")
    view = fix_cell(store, "P", "SubIN01_0.5", expected_version=view.version)  # current plan and iteration agree
    view = fix_cell(store, "P", "SubOUT03_0.5", take=False, expected_version=view.version)
    second = _add_iteration(store, "P")
    assert [c.label for c in get_iteration(store, "P", second).cells] == ["Sub", "SubIN04_0.5"]
    # a cell of iteration 1 (no longer in the current list) is still found there
    view = fix_cell(store, "P", "SubIN01_0.5", take=False, iteration=first, expected_version=view.version)
    assert view.sheet.value("IN01") == 1.0
    view = set_mode(store, "P", "add", expected_version=view.version)
    assert get_iteration(store, "P", first).decisions[0].detail == {"cell": "SubIN01_0.5"}
    before = len(project_log(store, "P"))
    view = undo_to(store, "P", first, expected_version=view.version)
    assert view.sheet == _sheet() and view.mode == "sub"
    undone = [e.decision for e in project_log(store, "P")[before:]]
    assert [(d.action, d.block, d.old_value, d.new_value, d.fixed) for d in undone] == [
        ("undo", "IN01", 1.0, 1.0, False), ("undo", "OUT03", 1.0, 1.0, False), ("undo", None, None, None, None)]
    assert undone[-1].detail == {"iteration": 1, "old": "add", "new": "sub"}
    assert [s.number for s in list_iterations(store, "P")] == [1, 2]  # history kept
    again = undo_to(store, "P", first, expected_version=view.version)
    assert again.version == view.version + 1 and project_log(store, "P")[-1].text == "undo (command, to iteration 1)"
    with pytest.raises(Exception, match=r"has no iteration 7; its iterations are 1\.\.2"):
        undo_to(store, "P", 7, expected_version=again.version)


def test_version_conflict_writes_nothing(store):
    view = create_project(store, "P", sheet=_sheet())
    tab_a = get_project(store, "P")
    tab_b = get_project(store, "P")
    fix_block(store, "P", "IN01", 0, source="click", expected_version=tab_a.version)
    with pytest.raises(VersionConflict, match=r"changed in another tab or command .*reload") as caught:
        fix_block(store, "P", "IN04", 0, source="click", expected_version=tab_b.version)
    assert (caught.value.expected, caught.value.found) == (1, 2)
    assert [e.text for e in project_log(store, "P")] == ["fix IN01 1 -> 0 fixed (click)"]
    reloaded = get_project(store, "P")
    done = fix_block(store, "P", "IN04", 0, source="click", expected_version=reloaded.version)
    assert done.sheet.fixed >= {"IN01", "IN04"} and done.version == view.version + 2
    with pytest.raises(ProjectError, match="expected_version must be"):
        fix_block(store, "P", "IN04", 0, expected_version="2")  # type: ignore[arg-type]


_WORKER = """
import json, sys, time
from pathlib import Path
from lbw.errors import VersionConflict
from lbw.services.projects import fix_block, get_project, open_workspace
ws, me, other, blocks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
store = open_workspace(ws, create=False)
conflicts, first = 0, True
for block in blocks:
    while True:
        view = get_project(store, "P")
        if first:  # both processes hold the same version before either writes
            first = False
            Path(ws, "ready-" + me).touch()
            deadline = time.time() + 60
            while not Path(ws, "ready-" + other).exists():
                if time.time() > deadline:
                    sys.exit(3)
                time.sleep(0.002)
        try:
            fix_block(store, "P", block, 0.0, source="click", expected_version=view.version)
            break
        except VersionConflict:
            conflicts += 1
print(json.dumps({"conflicts": conflicts}))
"""


def test_two_processes_lose_no_decision(store, tmp_path):
    create_project(store, "P", sheet=Sheet.new("P", SD26))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(lbw.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    halves = (SD26.ids[:13], SD26.ids[13:])
    workers = [
        subprocess.Popen([sys.executable, str(script), str(store.workspace), me, other, ",".join(blocks)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for me, other, blocks in (("a", "b", halves[0]), ("b", "a", halves[1]))
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["conflicts"] for r in results) >= 1  # the first round always has a loser
    view = get_project(store, "P")
    assert view.sheet.fixed == frozenset(SD26.ids) and set(view.sheet.values) == {0.0}
    assert view.version == 1 + len(SD26)
    decisions = [e.decision for e in project_log(store, "P")]
    assert sorted(d.block for d in decisions) == sorted(SD26.ids)  # every decision landed exactly once


def test_start_sheet_from_analysis_and_no_change(store):
    view = create_project(store, "P", sheet=Sheet.new("P", SD26))
    table = [db.AnalysisRecord(1, "OUT03", 12.0), db.AnalysisRecord(2, "IN01", 3.0), db.AnalysisRecord(3, "IN04", 0.5)]
    number = _add_iteration(store, "P", "eba", table, plan={"layout": "SD26", "cells": [],
                                                           "eba": {"important": 5.0, "unneeded": 1.0}})
    assert analysis_table(store, "P", number).classes() == {"OUT03": "important", "IN01": "unclear",
                                                            "IN04": "unneeded"}
    assert analysis_table(store, "P", number, important=2.5).classes()["IN01"] == "important"
    view = start_sheet_from_analysis(store, "P", number, expected_version=view.version)
    assert (view.sheet.value("OUT03"), view.sheet.value("IN01"), view.sheet.value("IN04")) == (1.0, 0.5, 0.0)
    assert {"OUT03", "IN04"} <= view.sheet.fixed and "IN01" not in view.sheet.fixed
    assert "BASE" not in view.sheet.fixed  # blocks the analyzer did not test are left as they were
    flat = _add_iteration(store, "P", "eba", [db.AnalysisRecord(1, "IN01", 0.0)], plan={"layout": "SD26",
                                                                                      "cells": []})
    assert analysis_table(store, "P", flat).no_change
    with pytest.raises(ProjectError, match="no block changed the image \\(max Diff % = 0\\)"):
        start_sheet_from_analysis(store, "P", flat, expected_version=view.version)
    with pytest.raises(ProjectError, match="not an analyzer run"):
        start_sheet_from_analysis(store, "P", _add_iteration(store, "P"), expected_version=view.version)


def test_export_import_and_replace_sheet(store, tmp_path):
    create_project(store, "P", ProjectSettings(prompt="1girl", seeds=(7,)), sheet=_sheet())
    view = fix_block(store, "P", "IN01", 0.0, expected_version=1)
    out = export_project(store, "P", tmp_path / "export")
    assert sheet_from_toml(out.sheet.read_text()) == view.sheet
    assert read_settings_file(out.settings) == view.settings
    with pytest.raises(OutputError, match="exists; pass --force"):
        export_project(store, "P", tmp_path / "export")
    export_project(store, "P", tmp_path / "export", force=True)
    copy = create_project(store, "Q", read_settings_file(out.settings), sheet_from_toml(out.sheet.read_text()))
    assert copy.sheet == view.sheet and copy.settings.seeds == (7,)
    new_sheet = Sheet.new("Face", SD26, 0.5)
    replaced = replace_sheet(store, "Q", new_sheet, expected_version=copy.version)
    assert replaced.sheet == new_sheet and len(project_log(store, "Q")) == 26
    with pytest.raises(ProjectError, match="the sheet is SD17"):
        replace_sheet(store, "Q", Sheet.new("X", SD17), expected_version=replaced.version)


def test_project_services_import_light():
    """The sheet actions must answer at once: importing the services loads no torch, numpy or PIL."""
    code = ("import sys, lbw.services.projects, lbw.interfaces.cli.project; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'diffusers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(lbw.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"
