"""Which base model a LoRA is for (sd1, sd2, sdxl, flux), from its keys and shapes, checked against metadata.

Evidence from the keys: Flux double/single blocks in any family's names, or a T5 text encoder; SDXL
``lora_te1_``/``lora_te2_``, ``text_encoder_2``, SGM UNet names or a 2048-wide cross-attention context; SD2 a
1024-wide text encoder or 1024-wide context; SD1 a 768-wide text encoder (``lora_te_``) or 768-wide context.
The metadata keys ``ss_base_model_version``, ``ss_v2`` and ``modelspec.architecture`` are compared with that;
any disagreement is reported as a warning, never hidden.

Example:
    >>> report = detect_architecture({"lora_te_text_model_encoder_layers_0_mlp_fc1": {"lora_down": (8, 768)}}, {})
    >>> report.name, report.evidence
    ('sd1', ('text encoder lora_te_ with width 768',))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lbw.files.json_text import quoted

ARCHITECTURES = ("sd1", "sd2", "sdxl", "flux")
_PRIORITY = {"flux": 0, "sdxl": 1, "sd2": 2, "sd1": 3}

_SGM = re.compile(r"^(lora_unet_|unet_|diffusion_model_|model_diffusion_model_)?(input_blocks|middle_block|"
                  r"output_blocks)_\d")
_FLUX = re.compile(r"(^|_)(double_blocks|single_blocks|single_transformer_blocks)_\d")
# Flux double blocks in diffusers names (any family's prefix): SD blocks have attn1/attn2, never attn_/context.
_FLUX_DIFFUSERS = re.compile(
    r"(^|_)transformer_blocks_\d+_(attn_|ff_context_|norm1_context_|norm1_linear)|"
    r"^(transformer_|lora_transformer_|lycoris_)?(x_embedder|context_embedder|time_text_embed_)")
_T5 = re.compile(r"(^|_)encoder_block_\d+_layer_")
_SD_UNET = re.compile(r"^(lora_unet_|unet_|lycoris_)?(down_blocks|mid_block|up_blocks)_")
_CROSS_KV = re.compile(r"attn2_(to_k|to_v)$")
_TE_LAYER = re.compile(r"self_attn_(q|k|v)_proj$")

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class ArchitectureReport:
    """The detected architecture, the evidence for it, and warnings (conflicts, metadata disagreement)."""

    name: str
    evidence: tuple[str, ...]
    metadata_says: Mapping[str, str]
    warnings: tuple[str, ...]


def detect_architecture(modules: Mapping[str, Shapes], metadata: Mapping[str, str]) -> ArchitectureReport:
    """Detect the architecture from ``modules`` (module name -> role -> shape) and cross-check ``metadata``.

    Example:
        >>> detect_architecture({"lora_unet_single_blocks_0_linear1": {"lora_down": (16, 3072)}}, {}).name
        'flux'
    """
    strong, weak = _key_votes(modules)
    said = metadata_architectures(metadata)
    warnings: list[str] = []
    found = _by_priority(strong)
    if len(found) > 1:
        detail = "; ".join(f"{arch}: {strong[arch][0]}" for arch in found)
        warnings.append(f"keys point to several architectures ({detail}); using {found[0]}")
    weak_found = _by_priority(arch for arch in weak if arch in ARCHITECTURES)
    if found:
        name, evidence = found[0], tuple(strong[found[0]])
    elif weak_found:
        name, evidence = weak_found[0], tuple(weak[weak_found[0]])
    elif said:
        name = _by_priority(said.values())[0]
        evidence = tuple(f"metadata {key} = {quoted(metadata[key], 60)}" for key in said)
    elif "sd" in weak:
        name, evidence = "sd1", tuple(weak["sd"])
        warnings.append("SD UNet names without a text encoder or cross-attention width: SD1 and SD2 look "
                        "the same here; assuming sd1")
    else:
        name, evidence = "unknown", ()
        warnings.append("could not tell the architecture from keys, shapes or metadata")
    for key, arch in said.items():
        if arch != name:
            warnings.append(f"metadata {key} = {quoted(metadata[key], 60)} says {arch}, but the keys say {name}")
    return ArchitectureReport(name, evidence, said, tuple(warnings))


def metadata_architectures(metadata: Mapping[str, str]) -> dict[str, str]:
    """What each architecture-bearing metadata key says: key -> sd1/sd2/sdxl/flux (unrecognised values skipped).

    Example:
        >>> metadata_architectures({"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"})
        {'ss_base_model_version': 'sdxl'}
    """
    said: dict[str, str] = {}
    version = metadata.get("ss_base_model_version", "").strip().lower()
    for prefix, arch in (("sdxl", "sdxl"), ("sd_v1", "sd1"), ("sd_v2", "sd2"), ("flux", "flux")):
        if version.startswith(prefix):
            said["ss_base_model_version"] = arch
            break
    if metadata.get("ss_v2", "").strip().lower() == "true":
        said["ss_v2"] = "sd2"
    spec = metadata.get("modelspec.architecture", "").strip().lower()
    for prefix, arch in (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v1", "sd1"),
                         ("stable-diffusion-v2", "sd2"), ("flux", "flux")):
        if spec.startswith(prefix):
            said["modelspec.architecture"] = arch
            break
    return said


def _key_votes(modules: Mapping[str, Shapes]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Evidence per architecture: strong (decisive alone) and weak (used when nothing strong is found).

    Weak: ``lora_te1_``/``text_encoder_2`` names (Flux has them too), a 768-wide text encoder (SDXL's first
    encoder is 768 wide as well) and SD UNet names (``sd``: SD1 or SD2).
    """
    strong: dict[str, list[str]] = {}
    weak: dict[str, list[str]] = {}

    def vote(table: dict[str, list[str]], arch: str, why: str) -> None:
        reasons = table.setdefault(arch, [])
        if why not in reasons:
            reasons.append(why)

    for module, shapes in modules.items():
        name = module.replace(".", "_").removeprefix("base_model_model_")
        if _FLUX.search(name) or _FLUX_DIFFUSERS.search(name) or name.startswith("lora_te3_"):
            vote(strong, "flux", "Flux double/single blocks or T5 (lora_te3_) keys")
            continue
        if _T5.search(name):
            vote(strong, "flux", "T5-XXL text encoder keys (encoder_block_N_layer_)")
            continue
        width = _in_features(shapes)
        if name.startswith("lora_te2_"):
            vote(strong, "sdxl", "second text encoder (lora_te2_)")
        elif name.startswith("lora_te1_"):
            vote(weak, "sdxl", "first of two text encoders (lora_te1_)")
        elif name.startswith("text_encoder_2_"):
            vote(weak, "sdxl", "second text encoder (text_encoder_2)")
        elif _SGM.match(name):
            vote(strong, "sdxl", "SGM UNet names (input_blocks/middle_block/output_blocks)")
        elif name.startswith(("lora_te_", "text_encoder_")) and _TE_LAYER.search(name) and width:
            label = "lora_te_" if name.startswith("lora_te_") else "text_encoder"
            if width == 1024:
                vote(strong, "sd2", f"text encoder {label} with width 1024")
            elif width == 768:
                vote(weak, "sd1", f"text encoder {label} with width 768")
        if _CROSS_KV.search(name) and width and "weight" not in shapes:  # an IA3 vector may be the out width
            arch = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
            if arch:
                vote(strong, arch, f"cross-attention context width {width}")
        if _SD_UNET.match(name):
            vote(weak, "sd", "SD UNet names (down_blocks/mid_block/up_blocks)")
    return strong, weak


def _in_features(shapes: Shapes) -> int | None:
    """The input width of a module: from its down factor (lora_down, hada_w1_b, diff), the product of the two
    Kronecker factors' inputs (linear LoKr), or the length of an IA3 vector (its output width, or its input
    width with on_input: equal for the square q/k/v projections of a text encoder)."""
    for role in ("lora_down", "hada_w1_b", "diff"):
        shape = shapes.get(role)
        if shape is not None and len(shape) >= 2:
            return int(shape[1])
    w1 = shapes.get("lokr_w1", shapes.get("lokr_w1_b"))
    w2 = shapes.get("lokr_w2", shapes.get("lokr_w2_b"))
    if w1 is not None and w2 is not None and len(w1) == 2 and len(w2) == 2 and "lokr_t2" not in shapes:
        return int(w1[1]) * int(w2[1])
    weight = shapes.get("weight")
    if weight is not None and len(weight) == 1:
        return int(weight[0])
    return None


def _by_priority(archs: Iterable[str]) -> list[str]:
    return sorted(set(archs), key=_PRIORITY.__getitem__)
