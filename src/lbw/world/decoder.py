"""Fine-tune the autoencoder's decoder on every colour of the world, the LoRAs' included (encoder frozen).

Why: the ``vae`` stage sees only the base world, where green never occurs (green belongs to gobuhime), and its
decoder drew a green face brown and green-tinted clothes in their untinted colour (mean error 28/255 on gobuhime
pictures), so the gobuhime LoRA, which learns the encoder's latents of green pictures, rendered brown skin. Only
the decoder is trained here: the encoder, and with it every latent the base model and the LoRAs were trained on,
stays exactly as it was (Stable Diffusion's own ft-MSE autoencoder was made the same way, to stay compatible with
the UNet). The pictures are half base-world pictures and half LoRA pictures (gobuhime with its green bleed,
sailor), random 32x32 crops as in the ``vae`` stage, MSE loss, AdamW with warm-up and cosine decay.

Example:
    >>> train_decoder(Path("work"), DecoderConfig())   # writes work/vae-decoder/final, resumable
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lbw.world.training import (
    Progress,
    _cosine_with_warmup,
    _optimizer_step,
    _quiet_progress,
    _record_step,
    _to_tensor,
    load_data,
    resume,
)


@dataclass
class DecoderConfig:
    steps: int = 400
    batch: int = 32
    crop: int = 32
    learning_rate: float = 2e-4
    warmup: int = 20
    lora_pictures: int = 2_000  # per LoRA
    seed: int = 6
    checkpoint_every: int = 100


def decoder_pictures(work: Path, config: DecoderConfig) -> np.ndarray:
    """The base world's pictures followed by ``lora_pictures`` of each LoRA (deterministic from the seed)."""
    from lbw.world.lora_training import lora_pictures

    images, _ = load_data(work)
    extra = [lora_pictures(name, config.lora_pictures, config.seed + offset)[0]
             for offset, name in enumerate(("gobuhime", "sailor"))]
    return np.concatenate([images, *extra])


def train_decoder(work: Path, config: DecoderConfig, progress: Progress = _quiet_progress) -> Path:
    """Fine-tune the decoder of ``work/vae/final``; returns the folder of the result (``work/vae-decoder/final``)."""
    from diffusers import AutoencoderKL

    folder = work / "vae-decoder"
    final = folder / "final"
    if (final / "config.json").is_file():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    images = decoder_pictures(work, config)
    lora_start = len(load_data(work)[1])
    vae = AutoencoderKL.from_pretrained(str(work / "vae" / "final"))
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    parameters = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    schedule = _cosine_with_warmup(optimizer, config.warmup, config.steps)
    start, elapsed = resume(folder, {"vae": vae}, optimizer, schedule)
    began = time.monotonic() - elapsed
    vae.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])
        half = config.batch // 2
        picks = np.concatenate([rng.choice(lora_start, size=half, replace=False),
                                rng.choice(np.arange(lora_start, len(images)), size=config.batch - half,
                                           replace=False)])
        y, x = rng.integers(0, images.shape[1] - config.crop + 1, size=2)
        batch = _to_tensor(images[picks, y : y + config.crop, x : x + config.crop])
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.mean
        reconstruction = vae.decode(latents).sample
        loss = torch.nn.functional.mse_loss(reconstruction, batch)
        _optimizer_step(loss, optimizer, schedule)
        _record_step(folder, "decoder", step, config, float(loss.detach()), {"vae": vae}, optimizer, began, progress)
    vae.save_pretrained(str(final), safe_serialization=True)
    return final
