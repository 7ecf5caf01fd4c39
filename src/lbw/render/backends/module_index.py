"""Find the pipeline's torch module for a LoRA module name, whatever naming the file uses.

Both sides are reduced to the layer name LBW sees (``lbw.domain.keymap.module_path`` of the canonical name from
``lbw.files.families``): kohya SD1/SD2 diffusers-style names, SDXL SGM/CompVis names, diffusers/PEFT dotted
names, OneTrainer and LyCORIS names and text encoders all meet there.
SGM resnet layers have their own inner names (``in_layers_2`` for ``conv1`` ...), registered as aliases. The
slot of an up block's upsampler depends on the model: ``output_blocks_N_2_conv`` after an attention layer,
``output_blocks_N_1_conv`` otherwise. The diffusers-name conversion assumes SD1's layout (only up block 0 has
no attention), so SDXL's first upsampler (``output_blocks_2_2_conv``, up block 0 has attention there) gets an
alias read from the UNet's real structure.

Example:
    >>> index = pipeline_module_index(pipe)
    >>> layer = index[("unet", "diffusion_model_input_blocks_1_1_proj_in")]
    >>> layer is pipe.unet.down_blocks[0].attentions[0].proj_in
    True
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lbw.domain.keymap import module_path
from lbw.files.families import normalise

# diffusers resnet layer -> SGM (CompVis) resnet layer.
_SGM_RESNET = {
    "norm1": "in_layers_0",
    "conv1": "in_layers_2",
    "time_emb_proj": "emb_layers_1",
    "norm2": "out_layers_0",
    "conv2": "out_layers_3",
    "conv_shortcut": "skip_connection",
}
_RESNET_LAYER = re.compile(
    r"^(diffusion_model_(?:input_blocks_\d+_0|middle_block_[02]|output_blocks_\d+_0)_)"
    r"(norm1|conv1|time_emb_proj|norm2|conv2|conv_shortcut)$"
)
_SGM_OTHER = {
    "diffusion_model_add_embedding_linear_1": "diffusion_model_label_emb_0_0",
    "diffusion_model_add_embedding_linear_2": "diffusion_model_label_emb_0_2",
    "diffusion_model_conv_norm_out": "diffusion_model_out_0",
}

# Pipeline attribute -> keymap components it answers to (SD1 files may say lora_te_ or lora_te1_).
_TEXT_COMPONENTS = {"text_encoder": ("te", "te1"), "text_encoder_2": ("te2",)}

ModuleKey = tuple[str, str]


def _weighted_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if name and isinstance(getattr(module, "weight", None), torch.nn.Parameter)
    ]


def pipeline_module_index(pipe: Any) -> dict[ModuleKey, torch.nn.Module]:
    """(component, LBW layer name) -> torch module, for the UNet and every text encoder of ``pipe``."""
    index: dict[ModuleKey, torch.nn.Module] = {}
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        for name, module in _weighted_modules(unet):
            path = module_path("lora_unet_" + name.replace(".", "_"))
            assert path is not None
            index[("unet", path.lbw_name)] = module
            for alias in _sgm_aliases(path.lbw_name):
                index.setdefault(("unet", alias), module)
        for name, module in _upsampler_aliases(unet).items():
            index.setdefault(("unet", name), module)
    for attribute, components in _TEXT_COMPONENTS.items():
        encoder = getattr(pipe, attribute, None)
        if encoder is None:
            continue
        for name, module in _weighted_modules(encoder):
            # transformers 5 dropped the ``text_model`` level of CLIPTextModel; kohya names keep it.
            # Names written by tools running on transformers 5 may lack it too: both forms are accepted.
            full = name if name.startswith(("text_model.", "text_projection")) else "text_model." + name
            for component in components:
                for variant in dict.fromkeys((full, full.removeprefix("text_model."))):
                    path = module_path(f"lora_{component}_" + variant.replace(".", "_"))
                    assert path is not None
                    index.setdefault((component, path.lbw_name), module)
    return index


def _upsampler_aliases(unet: Any) -> dict[str, torch.nn.Module]:
    """SGM name -> upsampler conv, with the slot taken from the up block's structure (see the docstring)."""
    layers = getattr(unet.config, "layers_per_block", None)
    if not isinstance(layers, int):
        return {}
    aliases: dict[str, torch.nn.Module] = {}
    for number, block in enumerate(getattr(unet, "up_blocks", ())):
        upsamplers = getattr(block, "upsamplers", None)
        if not upsamplers:
            continue
        slot = 2 if getattr(block, "attentions", None) else 1
        index = number * (layers + 1) + layers
        aliases[f"diffusion_model_output_blocks_{index}_{slot}_conv"] = upsamplers[0].conv
    return aliases


def _sgm_aliases(name: str) -> list[str]:
    if match := _RESNET_LAYER.match(name):
        return [match[1] + _SGM_RESNET[match[2]]]
    if name in _SGM_OTHER:
        return [_SGM_OTHER[name]]
    return []


def lookup(
    index: dict[ModuleKey, torch.nn.Module], module_name: str, architecture: str | None
) -> torch.nn.Module | None:
    """The torch module a LoRA module name adapts, or None when the pipeline has no such layer."""
    canonical = normalise(module_name).canonical
    path = module_path(canonical, architecture) if canonical is not None else None
    if path is None:
        return None
    return index.get((path.component, path.lbw_name))


def is_text_component(component: str) -> bool:
    """True for text-encoder components (``te``, ``te1``, ``te2``, ``te3``)."""
    return component.startswith("te")
