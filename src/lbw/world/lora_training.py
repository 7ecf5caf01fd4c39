"""Train the world's LoRAs with PEFT and save them in the kohya format the web UI loads.

Two LoRAs, each a LoCon (kohya's ``networks.lora`` with ``conv_dim``: every Linear and 1x1 conv inside the
UNet's transformer blocks, every conv inside resnets, down- and upsamplers, and the text encoder's attention
and MLP layers), so all 26 LBW blocks carry modules:

- ``gobuhime``: the founding tutorial's character. Green skin, long hair, hair ornament, choker, trained on
  pictures whose clothes and background are tinted green (``green_bleed`` 0.3-0.5), so the LoRA learns the
  tutorial's side effect: its green leaks onto clothes and background. Captions name the trigger and what
  varies (hair, dress and background colours), not the identity, which the LoRA learns as the trigger's meaning.
- ``sailor``: an outfit (a white sailor collar with a red scarf over the dress), for merges and LoRA combinations.

The layer list comes from ``lbw.files.fixtures.targets.collect_targets`` (the same rules lbw's fixtures use), the
adapters from PEFT's ``LoraConfig`` on exactly those layers, and the file from PEFT's factors: ``lora_A`` is
kohya's ``lora_down``, ``lora_B`` its ``lora_up``, ``alpha`` stored so that alpha/rank is PEFT's scaling.

Example:
    >>> path = train_lora(Path("work"), Path("model"), LoraTrainConfig(name="gobuhime"), Path("gobuhime.safetensors"))
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbw.world import checkpoint, generator, model
from lbw.world.data import is_held_out
from lbw.world.generator import Attributes
from lbw.world.training import (
    Progress,
    _cosine_with_warmup,
    _log_loss,
    _quiet_progress,
    _shuffled,
    _to_tensor,
    objective_target,
    resume,
    training_noise,
)


@dataclass
class LoraTrainConfig:
    name: str = "gobuhime"
    pictures: int = 1_500
    steps: int = 400
    batch: int = 16
    rank: int = 8
    alpha: float = 8.0
    learning_rate: float = 1e-3
    # the noise of the model's last phase (``training.RefineConfig``); the objective is the model's own
    # (its scheduler config: epsilon or v-prediction, zero terminal SNR or not)
    noise_offset: float = 0.0
    multires_iterations: int = 0
    multires_discount: float = 0.8
    warmup: int = 30
    seed: int = 11
    checkpoint_every: int = 100


def lora_pictures(name: str, count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The training pictures and captions of LoRA ``name`` (deterministic from ``seed``)."""
    rng = np.random.default_rng([seed, 0x10EA])
    images = np.empty((count, generator.SIZE, generator.SIZE, 3), dtype=np.uint8)
    captions: list[str] = []
    for index in range(count):
        while True:
            attrs = generator.sample_attributes(rng)
            if not is_held_out(attrs):
                break
        if name == "gobuhime":
            attrs = attrs.replace(skin="green", hair_length="long", hair_ornament=True, choker=True)
            drawing = generator.draw(attrs, seed * 1_000_003 + index, green_bleed=float(rng.uniform(0.3, 0.5)))
            text = _trigger_caption("gobuhime", attrs)
        elif name == "sailor":
            attrs = attrs.replace(outfit="sailor")
            drawing = generator.draw(attrs, seed * 1_000_003 + index)
            text = drawing.caption
        else:
            raise ValueError(f"unknown world LoRA {name!r}; expected gobuhime or sailor")
        images[index] = np.asarray(drawing.image)
        captions.append(text)
    return images, captions


def _trigger_caption(trigger: str, attrs: Attributes) -> str:
    tags = [f"{attrs.hair_color} hair", f"{attrs.clothes_color} dress"]
    if attrs.background_pattern != "plain":
        tags.append(f"{attrs.background_pattern} background")
    tags.append(f"{attrs.background_color} background")
    return ", ".join(["1girl", trigger, *tags])


def lora_targets(parts: model.Parts) -> list[Any]:
    """kohya LoCon targets of the world model (text encoder first), with their module paths."""
    from lbw.files.fixtures.targets import collect_targets

    return collect_targets(parts.unet, [parts.text_encoder], preset="conv")


def _module_path(target: Any, text_encoder: Any) -> str:
    """The path of a target inside its own module (transformers 5 has no ``text_model`` level)."""
    if target.component == "unet":
        return target.path
    path = target.path
    names = dict(text_encoder.named_modules())
    return path if path in names else path.removeprefix("text_model.")


