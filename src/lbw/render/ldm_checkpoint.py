"""Write an SD1.x or SDXL diffusers pipeline as one original-layout (CompVis/LDM/SGM) ``.safetensors`` file.

This is the single-file form web UI users download (``model.diffusion_model.*``, ``first_stage_model.*``, and
``cond_stage_model.transformer.*`` for SD1 or ``conditioner.embedders.{0,1}.*`` for SDXL). lbw uses it to test
the single-file loading path with the tiny models: diffusers ships only the LDM -> diffusers direction, so the
reverse key mapping is written here.

- UNet: the SGM/CompVis paths of ``lbw.files.fixtures.sgm_path`` (``down_blocks.1.attentions.0`` ->
  ``input_blocks.4.1``, resnet ``conv1`` -> ``in_layers.2``, ``conv_in`` -> ``input_blocks.0.0`` ...).
- VAE: ``down_blocks.i.resnets.j`` -> ``down.i.block.j`` (``conv_shortcut`` -> ``nin_shortcut``), decoder up
  blocks in reverse order (``up_blocks.0`` -> ``up.{n-1}``), mid-block resnets -> ``block_1``/``block_2``, the
  mid attention's ``group_norm``/``to_q``/``to_k``/``to_v``/``to_out.0`` -> ``norm``/``q``/``k``/``v``/
  ``proj_out`` stored as 1x1 convolutions, ``conv_norm_out`` -> ``norm_out``.
- Text encoders: SD1 ``cond_stage_model.transformer.text_model.*`` (transformers 4's layout); SDXL's first
  encoder the same under ``conditioner.embedders.0.transformer.``, its second in OpenCLIP's layout under
  ``conditioner.embedders.1.model.`` (``resblocks.N``, ``ln_1``/``ln_2``, ``mlp.c_fc``/``c_proj``, q/k/v fused
  into ``attn.in_proj_weight``/``in_proj_bias``, ``positional_embedding``, ``ln_final``, ``text_projection``
  stored transposed).

Real SD2 checkpoints store their OpenCLIP encoder under ``cond_stage_model.model.``; that layout is not
written (an SD2-layout pipeline gets the SD1 CLIP layout, which diffusers also reads).

Example:
    >>> save_ldm_checkpoint(build_tiny_sd15_pipeline(1), Path("tiny-sd15.safetensors"))
    PosixPath('tiny-sd15.safetensors')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lbw.errors import RenderError
from lbw.files.atomic import atomic_path
from lbw.files.fixtures import sgm_path

_VAE_RENAMES = (
    (re.compile(r"^(encoder|decoder)\.conv_norm_out\."), r"\1.norm_out."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\."), r"encoder.down.\1.downsample.conv."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), r"encoder.down.\1.block.\2."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\."), r"\1.mid.attn_1."),
)
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_MID_RESNET = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.")
_UP_BLOCK = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0\.conv)\.")


def ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """Every parameter of an SD1.x or SDXL pipeline under its original single-file key.

    Example:
        >>> sorted(ldm_state_dict(pipe))[0]
        'cond_stage_model.transformer.text_model.embeddings.position_embedding.weight'
    """
    if type(pipe.text_encoder).__name__ != "CLIPTextModel":
        raise RenderError("only SD1.x and SDXL pipelines (a CLIPTextModel first) can be written in the LDM layout")
    second = getattr(pipe, "text_encoder_2", None)
    tensors: dict[str, torch.Tensor] = {}
    tensors.update(_unet(pipe.unet))
    tensors.update(_vae(pipe.vae))
    clip_prefix = "cond_stage_model.transformer." if second is None else "conditioner.embedders.0.transformer."
    for key, value in pipe.text_encoder.named_parameters():
        full = key if key.startswith("text_model.") else f"text_model.{key}"
        tensors[clip_prefix + full] = value
    if second is not None:
        tensors.update(_open_clip(second, "conditioner.embedders.1.model."))
    return {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}


def save_ldm_checkpoint(pipe: Any, dest: str | Path) -> Path:
    """Write ``ldm_state_dict(pipe)`` to ``dest`` (atomically) and return the path."""
    from safetensors.torch import save_file

    dest = Path(dest)
    with atomic_path(dest) as temporary:
        save_file(ldm_state_dict(pipe), str(temporary))
    return dest


def _unet(unet: Any) -> dict[str, torch.Tensor]:
    layers = int(unet.config.layers_per_block)
    with_attention = {i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    result = {}
    for key, value in unet.named_parameters():
        module, _, parameter = key.rpartition(".")
        result[f"model.diffusion_model.{sgm_path(module, layers, with_attention)}.{parameter}"] = value
    return result


_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def _open_clip(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP's layout (see the module docstring)."""
    text = encoder.text_model
    result = {prefix + name: text.get_parameter(key) for key, name in _OPEN_CLIP_TOP.items()}
    result[prefix + "text_projection"] = encoder.text_projection.weight.T
    for number, layer in enumerate(text.encoder.layers):
        head = f"{prefix}transformer.resblocks.{number}."
        for key, value in layer.named_parameters():
            if key.startswith("self_attn.") and key.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                continue
            for source, target in _OPEN_CLIP_LAYER:
                key = key.replace(source, target)
            result[head + key] = value
        attention = layer.self_attn
        for kind in ("weight", "bias"):
            fused = [getattr(getattr(attention, f"{p}_proj"), kind) for p in ("q", "k", "v")]
            result[f"{head}attn.in_proj_{kind}"] = torch.cat(fused)
    return result


def _vae(vae: Any) -> dict[str, torch.Tensor]:
    count = len(vae.config.up_block_types)
    result = {}
    for key, value in vae.named_parameters():
        name = key
        for pattern, replacement in _VAE_RENAMES:
            name = pattern.sub(replacement, name)
        name = _MID_RESNET.sub(lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", name)
        name = _UP_BLOCK.sub(lambda m: _up_block(m, count), name)
        name = name.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in name:
            head, _, tail = name.partition(".mid.attn_1.")
            layer, _, parameter = tail.rpartition(".")
            name = f"{head}.mid.attn_1.{_VAE_ATTENTION[layer]}.{parameter}"
            if value.dim() == 2:  # Linear in diffusers, 1x1 convolution in the original VAE
                value = value[:, :, None, None]
        result[f"first_stage_model.{name}"] = value
    return result


def _up_block(match: re.Match[str], count: int) -> str:
    level = count - 1 - int(match[1])
    if match[3] is not None:
        return f"decoder.up.{level}.block.{match[3]}."
    return f"decoder.up.{level}.upsample.conv."
