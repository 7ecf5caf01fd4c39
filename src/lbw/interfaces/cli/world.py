"""``lbw world``: the built-in world — draw its pictures, train its model and LoRAs, evaluate them.

Example:
    $ lbw world draw "1girl, longhair, red hair, choker, blue dress, white background" -o truth.png
    $ lbw world train --work ~/.cache/lbw/world-train          # resumable; Ctrl-C and run again
    $ lbw world evaluate --model ~/.cache/lbw/world-train/model --lora gobuhime.safetensors
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

DEFAULT_WORK = Path.home() / ".cache" / "lbw" / "world-train"


def register(app: typer.Typer) -> None:
    """Add ``lbw world`` to ``app``."""
    world = typer.Typer(help="The built-in world: a procedural character generator and a small model trained on it.",
                        no_args_is_help=True)
    world.command("draw")(draw_command)
    world.command("train")(train_command)
    world.command("evaluate")(evaluate_command)
    world.command("package")(package_command)
    app.add_typer(world, name="world")


def draw_command(
    captions: list[str] = typer.Argument(..., help="Captions (booru tags, e.g. '1girl, shorthair, blue hair')."),
    out: Path = typer.Option(..., "-o", "--out", help="PNG to write (a row of pictures per caption)."),
    seeds: str = typer.Option("0,1,2,3", "--seeds", help="Comma-separated seeds (one column each)."),
    model: Path | None = typer.Option(None, "--model", help="Draw with this world model folder instead of the "
                                                             "procedural generator (the truth)."),
    scale: int = typer.Option(4, "--scale", min=1, max=8, help="Enlarge each 64 px picture this many times."),
) -> None:
    """Draw captions with the generator (the truth) or with a trained world model, as one PNG."""
    from PIL import Image

    from lbw.errors import LbwError
    from lbw.files.atomic import atomic_path
    from lbw.world import generator

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise LbwError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if model is None:
        rows = [[generator.draw(generator.parse_caption(text), s).image for s in seed_list] for text in captions]
    else:
        from lbw.services.world import load_world_pipeline
        from lbw.world.evaluate import render_captions

        images = render_captions(load_world_pipeline(model), captions, seed_list)
        rows = [images[i * len(seed_list) : (i + 1) * len(seed_list)] for i in range(len(captions))]
    side = generator.SIZE * scale
    sheet = Image.new("RGB", (side * len(seed_list), side * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (c * side, r * side))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    print(out)


STAGE_NAMES = ("data", "vae", "latents", "base", "refine", "decoder", "export", "loras")  # lbw.services.world.STAGES


def train_command(
    work: Path = typer.Option(DEFAULT_WORK, "--work", help="Folder for data, checkpoints and results."),
    stages: str = typer.Option(",".join(STAGE_NAMES), "--stages", help="Comma-separated stages to run, in order."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads (1 is fastest on a small busy machine)."),
    base_steps: int | None = typer.Option(None, "--base-steps", min=1, help="Override the base model's steps."),
    refine_steps: int | None = typer.Option(None, "--refine-steps", min=1, help="Override the refine phase's steps."),
    lora_steps: int | None = typer.Option(None, "--lora-steps", min=1, help="Override each LoRA's steps."),
) -> None:
    """Train the world model and its LoRAs (deterministic; resumes from the newest checkpoint)."""
    from lbw.services.world import WorldPlan, train_world
    from lbw.world import training

    plan = WorldPlan(stages=tuple(s.strip() for s in stages.split(",") if s.strip()), threads=threads)
    if base_steps is not None:
        plan.base = training.BaseConfig(steps=base_steps)
    if refine_steps is not None:
        plan.refine = training.RefineConfig(steps=refine_steps)
    if lora_steps is not None:
        from dataclasses import replace

        plan.loras = {name: replace(config, steps=lora_steps) for name, config in plan.loras.items()}
    times = train_world(work, plan, progress=_Progress())
    for stage, seconds in times.items():
        print(f"{stage}: {seconds:.0f} s")
    print(f"work folder: {work}")


class _Progress:
    """One status line per stage on stderr: step, loss, steps per second and ETA."""

    def __init__(self) -> None:
        self.began: dict[str, tuple[float, int]] = {}
        self.last = 0.0

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        first = self.began.setdefault(stage, (now, step))
        if now - self.last < 1.0 and step != total:
            return
        self.last = now
        rate = (step - first[1]) / max(now - first[0], 1e-9)
        eta = (total - step) / rate if rate > 0 else float("nan")
        line = f"{stage}: step {step}/{total}  loss {loss:.4f}  {rate:.2f} steps/s  ETA {eta / 60:.1f} min"
        sys.stderr.write(f"\r{line} ")
        if step == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def evaluate_command(
    model: Path | None = typer.Option(None, "--model", help="World model folder (default: the shipped one)."),
    lora: Path | None = typer.Option(None, "--lora", help="Also measure this LoRA's effect and side effect."),
    combinations: int = typer.Option(100, "--combinations", min=1, help="Held-out attribute combinations."),
    seeds: str = typer.Option("0,1", "--seeds", help="Comma-separated seeds per combination."),
    out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON here."),
    threads: int = typer.Option(1, "--threads", min=1),
    steps: int | None = typer.Option(None, "--steps", min=1, max=200, help="Sampling steps (default: the world's)."),
    cfg: float | None = typer.Option(None, "--cfg", min=0.0, max=30.0, help="Guidance scale (default: the world's)."),
    validation: bool = typer.Option(False, "--validation", help="Training combinations at new seeds instead of "
                                    "held-out ones (for choosing settings without touching the test set)."),
) -> None:
    """Measure caption control on held-out combinations (and a LoRA's effect), print the figures."""
    from lbw.errors import LbwError
    from lbw.files.atomic import write_text_atomic
    from lbw.services.world import evaluate_world
    from lbw.world import assets

    folder = model if model is not None else assets.model_folder()
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise LbwError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    from dataclasses import replace

    from lbw.world.evaluate import WORLD_SETTINGS

    settings = replace(WORLD_SETTINGS, **{k: v for k, v in (("steps", steps), ("cfg", cfg)) if v is not None})
    report = evaluate_world(folder, combinations=combinations, seeds=seed_list, lora=lora, threads=threads,
                            settings=settings, validation=validation)
    control = report["caption_control"]
    kind = "training (validation)" if validation else "held-out"
    print(f"caption control on {control['images']} images ({control['combinations']} {kind} combinations x "
          f"{len(seed_list)} seeds): {control['overall']:.1%} of regions match")
    for region, share in control["per_region"].items():
        print(f"  {region:<11} {share:.1%}")
    for part, share in control["identity_found_when_asked"].items():
        print(f"  {part:<11} found when asked: {'-' if share is None else f'{share:.1%}'}")
    if "lora" in report:
        effect = report["lora"]
        print(f"LoRA {lora}: green skin {effect['green_skin']:.1%}; identity {effect['identity_present']}")
        for part, shares in effect["green_share"].items():
            shift = effect["colour_shift"][part]
            print(f"  green on {part}: {shares['with_lora']:.1%} with the LoRA, {shares['base']:.1%} without; "
                  f"colour moved by the LoRA: {shift:.1f} CIEDE2000 (same caption and seed)")
    print(f"{report['seconds']:.0f} s")
    if out is not None:
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")


def package_command(
    work: Path = typer.Option(DEFAULT_WORK, "--work", help="The training folder (with model/ and the LoRA files)."),
    dest: Path | None = typer.Option(None, "--dest", help="Where to write (default: the package's weights folder)."),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="Store the model's weights in float16 (half the size)."),
) -> None:
    """Copy a finished training into the package's weights folder, with a manifest (sizes, sha256, config)."""
    from lbw.services.world import package_world
    from lbw.world import assets

    folder = package_world(work, dest or assets.weights_folder(), fp16=fp16)
    manifest = assets.read_manifest(folder)
    total = sum(entry["size"] for entry in manifest["files"].values())
    print(f"packaged {len(manifest['files'])} files, {total / 2**20:.1f} MiB, into {folder}")
