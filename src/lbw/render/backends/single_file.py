"""Check that a single-file checkpoint really provided every weight of the pipeline diffusers built from it.

diffusers' ``from_single_file`` converts the file's keys to each component and loads them with
``strict=False``: a parameter the file does not have (a truncated or pruned file, or a ``--model-config`` of
another layout) silently keeps its random initial value, and the images are noise. lbw repeats the same key
conversion on shapes only (meta tensors read from the safetensors header, no data) and refuses the model when a
parameter of the UNet, the VAE or a text encoder has no source in the file.

The conversion functions are diffusers' own (``diffusers.loaders.single_file_utils``); the text-encoder
dispatch mirrors diffusers' (CLIP for SD1 and SDXL's first encoder, OpenCLIP for SD2 and SDXL's second).

Example:
    >>> missing_weights(Path("model.safetensors"), pipe)
    {}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lbw.errors import RenderError
from lbw.files.safetensors_header import read_header

_MAX_NAMES = 3


def meta_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` as a meta tensor of its shape (the header only is read)."""
    header = read_header(path)
    return {name: torch.empty(info.shape, device="meta") for name, info in header.tensors.items()}


def missing_weights(path: Path, pipe: Any) -> dict[str, list[str]]:
    """Component -> parameter names that ``path`` has no tensor for (empty when the file is complete)."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    checkpoint = meta_checkpoint(path)
    missing: dict[str, list[str]] = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        if name.startswith("text_encoder"):
            provided = _text_encoder_keys(model, checkpoint)
        else:
            convert = SINGLE_FILE_LOADABLE_CLASSES[type(model).__name__]["checkpoint_mapping_fn"]
            provided = set(convert(checkpoint=dict(checkpoint), config=dict(model.config)))
        absent = [key for key, _ in model.named_parameters() if _normal(key) not in provided]
        if absent:
            missing[name] = absent
    return missing


def check_complete(path: Path, pipe: Any) -> None:
    """Raise RenderError naming the first parameters ``path`` did not provide."""
    missing = missing_weights(path, pipe)
    if not missing:
        return
    parts = []
    for component, keys in missing.items():
        shown = ", ".join(keys[:_MAX_NAMES]) + (" ..." if len(keys) > _MAX_NAMES else "")
        parts.append(f"{component}: {len(keys)} ({shown})")
    raise RenderError(
        "the checkpoint has no weights for some parameters of the model built from --model-config "
        f"(a truncated file, or a config folder of another architecture?): {'; '.join(parts)}",
        where=str(path),
    )


def _text_encoder_keys(model: Any, checkpoint: dict[str, torch.Tensor]) -> set[str]:
    """The parameter names diffusers fills from ``checkpoint`` for this text encoder (its dispatch)."""
    from diffusers.loaders import single_file_utils as utils

    names = utils.CHECKPOINT_KEY_NAMES
    text = model.text_model if hasattr(model, "text_model") else model
    width = text.embeddings.position_embedding.weight.shape[-1]

    def width_matches(key: str) -> bool:
        return key in checkpoint and checkpoint[key].shape[-1] == width

    if names["clip"] in checkpoint or width_matches(names["clip_sdxl"]):
        converted = utils.convert_ldm_clip_checkpoint(checkpoint)
    elif names["open_clip"] in checkpoint:
        converted = utils.convert_open_clip_checkpoint(model, checkpoint, prefix="cond_stage_model.model.")
    elif width_matches(names["open_clip_sdxl"]):
        converted = utils.convert_open_clip_checkpoint(model, checkpoint, prefix="conditioner.embedders.1.model.")
    else:
        converted = {}
    return {_normal(key) for key in converted}


def _normal(key: str) -> str:
    """transformers 5 dropped CLIPTextModel's ``text_model.`` level; compare names without it."""
    return key.removeprefix("text_model.")