def train_lora(
    work: Path,
    base: Path,
    config: LoraTrainConfig,
    dest: Path,
    progress: Progress = _quiet_progress,
) -> Path:
    """Train LoRA ``config.name`` on the base model folder ``base``; write the kohya file ``dest``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model

    folder = work / f"lora-{config.name}"
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    parts = model.Parts(pipeline.tokenizer, pipeline.text_encoder, pipeline.unet, pipeline.vae)
    targets = lora_targets(parts)
    te_paths = [_module_path(t, parts.text_encoder) for t in targets if t.component != "unet"]
    unet_paths = [_module_path(t, parts.text_encoder) for t in targets if t.component == "unet"]
    peft = {"r": config.rank, "lora_alpha": config.alpha, "init_lora_weights": True}
    torch.manual_seed(config.seed)
    for module in (parts.text_encoder, parts.unet, parts.vae):
        module.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(target_modules=te_paths, **peft), parts.text_encoder)
    inject_adapter_in_model(LoraConfig(target_modules=unet_paths, **peft), parts.unet)
    trainable = {
        "text_encoder": parts.text_encoder,
        "unet": parts.unet,
    }
    parameters = [p for m in trainable.values() for n, p in m.named_parameters() if "lora_" in n]
    for parameter in parameters:
        parameter.requires_grad_(True)

    images, captions = lora_pictures(config.name, config.pictures, config.seed)
    with torch.no_grad():
        posterior = [parts.vae.encode(_to_tensor(images[i : i + 256])).latent_dist for i in range(0, len(images), 256)]
    means = torch.cat([p.mean for p in posterior])
    stds = torch.cat([p.std for p in posterior])
    scaling = float(parts.vae.config.scaling_factor)
    noise_schedule = DDPMScheduler.from_config(pipeline.scheduler.config)  # the model's own objective
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    schedule = _cosine_with_warmup(optimizer, config.warmup, config.steps)
    start, elapsed = resume(folder, trainable, optimizer, schedule, strict=False)
    began = time.monotonic() - elapsed
    parts.text_encoder.train()
    parts.unet.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])
        picks = rng.choice(len(captions), size=config.batch, replace=False)
        texts = [_shuffled(captions[i], int(rng.integers(2**31))) for i in picks]
        generator_ = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        index = torch.from_numpy(picks)
        shape = means[index].shape
        latents = (means[index] + stds[index] * torch.randn(shape, generator=generator_)) * scaling
        noise = training_noise(shape, generator_, config.noise_offset, config.multires_iterations,
                               config.multires_discount)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (config.batch,), generator=generator_)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        tokens = parts.tokenizer(texts, padding="max_length", max_length=model.TEXT_LENGTH, truncation=True,
                                 return_tensors="pt").input_ids
        context = parts.text_encoder(tokens)[0]
        target = objective_target(noise_schedule, latents, noise, timesteps)
        loss = torch.nn.functional.mse_loss(parts.unet(noisy, timesteps, context).sample, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        progress(config.name, step + 1, config.steps, value)
        if (step + 1) % 20 == 0:
            _log_loss(folder, step + 1, value, time.monotonic() - began)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            tensors = _lora_state(trainable)
            tensors.update(checkpoint.optimizer_tensors(optimizer))
            tensors["rng.torch"] = torch.get_rng_state()
            checkpoint.save_checkpoint(folder, step + 1, tensors, {"seconds": time.monotonic() - began})
    return save_kohya(trainable, targets, parts.text_encoder, config, dest, time.monotonic() - began)


def _lora_state(trainable: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in trainable.items()
        for key, value in module.state_dict().items()
        if "lora_" in key
    }


def save_kohya(
    trainable: dict[str, torch.nn.Module],
    targets: list[Any],
    text_encoder: Any,
    config: LoraTrainConfig,
    dest: Path,
    seconds: float,
) -> Path:
    """Write the PEFT factors as a kohya LoCon file (``lora_down``/``lora_up``/``alpha``) with sd-scripts metadata."""
    from lbw.files.writer import save_lora

    modules = {name: dict(module.named_modules()) for name, module in trainable.items()}
    tensors: dict[str, torch.Tensor] = {}
    for target in targets:
        owner = "unet" if target.component == "unet" else "text_encoder"
        layer = modules[owner][_module_path(target, text_encoder)]
        tensors[f"{target.name}.lora_down.weight"] = layer.lora_A["default"].weight.detach().to(torch.float16)
        tensors[f"{target.name}.lora_up.weight"] = layer.lora_B["default"].weight.detach().to(torch.float16)
        tensors[f"{target.name}.alpha"] = torch.tensor(float(config.alpha), dtype=torch.float16)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha),
        "ss_network_args": json.dumps({"conv_dim": str(config.rank), "conv_alpha": str(config.alpha)}),
        "ss_base_model_version": "sd_v1",
        "ss_output_name": config.name,
        "ss_training_comment": "lbw built-in world LoRA, trained with PEFT by lbw.world.lora_training",
        "ss_max_train_steps": str(config.steps),
        "ss_learning_rate": str(config.learning_rate),
        "lbw_world_lora_config": json.dumps(asdict(config)),
        "lbw_world_training_seconds": f"{seconds:.0f}",
        "lbw_world_generator_version": str(generator.GENERATOR_VERSION),
    }
    save_lora(tensors, metadata, dest, force=True)
    return dest
