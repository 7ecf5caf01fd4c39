"""Train the world model from scratch: the autoencoder, then the text encoder and UNet together.

Read it top to bottom like diffusers' training examples: a configuration dataclass, explicit seeds, one function
per stage. Every stage is deterministic from its seeds (the data order and the noise of step ``s`` are drawn from
generators seeded with ``(seed, s)``, so a resumed run draws what an uninterrupted one would) and resumable: it
writes a checkpoint every ``checkpoint_every`` steps (``lbw.world.checkpoint``, no pickles) and continues from the
newest one. A loss curve (``loss.jsonl``: step, loss, seconds) is kept beside the checkpoints.

Stages (``lbw world train --stage ...``):
1. ``data``: draw the training pictures (``lbw.world.data``) once into ``data.npz``.
2. ``vae``: ``AutoencoderKL`` on random 32x32 crops (it is fully convolutional; crops are 4x cheaper), MSE plus
   a small KL term as in Stable Diffusion's autoencoder.
3. ``latents``: encode every picture once (posterior mean and std); the latent scaling factor is 1/std.
4. ``base``: ``CLIPTextModel`` and ``UNet2DConditionModel`` trained together on the epsilon objective with
   SD1.5's noise schedule, captions shuffled after ``1girl`` and dropped 10% of the time (so classifier-free
   guidance works), AdamW with warm-up and cosine decay, an EMA of the weights (diffusers' ``EMAModel``).
5. ``refine``: the base's EMA weights continue with a tokenizer that has every tag as one token
   (``model.world_tags``), new tokens starting from the mean of their word pieces.
6. ``export``: the EMA weights as a diffusers folder (safetensors), ready for ``lbw.world.assets``.

Example:
    >>> config = BaseConfig(steps=10, checkpoint_every=5)
    >>> train_base(Path("work"), config)       # resumes from work/base/step-* if present
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbw.world import checkpoint, data, model

Progress = Callable[[str, int, int, float], None]


@dataclass
class DataConfig:
    pictures: int = 24_000
    seed: int = 1


@dataclass
class VaeConfig:
    steps: int = 1_200
    batch: int = 32
    crop: int = 32
    learning_rate: float = 1e-3
    warmup: int = 50
    kl_weight: float = 1e-6
    seed: int = 2
    checkpoint_every: int = 200


@dataclass
class BaseConfig:
    steps: int = 4_000
    batch: int = 32
    learning_rate: float = 6e-4
    warmup: int = 200
    weight_decay: float = 1e-2
    caption_dropout: float = 0.1
    # Offset noise (diffusers' --noise_offset): a per-picture, per-channel constant added to the noise. Without it
    # the colour of a 16x16 latent is decided by the seed: at the last timestep SD's schedule keeps
    # sqrt(alpha_bar_T) = 0.068 of the picture, so a picture's mean colour (latent channel means, std ~0.55) reaches
    # the model as ~0.037, below the mean of the seed's noise (std 1/16 = 0.0625), which the model then learns to
    # take for the picture's colour and the caption cannot change it (measured: 14-23% caption control at 1,000 steps
    # and colours that follow the seed at 2,000).
    noise_offset: float = 0.1
    # Multi-resolution ("pyramid") noise, kohya sd-scripts' --multires_noise_iterations/--multires_noise_discount:
    # noise drawn at 1/2, 1/4, ... of the latent size, upsampled and added with weights discount**level. 0: off.
    multires_iterations: int = 0
    multires_discount: float = 0.8
    # The objective: "epsilon" (predict the noise) or "v_prediction" (predict sqrt(ab) eps - sqrt(1-ab) x0), and
    # whether the schedule's last timestep keeps none of the picture (``model.scheduler_config``).
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    ema_decay: float = 0.999
    seed: int = 3
    checkpoint_every: int = 250
    model_seed: int = 0


@dataclass
class RefineConfig(BaseConfig):
    """The second phase: the base's weights with whole-tag tokens, a fresh warm-up and cosine cycle.

    Why: after the base phase (word tokens) the 2-layer text encoder gave nearly the same output for ``blue hair,
    yellow dress`` and ``yellow hair, blue dress`` (cosine 0.90-0.97 at the colour tokens) and the model drew a
    bag of the caption's colours (40% of regions right on validation captions).
    """

    steps: int = 1_500
    learning_rate: float = 4e-4
    warmup: int = 100
    seed: int = 5
    # Zero terminal SNR with v-prediction (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    # Flawed"). With SD1.5's schedule the last timestep keeps sqrt(alpha_bar_T) = 0.068 of the picture, and under
    # the epsilon objective the loss on the picture at high noise is weighted by the SNR (~0.005 there): the model
    # never learned to put the caption's colours on the right parts and the seed chose them (with pyramid noise,
    # the shipped v3: a "blue dress" drew blue hair on 4 seeds of 6 whatever the hair tag). Here the first
    # sampling step sees pure noise, and the v target there is the picture itself, weighted 1.
    noise_offset: float = 0.0
    multires_iterations: int = 0
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True


@dataclass
class WorldConfig:
    data: DataConfig = field(default_factory=DataConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    threads: int = 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _quiet_progress(stage: str, step: int, total: int, loss: float) -> None:
    return None


def _log_loss(folder: Path, step: int, loss: float, seconds: float) -> None:
    with open(folder / "loss.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "loss": round(loss, 6), "seconds": round(seconds, 1)}) + "\n")


def trim_loss_log(folder: Path, step: int) -> None:
    """Drop loss entries past ``step`` (written by a run killed after its last checkpoint)."""
    log = folder / "loss.jsonl"
    if not log.is_file():
        return
    kept = [line for line in log.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
    log.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)


# ---------------------------------------------------------------------------------------------------- 1. data
def make_data(work: Path, config: DataConfig) -> Path:
    """Draw the training pictures into ``work/data.npz`` (skipped when it exists with the same config)."""
    target = work / "data.npz"
    meta = work / "data.json"
    if target.is_file() and meta.is_file() and json.loads(meta.read_text()) == asdict(config):
        return target
    work.mkdir(parents=True, exist_ok=True)
    pictures = data.training_set(config.pictures, config.seed)
    partial = work / ".data.partial.npz"
    np.savez(partial, images=pictures.images, captions=np.array(pictures.captions))
    partial.replace(target)
    meta.write_text(json.dumps(asdict(config)))
    return target


def load_data(work: Path) -> tuple[np.ndarray, list[str]]:
    with np.load(work / "data.npz", allow_pickle=False) as archive:
        return archive["images"], [str(text) for text in archive["captions"]]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ---------------------------------------------------------------------------------------------------- 2. vae
def train_vae(work: Path, config: VaeConfig, progress: Progress = _quiet_progress) -> Path:
    """Train the autoencoder; returns the folder of the finished VAE (``work/vae/final``)."""
    from diffusers import AutoencoderKL

    folder = work / "vae"
    final = folder / "final"
    if (final / "config.json").is_file():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = load_data(work)
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(**model.vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = _cosine_with_warmup(optimizer, config.warmup, config.steps)
    start, elapsed = resume(folder, {"vae": vae}, optimizer, schedule)
    began = time.monotonic() - elapsed
    vae.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])
        picks = rng.choice(len(images), size=config.batch, replace=False)
        y, x = rng.integers(0, images.shape[1] - config.crop + 1, size=2)
        batch = _to_tensor(images[picks, y : y + config.crop, x : x + config.crop])
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        loss = torch.nn.functional.mse_loss(reconstruction, batch) + config.kl_weight * posterior.kl().mean()
        _optimizer_step(loss, optimizer, schedule)
        _record_step(folder, "vae", step, config, float(loss.detach()), {"vae": vae}, optimizer, began, progress)
    vae.save_pretrained(str(final), safe_serialization=True)
    return final


# ---------------------------------------------------------------------------------------------------- 3. latents
def encode_latents(work: Path) -> Path:
    """Posterior mean and std of every picture (float16) and the scaling factor, in ``work/latents.safetensors``."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    target = work / "latents.safetensors"
    if target.is_file():
        return target
    vae = AutoencoderKL.from_pretrained(str(work / "vae" / "final")).eval()
    images, _ = load_data(work)
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            posterior = vae.encode(_to_tensor(images[start : start + 256])).latent_dist
            means.append(posterior.mean.half().contiguous())
            stds.append(posterior.std.half().contiguous())
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = 1.0 / float(mean.float().std())
    partial = work / ".latents.partial.safetensors"
    tensors = {"mean": mean.contiguous(), "std": std.contiguous()}
    save_file(tensors, str(partial), metadata={"scaling_factor": repr(scaling)})
    partial.replace(target)
    return target


