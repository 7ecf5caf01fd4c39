"""Tiny Stable Diffusion pipelines with the real block structure, built locally from a seed (no downloads).

``build_tiny_sd15`` makes an SD1.5-layout pipeline: UNet with 4 down blocks (3 cross-attention + 1 plain),
a mid block with attention, 4 up blocks (1 plain + 3 cross-attention), 2 layers per block, conv ``proj_in``
(SD1), tiny channels; a 2-layer CLIP text encoder with a CLIPTokenizer built from a small local vocabulary;
a 4-level VAE (scale factor 8, so 64x64 images use 8x8 latents); and an Euler scheduler. ``sd2`` switches to
linear projections like SD2. Saved with ``save_pretrained`` it loads like a user's diffusers checkpoint.

``build_tiny_sdxl`` makes an SDXL-layout pipeline: down blocks [DownBlock2D, CrossAttnDownBlock2D x2], a mid
block with cross-attention, up blocks [CrossAttnUpBlock2D x2, UpBlock2D], 2 layers per block, transformer
layers per block (1, 1, 2), linear ``proj_in``, the ``text_time`` additional embedding; two text encoders
(``CLIPTextModel`` and ``CLIPTextModelWithProjection``, whose hidden sizes add up to the cross-attention size
and whose projection feeds the time/text embedding, as in SDXL).

Example:
    >>> folder = build_tiny_sd15(Path("tiny-sd15"), seed=0)     # ~10 MB, about a second
    >>> (folder / "model_index.json").is_file()
    True
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from lbw.errors import OutputError

_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.()!?-:"
_WORDS = ("girl", "hair", "long", "face", "red", "blue", "eyes", "dress", "smile", "choker", "gobuhime")
TINY_SIZE = 64


def tiny_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A CLIP BPE vocabulary and merge list: every character (plain and word-final) plus a few whole words."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _LETTERS:
        vocab[char] = len(vocab)
    for char in _LETTERS:
        vocab[f"{char}</w>"] = len(vocab)
    merges: list[str] = []
    for word in _WORDS:
        pieces = [*word[:-1], f"{word[-1]}</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            merges.append(f"{pieces[0]} {pieces[1]}")
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    return vocab, list(dict.fromkeys(merges))


def build_tokenizer(folder: Path | None = None) -> Any:
    """A ``CLIPTokenizer`` read from vocab.json/merges.txt written to ``folder`` (a temp dir by default)."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocabulary()
    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="lbw-tok-"))
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(target), model_max_length=77)


def _text_encoder(
    vocab_size: int,
    hidden: int,
    with_projection: bool = False,
    *,
    projection: int | None = None,
    layers: int = 2,
    activation: str = "quick_gelu",
) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act=activation,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=TINY_SIZE,
    )


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_tiny_sd15_pipeline(seed: int = 0, *, variant: str = "sd15") -> Any:
    """An in-memory ``StableDiffusionPipeline``, SD1.5 block structure (``variant="sd2"``: linear proj)."""
    import torch

    quiet_logs()
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    if variant not in ("sd15", "sd2"):
        raise ValueError(f"variant must be sd15 or sd2, got {variant!r}")
    tokenizer = build_tokenizer()
    hidden = 32 if variant == "sd15" else 48
    torch.manual_seed(seed)
    text_encoder = _text_encoder(len(tokenizer.get_vocab()), hidden)
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=variant == "sd2",
    )
    vae = _vae()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sd15(dest: str | Path, seed: int = 0, *, variant: str = "sd15", force: bool = False) -> Path:
    """Build the tiny pipeline and save it as a diffusers folder at ``dest``; returns the folder."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise OutputError("folder exists and is not empty (use force=True to overwrite)", where=str(dest))
    pipeline = build_tiny_sd15_pipeline(seed, variant=variant)
    pipeline.save_pretrained(str(dest), safe_serialization=True)
    return dest


# Tiny SDXL sizes: text encoder 1 and 2 hidden sizes (concatenated = cross-attention size), the projection
# of text encoder 2 (the pooled embedding) and the size of each of the 6 time ids' sinusoidal embedding.
SDXL_TE1_HIDDEN = 32
SDXL_TE2_HIDDEN = 48
SDXL_TE2_PROJECTION = 16
SDXL_TIME_EMBED = 8


def build_tiny_sdxl_pipeline(seed: int = 0) -> Any:
    """An in-memory ``StableDiffusionXLPipeline`` with SDXL's block structure (see the module docstring)."""
    import torch

    quiet_logs()
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer.get_vocab())
    torch.manual_seed(seed)
    text_encoder = _text_encoder(vocab_size, SDXL_TE1_HIDDEN, layers=3)
    text_encoder_2 = _text_encoder(
        vocab_size, SDXL_TE2_HIDDEN, True, projection=SDXL_TE2_PROJECTION, layers=3, activation="gelu"
    )
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=SDXL_TE1_HIDDEN + SDXL_TE2_HIDDEN,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED + SDXL_TE2_PROJECTION,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        add_watermarker=False,
    )


def build_tiny_sdxl(dest: str | Path, seed: int = 0, *, force: bool = False) -> Path:
    """Build the tiny SDXL pipeline and save it as a diffusers folder at ``dest``; returns the folder.

    Example:
        >>> folder = build_tiny_sdxl(Path("tiny-sdxl"), seed=0)
        >>> json.loads((folder / "model_index.json").read_text())["_class_name"]
        'StableDiffusionXLPipeline'
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise OutputError("folder exists and is not empty (use force=True to overwrite)", where=str(dest))
    pipeline = build_tiny_sdxl_pipeline(seed)
    pipeline.save_pretrained(str(dest), safe_serialization=True)
    return dest


def quiet_logs() -> None:
    """Silence diffusers/transformers info logs and progress bars (lbw draws its own progress).

    Call it before importing pipeline classes: transformers warns at import time (e.g. that torchvision is
    missing, which lbw does not need).
    """
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
