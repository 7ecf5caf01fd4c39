"""``lbw demo --world``: the founding tutorial's loop on the built-in world (needs its shipped weights).

Takes the world model and its gobuhime LoRA (``lbw.world.assets``: green skin, long hair, hair ornament, choker, and
the tutorial's side effect: its green leaks onto clothes and background), runs the Effective Block Analyzer over all
26 blocks with the face as the region of interest, renders a Sub grid of the sheet it suggests, bakes the suggested
weights, verifies the bake module by module, and measures the story for the LoRA off, at ALL and with the
suggested weights, at the same seeds: skin green, the green share on clothes and background, and how far their
colour moved from the LoRA-off picture (mean CIEDE2000: the green tint the LoRA leaves on them).

Example:
    >>> result = run_world_demo(Path("lbw-demo"))
    >>> result.numbers["ALL"]["background_shift"] > result.numbers["suggested"]["background_shift"]
    True
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lbw.errors import RenderError
from lbw.render.plan import Cell, LoraSpec, Plan
from lbw.render.runner import CellCallback, RunResult, run_plan
from lbw.services.analyze import NO_CHANGE, eba_plan, run_eba
from lbw.services.demo import DemoResult, bake_and_verify
from lbw.services.demo_render import FACE_REGION, world_demo_assets, world_settings
from lbw.services.plot import plan_from_sheet

DEMO_REGION = FACE_REGION
STORY_SEEDS = (11, 12, 13, 14)
OFF_LABEL = "LoRA off"
DEMO_THRESHOLD = 5  # pixel levels: the world's flat 64-px pictures (lbw.services.project_render.analysis_threshold)


def run_world_demo(
    folder: Path,
    *,
    device: str = "auto",
    on_cell: CellCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Build the assets, run the analyzer (26 blocks, one seed) and a Sub grid (two seeds) of the sheet it
    suggests, then bake the suggested weights and verify the baked file against the source."""
    from lbw.render.backends.diffusers_backend import DiffusersBackend

    stage = on_stage or (lambda text: None)
    stage("the built-in world: its model and the gobuhime LoRA")
    model, lora = world_demo_assets()
    spec = LoraSpec(path=str(lora), name=lora.stem)
    plan = eba_plan(spec, model=str(model), settings=world_settings((1, 2)), name="Gobuhime", roi=DEMO_REGION,
                    threshold=DEMO_THRESHOLD)
    stage("Effective Block Analyzer: source + 26 blocks at 0.5, face as the region of interest")
    backend = DiffusersBackend(device=device)
    try:
        report = run_eba(plan, backend, folder / "eba", on_cell=on_cell)
        sheet = report.sheet
        if sheet is None:  # no block changed the image: nothing to bake
            raise RenderError(NO_CHANGE)
        stage("Sub grid of the suggested sheet (unclear blocks lowered one at a time)")
        sub_plan = plan_from_sheet(sheet, "sub", settings=world_settings((1, 2)), loras=(spec,), model=str(model))
        sub = run_plan(sub_plan, backend, folder / "sub", cache_dir=folder / "eba" / "cache", on_cell=on_cell)
        stage("the side effect before and after: LoRA off, ALL and the suggested weights, 4 seeds")
        size = len(sheet.weights)
        story_plan = Plan(
            kind="custom",
            layout=sheet.weights.layout.name,
            cells=(
                Cell(OFF_LABEL, (0.0,) * size),
                Cell("ALL", (1.0,) * size),
                Cell("suggested", sheet.weights.numbers()),
            ),
            settings=world_settings(STORY_SEEDS),
            loras=(spec,),
            model=str(model),
            name="side-effect",
        )
        story = run_plan(story_plan, backend, folder / "story", cache_dir=folder / "eba" / "cache", on_cell=on_cell)
    finally:
        backend.close()
    numbers = story_numbers(story)
    baked, verification = bake_and_verify(lora, sheet.weights, folder / f"{lora.stem}.safetensors", stage)
    return DemoResult(model, lora, report, sub, baked, verification, story, numbers)


def story_numbers(result: RunResult) -> dict[str, dict[str, float]]:
    """Per cell of a story plan: skin green share, identity parts, the green share on clothes and background, and
    their colour shift (mean CIEDE2000) from the LoRA-off cell of the same seed."""
    from PIL import Image

    from lbw.world.evaluate import side_effect_numbers
    from lbw.world.measure import colour_shift

    images: dict[str, dict[int, Image.Image]] = {}
    for job, path in result.cell_paths.items():
        with Image.open(path) as image:
            images.setdefault(job.cell.label, {})[job.seed] = image.convert("RGB")
    off = images.get(OFF_LABEL, {})
    numbers = {}
    for label, by_seed in images.items():
        row = side_effect_numbers(list(by_seed.values()))
        for part in ("clothes", "background"):  # the tint: CIEDE2000 against LoRA off at the same seed
            row[f"{part}_shift"] = float(sum(colour_shift(by_seed[s], off[s], part) for s in by_seed) / len(by_seed))
        numbers[label] = row
    return numbers