def load_latents(work: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    from safetensors import safe_open

    with safe_open(str(work / "latents.safetensors"), "pt") as handle:
        scaling = float(handle.metadata()["scaling_factor"])
        return handle.get_tensor("mean"), handle.get_tensor("std"), scaling


# ---------------------------------------------------------------------------------------------------- 4. base
def train_base(work: Path, config: BaseConfig, progress: Progress = _quiet_progress) -> Path:
    """Train text encoder and UNet together from fresh weights; returns the checkpoint folder of the last step."""
    parts = model.build_untrained(config.model_seed)
    return _train_diffusion(work, work / "base", parts, config, "base", progress)


def _train_diffusion(
    work: Path, folder: Path, parts: model.Parts, config: BaseConfig, stage: str, progress: Progress
) -> Path:
    """The diffusion loop shared by ``base`` and ``refine`` (the config's objective and schedule): resumes from
    ``folder``'s newest checkpoint."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    folder.mkdir(parents=True, exist_ok=True)
    _write_objective(folder, config)
    _, captions = load_data(work)
    means, stds, scaling = load_latents(work)
    text_encoder, unet, tokenizer = parts.text_encoder, parts.unet, parts.tokenizer
    noise_schedule = DDPMScheduler(**model.scheduler_config(config.prediction_type, config.zero_terminal_snr))
    parameters = [*text_encoder.parameters(), *unet.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = _cosine_with_warmup(optimizer, config.warmup, config.steps)
    ema = EMAModel(parameters, decay=config.ema_decay)
    start, elapsed = resume(folder, {"text_encoder": text_encoder, "unet": unet}, optimizer, schedule, ema)
    began = time.monotonic() - elapsed
    text_encoder.train()
    unet.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])
        picks = rng.choice(len(captions), size=config.batch, replace=False)
        texts = [
            "" if rng.random() < config.caption_dropout else _shuffled(captions[i], int(rng.integers(2**31)))
            for i in picks
        ]
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        index = torch.from_numpy(picks)
        shape = means[index].shape
        latents = (means[index].float() + stds[index].float() * torch.randn(shape, generator=generator)) * scaling
        noise = training_noise(shape, generator, config.noise_offset, config.multires_iterations,
                               config.multires_discount)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (config.batch,), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        tokens = tokenizer(texts, padding="max_length", max_length=model.TEXT_LENGTH, truncation=True,
                           return_tensors="pt").input_ids
        context = text_encoder(tokens)[0]
        prediction = unet(noisy, timesteps, context).sample
        loss = torch.nn.functional.mse_loss(prediction, objective_target(noise_schedule, latents, noise, timesteps))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(parameters)
        _record_step(folder, stage, step, config, float(loss.detach()), {"text_encoder": text_encoder, "unet": unet},
                     optimizer, began, progress, ema)
    last = checkpoint.latest_checkpoint(folder)
    assert last is not None
    return last


# ---------------------------------------------------------------------------------------------------- 5. refine
def train_refine(work: Path, config: RefineConfig, progress: Progress = _quiet_progress) -> Path:
    """Continue from the base's EMA weights with the tag tokenizer (``model.world_tags``); returns the last checkpoint.

    Each new tag token starts as the mean of the embeddings of the word pieces it replaces (``red hair`` starts
    halfway between ``red`` and ``hair``), so the refined model begins where the base left off.
    """
    parts = _trained_parts(work / "base", tags=False)
    plain = parts.tokenizer
    tagged = model.build_tokenizer(tags=True)
    embeddings = parts.text_encoder.resize_token_embeddings(len(tagged), mean_resizing=False)
    with torch.no_grad():
        for tag in model.world_tags():
            pieces = plain(tag, add_special_tokens=False).input_ids
            embeddings.weight[tagged.convert_tokens_to_ids(tag)] = embeddings.weight[pieces].mean(dim=0)
    parts.tokenizer = tagged
    return _train_diffusion(work, work / "refine", parts, config, "refine", progress)


def _trained_parts(folder: Path, *, tags: bool) -> model.Parts:
    """Modules holding the EMA weights of ``folder``'s newest checkpoint."""
    last = checkpoint.latest_checkpoint(folder)
    if last is None:
        raise FileNotFoundError(f"no checkpoint under {folder}")
    tensors, _ = checkpoint.load_checkpoint(last)
    parts = model.build_untrained(0, tags=tags)
    parameters = [*parts.text_encoder.parameters(), *parts.unet.parameters()]
    with torch.no_grad():
        for index, parameter in enumerate(parameters):
            parameter.copy_(tensors[f"ema.{index}"])
    return parts


def objective_target(
    schedule: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict under ``schedule``'s ``prediction_type``: the noise, or the velocity.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> x, n, t = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([999])
        >>> float(objective_target(DDPMScheduler(**model.scheduler_config("v_prediction", True)), x, n, t).mean())
        -1.0
    """
    kind = schedule.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return schedule.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}; expected epsilon or v_prediction")


def training_noise(
    shape: torch.Size, generator: torch.Generator, offset: float = 0.0, iterations: int = 0, discount: float = 0.8
) -> torch.Tensor:
    """White noise plus offset noise (``offset`` x one value per picture and channel) and pyramid noise (for
    level 1..``iterations``: noise of 1/2**level the size, bilinearly upsampled, x ``discount**level``), the
    pyramid scaled back to unit variance.

    Example:
        >>> training_noise(torch.Size([2, 4, 16, 16]), torch.Generator().manual_seed(0), 0.0, 4).shape
        torch.Size([2, 4, 16, 16])
    """
    noise = torch.randn(shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    if iterations:
        height, width = shape[-2:]
        for level in range(1, iterations + 1):
            size = (max(height >> level, 1), max(width >> level, 1))
            coarse = torch.randn((shape[0], shape[1], *size), generator=generator)
            upsampled = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                                        align_corners=False)
            noise = noise + discount**level * upsampled
        noise = noise / noise.std()  # as kohya's: the batch's noise back to unit variance
    return noise


def _shuffled(caption: str, seed: int) -> str:
    """``1girl`` first, the other tags in a seeded order (kohya's shuffle_caption with keep_tokens=1)."""
    head, *tags = [tag.strip() for tag in caption.split(",")]
    order = np.random.default_rng(seed).permutation(len(tags))
    return ", ".join([head, *(tags[i] for i in order)])


# ---------------------------------------------------------------------------------------------------- 6. export
def export_base(work: Path, dest: Path) -> Path:
    """The EMA weights of the newest refine checkpoint (the base's when there is no refine stage), with the
    trained VAE (its fine-tuned decoder when the ``decoder`` stage ran), as a diffusers folder at ``dest``."""
    from diffusers import AutoencoderKL

    refined = checkpoint.latest_checkpoint(work / "refine") is not None
    parts = _trained_parts(work / ("refine" if refined else "base"), tags=refined)
    decoder = work / "vae-decoder" / "final"  # the decoder fine-tuned on every colour (lbw.world.decoder)
    vae = AutoencoderKL.from_pretrained(str(decoder if decoder.is_dir() else work / "vae" / "final"))
    _, _, scaling = load_latents(work)
    vae.register_to_config(scaling_factor=scaling)
    parts.vae = vae
    schedule = _read_objective(work / ("refine" if refined else "base"))
    pipeline = model.assemble_pipeline(parts, model.scheduler_config(*schedule))
    pipeline.save_pretrained(str(dest), safe_serialization=True)
    return dest


# ---------------------------------------------------------------------------------------------------- helpers
def _read_objective(folder: Path) -> tuple[str, bool]:
    """The (prediction_type, zero_terminal_snr) a diffusion stage trained with, from its ``objective.json``
    (written when the stage starts; a folder from before that file existed trained on epsilon, SD1.5's schedule)."""
    path = folder / "objective.json"
    if not path.is_file():
        return "epsilon", False
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return str(recorded["prediction_type"]), bool(recorded["zero_terminal_snr"])


def _write_objective(folder: Path, config: BaseConfig) -> None:
    """Record the stage's objective; a stage resumed with another objective than it started with is refused."""
    wanted = (config.prediction_type, config.zero_terminal_snr)
    if checkpoint.latest_checkpoint(folder) is not None and _read_objective(folder) != wanted:
        raise ValueError(f"{folder} was trained with {_read_objective(folder)}, not {wanted}; use another --work")
    text = json.dumps({"prediction_type": wanted[0], "zero_terminal_snr": wanted[1]})
    (folder / "objective.json").write_text(text + "\n", encoding="utf-8")


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
    loss.backward()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def _record_step(
    folder: Path,
    stage: str,
    step: int,
    config: Any,
    value: float,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    began: float,
    progress: Progress,
    ema: Any | None = None,
) -> None:
    """After step ``step`` (0-based): progress, the loss log every 20 steps, a checkpoint every
    ``config.checkpoint_every`` steps and at the last one."""
    progress(stage, step + 1, config.steps, value)
    if (step + 1) % 20 == 0:
        _log_loss(folder, step + 1, value, time.monotonic() - began)
    if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
        _save(folder, step + 1, modules, optimizer, time.monotonic() - began, ema)


def _save(
    folder: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    seconds: float,
    ema: Any | None = None,
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    tensors.update(checkpoint.optimizer_tensors(optimizer))
    if ema is not None:
        tensors.update({f"ema.{i}": shadow for i, shadow in enumerate(ema.shadow_params)})
    tensors["rng.torch"] = torch.get_rng_state()
    state = {"seconds": seconds, "ema_optimization_step": getattr(ema, "optimization_step", 0)}
    checkpoint.save_checkpoint(folder, step, tensors, state)


def resume(
    folder: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    ema: Any | None = None,
    *,
    strict: bool = True,
) -> tuple[int, float]:
    """Load the newest checkpoint under ``folder`` if any; returns (next step, seconds already spent).

    ``strict=False`` for checkpoints that hold only some of the modules' tensors (a LoRA's adapter weights).
    """
    last = checkpoint.latest_checkpoint(folder)
    if last is None:
        trim_loss_log(folder, 0)
        return 0, 0.0
    tensors, state = checkpoint.load_checkpoint(last)
    trim_loss_log(folder, int(state["step"]))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=strict)
    checkpoint.restore_optimizer(optimizer, tensors)
    step = int(state["step"])
    with warnings.catch_warnings():  # stepping the schedule forward without optimizer steps is what we want
        warnings.simplefilter("ignore")
        for _ in range(step):
            schedule.step()
    if ema is not None:
        for index, shadow in enumerate(ema.shadow_params):
            shadow.data.copy_(tensors[f"ema.{index}"])
        ema.optimization_step = int(state.get("ema_optimization_step", step))
    torch.set_rng_state(tensors["rng.torch"])
    return step, float(state.get("seconds", 0.0))


def steps_per_hour(seconds_per_step: float) -> int:
    return math.floor(3600 / seconds_per_step)
