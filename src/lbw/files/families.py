"""Naming families of LoRA module names, normalised in one place: who wrote a name, which layer it adapts, the
block the LBW extension gives that layer, and which hosts load it.

Every trainer names the same layer its own way. ``normalise`` recognises the family by its prefix, reads the
layer path in its namespace and returns the canonical name of the layer: the name sd-scripts (kohya) gives it
(``lora_unet_…`` with BFL paths for Flux, diffusers or SGM paths for SD/SDXL; ``lora_te1_``/``lora_te2_`` for
CLIP; ``lora_te3_`` for T5). ``lbw.domain.keymap`` maps that canonical name to a block; ``lbw.domain.hosts``
decides from the name as written (its ``NameForm``) whether a host loads it at all.

Families (docs/naming.md has the table of families x hosts):

- ``kohya``: ``lora_unet_``, ``lora_te_``, ``lora_te1_``, ``lora_te2_``, ``lora_te3_`` (sd-scripts, LyCORIS,
  OneTrainer SD/SDXL, ai-toolkit SD/SDXL);
- ``onetrainer``: ``lora_transformer_``, and T5 as ``lora_te2_`` (OneTrainer Flux, its historical format);
- ``lycoris``: ``lycoris_`` (SimpleTuner LyCORIS, ai-toolkit's old LoKr format);
- ``diffusers``: ``transformer.``, ``unet.``, ``text_encoder.``, ``text_encoder_2.`` (diffusers scripts,
  ai-toolkit Flux, SimpleTuner PEFT, OneTrainer "diffusers");
- ``peft``: no prefix (``transformer_blocks.0.…``) or ``base_model.model.`` (PEFT saved from the bare model);
- ``comfyui``: ``diffusion_model.``, ``text_encoders.clip_l.transformer.`` … (ComfyUI, OneTrainer "comfy").

Example:
    >>> n = normalise("lycoris_transformer_blocks_0_attn_add_q_proj")
    >>> n.family, n.canonical
    ('lycoris', 'lora_unet_double_blocks_0_txt_attn_qkv')
    >>> normalise("lora_te2_encoder_block_0_layer_0_SelfAttention_q").canonical
    'lora_te3_encoder_block_0_layer_0_SelfAttention_q'
    >>> describe("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q", "flux").loaded_by
    ()
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from lbw.domain.hosts import NameForm, hosts_for, loads
from lbw.domain.keymap import block_of, inspire_bucket

FAMILIES = ("kohya", "onetrainer", "lycoris", "diffusers", "peft", "comfyui")

# (prefix as written, family, component the prefix names), most specific first. "te1" is the first or only
# CLIP, "te2" SDXL's CLIP-G; a T5 path under any text-encoder prefix is component "t5".
_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("text_encoders.clip_l.transformer.", "comfyui", "te1"),
    ("text_encoders.clip_h.transformer.", "comfyui", "te1"),
    ("text_encoders.clip_g.transformer.", "comfyui", "te2"),
    ("text_encoders.t5xxl.transformer.", "comfyui", "t5"),
    ("diffusion_model.", "comfyui", "unet"),
    ("transformer.", "diffusers", "unet"),
    ("unet.", "diffusers", "unet"),
    ("text_encoder_2.", "diffusers", "te2"),
    ("text_encoder.", "diffusers", "te1"),
    ("lora_transformer_", "onetrainer", "unet"),
    ("lycoris_", "lycoris", "unet"),
    ("lora_unet_", "kohya", "unet"),
    ("lora_te1_", "kohya", "te1"),
    ("lora_te2_", "kohya", "te2"),
    ("lora_te3_", "kohya", "t5"),
    ("lora_te_", "kohya", "te1"),
)
_PEFT_BASE = "base_model.model."
# Prefixes a T5 layer path is written under (Forge also maps lora_te1_; OneTrainer writes lora_te2_).
_T5_PREFIXES = frozenset({"", _PEFT_BASE, "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder_2.",
                          "text_encoders.t5xxl.transformer."})

# Layer path namespaces, matched on the path with "." read as "_".
_NAMESPACES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("t5", re.compile(r"^encoder_block_\d+_")),
    ("clip", re.compile(r"^(text_model_|encoder_layers_\d+_|text_projection$)")),
    ("bfl", re.compile(r"^(double_blocks_\d+_|single_blocks_\d+_|img_in$|txt_in$|time_in_|vector_in_|"
                       r"guidance_in_|final_layer_)")),
    ("flux_diffusers", re.compile(r"^(transformer_blocks_\d+_|single_transformer_blocks_\d+_|x_embedder$|"
                                  r"context_embedder$|time_text_embed_|norm_out_linear$|proj_out$)")),
    ("sgm", re.compile(r"^(input_blocks_\d+_|middle_block_\d+_|output_blocks_\d+_|time_embed_\d|label_emb_|"
                       r"out_\d)")),
    ("sd_diffusers", re.compile(r"^(down_blocks_\d+_|mid_block_|up_blocks_\d+_|conv_in$|conv_out$|"
                                r"time_embedding_|add_embedding_|class_embedding_|conv_norm_out$)")),
)

# Flux: diffusers layer -> BFL layer (ComfyUI's flux_to_diffusers, read the other way).
_FLUX_DOUBLE = {
    "attn_to_q": "img_attn_qkv", "attn_to_k": "img_attn_qkv", "attn_to_v": "img_attn_qkv",
    "attn_add_q_proj": "txt_attn_qkv", "attn_add_k_proj": "txt_attn_qkv", "attn_add_v_proj": "txt_attn_qkv",
    "attn_to_out_0": "img_attn_proj", "attn_to_add_out": "txt_attn_proj",
    "ff_net_0_proj": "img_mlp_0", "ff_net_2": "img_mlp_2",
    "ff_context_net_0_proj": "txt_mlp_0", "ff_context_net_2": "txt_mlp_2",
    "norm1_linear": "img_mod_lin", "norm1_context_linear": "txt_mod_lin",
    "attn_norm_q": "img_attn_norm_query_norm", "attn_norm_k": "img_attn_norm_key_norm",
    "attn_norm_added_q": "txt_attn_norm_query_norm", "attn_norm_added_k": "txt_attn_norm_key_norm",
}
_FLUX_SINGLE = {
    "attn_to_q": "linear1", "attn_to_k": "linear1", "attn_to_v": "linear1", "proj_mlp": "linear1",
    "proj_out": "linear2", "norm_linear": "modulation_lin",
    "attn_norm_q": "norm_query_norm", "attn_norm_k": "norm_key_norm",
}
_FLUX_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed_timestep_embedder_linear_1": "time_in_in_layer",
    "time_text_embed_timestep_embedder_linear_2": "time_in_out_layer",
    "time_text_embed_guidance_embedder_linear_1": "guidance_in_in_layer",
    "time_text_embed_guidance_embedder_linear_2": "guidance_in_out_layer",
    "time_text_embed_text_embedder_linear_1": "vector_in_in_layer",
    "time_text_embed_text_embedder_linear_2": "vector_in_out_layer",
    "norm_out_linear": "final_layer_adaLN_modulation_1", "proj_out": "final_layer_linear",
}
_FLUX_BLOCK = re.compile(r"^(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)$")


@dataclass(frozen=True)
class ModuleName:
    """One module name, normalised: its ``family``, the ``form`` hosts match, and the canonical (sd-scripts)
    name of the layer it adapts (None when lbw does not recognise the layer)."""

    family: str
    form: NameForm
    canonical: str | None

    @property
    def component(self) -> str:
        """``unet`` (UNet or Flux transformer), ``te1``, ``te2`` or ``t5``; ``""`` when unknown."""
        return self.form.component


@dataclass(frozen=True)
class ModuleNaming:
    """A module name in a file of a known architecture: normalised name, LBW block, Inspire bucket, and the
    hosts that load it (``loaded_by``; None when the architecture is unknown and lbw cannot tell)."""

    name: ModuleName
    block: str | None
    inspire: tuple[str, int] | None
    hosts: tuple[str, ...]
    loaded_by: tuple[str, ...] | None

    @property
    def family(self) -> str:
        """The naming family (``FAMILIES``)."""
        return self.name.family

    @property
    def canonical(self) -> str | None:
        """The sd-scripts name of the layer."""
        return self.name.canonical

    @property
    def component(self) -> str:
        """``unet``, ``te1``, ``te2``, ``t5`` or ``""``."""
        return self.name.component

    @property
    def loaded_nowhere(self) -> bool:
        """True when lbw knows the hosts of this architecture and none of them loads the module."""
        return self.loaded_by is not None and not self.loaded_by


@lru_cache(maxsize=8192)
def normalise(name: str) -> ModuleName:
    """Recognise the family of a module name and the layer it adapts.

    Example:
        >>> normalise("transformer.single_transformer_blocks.3.proj_mlp").canonical
        'lora_unet_single_blocks_3_linear1'
        >>> normalise("base_model.model.down_blocks.1.attentions.0.proj_in").family
        'peft'
        >>> normalise("vae.decoder.conv_in").canonical is None
        True
    """
    rest, family, prefix, component = name, "peft", "", ""
    if rest.startswith(_PEFT_BASE):
        rest, prefix = rest[len(_PEFT_BASE):], _PEFT_BASE
    else:
        for candidate, candidate_family, candidate_component in _PREFIXES:
            if rest.startswith(candidate):
                rest, prefix, family, component = rest[len(candidate):], candidate, candidate_family, \
                    candidate_component
                break
    flat = rest.replace(".", "_")
    namespace = next((space for space, pattern in _NAMESPACES if pattern.match(flat)), "")
    component, namespace = _fit(component, namespace, prefix)
    if namespace == "t5" and prefix == "lora_te2_":
        family = "onetrainer"  # sd-scripts writes no lora_te2_ for Flux; OneTrainer's T5 is its second encoder
    canonical = _canonical(prefix, component, namespace, flat) if namespace else None
    if canonical is None:
        component, namespace = "", ""
    return ModuleName(family, NameForm(prefix, component, namespace, flat, rest), canonical)


def _fit(component: str, namespace: str, prefix: str) -> tuple[str, str]:
    """(component, namespace) of a layer path under a prefix, or ("", "") when they do not go together (a text
    path under the UNet prefix, a T5 path under a CLIP prefix, ...). A bare path names its own component.

    Example:
        >>> _fit("te2", "t5", "lora_te2_"), _fit("unet", "clip", "lora_unet_"), _fit("", "clip", "")
        (('t5', 't5'), ('', ''), ('te1', 'clip'))
    """
    if namespace == "t5":
        return ("t5", "t5") if prefix in _T5_PREFIXES else ("", "")
    if namespace == "clip":
        if component in ("te1", "te2"):
            return component, namespace
        return ("te1", namespace) if component == "" else ("", "")
    if namespace and component in ("", "unet"):
        return "unet", namespace
    return "", ""


def describe(name: str, architecture: str | None, kind: str | None = None,
             suffixes: Iterable[str] = ()) -> ModuleNaming:
    """Normalise ``name`` in a file of ``architecture``: block, Inspire bucket and the hosts that load it (given
    the module's adapter ``kind`` and the key ``suffixes`` after its name).

    Example:
        >>> d = describe("lora_transformer_transformer_blocks_2_ff_context_net_2", "flux", "lora")
        >>> d.block, d.loaded_by
        ('D02', ('forge', 'comfyui'))
        >>> describe("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "sd1", "lora").loaded_by
        ('diffusers',)
    """
    normal = normalise(name)
    block = inspire = None
    if normal.canonical is not None:
        block = block_of(normal.canonical, architecture)
        inspire = inspire_bucket(normal.canonical, architecture)
    hosts = hosts_for(architecture)
    tails = tuple(suffixes)
    loaded_by = None
    if hosts:
        loaded_by = tuple(h for h in hosts if loads(h, architecture or "", normal.form, kind, tails))
    return ModuleNaming(normal, block, inspire, hosts, loaded_by)


def _canonical(prefix: str, component: str, namespace: str, flat: str) -> str | None:
    """The sd-scripts name of a recognised layer."""
    if namespace == "t5":
        return "lora_te3_" + flat
    if namespace == "clip":
        path = flat if not flat.startswith("encoder_layers_") else "text_model_" + flat
        if prefix in ("lora_te_", "lora_te1_", "lora_te2_"):
            return prefix + path
        return ("lora_te2_" if component == "te2" else "lora_te1_") + path
    if namespace == "flux_diffusers":
        bfl = _flux_bfl(flat)
        return None if bfl is None else "lora_unet_" + bfl
    if namespace == "sd_diffusers":
        return "lora_unet_" + _without_processor(flat)
    return "lora_unet_" + flat


def _flux_bfl(flat: str) -> str | None:
    """A Flux diffusers layer path (``transformer_blocks_0_attn_to_q``) as its BFL path (``double_blocks_0_…``).

    Example:
        >>> _flux_bfl("single_transformer_blocks_37_norm_linear"), _flux_bfl("transformer_blocks_0_bogus")
        ('single_blocks_37_modulation_lin', None)
    """
    if flat in _FLUX_TOP:
        return _FLUX_TOP[flat]
    match = _FLUX_BLOCK.match(flat)
    if match is None:
        return None
    single = match[1] == "single_transformer_blocks"
    layer = (_FLUX_SINGLE if single else _FLUX_DOUBLE).get(match[3])
    if layer is None:
        return None
    return f"{'single' if single else 'double'}_blocks_{match[2]}_{layer}"


def _without_processor(flat: str) -> str:
    """Old diffusers attention-processor names (``attn1_processor_to_out``) as layer paths (``attn1_to_out_0``)."""
    if "_processor_to_" not in flat:
        return flat
    flat = flat.replace("_processor_to_", "_to_")
    return flat + "_0" if flat.endswith("_to_out") else flat
