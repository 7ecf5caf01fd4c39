"""`lbw sheet`, `lbw hints` and `lbw demo` in-process, plus the light-import check in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lbw.domain.sheet import OUTPUT_KEYS
from lbw.interfaces.cli.app import run

GOBUHIME = "Gobuhime:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
UNFIXED = "IN01,IN03,IN04,IN05,OUT00,OUT01,OUT06,OUT07,OUT08,OUT09,OUT11"
SUB_PROMPT_SR = (
    "Sub, SubIN01_0, SubIN03_0, SubIN04_0, SubIN05_0, SubOUT00_0, SubOUT01_0, SubOUT06_0, SubOUT07_0, "
    "SubOUT08_0, SubOUT09_0, SubOUT11_0"
)
SD_SCRIPTS = (
    '"down_lr_weight=0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0" "mid_lr_weight=1" '
    '"up_lr_weight=0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"'
)


def render_json(capsys, *extra: str) -> dict:
    assert run(["sheet", "render", "--weights", GOBUHIME, *extra, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_render_json_has_exactly_the_contract_keys(capsys) -> None:
    data = render_json(capsys, "--unfixed", UNFIXED)
    assert list(data) == list(OUTPUT_KEYS)
    assert data["weight"] == GOBUHIME
    assert data["sub_prompt_sr"] == SUB_PROMPT_SR
    assert data["sub_weights"].split("\n")[1] == (
        "SubIN01_0:1,0,0,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
    )
    assert len(data["sub_weights"].split("\n")) == 12
    assert data["eba_blocks"] == UNFIXED
    assert data["sd_scripts"] == SD_SCRIPTS
    assert data["prompt_tag"] == "<lora:Gobuhime:1:lbw=Sub>"


def test_fixed_and_unfixed_are_equivalent(capsys) -> None:
    unfixed = set(UNFIXED.split(","))
    ids = ["BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12))]
    fixed = ",".join(b for b in ids if b not in unfixed)
    assert render_json(capsys, "--fixed", fixed) == render_json(capsys, "--unfixed", UNFIXED)
    assert run(["sheet", "render", "-w", GOBUHIME, "--fixed", "BASE", "--unfixed", "IN01"]) == 2
    assert capsys.readouterr().err == "lbw: error: give --fixed or --unfixed, not both\n"


def test_render_step_bounds_only_and_legacy(capsys) -> None:
    data = render_json(capsys, "--unfixed", "IN01", "--step", "0.25", "--lora", "gobuhime-Defmix2")
    assert data["sub_prompt_sr"] == "Sub, SubIN01_0.25"
    assert data["add_prompt_sr"] == "Add, AddIN01_0.75"
    assert data["prompt_tag"] == "<lora:gobuhime-Defmix2:1:lbw=Sub>"
    assert (
        run(
            [
                "sheet",
                "render",
                "-w",
                GOBUHIME,
                "--unfixed",
                "IN00,IN02",
                "--lower",
                "0",
                "--upper",
                "1",
                "--only",
                "sub_prompt_sr",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "Sub, SubIN02_0.5\n"
    assert run(["sheet", "render", "-w", GOBUHIME, "--only", "prompt_tag", "--legacy-tag"]) == 0
    out, err = capsys.readouterr()
    assert out == "<lora:Gobuhime:1:Sub>\n"
    assert "fails on web UI >= 1.5" in err
    assert run(["sheet", "render", "-w", GOBUHIME, "--only", "nope"]) == 2
    assert "unknown output 'nope'" in capsys.readouterr().err


def test_render_errors(capsys) -> None:
    assert run(["sheet", "render", "-w", "1,1,1,1,1,1,1,1,1,1,1,1"]) == 2
    assert "the sheet needs a name" in capsys.readouterr().err
    assert run(["sheet", "render", "-w", GOBUHIME, "--fixed", "IN12"]) == 2
    assert capsys.readouterr().err.startswith("lbw: error: block IN12 is not in SD26")
    assert run(["sheet", "render", "-w", GOBUHIME, "--step", "0"]) == 2
    assert capsys.readouterr().err == "lbw: error: step must be > 0, got 0\n"


def test_readable_report_has_copyable_lines(capsys) -> None:
    assert run(["sheet", "render", "-w", GOBUHIME, "--unfixed", UNFIXED]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert GOBUHIME in lines
    assert SUB_PROMPT_SR in lines  # printed on one line, never wrapped
    assert SD_SCRIPTS in lines
    assert UNFIXED in lines
    assert "<lora:Gobuhime:1:lbw=Sub>" in lines
    assert any("BASE (the text encoders) has no training equivalent" in line for line in lines)
    assert any(line.startswith("open: 11 of 26 blocks unfixed") for line in lines)


def test_render_and_show_add_block_dims_to_sd_scripts(tmp_path: Path, capsys) -> None:
    dims = "0,2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2"
    expected = (
        SD_SCRIPTS + ' "block_dims=2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2" '
        f'"block_alphas={",".join(["1"] * 25)}"'
    )
    data = render_json(capsys, "--unfixed", UNFIXED, "--dims", dims, "--alphas", "1")
    assert list(data) == list(OUTPUT_KEYS)
    assert data["sd_scripts"] == expected
    assert run(["sheet", "render", "-w", GOBUHIME, "--dims", dims, "--alphas", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("sd-scripts block arguments (--network_args)") + 1] == expected
    file = tmp_path / "x.toml"
    assert run(["sheet", "new", str(file), "--name", "X", "--layout", "XL12"]) == 0
    capsys.readouterr()
    assert run(["sheet", "show", str(file), "--dims", "16", "--only", "sd_scripts"]) == 0
    assert capsys.readouterr().out == (
        '"down_lr_weight=0,0,0,0,1,1,0,1,1" "mid_lr_weight=1,1,1" "up_lr_weight=1,1,1,1,1,1,0,0,0" '
        f'"block_dims=0,{",".join(["16"] * 21)},0"\n'
    )
    assert run(["sheet", "show", str(file), "--alphas", "1", "--conv-alphas", "1"]) == 2
    assert capsys.readouterr() == ("", "lbw: error: sd-scripts ignores conv_block_alphas without conv_block_dims\n")
    assert run(["sheet", "render", "-w", GOBUHIME, "--dims", "1,1,1,1,1,1,1,1,1,1,1,1"]) == 2
    assert capsys.readouterr().err == (
        "lbw: error: block_dims is XL12 but lr weights is SD26: SD and SDXL blocks differ\n"
    )


def test_all_in_fixed_and_unfixed(capsys) -> None:
    assert render_json(capsys, "--fixed", "all")["sub_prompt_sr"] == "Sub"
    assert render_json(capsys, "--unfixed", "all")["eba_blocks"].count(",") == 25


def test_sheet_file_workflow(tmp_path: Path, capsys) -> None:
    file = tmp_path / "gobuhime.toml"
    fixed = "BASE,IN00,IN02,IN06,IN07,IN08,IN09,IN10,IN11,MID,OUT02,OUT03,OUT04,OUT05,OUT10"
    assert (
        run(["sheet", "new", str(file), "-w", GOBUHIME, "--fixed", fixed, "--lora", "gobuhime-Defmix2"]) == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        f"created {file}: open: 11 of 26 blocks unfixed ({UNFIXED})",
        GOBUHIME,
    ]
    assert run(["sheet", "show", str(file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sub_prompt_sr"] == SUB_PROMPT_SR
    assert data["prompt_tag"] == "<lora:gobuhime-Defmix2:1:lbw=Sub>"
    # The tutorial's progression, ending with OUT06 = 0.5 and everything fixed.
    assert run(["sheet", "fix", str(file), "IN01=0", "OUT01=0", "OUT07=0", "OUT11=0"]) == 0
    assert run(["sheet", "fix", str(file), "IN03=0,OUT00=0,OUT09=0"]) == 0
    assert run(["sheet", "set", str(file), "IN04=0", "IN05=0", "--fix"]) == 0
    assert run(["sheet", "set", str(file), "OUT08=0"]) == 0
    assert run(["sheet", "fix", str(file), "OUT06", "OUT08"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        f"saved {file}: done: all 26 blocks are fixed; WEIGHT is final",
        "Gobuhime:1,0,0,1,0,0,0,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0,0,0,0",
    ]
    # Going deeper: step 0.25, unfix the 1-blocks, and set every unfixed block.
    assert run(["sheet", "set", str(file), "--step", "0.25"]) == 0
    assert run(["sheet", "unfix", str(file), "IN02", "IN07"]) == 0
    capsys.readouterr()
    assert run(["sheet", "show", str(file), "--only", "sub_prompt_sr"]) == 0
    assert capsys.readouterr().out == "Sub, SubIN02_0.75, SubIN07_0.75\n"
    assert run(["sheet", "set", str(file), "--all-unfixed", "0.5"]) == 0
    assert run(["sheet", "unfix", str(file), "all"]) == 0
    capsys.readouterr()
    assert run(["sheet", "show", str(file), "--only", "eba_blocks"]) == 0
    assert capsys.readouterr().out.count(",") == 25
    assert "step = 0.25" in file.read_text(encoding="utf-8")


def test_sheet_file_errors(tmp_path: Path, capsys) -> None:
    file = tmp_path / "s.toml"
    assert run(["sheet", "new", str(file), "--name", "S", "--layout", "12"]) == 0
    assert run(["sheet", "new", str(file), "--name", "S"]) == 2
    assert capsys.readouterr().err.endswith(f"lbw: error: {file}: exists; pass --force to overwrite\n")
    assert run(["sheet", "set", str(file), "IN01=0"]) == 2
    assert "block IN01 is not in XL12" in capsys.readouterr().err
    assert run(["sheet", "set", str(file), "IN04"]) == 2
    assert "give values as ID=VALUE" in capsys.readouterr().err
    before = file.read_text(encoding="utf-8")
    assert run(["sheet", "set", str(file), "IN04=abc"]) == 2
    assert "value for IN04 'abc' is not a number" in capsys.readouterr().err
    assert file.read_text(encoding="utf-8") == before  # failed commands leave the file untouched
    assert run(["sheet", "new", str(tmp_path / "t.toml"), "--name", "T", "--layout", "15"]) == 2
    assert capsys.readouterr().err.startswith("lbw: error: --layout '15' is not a layout; expected 26, 17, 20")
    assert run(["sheet", "new", str(tmp_path), "--name", "T", "--force"]) == 2
    assert capsys.readouterr().err == f"lbw: error: {tmp_path}: is a folder, expected a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]
    file.write_text("name = [", encoding="utf-8")
    assert run(["sheet", "show", str(file)]) == 2
    assert capsys.readouterr().err.startswith(f"lbw: error: {file}: not valid TOML")


def test_hints_list_and_side_by_side(tmp_path: Path, capsys) -> None:
    assert run(["hints"]) == 0
    out = capsys.readouterr().out
    assert "Face_s:1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0" in out.splitlines()
    assert "OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1" in out.splitlines()
    mine = tmp_path / "mine.txt"
    mine.write_text("Mine:" + ",".join(["0.5"] * 26) + "\n", encoding="utf-8")
    assert run(["hints", "--presets", str(mine), "--show", "Face_c,Mine,FLUXALL", "-w", GOBUHIME]) == 0
    out = capsys.readouterr().out
    assert "Gobuhime" in out and "Face_c" in out and "Mine" in out
    assert "left out (another model family): FLUXALL (FLUX61)" in out
    assert run(["hints", "--show", "Nope"]) == 2
    assert "unknown hint row 'Nope'" in capsys.readouterr().err
    assert run(["hints", "--sheet", str(mine), "-w", GOBUHIME]) == 2
    assert capsys.readouterr() == ("", "lbw: error: give --sheet or --weights, not both\n")


def test_demo_prints_the_gobuhime_outputs(capsys) -> None:
    assert run(["demo", "--sheet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert GOBUHIME in lines
    assert SUB_PROMPT_SR in lines
    assert SD_SCRIPTS in lines
    assert UNFIXED in lines
    assert "<lora:gobuhime-Defmix2:1:lbw=Sub>" in lines


LIGHT_CHECK = """
import sys, tempfile, os
from lbw.interfaces.cli.app import run
tmp = tempfile.mkdtemp()
sheet = os.path.join(tmp, "s.toml")
presets = os.path.join(tmp, "p.txt")
w = "G:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
codes = [
    run(["--help"]),
    run(["weights", "parse", w, "--to", "26"]),
    run(["weights", "convert", w, "--to", "17", "--allow-drop"]),
    run(["weights", "show", w]),
    run(["weights", "sdscripts", w, "--dims", "8", "--alphas", "4"]),
    run(["presets", "list"]),
    run(["presets", "add", presets, w]),
    run(["presets", "check", presets]),
    run(["sheet", "render", "-w", w, "--unfixed", "IN01", "--json"]),
    run(["sheet", "render", "-w", w]),
    run(["sheet", "render", "-w", w, "--dims", "8", "--conv-dims", "4", "--json"]),
    run(["sheet", "new", sheet, "-w", w]),
    run(["sheet", "fix", sheet, "IN01=0"]),
    run(["sheet", "show", sheet]),
    run(["hints", "--show", "Face_c", "--sheet", sheet]),
    run(["demo", "--sheet"]),
]
names = ("torch", "safetensors", "diffusers", "numpy", "transformers", "PIL")
heavy = sorted(m for m in names if m in sys.modules)
print("RESULT", codes, heavy)
"""


def test_light_commands_do_not_import_heavy_libraries() -> None:
    done = subprocess.run([sys.executable, "-c", LIGHT_CHECK], capture_output=True, text=True, timeout=120)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT [" + ", ".join(["0"] * 16) + "] []"], done.stderr[-2000:]
