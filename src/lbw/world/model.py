"""The world model's parts: SD1.5's architecture at small widths, built from configs kept here.

- Tokenizer: a ``CLIPTokenizer`` whose vocabulary is every character (so any text tokenises) plus the world's
  words by BPE merges, built locally (no download). The refined model's tokenizer (``tags=True``) also has every
  tag of the world as one added token (``red hair``, ``blue dress``, ``dark skin``, ``1girl``): a tag's meaning
  then sits in one embedding, so the small text encoder need not bind a colour to the noun after it.
- Text encoder: ``CLIPTextModel``, 64 wide, 2 layers (the LBW block BASE).
- UNet: ``UNet2DConditionModel`` with SD1.5's block structure (CrossAttnDownBlock2D x3 + DownBlock2D, mid block
  with attention, UpBlock2D + CrossAttnUpBlock2D x3, 2 layers per block, conv ``proj_in``), so all 26 LBW blocks
  exist and a kohya LoRA targets the same module names as on SD1.5; channels 32/64/64/64, cross-attention 64.
- VAE: ``AutoencoderKL`` with 3 levels (scale factor 4): 64x64 pictures become 4x16x16 latents.
- Scheduler: the DDPM betas of SD1.5 (scaled linear, 0.00085..0.012); sampling with DPM-Solver++.

Example:
    >>> parts = build_untrained(seed=0)
    >>> sum(p.numel() for p in parts.unet.parameters()) > 3_000_000
    True
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbw.world import generator

TEXT_LENGTH = 32
TEXT_WIDTH = 64
LATENT_SIZE = generator.SIZE // 4

_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.()!?-:_'"


def world_words() -> tuple[str, ...]:
    """Every word of the world's captions (and of its LoRAs' trigger words), each one token."""
    words = {"1girl", "longhair", "shorthair", "hair", "hairornament", "choker", "dress", "background", "skin"}
    words |= {"gobuhime", "sailor", "uniform", "collar"}
    for table in (generator.HAIR_COLORS, generator.CLOTHES_COLORS, generator.BACKGROUND_COLORS):
        words |= set(table)
    words |= set(generator.SKIN_COLORS) | set(generator.BACKGROUND_PATTERNS)
    return tuple(sorted(words))


def world_tags() -> tuple[str, ...]:
    """Every whole tag of the world's captions (and its LoRAs' triggers), each an added token of the refined model.

    Example:
        >>> "red hair" in world_tags() and "dark skin" in world_tags() and "1girl" in world_tags()
        True
    """
    tags = {"1girl", "longhair", "shorthair", "hairornament", "choker", "gobuhime", "sailor collar"}
    tags |= {f"{c} hair" for c in generator.HAIR_COLORS}
    tags |= {f"{c} dress" for c in generator.CLOTHES_COLORS}
    tags |= {f"{c} background" for c in (*generator.BACKGROUND_COLORS, *generator.BACKGROUND_PATTERNS)}
    tags |= {f"{c} skin" for c in generator.SKIN_COLORS}
    return tuple(sorted(tags))


def vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP BPE vocabulary and merges: characters (plain and word-final), then the world's words by merges."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _CHARACTERS:
        vocab[char] = len(vocab)
    for char in _CHARACTERS:
        vocab[f"{char}</w>"] = len(vocab)
    merges: list[str] = []
    for word in world_words():
        pieces = [*word[:-1], f"{word[-1]}</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return vocab, list(dict.fromkeys(merges))


def build_tokenizer(folder: Path | None = None, *, tags: bool = False) -> Any:
    """The world's ``CLIPTokenizer`` (written to ``folder``, a temporary one by default); ``tags`` adds
    ``world_tags()`` as whole tokens after the BPE vocabulary (the ids of the plain tokenizer are kept)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary()
    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="lbw-world-tok-"))
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(target), model_max_length=TEXT_LENGTH)
    if tags:
        tokenizer.add_tokens(list(world_tags()))
        if folder is not None:
            tokenizer.save_pretrained(str(target))
    return tokenizer


def text_encoder_config(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 4 * TEXT_WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": TEXT_LENGTH,
        "projection_dim": TEXT_WIDTH,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "hidden_act": "quick_gelu",
    }


def unet_config() -> dict[str, Any]:
    return {
        "sample_size": LATENT_SIZE,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (32, 64, 64, 64),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": TEXT_WIDTH,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    }


def vae_config() -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "sample_size": generator.SIZE,
    }


def scheduler_config(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> dict[str, Any]:
    """SD1.5's noise schedule; with ``zero_terminal_snr`` its betas rescaled so that the last timestep keeps none of
    the picture (Lin et al. 2023, diffusers' ``rescale_betas_zero_snr``), sampled with "trailing" timesteps so the
    first sampling step starts there.

    Example:
        >>> scheduler_config("v_prediction", True)["timestep_spacing"]
        'trailing'
    """
    config: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
        "prediction_type": prediction_type,
    }
    if zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config


@dataclass
class Parts:
    """The model's modules, untrained or trained."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any


def build_untrained(seed: int, *, tags: bool = False) -> Parts:
    """Fresh modules with weights drawn from ``seed`` (``tags``: the refined model's tokenizer and vocabulary)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(tags=tags)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(len(tokenizer))))
    unet = UNet2DConditionModel(**unet_config())
    vae = AutoencoderKL(**vae_config())
    return Parts(tokenizer, text_encoder, unet, vae)


def assemble_pipeline(parts: Parts, schedule: dict[str, Any] | None = None) -> Any:
    """A ``StableDiffusionPipeline`` of the parts with the sampling scheduler (DPM-Solver++) on ``schedule``
    (``scheduler_config()``'s keys; default: SD1.5's epsilon schedule)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=DPMSolverMultistepScheduler(**(schedule or scheduler_config())),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
