"""``lbw tune`` end to end on the tiny model, and its one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.interfaces.cli.app import run
from lbw.services.demo_render import DEMO_PROMPT
from lbw.services.projects import ProjectSettings, create_project, get_project, open_workspace

MACHINE = ["--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from lbw.services.demo_render import build_demo_assets

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tune-cli")
    model, lora = build_demo_assets(folder / "assets")
    store = open_workspace(folder / "ws")
    settings = ProjectSettings(lora=str(lora), model=str(model), prompt=DEMO_PROMPT, negative="lowres", width=64,
                               height=64, steps=2, seeds=(1,))
    open_blocks = ("BASE", "IN01", "OUT00", "OUT03", "OUT07")
    create_project(store, "Face", settings, Sheet.new("Face", SD26).fix([b for b in SD26.ids if b not in open_blocks]))
    return folder / "ws"


def test_lbw_tune_prints_the_weights_the_table_and_the_files(workspace, capsys):
    code = run(["tune", "--project", "Face", "--workspace", str(workspace), "--keep-box", "0.25,0.2,0.75,0.7",
                "--budget", "30", "--held-out-seeds", "2", *MACHINE])
    out, err = capsys.readouterr()
    assert code == 0, err
    view = get_project(open_workspace(workspace, create=False), "Face")
    lines = out.splitlines()
    assert lines[0].startswith("tuned weights (") and lines[0].endswith(view.sheet.weight_line())
    assert "effect kept" in lines[2] and "side effect left" in lines[2]
    assert "tuning (1)" in lines[3] and "held-out (1)" in lines[3]
    assert [line.split()[0] for line in lines[4:8]] == ["ALL", "tutorial", "search", "LoRA"]
    assert lines[4].split()[1:] == ["1.000", "1.000", "1.000", "1.000"]
    assert lines[7].split()[2:] == ["0.000", "0.000", "0.000", "0.000"]
    cells = next(line for line in lines if line.startswith("cells: "))
    assert int(cells.split()[1]) <= 30 and "budget 30" in cells
    grid = Path(next(line for line in lines if line.startswith("grid: "))[6:])
    report = Path(next(line for line in lines if line.startswith("report: "))[8:])
    assert grid.is_file() and json.loads(report.read_text(encoding="utf-8"))["weights"] == view.sheet.weight_line()
    assert "tune [references]" in err and "tune [tutorial] analyzer: iteration 1" in err and "tune [search]" in err
    assert "best so far: effect" in err
    # --json on the finished tune: nothing rendered, the same report
    assert run(["tune", "--project", "Face", "--workspace", str(workspace), "--keep-box", "0.25,0.2,0.75,0.7",
                "--budget", "30", "--held-out-seeds", "2", "--json", *MACHINE]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"] == view.sheet.weight_line() and sum(data["cells"].values()) == int(cells.split()[1])


@pytest.mark.parametrize(("args", "message"), [
    (["--strategy", "greedy"], "lbw: error: unknown strategy 'greedy'; expected one of tutorial, search, both"),
    (["--budget", "3"], "lbw: error: --budget 3 is too small"),
    (["--seeds", "1,x"], "lbw: error: --seeds '1,x': expected integers separated by commas"),
    (["--held-out-seeds", "1"], "lbw: error: seed 1 is both a tuning and a held-out seed"),
    (["--keep-box", "0,0,1"], "lbw: error: keep box '0,0,1': expected four numbers x0,y0,x1,y1, found 3"),
    (["--scorer", "clip"], "lbw: error: unknown scorer 'clip'"),
])
def test_user_errors_are_one_line_and_exit_2(workspace, capsys, args, message):
    code = run(["tune", "--project", "Face", "--workspace", str(workspace), "--keep-box", "0.25,0.2,0.75,0.7", *args,
                *MACHINE])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1


def test_an_unknown_project_is_refused(workspace, capsys):
    assert run(["tune", "--project", "Nope", "--workspace", str(workspace)]) == 2
    assert capsys.readouterr().err == "lbw: error: no project named 'Nope'; `lbw project list` shows them\n"


def test_lbw_tune_keep_mask_refusals_are_one_line(workspace, tmp_path, capsys):
    bad = tmp_path / "face.png"
    bad.write_bytes(b"not a png")
    for extra, message in ((["--keep-box", "0,0,0.5,0.5", "--keep-mask", str(bad)], "not both"),
                           (["--keep-mask", str(bad)], f"{bad}: not a readable PNG keep mask")):
        code = run(["tune", "--project", "Face", "--workspace", str(workspace), *extra, *MACHINE])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("lbw: error: ") and message in err and err.count("\n") == 1, err
