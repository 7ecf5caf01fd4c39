"""Canonical module name -> LBW block ID, and the ComfyUI Inspire bucket of a module (standard library only).

LBW never parses file names itself: it sees a CompVis-style layer name
(``diffusion_model_input_blocks_4_1_...``, or a Forge parameter name for Flux) and searches an ordered table of
substrings, the last match winning (lbw-semantics.md §2.1). This module rebuilds that view from the canonical
(sd-scripts) name of a layer: ``lora_unet_`` with diffusers or SGM paths for SD1/SD2/SDXL and BFL paths for
Flux, ``lora_te_``/``lora_te1_``/``lora_te2_`` for CLIP and ``lora_te3_`` for T5. Names of every other family
(OneTrainer, SimpleTuner LyCORIS, diffusers, PEFT, ComfyUI) are turned into that form in one place,
``lbw.files.families.normalise``; anything else gives None here. ``None`` means unmapped: LBW keeps strength 1.

Example:
    >>> block_of("lora_unet_down_blocks_0_attentions_0_proj_in")
    'IN01'
    >>> block_of("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k", "sdxl")
    'IN04'
    >>> block_of("lora_unet_single_blocks_7_linear1", "flux")
    'S07'
    >>> block_of("lora_unet_conv_out") is None
    True
    >>> inspire_bucket("lora_unet_mid_block_resnets_1_conv1")
    ('middle', 2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lbw.domain.layouts import FLUX61

# The LBW substring table (A1111/Forge), in order; the last pattern found in the name wins.
_LBW_PATTERNS: tuple[tuple[str, str], ...] = (
    ("encoder", "BASE"),
    *((f"diffusion_model_input_blocks_{n}_", f"IN{n:02d}") for n in range(12)),
    ("diffusion_model_middle_block_", "M00"),
    *((f"diffusion_model_output_blocks_{n}_", f"OUT{n:02d}") for n in range(12)),
    ("embedders", "BASE"),
    ("transformer_resblocks", "BASE"),
)

# Component prefixes of canonical names: (prefix, component).
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te3_", "te3"), ("lora_te_", "te"), ("lora_unet_", "unet"),
)

# Forge's Flux text encoders: CLIP-L is kohya te1 (or te), T5-XXL is kohya te3.
_FLUX_ENCODERS = {"lora_te1_": "clip_l", "lora_te_": "clip_l", "lora_te3_": "t5xxl"}

_INSPIRE = re.compile(r"^(input_blocks|middle_block|output_blocks|double_blocks|single_blocks)_(\d+)_")
_INSPIRE_BUCKET = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output",
                   "double_blocks": "double", "single_blocks": "single"}


@dataclass(frozen=True)
class ModulePath:
    """Where a module lives: ``component`` (unet, te, te1, te2, te3) and the name LBW sees."""

    component: str
    lbw_name: str


def block_of(module: str, architecture: str | None = None) -> str | None:
    """The LBW block ID of ``module`` (26-slot IDs for SD/SDXL, 61-slot IDs for Flux), or None if unmapped.

    ``architecture`` is ``sd1``, ``sd2``, ``sdxl`` or ``flux``; it only changes Flux files, whose text
    encoders and blocks use the 61-slot IDs.

    Example:
        >>> block_of("lora_unet_up_blocks_1_attentions_2_proj_out")
        'OUT05'
        >>> block_of("lora_te1_text_model_encoder_layers_0_mlp_fc1", "flux")
        'CLIP'
    """
    path = module_path(module, architecture)
    if path is None:
        return None
    if architecture == "flux":
        return _flux_block(path.lbw_name)
    found = None
    for pattern, block in _LBW_PATTERNS:
        if pattern in path.lbw_name:
            found = block
    return found


def inspire_bucket(module: str, architecture: str | None = None) -> tuple[str, int] | None:
    """The ComfyUI Inspire bucket ``(input|middle|output|double|single, number)`` of a module, or None.

    None is Inspire's "others" group (text encoders, time embedding, conv_out, ...), governed by BASE.

    Example:
        >>> inspire_bucket("lora_unet_output_blocks_2_2_conv", "sdxl")
        ('output', 2)
        >>> inspire_bucket("lora_te_text_model_encoder_layers_0_mlp_fc1") is None
        True
    """
    path = module_path(module, architecture)
    if path is None or path.component != "unet":
        return None
    match = _INSPIRE.match(path.lbw_name.removeprefix("diffusion_model_"))
    if match is None:
        return None
    return _INSPIRE_BUCKET[match.group(1)], int(match.group(2))


def module_path(module: str, architecture: str | None = None) -> ModulePath | None:
    """The component of a canonical module name and the layer name LBW would see for it; None for other names.

    Example:
        >>> module_path("lora_unet_down_blocks_1_downsamplers_0_conv").lbw_name
        'diffusion_model_input_blocks_6_0_op'
    """
    split = _split_component(module)
    if split is None:
        return None
    prefix, component, rest = split
    if component == "unet":
        body = rest if architecture == "flux" else _compvis_unet(rest)
        return ModulePath("unet", "diffusion_model_" + body)
    if architecture == "flux":
        encoder = _FLUX_ENCODERS.get(prefix)
        return ModulePath(component, f"{encoder}_transformer_{rest}") if encoder else None
    return ModulePath(component, "transformer_" + rest)


def _split_component(name: str) -> tuple[str, str, str] | None:
    """(prefix, component, rest) of a canonical name, or None for any other name."""
    for prefix, component in _COMPONENTS:
        if name.startswith(prefix) and "." not in name:
            return prefix, component, name[len(prefix):]
    return None


# --- SD / SDXL UNet: diffusers names -> CompVis (A1111's conversion) --------------------------------------

_DOWN = re.compile(r"^down_blocks_(\d+)_(attentions|resnets)_(\d+)_")
_DOWNSAMPLE = re.compile(r"^down_blocks_(\d+)_downsamplers_0_conv")
_MID = re.compile(r"^mid_block_(attentions|resnets)_(\d+)_")
_UP = re.compile(r"^up_blocks_(\d+)_(attentions|resnets)_(\d+)_")
_UPSAMPLE = re.compile(r"^up_blocks_(\d+)_upsamplers_0_conv")
_TIME = re.compile(r"^time_embedding_linear_(\d+)")


def _compvis_unet(rest: str) -> str:
    """A diffusers UNet path (``down_blocks_0_attentions_0_proj_in``) in CompVis form; SGM names pass."""
    if m := _DOWN.match(rest):
        i, kind, j = int(m[1]), m[2], int(m[3])
        return f"input_blocks_{1 + 3 * i + j}_{1 if kind == 'attentions' else 0}_" + rest[m.end():]
    if m := _DOWNSAMPLE.match(rest):
        return f"input_blocks_{3 + 3 * int(m[1])}_0_op" + rest[m.end():]
    if m := _MID.match(rest):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block_{index}_" + rest[m.end():]
    if m := _UP.match(rest):
        i, kind, j = int(m[1]), m[2], int(m[3])
        return f"output_blocks_{3 * i + j}_{1 if kind == 'attentions' else 0}_" + rest[m.end():]
    if m := _UPSAMPLE.match(rest):
        i = int(m[1])
        return f"output_blocks_{2 + 3 * i}_{2 if i > 0 else 1}_conv" + rest[m.end():]
    if rest.startswith("conv_in"):
        return "input_blocks_0_0" + rest[len("conv_in"):]
    if rest.startswith("conv_out"):
        return "out_2" + rest[len("conv_out"):]
    if m := _TIME.match(rest):
        return f"time_embed_{2 * int(m[1]) - 2}" + rest[m.end():]
    return rest


# --- Flux: Forge's rule on the BFL parameter name ------------------------------------------------------------

_FIRST_NUMBER = re.compile(r"_(\d+)_")


def _flux_block(name: str) -> str | None:
    """Forge's Flux rule, checked in this order (lbw-semantics.md §2.3)."""
    if "vae" in name:
        return None
    if "t5xxl" in name:
        return "T5"
    if "clip_" in name:
        return "CLIP"
    for marker, prefix in (("double_blocks", "D"), ("single_blocks", "S")):
        if marker in name:
            number = _FIRST_NUMBER.search(name + "_")
            block = f"{prefix}{int(number[1]):02d}" if number else None
            return block if block in FLUX61 else None
    if "_in" in name:
        return "IN"
    if "final_layer" in name:
        return "OUT"
    return None
