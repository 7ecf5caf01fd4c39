"""``lbw plot`` and ``lbw eba`` in-process: exit codes, printed paths and table, errors, light imports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lbw.interfaces.cli.app import run

TINY = ["--allow-empty-prompt", "--steps", "4", "--width", "64", "--height", "64", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from lbw.services.demo_render import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("cli-assets"))


def test_eba_then_plot_the_suggested_sheet(assets, tmp_path, capsys):
    model, lora = assets
    code = run(["eba", str(lora), "--model", str(model), "--prompt", "1girl, long hair", "--blocks",
                "IN01,IN02,OUT05,OUT11", "--range", "0,1", "-o", str(tmp_path / "eba"), *TINY])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"grid: {tmp_path / 'eba' / 'eba_seed1.png'}" in out
    assert "Effective Block Analyzer (largest change first)" in out
    assert "classification (Diff %): important: Diff % >= 5; unneeded: Diff % < 1" in out
    analysis = json.loads((tmp_path / "eba" / "analysis.json").read_text())
    assert [b["block"] for b in analysis["blocks"]] == [
        line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│")]
    sheet = tmp_path / "eba" / "suggested-sheet.toml"
    assert f"suggested sheet: {sheet}" in out
    code = run(["plot", str(sheet), "--list", "sub", "--lora", str(lora), "--model", str(model),
                "--prompt", "1girl", "--seeds", "1,2", "-o", str(tmp_path / "sub"), *TINY])
    out = capsys.readouterr().out
    assert code == 0
    assert f"grid: {tmp_path / 'sub' / 'grid.png'}" in out
    assert (tmp_path / "sub" / "grid.png").is_file()
    unique = int(out.split("cells: ")[1].split(" (")[1].split(" rendered")[0]) // 2  # distinct images per seed
    code = run(["plot", str(tmp_path / "sub" / "plan.json"), "--threads", "1"])  # re-run in the plan's folder
    assert code == 0
    assert "(0 rendered, " in capsys.readouterr().out
    code = run(["plot", str(tmp_path / "sub" / "grid.png"), "--seeds", "1,2,3", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    cells = len(json.loads((tmp_path / "sub" / "plan.json").read_text())["cells"])
    assert f"cells: {tmp_path / 'sub' / 'cells'} ({unique} rendered, {3 * cells - unique} from the cache)" in out


def test_plot_reruns_an_analyzer_plan_with_its_analysis(assets, tmp_path, capsys):
    model, lora = assets
    out = tmp_path / "eba"
    assert run(["eba", str(lora), "--model", str(model), "--blocks", "IN01 OUT11", "--roi", "16,16,48,48",
                "--important", "10", "--unneeded", "0.5", "-o", str(out), *TINY]) == 0
    first = capsys.readouterr().out
    assert run(["plot", str(out / "eba_seed1.png"), "--threads", "1", "--allow-empty-prompt"]) == 0
    again = capsys.readouterr().out
    table = [line for line in first.splitlines() if line.startswith("│")]
    assert len(table) == 2 and table == [line for line in again.splitlines() if line.startswith("│")]
    assert "classification (region Diff %): important: Diff % >= 10; unneeded: Diff % < 0.5" in again
    assert f"grid: {out / 'eba_seed1.png'}" in again


def test_ctrl_c_leaves_a_consistent_cache_and_the_run_resumes(assets, tmp_path, capsys):
    model, lora = assets
    out = tmp_path / "eba"
    argv = ["eba", str(lora), "--model", str(model), "--blocks", "IN01,IN03,OUT00,OUT02,OUT05,OUT11", "-o", str(out),
            "--batch-size", "1", *TINY]  # one cell per batch: the Ctrl-C lands between cells (7 fit one batch)
    code = "import sys; from lbw.interfaces.cli.app import run; sys.exit(run(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list((out / "cache").glob("*.png"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the run
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("lbw: interrupted: stopped after "), err  # one line, no bars
    assert err.endswith(f"kept in {out / 'cache'}: run the same command again to resume\n")
    cached = list((out / "cache").glob("*.png"))
    assert 2 <= len(cached) < 7 and not list((out / "cache").glob(".*.tmp"))  # no half-written files
    for path in cached:
        with Image.open(path) as image:
            image.load()  # every cached cell is a whole PNG
    assert run(argv) == 0
    assert len(json.loads((out / "analysis.json").read_text())["blocks"]) == 6
    assert len(list((out / "cache").glob("*.png"))) == 7  # the resumed run rendered only the missing cells


def test_errors_are_one_line(assets, tmp_path, capsys):
    model, lora = assets
    sheet = tmp_path / "s.toml"
    assert run(["sheet", "new", str(sheet), "--name", "S"]) == 0
    capsys.readouterr()
    assert run(["plot", str(sheet), "--model", str(model)]) == 2
    assert capsys.readouterr().err == "lbw: error: --lora is required (the LoRA the weights apply to)\n"
    out = tmp_path / "never-written"
    assert run(["eba", str(lora), "--model", str(tmp_path / "missing"), "-o", str(out), *TINY]) == 2
    assert capsys.readouterr().err.strip().endswith("missing: model not found")
    assert run(["eba", str(lora), "--model", str(model), "--blocks", "IN12", "-o", str(out), *TINY]) == 2
    assert "unknown block 'IN12'" in capsys.readouterr().err
    assert run(["eba", str(lora), "--model", str(model), "--range", "0.5", "-o", str(out), *TINY]) == 2
    assert "expected two numbers probe,base" in capsys.readouterr().err
    bad = {
        ("--diff-color", "red"): "lbw: error: diff colour must be black or white, got 'red'\n",
        ("--sampler", "Euler b"): "lbw: error: unknown sampler 'Euler b'; expected one of Euler, Euler a, ",
        ("--threshold", "-1"): "lbw: error: the analyzer threshold must be >= 0, got -1\n",
        ("--roi", "0,0,0,10"): "lbw: error: region '0,0,0,10' is empty inside a 64x64 image\n",
        ("--a1111-mode", "grid"): "lbw: error: unknown a1111 mode 'grid'; expected one of presets, inline, xyz\n",
        ("--dtype", "fp8"): "lbw: error: unknown dtype 'fp8'; expected fp32, fp16, bf16\n",
    }
    for (option, value), message in bad.items():
        backend = ["--backend", "a1111"] if option == "--a1111-mode" else []
        assert run(["eba", str(lora), "--model", str(model), option, value, "-o", str(out), *backend, *TINY]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert run(["eba", str(lora), "--model", str(model), "-o", str(out), *TINY[:-1], "tpu"]) == 2
    assert capsys.readouterr().err == "lbw: error: unknown device 'tpu'; expected auto, cpu, cuda or cuda:N\n"
    assert run(["eba", str(lora), "--model", str(model), "-o", str(out), *TINY[:-1], "cuda:7"]) == 2
    assert capsys.readouterr().err.startswith("lbw: error: --device cuda:7 was asked for but torch sees ")
    broken = tmp_path / "broken.json"
    broken.write_text('{"lbw_plan": 1, "kind": ')
    assert run(["plot", str(broken), "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"lbw: error: {broken}: invalid plan JSON: ")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert run(["plot", str(plain), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"lbw: error: {plain}: this PNG carries no lbw plan\n"
    assert run(["plot", str(tmp_path / "gone.png"), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"lbw: error: {tmp_path / 'gone.png'}: grid image not found\n"
    assert not out.exists()  # user errors write nothing


def test_render_commands_import_nothing_heavy():
    code = (
        "import sys, typer; from lbw.interfaces.cli.render import register; register(typer.Typer()); "
        "print(sorted(m for m in ('torch', 'diffusers', 'safetensors', 'numpy', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
