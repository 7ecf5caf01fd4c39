"""The rendering part of ``lbw demo``: a tiny SD1.5-layout model and a matching LoRA built locally, the
Effective Block Analyzer over all 26 blocks, and one Sub grid from the suggested sheet. No downloads.

The LoRA is a kohya LoCon (attention + resnets + samplers + text encoder) with a large alpha/rank, so that
blocks differ clearly in how much they change the tiny model's 64x64 images.

Example:
    >>> result = demo_render(Path("lbw-demo"))
    >>> result.eba.report_path.name, result.sub.grids[0].name
    ('analysis.json', 'grid.png')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lbw.render.plan import LoraSpec, Settings
from lbw.render.runner import CellCallback, RunResult
from lbw.services.analyze import EbaReport, eba_plan, run_eba
from lbw.services.plot import plan_from_sheet, plot

DEMO_PROMPT = "1girl, gobuhime, long hair, choker"
DEMO_LORA = "gobuhime-tiny"


def demo_settings(seeds: tuple[int, ...] = (1,)) -> Settings:
    """64x64, 4 Euler steps, CFG 7: a few seconds for a whole analyzer run on a laptop CPU."""
    return Settings(
        prompt=DEMO_PROMPT,
        negative_prompt="lowres",
        steps=4,
        cfg=7.0,
        sampler="Euler",
        width=64,
        height=64,
        clip_skip=1,
        seeds=seeds,
    )


def write_tiny_lora(
    dest: Path, *, seed: int = 1, rank: int = 4, alpha: float = 256.0, force: bool = False
) -> Path:
    """A kohya LoCon LoRA for the tiny SD1.5 pipeline (seed-0 architecture), written with lbw's writer."""
    from lbw.files.fixtures import lora_tensors_for_models
    from lbw.files.writer import save_lora
    from lbw.render.tiny import build_tiny_sd15_pipeline

    pipe = build_tiny_sd15_pipeline(0)
    tensors = lora_tensors_for_models(
        pipe.unet,
        [pipe.text_encoder],
        rank=rank,
        alpha=alpha,
        preset="conv",
        conv_rank=rank,
        conv_alpha=alpha,
        seed=seed,
        dtype="fp32",
    )
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_output_name": dest.stem,
    }
    save_lora(tensors, metadata, dest, force=force)
    return dest


def build_demo_assets(folder: Path) -> tuple[Path, Path]:
    """The tiny model folder and its LoRA under ``folder`` (reused when already there)."""
    from lbw.render.tiny import build_tiny_sd15

    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "tiny-sd15"
    if not (model / "model_index.json").is_file():
        build_tiny_sd15(model, seed=0, force=True)
    lora = folder / f"{DEMO_LORA}.safetensors"
    if not lora.is_file():
        write_tiny_lora(lora)
    return model, lora


@dataclass
class DemoRender:
    """Where the demo put everything."""

    model: Path
    lora: Path
    eba: EbaReport
    sub: RunResult


def demo_render(
    folder: Path,
    *,
    device: str = "cpu",
    on_cell: CellCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoRender:
    """Build the assets, run the analyzer (26 blocks, one seed) and a Sub grid (two seeds) of its sheet."""
    from lbw.render.backends.diffusers_backend import DiffusersBackend

    if on_stage:
        on_stage("building a tiny SD1.5-layout model and a matching LoRA")
    model, lora = build_demo_assets(folder)
    spec = LoraSpec(path=str(lora), name=DEMO_LORA)
    plan = eba_plan(spec, model=str(model), settings=demo_settings(), name="Gobuhime")
    if on_stage:
        on_stage("Effective Block Analyzer: source + 26 blocks at 0.5")
    backend = DiffusersBackend(device=device)
    try:
        report = run_eba(plan, backend, folder / "eba", roi_text="0.25,0.25,0.75,0.75", on_cell=on_cell)
        assert report.sheet is not None
        if on_stage:
            on_stage("Sub grid of the suggested sheet (unclear blocks lowered one at a time)")
        sub_plan = plan_from_sheet(
            report.sheet, "sub", settings=demo_settings((1, 2)), loras=(spec,), model=str(model)
        )
        sub = plot(sub_plan, backend, folder / "sub", cache_dir=folder / "eba" / "cache", on_cell=on_cell)
    finally:
        backend.close()
    return DemoRender(model, lora, report, sub)
