"""The main job end to end: tiny model, analyzer, Sub grid, bake, verify (about 10-20 s on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lbw.domain.weights import parse_weights
from lbw.files.lora_file import LoraFile
from lbw.interfaces.cli.app import run
from lbw.render.grid import read_png_text


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("demo") / "out"
    try:
        from contextlib import redirect_stdout
        from io import StringIO

        buffer = StringIO()
        with redirect_stdout(buffer):
            code = run(["demo", "--tiny", "--out", str(folder), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return folder, buffer.getvalue()


def test_demo_writes_every_artifact_it_prints(demo_output: tuple[Path, str]) -> None:
    _, out = demo_output
    paths = [line.split(": ", 1)[1].split("  ")[0].split(" (")[0] for line in out.splitlines()
             if line.split(":")[0] in {"model", "LoRA", "grid", "suggested sheet", "analysis", "plan", "baked"}]
    assert len(paths) >= 7
    for path in paths:
        assert Path(path.strip()).exists(), path
    assert "verified: max relative error" in out


def test_demo_bakes_the_suggested_sheet_exactly(demo_output: tuple[Path, str]) -> None:
    folder, out = demo_output
    analysis = json.loads((folder / "eba" / "analysis.json").read_text())
    suggested = analysis["suggested_weights"]
    assert f"suggested weights: {suggested}" in out
    baked = folder / "gobuhime-tiny-Gobuhime.safetensors"
    with LoraFile.open(baked) as lora:
        assert lora.metadata["lbw_baked_weights"] == suggested
    recorded = parse_weights(suggested)
    expected = {"important": 1.0, "unclear": 0.5, "unneeded": 0.0}
    assert analysis["blocks"] and all(recorded[row["block"]] == expected[row["class"]] for row in analysis["blocks"])


def test_demo_grid_embeds_its_plan(demo_output: tuple[Path, str]) -> None:
    folder, _ = demo_output
    plan = json.loads(read_png_text(folder / "sub" / "grid.png")["lbw_plan"])
    assert plan["kind"] == "sub"
    assert plan["cells"][0]["label"] == "Sub"
    assert len(plan["cells"]) == 1 + sum(1 for cell in plan["cells"][1:] if cell["label"].startswith("Sub"))
