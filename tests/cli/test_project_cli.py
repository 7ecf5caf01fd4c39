"""`lbw project ...`, `plot/eba --project`, `sheet fix --project` and the guard rails, in-process on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.domain.sheet_file import sheet_from_toml, sheet_to_toml
from lbw.files.fixtures import write_fixture
from lbw.files.generated import STAMP
from lbw.files.safetensors_header import read_header
from lbw.interfaces.cli.app import run

MACHINE = ["--threads", "1", "--device", "cpu"]
OPEN = ("IN01", "IN02", "OUT03")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from lbw.services.demo_render import build_demo_assets

    torch.set_num_threads(1)
    return build_demo_assets(tmp_path_factory.mktemp("cli-project-assets"))


def _new(assets, ws: Path, name: str = "Face", *extra: str) -> list[str]:
    model, lora = assets
    return ["project", "new", name, "--workspace", str(ws), "--lora", str(lora), "--model", str(model),
            "--width", "64", "--height", "64", "--steps", "2", "--seeds", "1", *extra]


def test_the_tuning_loop_on_the_command_line(assets, tmp_path, capsys):
    ws = tmp_path / "ws"
    start = tmp_path / "start.toml"
    start.write_text(sheet_to_toml(Sheet.new("Face", SD26).fix([b for b in SD26.ids if b not in OPEN])))
    assert run(_new(assets, ws, "Face", "--sheet", str(start), "--prompt", "1girl, gobuhime")) == 0
    out = capsys.readouterr().out
    assert f"created project Face in {ws}" in out and "open: 3 of 26 blocks unfixed (IN01,IN02,OUT03)" in out
    assert run(["project", "list", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.startswith("Face: open: 3 of 26 blocks unfixed (IN01,IN02,OUT03); mode sub; "
                                              "0 iterations; version 1")

    # the analyzer on the sheet's open blocks, then the sheet from its classes
    assert run(["eba", "--project", "Face", "--workspace", str(ws), "--range", "0,1", *MACHINE]) == 0
    out = capsys.readouterr().out
    assert "iteration 1 of project Face: eba, 4 cells" in out
    assert f"grid: {ws}/projects/1/iterations/0001-eba/eba_seed1.png" in out
    assert "start the sheet from it: lbw project start-sheet Face 1" in out
    assert run(["project", "start-sheet", "Face", "--workspace", str(ws), "--important", "100", "--unneeded",
                "0"]) == 0  # every block unclear: 0.5 and open
    assert "Face:1,1,0.5,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,0.5," in capsys.readouterr().out

    # one short command per iteration
    assert run(["plot", "--project", "Face", "--workspace", str(ws), *MACHINE]) == 0
    out = capsys.readouterr().out
    assert "iteration 2 of project Face: sub, 4 cells" in out
    assert f"grid: {ws}/projects/1/iterations/0002-sub/grid.png" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("Sub", "SubIN"))}
    assert lines["Sub"][1:] == ["1", "base"] and float(lines["SubIN01_0"][2]) >= 0
    assert "fix a block: lbw sheet fix --project Face CELL" in out

    # a cell label takes that cell's value; a block with --value; a block alone at its weight; unfix
    assert run(["sheet", "fix", "--project", "Face", "--workspace", str(ws), "SubIN01_0"]) == 0
    assert run(["sheet", "fix", "--project", "Face", "--workspace", str(ws), "IN02", "--value", "0.25"]) == 0
    assert run(["sheet", "fix", "--project", "Face", "--workspace", str(ws), "SubOUT03_0", "--keep"]) == 0
    assert run(["sheet", "unfix", "--project", "Face", "--workspace", str(ws), "OUT03"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "Face:1,1,0,0.25,1,1,1,1,1,1,1,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1"
    assert "open: 1 of 26 blocks unfixed (OUT03)" in out

    assert run(["plot", "--project", "Face", "--workspace", str(ws), "--mode", "subadd", *MACHINE]) == 0
    out = capsys.readouterr().out
    assert "iteration 3 of project Face: subadd, 4 cells" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("Sub", "Add"))] == [
        "Sub", "SubOUT03_0", "Add", "AddOUT03_1"]

    assert run(["project", "log", "Face", "--workspace", str(ws)]) == 0
    log = [line[21:] for line in capsys.readouterr().out.splitlines()]
    assert log[0].startswith("iteration 1: eba, 4 cells")
    assert log[-6:] == [
        "  take IN01 0.5 -> 0 fixed (command, cell SubIN01_0)",
        "  fix IN02 0.5 -> 0.25 fixed (command)",
        "  keep OUT03 0.5 -> 0.5 fixed (command, cell SubOUT03_0)",
        "  unfix OUT03 0.5 -> 0.5 unfixed (command)",
        "  mode sub -> subadd (command)",
        "iteration 3: subadd, 4 cells, from open: 1 of 26 blocks unfixed (OUT03)",
    ]

    assert run(["project", "undo", "Face", "2", "--workspace", str(ws)]) == 0
    assert "back to the sheet of iteration 2 (mode sub)" in capsys.readouterr().out
    assert run(["project", "show", "Face", "--workspace", str(ws), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "sub" and data["iterations"] == 3 and data["iteration"]["number"] == 3
    assert data["weight"] == "Face:1,1,0.5,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1"
    assert [c["label"] for c in data["iteration"]["cells"]] == ["Sub", "SubOUT03_0", "Add", "AddOUT03_1"]
    assert Path(data["iteration"]["cells"][1]["image"]).is_file()

    assert run(["project", "export", "Face", str(tmp_path / "exp"), "--workspace", str(ws)]) == 0
    capsys.readouterr()
    assert sheet_from_toml((tmp_path / "exp" / "sheet.toml").read_text()).weight_line() == data["weight"]
    assert run(["project", "export", "Face", str(tmp_path / "exp"), "--workspace", str(ws)]) == 2
    assert capsys.readouterr().err == f"lbw: error: {tmp_path / 'exp' / 'sheet.toml'}: exists; pass --force to " \
                                      "overwrite\n"
    assert run(["project", "new", "Copy", "--workspace", str(ws), "--settings", str(tmp_path / "exp" /
                "settings.json"), "--sheet", str(tmp_path / "exp" / "sheet.toml")]) == 0
    assert "prompt: 1girl, gobuhime" in capsys.readouterr().out


def test_project_command_errors_are_one_line(assets, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run(["project", "show", "Face", "--workspace", str(ws)]) == 2
    assert capsys.readouterr().err == f"lbw: error: {ws}: no lbw workspace here (no lbw.sqlite); create one with " \
                                      "`lbw project new`\n"
    assert not ws.exists()  # reading commands create nothing
    assert run(_new(assets, ws)) == 0
    assert "the prompt is empty; renders refuse it" in capsys.readouterr().err
    for argv, message in (
        (["plot", "--project", "Face", "--workspace", str(ws), *MACHINE], "the prompt is empty"),
        (["eba", "--project", "Face", "--workspace", str(ws), *MACHINE], "the prompt is empty"),
        (["plot", "--project", "Face", "--workspace", str(ws), "--steps", "3"],
         "--steps: with --project the project's settings apply; change them with `lbw project set NAME --steps"),
        (["plot", "x.toml", "--project", "Face", "--workspace", str(ws)], "SOURCE: with --project"),
        (["plot", "--project", "Fcae", "--workspace", str(ws)], "no project named 'Fcae'; did you mean 'Face'?"),
        (["sheet", "fix", "--project", "Face", "--workspace", str(ws), "SubIN07_7"], "no cell 'SubIN07_7'"),
        (["sheet", "fix", "--project", "Face", "--workspace", str(ws), "IN01", "--keep"], "--keep goes with cell"),
        (["project", "new", "Face", "--workspace", str(ws)], "a project named 'Face' exists already"),
        (["project", "set", "Face", "--workspace", str(ws), "--width", "65"], "multiples of 8"),
        (["project", "set", "Face", "--workspace", str(ws), "--clear", "colour"], "--clear 'colour': not a setting"),
        (["project", "undo", "Face", "3", "--workspace", str(ws)], "has no iteration 3; it has no iteration yet"),
        (["project", "start-sheet", "Face", "--workspace", str(ws)], "has no analyzer run"),
    ):
        assert run(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("lbw: error: ") and message in err and err.count("\n") == 1, err
    assert run(["project", "set", "Face", "--workspace", str(ws), "--prompt", "1girl", "--mode", "add"]) == 0
    assert "saved project Face (version 3)" in capsys.readouterr().out
    assert run(["project", "set", "Face", "--workspace", str(ws), "--archive"]) == 0
    capsys.readouterr()
    assert run(["project", "list", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.startswith("no projects")
    assert run(["project", "list", "--all", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.startswith("Face: open: 26 of 26 blocks unfixed")


def test_empty_prompt_is_refused_before_rendering(assets, tmp_path, capsys):
    model, lora = assets
    out = tmp_path / "out"
    assert run(["eba", str(lora), "--model", str(model), "-o", str(out), *MACHINE]) == 2
    assert capsys.readouterr().err == ("lbw: error: the prompt is empty: a LoRA usually needs its trigger words to "
                                       "show any effect; give one (--prompt) or pass --allow-empty-prompt\n")
    sheet = tmp_path / "s.toml"
    sheet.write_text(sheet_to_toml(Sheet.new("S", SD26)))
    assert run(["plot", str(sheet), "--lora", str(lora), "--model", str(model), "--prompt", "  ", "-o", str(out)]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert not out.exists()


def test_eba_keeps_an_edited_suggested_sheet_and_says_when_nothing_changed(assets, tmp_path, capsys):
    model, lora = assets
    out = tmp_path / "eba"
    argv = ["eba", str(lora), "--model", str(model), "--prompt", "1girl", "--blocks", "IN01,OUT05", "-o", str(out),
            "--width", "64", "--height", "64", "--steps", "2", *MACHINE]
    assert run(argv) == 0
    suggested = out / "suggested-sheet.toml"
    first = suggested.read_text()
    assert first.startswith(STAMP)
    assert run(argv) == 0  # unedited: replaced without asking
    capsys.readouterr()
    suggested.write_text(first.replace("fixed = true", "fixed = false", 1))
    edited = suggested.read_text()
    analysis = (out / "analysis.json").stat().st_mtime_ns
    assert run(argv) == 2
    assert capsys.readouterr().err == (f"lbw: error: {suggested}: edited since lbw wrote it (or not written by lbw); "
                                       "move it away or pass --force to overwrite it\n")
    assert suggested.read_text() == edited and (out / "analysis.json").stat().st_mtime_ns == analysis
    assert run([*argv, "--force"]) == 0
    assert suggested.read_text() == first
    capsys.readouterr()

    flat = tmp_path / "flat"
    assert run(["eba", str(lora), "--model", str(model), "--prompt", "1girl", "--blocks", "IN01,OUT05", "--strength",
                "0", "--te-strength", "0", "-o", str(flat), "--width", "64", "--height", "64", "--steps", "2",
                *MACHINE]) == 0
    captured = capsys.readouterr()
    message = "no block changed the image (max Diff % = 0): check the prompt/trigger/strength"
    assert f"suggested sheet: none: {message}" in captured.out and "suggested weights" not in captured.out
    assert captured.err == f"lbw: warning: {message}\n"
    assert not (flat / "suggested-sheet.toml").exists()
    assert json.loads((flat / "analysis.json").read_text())["no_change"] is True


def test_weights_from_a_sheet_or_a_project(assets, tmp_path, capsys):
    ws = tmp_path / "ws"
    sheet = Sheet.new("Face", SD26).set_values({"IN01": 0.0, "OUT03": 0.5}, fix=True)
    path = tmp_path / "face.toml"
    path.write_text(sheet_to_toml(sheet))
    assert run([*_new(assets, ws), "--sheet", str(path)]) == 0
    capsys.readouterr()
    vector = sheet.weight_line()
    assert run(["weights", "sdscripts", vector]) == 0
    expected = capsys.readouterr().out
    assert run(["weights", "sdscripts", str(path)]) == 0
    assert capsys.readouterr().out == expected
    assert run(["weights", "sdscripts", "--project", "Face", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out == expected

    lora = write_fixture("sd15", tmp_path / "lora.safetensors", rank=1, select="layers_0_")
    assert run(["meta", str(lora), "--weights", str(path), "--no-backup"]) == 0
    assert read_header(lora).metadata["lbw_block_weights"] == vector
    assert run(["meta", str(lora), "--project", "Face", "--workspace", str(ws), "--weights", vector]) == 2
    assert "give --weights or --project, not both" in capsys.readouterr().err

    baked = tmp_path / "baked.safetensors"
    assert run(["bake", str(lora), "--project", "Face", "--workspace", str(ws), "-o", str(baked)]) == 0
    assert "weights from project Face" in capsys.readouterr().out
    assert read_header(baked).metadata["lbw_baked_weights"].startswith("Face:1,1,0,")
    assert run(["meta", str(baked), "--project", "Face", "--workspace", str(ws), "--no-backup"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lbw: warning: this file already has lbw_baked_weights (Face:1,1,0,")
    assert "the weights would apply twice" in err and err.count("\n") == 1
    assert read_header(baked).metadata["lbw_block_weights"] == vector  # written, with the warning
