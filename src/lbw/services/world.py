"""World actions the CLI (and later the workbench) call: train every stage, evaluate, package the weights.

Example:
    >>> train_world(Path("~/.cache/lbw/world-train"), WorldPlan(), progress=print_progress)
    >>> report = evaluate_world(model_folder(), combinations=100, seeds=(0, 1))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lbw.errors import LbwError

STAGES = ("data", "vae", "latents", "base", "refine", "decoder", "export", "loras")
Progress = Callable[[str, int, int, float], None]


@dataclass
class WorldPlan:
    """Every stage's configuration (defaults: the shipped training)."""

    stages: tuple[str, ...] = STAGES
    threads: int = 1
    data: Any = None
    vae: Any = None
    base: Any = None
    refine: Any = None
    decoder: Any = None
    loras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from lbw.world import lora_training, training
        from lbw.world.decoder import DecoderConfig

        self.data = self.data or training.DataConfig()
        self.vae = self.vae or training.VaeConfig()
        self.base = self.base or training.BaseConfig()
        self.refine = self.refine or training.RefineConfig()
        self.decoder = self.decoder or DecoderConfig()
        if not self.loras:
            self.loras = {
                # 400 steps drew green skin on 55% of validation pictures: the character needs longer
                "gobuhime": lora_training.LoraTrainConfig(name="gobuhime", seed=11, steps=1_000),
                "sailor": lora_training.LoraTrainConfig(name="sailor", seed=12),
            }
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise LbwError(f"unknown stage {unknown[0]!r}; expected some of {', '.join(STAGES)}")


def train_world(work: Path, plan: WorldPlan, progress: Progress | None = None) -> dict[str, float]:
    """Run the plan's stages in order (each resumes or is skipped when done); returns wall seconds per stage."""
    import torch

    from lbw.world import decoder, lora_training, training

    torch.set_num_threads(plan.threads)
    report = progress or (lambda *_: None)
    times: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.json").write_text(json.dumps(_plan_json(plan), indent=2), encoding="utf-8")
    for stage in STAGES:
        if stage not in plan.stages:
            continue
        began = time.monotonic()
        if stage == "data":
            training.make_data(work, plan.data)
        elif stage == "vae":
            training.train_vae(work, plan.vae, report)
        elif stage == "latents":
            training.encode_latents(work)
        elif stage == "base":
            training.train_base(work, plan.base, report)
        elif stage == "refine":
            training.train_refine(work, plan.refine, report)
        elif stage == "decoder":
            decoder.train_decoder(work, plan.decoder, report)
        elif stage == "export":
            training.export_base(work, work / "model")
        elif stage == "loras":
            for name, config in plan.loras.items():
                lora_training.train_lora(work, work / "model", config, work / f"{name}.safetensors", report)
        times[stage] = time.monotonic() - began
    _append_times(work, times)
    return times


def _plan_json(plan: WorldPlan) -> dict[str, Any]:
    return {
        "stages": list(plan.stages),
        "threads": plan.threads,
        "data": asdict(plan.data),
        "vae": asdict(plan.vae),
        "base": asdict(plan.base),
        "refine": asdict(plan.refine),
        "decoder": asdict(plan.decoder),
        "loras": {name: asdict(config) for name, config in plan.loras.items()},
    }


def _append_times(work: Path, times: dict[str, float]) -> None:
    with open(work / "times.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({k: round(v, 1) for k, v in times.items()}) + "\n")


def load_world_pipeline(model: Path, *, threads: int = 1) -> Any:
    """The world model as a diffusers pipeline on CPU (float32), progress bars off."""
    import torch

    from lbw.render.tiny import quiet_logs

    quiet_logs()  # before the pipeline import: transformers warns at import time
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    if not (model / "model_index.json").is_file():
        raise LbwError("not a diffusers model folder (no model_index.json)", where=str(model))
    # float32 on the CPU whatever the files store (the shipped weights are float16)
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate_world(
    model: Path,
    *,
    combinations: int = 100,
    seeds: tuple[int, ...] = (0, 1),
    lora: Path | None = None,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
    settings: Any = None,
    validation: bool = False,
) -> dict[str, Any]:
    """Caption control of ``model`` (and, with ``lora``, that LoRA's effect and side effect)."""
    from lbw.world import evaluate

    settings = settings or evaluate.WORLD_SETTINGS
    pipe = load_world_pipeline(model, threads=threads)
    began = time.monotonic()
    result: dict[str, Any] = {"model": str(model)}
    result["caption_control"] = evaluate.caption_control(pipe, combinations=combinations, seeds=seeds,
                                                         settings=settings, progress=progress, validation=validation)
    if lora is not None:
        result["lora"] = evaluate.lora_effect(pipe, str(lora), combinations=max(combinations // 2, 10), seeds=seeds,
                                              settings=settings, progress=progress)
    result["seconds"] = time.monotonic() - began
    return result


def package_world(work: Path, dest: Path, *, fp16: bool = True) -> Path:
    """The trained model (``work/model``, optionally stored in float16) and LoRAs into ``dest``, with a manifest:
    the training plan, each stage's wall time and loss curve summary, and the generator version."""
    import shutil
    import tempfile

    from lbw.world import assets, generator

    model = work / "model"
    if not (model / "model_index.json").is_file():
        raise LbwError("no exported model here; run `lbw world train` to the end first", where=str(model))
    loras = {name: work / f"{name}.safetensors" for name in assets.LORAS}
    missing = [str(path) for path in loras.values() if not path.is_file()]
    if missing:
        raise LbwError(f"LoRA not trained yet: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="lbw-world-pack-") as scratch:
        source = model
        if fp16:
            source = Path(scratch) / "model"
            pipe = load_world_pipeline(model)
            import torch

            for part in (pipe.unet, pipe.text_encoder, pipe.vae):
                part.to(torch.float16)
            pipe.save_pretrained(str(source), safe_serialization=True)
            shutil.rmtree(source / "feature_extractor", ignore_errors=True)
        info = {
            "generator_version": generator.GENERATOR_VERSION,
            "training": json.loads((work / "plan.json").read_text(encoding="utf-8")),
            "seconds": _stage_seconds(work),
            "weights_dtype": "float16" if fp16 else "float32",
        }
        return assets.package(source, loras, info, dest)


def _stage_seconds(work: Path) -> dict[str, float]:
    """Wall seconds of each trained stage, from its loss log (the last entry's clock, resumes included)."""
    out: dict[str, float] = {}
    for name, folder in (("vae", work / "vae"), ("base", work / "base"), ("refine", work / "refine"),
                         ("decoder", work / "vae-decoder"),
                         ("gobuhime", work / "lora-gobuhime"), ("sailor", work / "lora-sailor")):
        log = folder / "loss.jsonl"
        if log.is_file():
            lines = log.read_text(encoding="utf-8").splitlines()
            if lines:
                out[name] = float(json.loads(lines[-1])["seconds"])
    return out
