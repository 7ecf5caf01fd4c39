"""Tensor key names: split a key into its module name and tensor role, and name the key family.

Roles are the kohya/LyCORIS suffixes without ``.weight`` (docs/architecture.md). PEFT and diffusers suffixes are
normalised on read: ``lora_A`` -> ``lora_down``, ``lora_B`` -> ``lora_up``, ``lora_magnitude_vector`` ->
``dora_scale``, ``.lora.up.weight`` / ``.lora_linear_layer.up.weight`` / ``_lora.up.weight`` -> ``lora_up``.

Families: ``kohya`` (``lora_unet_``/``lora_te*_`` names with LoRA roles), ``lycoris`` (the same names with a
LyCORIS-only role such as ``hada_w1_a`` or ``lora_mid``), ``peft`` (``lora_A``/``lora_B``), ``diffusers`` (the
older diffusers suffixes), and ``mixed`` for a file that combines families.

Example:
    >>> split_key("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight")
    KeyParts(module='lora_unet_mid_block_attentions_0_proj_in', role='lora_down', family='kohya')
    >>> split_key("unet.mid_block.attentions.0.proj_in.lora_A.weight").role
    'lora_down'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
# Module names written the kohya way (underscores, kohya/LyCORIS roles) by other trainers: OneTrainer's Flux
# transformer and SimpleTuner's LyCORIS (lbw.files.families names the trainer).
UNDERSCORE_PREFIXES = (*KOHYA_PREFIXES, "lora_transformer_", "lycoris_")

# Roles of plain kohya LoRA (sd-scripts networks.lora); every other role is LyCORIS-only.
KOHYA_ROLES = frozenset({"lora_up", "lora_down", "alpha"})

# ".suffix" after the module name -> role, for kohya-style (underscore) module names.
_KOHYA_SUFFIXES: dict[str, str] = {
    "lora_up.weight": "lora_up", "lora_down.weight": "lora_down", "lora_mid.weight": "lora_mid",
    "alpha": "alpha", "dora_scale": "dora_scale",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b", "lokr_t2": "lokr_t2",
    "weight": "weight", "on_input": "on_input",
    "diff": "diff", "diff_b": "diff_b", "w_norm": "w_norm", "b_norm": "b_norm",
    # Known LyCORIS/kohya algorithms lbw does not compute (grouped so they are reported, not lost).
    "oft_blocks": "oft_blocks", "rescale": "rescale", "a1.weight": "a1", "a2.weight": "a2",
    "b1.weight": "b1", "b2.weight": "b2", "bm.weight": "bm",
}

# ".suffix" -> role for PEFT names (any module prefix).
_PEFT_SUFFIXES: dict[str, str] = {
    "lora_A.weight": "lora_down", "lora_B.weight": "lora_up",
    "lora_A.default.weight": "lora_down", "lora_B.default.weight": "lora_up",
    "lora_magnitude_vector": "dora_scale", "lora_magnitude_vector.weight": "dora_scale",
    "lora_magnitude_vector.default.weight": "dora_scale",
}

# ".suffix" -> role for diffusers names; "_lora.up.weight" (attention processors) is handled separately.
_DIFFUSERS_SUFFIXES: dict[str, str] = {
    "lora.up.weight": "lora_up", "lora.down.weight": "lora_down",
    "lora_linear_layer.up.weight": "lora_up", "lora_linear_layer.down.weight": "lora_down",
    "lora_up.weight": "lora_up", "lora_down.weight": "lora_down", "lora_mid.weight": "lora_mid",
    "alpha": "alpha", "dora_scale": "dora_scale",
}

# ".suffix" -> role for LyCORIS tensors under dotted module names (ai-toolkit writes LoKr as
# ``transformer.….lokr_w1``); the bare ``.weight``/``.on_input`` of IA3 are left out: a dotted ``.weight`` is a
# model weight, not an adapter tensor.
_DOTTED_LYCORIS_SUFFIXES: dict[str, str] = {
    role: role for role in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                            "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                            "diff", "diff_b", "w_norm", "b_norm")
}


@dataclass(frozen=True)
class KeyParts:
    """A tensor key split into module name, normalised role and key family."""

    module: str
    role: str
    family: str


def split_key(key: str) -> KeyParts | None:
    """Split a tensor key into (module, role, family), or None when no known naming scheme fits.

    Example:
        >>> split_key("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight")
        KeyParts(module='text_encoder.text_model.encoder.layers.0.mlp.fc1', role='lora_up', family='peft')
    """
    if key.startswith(UNDERSCORE_PREFIXES):
        peft = _match_suffix(key, _PEFT, "peft")
        if peft is not None:
            return peft
        parts = _match_suffix(key, _KOHYA, "kohya")
        if parts is None or "." in parts.module:  # kohya module names never contain a dot
            return None
        if parts.role not in KOHYA_ROLES:
            return KeyParts(parts.module, parts.role, "lycoris")
        return parts
    parts = _match_suffix(key, _PEFT, "peft")
    if parts is not None:
        return parts
    for suffix, role in (("_lora.up.weight", "lora_up"), ("_lora.down.weight", "lora_down")):
        if key.endswith(suffix) and len(key) > len(suffix):
            return KeyParts(key[: -len(suffix)], role, "diffusers")
    parts = _match_suffix(key, _DOTTED_LYCORIS, "lycoris")
    if parts is not None:
        return parts
    return _match_suffix(key, _DIFFUSERS, "diffusers")


def _ordered(table: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(".suffix", role) pairs, longest first, so ".lora_up.weight" wins over ".weight"."""
    return tuple(("." + suffix, table[suffix]) for suffix in sorted(table, key=len, reverse=True))


_KOHYA = _ordered(_KOHYA_SUFFIXES)
_PEFT = _ordered(_PEFT_SUFFIXES)
_DIFFUSERS = _ordered(_DIFFUSERS_SUFFIXES)
_DOTTED_LYCORIS = _ordered(_DOTTED_LYCORIS_SUFFIXES)


def _match_suffix(key: str, table: tuple[tuple[str, str], ...], family: str) -> KeyParts | None:
    for tail, role in table:
        if key.endswith(tail) and len(key) > len(tail):
            return KeyParts(key[: -len(tail)], role, family)
    return None


def file_family(families: Iterable[str], network_module: str | None = None) -> str:
    """Name the family of a whole file from the families of its keys (and ``ss_network_module``).

    kohya keys plus LyCORIS-only roles give ``lycoris``; kohya names from a file trained with
    ``ss_network_module = lycoris.kohya`` are ``lycoris`` too; any other combination is ``mixed``.

    Example:
        >>> file_family(["kohya", "lycoris"])
        'lycoris'
        >>> file_family(["kohya", "peft"])
        'mixed'
    """
    found = set(families)
    if not found:
        return "unknown"
    if found <= {"kohya", "lycoris"}:
        lycoris_trained = (network_module or "").startswith("lycoris")
        return "lycoris" if "lycoris" in found or lycoris_trained else "kohya"
    if len(found) == 1:
        return found.pop()
    return "mixed"
