"""Which hosts load which LoRA module names: the key maps of the web UIs and ComfyUI, restated as data.

A host loads a LoRA module only when its own key map holds the module's name; every other tensor is left
out ("lora key not loaded" in ComfyUI, "unmatched keys" in Forge). A module is described here by its
``NameForm``: the prefix as written, the model component, the namespace of its layer path and the path
itself (built by ``lbw.files.families``). The rules below restate, per host and architecture, the prefixes
the host's loader registers (sources, read at these commits):

- ``forge``: Stable Diffusion web UI Forge ``backend/patcher/lora.py`` and
  ``packages_3rdparty/comfyui_lora_collection/lora.py`` (commit dfdcbab6), the loader LBW's Flux path runs on.
  Forge also drops the whole file when more than ``FORGE_UNMATCHED_LIMIT`` keys match nothing
  (``extensions-builtin/sd_forge_lora/networks.py``: "LoRA version mismatch").
- ``comfyui``: ComfyUI ``comfy/lora.py`` ``model_lora_keys_unet``/``model_lora_keys_clip`` and
  ``comfy/weight_adapter`` (Comfy-Org/ComfyUI a125cd84); the Inspire pack loads through the same key map.
- ``a1111``: AUTOMATIC1111 web UI ``extensions-builtin/Lora/networks.py`` (1.10): the module name before the
  first ``.`` is converted to a CompVis layer name; A1111 runs SD1/SD2/SDXL only.
- ``diffusers``: lbw's own diffusers backend (``lbw plot --backend diffusers``, SD1/SD2/SDXL): it matches every
  name lbw recognises to its pipeline layer, in every family and adapter kind.

The block a loaded module gets does not depend on the host: every loader maps a layer to the same model
parameter, and LBW (or Inspire) reads the block from that (``lbw.domain.keymap``).

Example:
    >>> form = NameForm("lycoris_", "unet", "flux_diffusers", "transformer_blocks_0_attn_add_q_proj")
    >>> loads("forge", "flux", form), loads("comfyui", "flux", form)
    (True, True)
    >>> loads("forge", "flux", NameForm("text_encoder_2.", "t5", "t5", "encoder_block_0_layer_0_SelfAttention_q"))
    False
    >>> hosts_for("flux")
    ('forge', 'comfyui')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Host id -> what it is, as reports name it.
HOSTS: dict[str, str] = {
    "a1111": "AUTOMATIC1111 web UI",
    "forge": "web UI Forge",
    "comfyui": "ComfyUI",
    "diffusers": "lbw's diffusers backend",
}

# The hosts that run each architecture (A1111 has no Flux; LBW's Flux blocks exist on Forge only).
_HOSTS_FOR: dict[str, tuple[str, ...]] = {
    "sd1": ("a1111", "forge", "comfyui", "diffusers"),
    "sd2": ("a1111", "forge", "comfyui", "diffusers"),
    "sdxl": ("a1111", "forge", "comfyui", "diffusers"),
    "flux": ("forge", "comfyui"),
}

# Forge refuses a whole LoRA file when more keys than this are left unmatched after the UNet and CLIP maps.
FORGE_UNMATCHED_LIMIT = 12


@dataclass(frozen=True)
class NameForm:
    """A module name as a host's key map sees it.

    ``prefix`` as written (``lora_unet_``, ``transformer.``, ``""`` for a bare model path); ``component`` is
    ``unet`` (the UNet or the Flux transformer), ``te1`` (the first or only CLIP), ``te2`` (SDXL's CLIP-G) or
    ``t5``; ``namespace`` names the path convention (``sgm``, ``sd_diffusers``, ``bfl``, ``flux_diffusers``,
    ``clip``, ``t5``); ``path`` is the layer path after the prefix with ``.`` read as ``_``; ``written`` the path
    as the file writes it (dots kept), for the rules that depend on it.
    """

    prefix: str
    component: str
    namespace: str
    path: str
    written: str = ""


# The (prefix, component, namespace) forms each host registers, per architecture. "*" marks forms whose layer
# must also pass a host check below (_layer_ok).
_SD_UNET_KEYMAP = {
    ("lora_unet_", "unet", "sgm"), ("diffusion_model.", "unet", "sgm"),
    ("lora_unet_", "unet", "sd_diffusers"), ("lycoris_", "unet", "sd_diffusers"),
    ("", "unet", "sd_diffusers*"), ("unet.", "unet", "sd_diffusers*"),
}
_CLIP1 = {("lora_te_", "te1", "clip*"), ("lora_te1_", "te1", "clip*"), ("text_encoder.", "te1", "clip*")}
_CLIP2 = {("lora_te2_", "te2", "clip*"), ("text_encoder_2.", "te2", "clip*")}
_FLUX_UNET = {
    ("lora_unet_", "unet", "bfl"), ("diffusion_model.", "unet", "bfl"),
    ("transformer.", "unet", "flux_diffusers"), ("lycoris_", "unet", "flux_diffusers"),
    ("lora_transformer_", "unet", "flux_diffusers"),
}
_A1111_UNET = {("lora_unet_", "unet", "sgm"), ("lora_unet_", "unet", "sd_diffusers*")}

_FORMS: dict[tuple[str, str], frozenset[tuple[str, str, str]]] = {
    ("forge", "sd1"): frozenset(_SD_UNET_KEYMAP | _CLIP1),
    ("forge", "sd2"): frozenset(_SD_UNET_KEYMAP | _CLIP1),
    ("forge", "sdxl"): frozenset(_SD_UNET_KEYMAP | _CLIP1 | _CLIP2),
    ("forge", "flux"): frozenset(_FLUX_UNET | _CLIP1 | {("lora_te1_", "t5", "t5"), ("lora_te2_", "t5", "t5"),
                                                        ("lora_te3_", "t5", "t5")}),
    ("comfyui", "sd1"): frozenset(_SD_UNET_KEYMAP | _CLIP1 | {("text_encoders.clip_l.transformer.", "te1", "clip")}),
    ("comfyui", "sd2"): frozenset(_SD_UNET_KEYMAP | _CLIP1 | {("text_encoders.clip_h.transformer.", "te1", "clip")}),
    ("comfyui", "sdxl"): frozenset(_SD_UNET_KEYMAP | _CLIP1 | _CLIP2 | {
        ("text_encoders.clip_l.transformer.", "te1", "clip"), ("text_encoders.clip_g.transformer.", "te2", "clip")}),
    ("comfyui", "flux"): frozenset(_FLUX_UNET | _CLIP1 | {
        ("lora_te2_", "t5", "t5"), ("lora_te3_", "t5", "t5"),
        ("text_encoders.clip_l.transformer.", "te1", "clip"), ("text_encoders.t5xxl.transformer.", "t5", "t5")}),
    ("a1111", "sd1"): frozenset(_A1111_UNET | {("lora_te_", "te1", "clip"), ("lora_te1_", "te1", "clip")}),
    ("a1111", "sd2"): frozenset(_A1111_UNET | {("lora_te_", "te1", "clip")}),
    ("a1111", "sdxl"): frozenset(_A1111_UNET | {("lora_te1_", "te1", "clip"), ("lora_te2_", "te2", "clip")}),
}

# The CLIP layers the Forge/ComfyUI key maps name for kohya/diffusers text-encoder prefixes (LORA_CLIP_MAP).
_CLIP_MAP_LAYER = re.compile(r"^text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc1|mlp_fc2)$")
# Diffusers UNet layers A1111's name converter does not reach (it converts neither these nor resnet norms).
_A1111_MISSED = re.compile(r"^(add_embedding|class_embedding|conv_norm_out)|_resnets_\d+_norm[12]$")
# Layer namespaces lbw's diffusers backend finds in an SD1/SD2/SDXL pipeline, per component.
_DIFFUSERS_BACKEND = {("unet", "sgm"), ("unet", "sd_diffusers"), ("te1", "clip"), ("te2", "clip")}
# Adapter kinds each host computes (lbw's kinds; OFT/GLoRA are outside lbw's exact set).
_KINDS: dict[str, frozenset[str]] = {
    "diffusers": frozenset({"lora", "dora", "loha", "lokr", "ia3", "full", "norm"}),
    "a1111": frozenset({"lora", "dora", "loha", "lokr", "ia3", "full", "norm"}),
    "forge": frozenset({"lora", "dora", "loha", "lokr", "full", "norm"}),
    "comfyui": frozenset({"lora", "dora", "loha", "lokr", "full", "norm"}),
}
# Key suffixes a host's loader does not read (the module is then not loaded there).
_UNREAD_SUFFIXES: dict[str, tuple[str, ...]] = {
    "diffusers": (),
    "forge": (".lora_A.default.weight", ".lora_B.default.weight"),
    "comfyui": (),
    "a1111": (),
}


def hosts_for(architecture: str | None) -> tuple[str, ...]:
    """The hosts that run ``architecture`` (empty for an unknown one: lbw cannot tell what loads).

    Example:
        >>> hosts_for("sdxl"), hosts_for("unknown")
        (('a1111', 'forge', 'comfyui', 'diffusers'), ())
    """
    return _HOSTS_FOR.get(architecture or "", ())


def loads(host: str, architecture: str, form: NameForm, kind: str | None = None,
          suffixes: Iterable[str] = ()) -> bool:
    """True when ``host`` running ``architecture`` loads a module named as ``form`` (of adapter ``kind``, whose
    tensor keys end with ``suffixes``); False for a host that does not run the architecture.

    Example:
        >>> sd_peft = NameForm("unet.", "unet", "sd_diffusers",
        ...                    "mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
        ...                    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
        >>> loads("comfyui", "sd1", sd_peft), loads("a1111", "sd1", sd_peft), loads("diffusers", "sd1", sd_peft)
        (False, False, True)
        >>> loads("forge", "sd1", NameForm("lora_unet_", "unet", "sd_diffusers", "conv_in"), kind="ia3")
        False
    """
    if host not in hosts_for(architecture) or not form.namespace:
        return False
    if kind is not None and kind not in _KINDS[host]:
        return False
    if host == "diffusers":
        second_clip = form.component == "te2" and architecture != "sdxl"
        return (form.component, form.namespace) in _DIFFUSERS_BACKEND and not second_clip
    forms = _FORMS[(host, architecture)]
    if any(suffix.endswith(_UNREAD_SUFFIXES[host]) for suffix in suffixes if _UNREAD_SUFFIXES[host]):
        return False
    key = (form.prefix, form.component, form.namespace)
    if key in forms:
        return True
    if (form.prefix, form.component, form.namespace + "*") in forms:
        return _layer_ok(host, form)
    return False


def _layer_ok(host: str, form: NameForm) -> bool:
    """The per-layer checks of the forms marked ``*``."""
    if form.namespace == "clip":
        return _CLIP_MAP_LAYER.match(form.path) is not None
    if form.namespace == "sd_diffusers" and host == "a1111":
        return _A1111_MISSED.search(form.path) is None
    if form.namespace == "sd_diffusers":
        return _processor_form_ok(form.written)
    return True


def _processor_form_ok(written: str) -> bool:
    """Forge/ComfyUI register dotted diffusers UNet names of attention projections only in the old
    attention-processor form (``attn1.processor.to_q``, ``attn1.processor.to_out``), never ``attn1.to_q``.

    Example:
        >>> _processor_form_ok("down_blocks.0.attentions.0.proj_in"), _processor_form_ok("x.attn1.to_q")
        (True, False)
        >>> _processor_form_ok("x.attn1.processor.to_out"), _processor_form_ok("x.attn1.processor.to_out.0")
        (True, False)
    """
    parts = written.split(".")
    for index, part in enumerate(parts):
        if part.startswith("to_") and (index == 0 or parts[index - 1] != "processor"):
            return False
    return not written.endswith(".to_out.0")
