"""The demo's assets: a tiny SD1.5-layout model and a matching LoRA built locally (no downloads), and the
tiny generation settings. ``lbw demo``, the render tests and the EBA benchmark use them.

The LoRA is a kohya LoCon (attention + resnets + samplers + text encoder) with a large alpha/rank, so that
blocks differ clearly in how much they change the tiny model's 64x64 images.

Example:
    >>> model, lora = build_demo_assets(Path("lbw-demo"))
    >>> model.name, lora.name
    ('tiny-sd15', 'gobuhime-tiny.safetensors')
"""

from __future__ import annotations

from pathlib import Path

from lbw.render.plan import Settings

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


# The built-in world (lbw.world): a face box of its 64x64 pictures, and the demo's prompt and settings.
FACE_REGION = "0.33,0.2,0.67,0.6"
WORLD_PROMPT = "1girl, gobuhime, blonde hair, blue dress, white background"


def world_settings(seeds: tuple[int, ...] = (1,)) -> Settings:
    """The world's sampling settings (``lbw.world.evaluate.WORLD_SETTINGS``) with the demo's prompt."""
    from lbw.world.evaluate import WORLD_SETTINGS

    return Settings(
        prompt=WORLD_PROMPT,
        negative_prompt=WORLD_SETTINGS.negative_prompt,
        steps=WORLD_SETTINGS.steps,
        cfg=WORLD_SETTINGS.cfg,
        sampler=WORLD_SETTINGS.sampler,
        width=WORLD_SETTINGS.size,
        height=WORLD_SETTINGS.size,
        clip_skip=1,
        seeds=seeds,
    )


def world_demo_assets() -> tuple[Path, Path]:
    """The shipped world model folder and its gobuhime LoRA (read in place, never written)."""
    from lbw.world import assets

    return assets.model_folder(), assets.lora_path("gobuhime")
