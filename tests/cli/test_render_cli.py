"""``lbw plot`` and ``lbw eba`` in-process: exit codes, printed paths and table, errors, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbw.interfaces.cli.app import run

TINY = ["--steps", "4", "--width", "64", "--height", "64", "--threads", "1", "--device", "cpu"]


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
    code = run(["plot", str(tmp_path / "sub" / "plan.json"), "-o", str(tmp_path / "sub"), "--threads", "1"])
    assert code == 0
    assert "(0 rendered, " in capsys.readouterr().out


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
    assert not out.exists()  # user errors write nothing


def test_render_commands_import_nothing_heavy():
    code = (
        "import sys, typer; from lbw.interfaces.cli.render import register; register(typer.Typer()); "
        "print(sorted(m for m in ('torch', 'diffusers', 'safetensors', 'numpy', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
