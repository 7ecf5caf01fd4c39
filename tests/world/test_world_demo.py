"""The built-in world as lbw uses it: the demo tells the tutorial's story with numbers, and a render of the world
model with its LoRA means something (green skin where the LoRA is on, none where it is off)."""

from __future__ import annotations

from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

from lbw.world import assets

pytestmark = pytest.mark.skipif(not assets.shipped(), reason="the world's trained weights are not in this checkout")


@pytest.fixture(scope="module")
def world_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import torch

    from lbw.interfaces.cli.app import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("world-demo") / "out"
    buffer = StringIO()
    try:
        with redirect_stdout(buffer):
            code = run(["demo", "--out", str(folder), "--device", "cpu"])  # the world is the default
    finally:
        torch.set_num_threads(threads)
    assert code == 0, buffer.getvalue()
    return folder, buffer.getvalue()


STORY_COLUMNS = ("skin", "ornament", "choker", "clothes_moved", "background_moved", "clothes_green", "bg_green")


def _story(out: str) -> dict[str, dict[str, float]]:
    """The demo's story table: label -> column -> number (shares as fractions, colour moves in CIEDE2000)."""
    rows: dict[str, dict[str, float]] = {}
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("The effect and the side effect"))
    for line in lines[start + 2 : start + 5]:
        label, numbers = line[:12].strip(), line[12:].split()
        values = [float(n.rstrip("%")) / (100 if n.endswith("%") else 1) for n in numbers]
        rows[label] = dict(zip(STORY_COLUMNS, values, strict=True))
    return rows


def test_the_demo_runs_on_the_world_and_bakes_exactly(world_demo: tuple[Path, str]) -> None:
    folder, out = world_demo
    assert "the built-in world" in out
    assert "verified: max relative error" in out
    assert (folder / "eba" / "analysis.json").is_file() and (folder / "story").is_dir()


def test_the_story_numbers_show_the_effect_and_the_side_effect(world_demo: tuple[Path, str]) -> None:
    """LoRA off: no green skin, nothing moved; ALL: green skin with the identity parts, and the clothes and the
    background tinted (the tutorial's side effect, several CIEDE2000 units); the suggested weights keep the face
    and its parts and leave less tint than ALL."""
    _, out = world_demo
    rows = _story(out)
    off, full, suggested = rows["LoRA off"], rows["ALL"], rows["suggested"]
    assert off["skin"] == 0.0 and off["clothes_moved"] == off["background_moved"] == 0.0
    assert full["skin"] >= 0.75 and full["ornament"] >= 0.75 and full["choker"] >= 0.75
    assert full["clothes_moved"] >= 3.0 and full["background_moved"] >= 3.0
    assert suggested["skin"] >= full["skin"] - 0.25
    assert suggested["background_moved"] < full["background_moved"]


def test_world_render_through_the_diffusers_backend(tmp_path: Path) -> None:
    """The world model and gobuhime through lbw's plan/runner: ALL turns the skin green, OFF never does, and the
    batched engine draws what the merge engine draws."""
    from PIL import Image

    from lbw.render.backends.diffusers_backend import DiffusersBackend
    from lbw.render.plan import Cell, LoraSpec, Plan
    from lbw.render.runner import run_plan
    from lbw.services.demo_render import world_settings
    from lbw.services.world_demo import STORY_SEEDS
    from lbw.world import measure

    lora = assets.lora_path("gobuhime")
    plan = Plan(kind="custom", layout="SD26", cells=(Cell("OFF", (0.0,) * 26), Cell("ALL", (1.0,) * 26)),
                settings=world_settings(STORY_SEEDS), loras=(LoraSpec(path=str(lora), name=lora.stem),),
                model=str(assets.model_folder()), name="world")
    images: dict[str, dict[str, list[np.ndarray]]] = {}
    for mode in ("merge", "batched"):
        result = run_plan(plan, DiffusersBackend(device="cpu", lora_mode=mode), tmp_path / mode, grid=False)
        for job, path in sorted(result.cell_paths.items(), key=lambda item: (item[0].cell_index, item[0].seed)):
            with Image.open(path) as image:
                images.setdefault(mode, {}).setdefault(job.cell.label, []).append(np.asarray(image.convert("RGB")))
    skins = {label: [measure.read(Image.fromarray(a)).skin for a in arrays]
             for label, arrays in images["merge"].items()}
    assert "green" not in skins["OFF"]
    assert skins["ALL"].count("green") >= 2
    for label in ("OFF", "ALL"):
        for a, b in zip(images["merge"][label], images["batched"][label], strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 3
