"""Metadata of baked and merged files: the input's metadata (the first input's for a merge) with what was done
recorded, so the output names its sources and the weights now inside it.

Both set ``ss_output_name`` (and ``modelspec.title`` when present) to the output stem and
``modelspec.merged_from`` to ``title(short hash)`` per source; both drop the hash keys (the writer sets them) and
the keys of weights meant for inference (now applied). A bake adds ``lbw_baked_*``; a merge adds
``lbw_merge_sources`` (JSON) and ``lbw_merge_rank``. ``ss_network_dim``/``ss_network_alpha`` follow the result
(``Dynamic`` when ranks or alphas differ).

Example:
    >>> metadata = baked_metadata(lora, plan, Path("face-baked.safetensors"), "ab" * 32, lora.modules, ())
    >>> metadata["ss_output_name"], metadata["lbw_baked_from"]
    ('face-baked', 'face.safetensors')
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind
from lbw.domain.numbers import format_number
from lbw.files.lora_file import LoraFile
from lbw.files.metadata import BAKED_WEIGHTS_KEY
from lbw.files.modules import Module
from lbw.files.peft_config import ADAPTER_METADATA_KEY

if TYPE_CHECKING:
    from lbw.services.merge import MergeOptions
    from lbw.services.resolve import FactorPlan
    from lbw.services.sources import OpenSource

# Metadata keys lbw writes.
BAKED_LAYOUT_KEY = "lbw_baked_layout"
BAKED_TE_KEY = "lbw_baked_te"
BAKED_UNET_KEY = "lbw_baked_unet"
BAKED_FROM_KEY = "lbw_baked_from"
BAKED_FROM_HASH_KEY = "lbw_baked_from_sshs_model_hash"
MERGED_FROM_KEY = "modelspec.merged_from"
MERGE_SOURCES_KEY = "lbw_merge_sources"
MERGE_RANK_KEY = "lbw_merge_rank"
# Keys that describe weights to apply at inference: meaningless once the weights are baked in.
INFERENCE_WEIGHT_KEYS = ("lbw_block_weights", "lbw_block_layout")
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")


def baked_metadata(
    lora: LoraFile,
    plan: FactorPlan,
    dest: Path,
    source_hash: str,
    kept: Iterable[Module],
    dora_dense: Iterable[str],
) -> dict[str, str]:
    """The input's metadata with the bake recorded (hash keys are set by the writer).

    Sets ``ss_output_name`` (and ``modelspec.title`` when present) to the output stem, ``modelspec.merged_from``
    to ``title(short hash)`` of the source, ``lbw_baked_*`` to the weights, layout, multipliers and the source's
    file name and SHA-256 (its addnet hash, computed); updates ``ss_network_dim``/``ss_network_alpha`` when the
    input has them; drops keys holding weights meant for inference (now applied).

    Example:
        >>> baked_metadata(lora, plan, Path("out.safetensors"), "ab" * 32, lora.modules, ())["ss_output_name"]
        'out'
    """
    metadata = {k: v for k, v in lora.metadata.items() if k not in HASH_KEYS and k not in INFERENCE_WEIGHT_KEYS}
    stem = output_stem(dest)
    metadata["ss_output_name"] = stem
    if "modelspec.title" in metadata:
        metadata["modelspec.title"] = stem
    metadata[MERGED_FROM_KEY] = f"{source_title(lora)}({source_hash[:12]})"
    metadata[BAKED_WEIGHTS_KEY] = plan.applied_text()
    metadata[BAKED_LAYOUT_KEY] = plan.weights.layout.name
    metadata[BAKED_TE_KEY] = format_number(plan.te)
    metadata[BAKED_UNET_KEY] = format_number(plan.unet)
    metadata[BAKED_FROM_KEY] = lora.path.name
    metadata[BAKED_FROM_HASH_KEY] = source_hash
    dim, alpha = network_dim_alpha(kept)
    if dora_dense:
        metadata["lbw_dora_dense_modules"] = str(len(list(dora_dense)))
    if "ss_network_dim" in metadata and dim is not None:
        metadata["ss_network_dim"] = dim
    if "ss_network_alpha" in metadata and alpha is not None:
        metadata["ss_network_alpha"] = alpha
    return metadata


def merged_metadata(
    sources: Sequence[OpenSource],
    hashes: Sequence[str],
    dest: Path,
    options: MergeOptions,
    dim_alpha: tuple[str | None, str | None],
) -> dict[str, str]:
    """The first input's metadata with the merge recorded: output name, ``modelspec.merged_from``
    (``title(short hash)`` per input), ``lbw_merge_sources`` (JSON: file, sshs_model_hash, te, unet, weights),
    ``lbw_merge_rank``, and ``ss_network_dim``/``ss_network_alpha`` of the result (``Dynamic`` when mixed).

    Example:
        >>> json.loads(merged_metadata(sources, hashes, Path("ab.safetensors"), MergeOptions(), ("16", "16"))
        ...            ["lbw_merge_sources"])[0]["file"]
        'a.safetensors'
    """
    first = sources[0].lora.metadata
    metadata = {k: v for k, v in first.items()
                if k not in HASH_KEYS and k not in INFERENCE_WEIGHT_KEYS and not k.startswith("lbw_baked_")
                and k != ADAPTER_METADATA_KEY}  # PEFT alphas are folded into the factors: every scale is 1
    stem = output_stem(dest)
    metadata["ss_output_name"] = stem
    if "modelspec.title" in metadata:
        metadata["modelspec.title"] = stem
    metadata[MERGED_FROM_KEY] = ", ".join(f"{source_title(s.lora)}({h[:12]})"
                                          for s, h in zip(sources, hashes, strict=True))
    metadata[MERGE_SOURCES_KEY] = json.dumps([
        {"file": s.spec.path.name, "sshs_model_hash": h, "te": format_number(s.plan.te),
         "unet": format_number(s.plan.unet), "weights": s.plan.applied_text()}
        for s, h in zip(sources, hashes, strict=True)
    ], ensure_ascii=False)
    if options.rank is not None:
        metadata[MERGE_RANK_KEY] = str(options.rank) + (f"/{options.conv_rank}" if options.conv_rank else "")
    dim, alpha = dim_alpha
    if dim is not None:
        metadata["ss_network_dim"] = dim
        metadata["ss_network_alpha"] = alpha or "Dynamic"
    return metadata


def network_dim_alpha(modules: Iterable[Module]) -> tuple[str | None, str | None]:
    """``ss_network_dim``/``ss_network_alpha`` for these modules: the common rank and alpha, ``Dynamic`` when they
    differ, None when no module has a rank. DoRA modules baked dense have none and are left out by the caller.

    Example:
        >>> network_dim_alpha(lora.modules)
        ('8', '4')
    """
    ranks = set()
    alphas = set()
    for module in modules:
        if module.rank is None or module.kind is AdapterKind.DORA:
            continue
        ranks.add(module.rank)
        alphas.add(module.alpha)
    return dim_alpha_text(ranks, alphas)


def dim_alpha_text(ranks: set[int], alphas: set[float | None]) -> tuple[str | None, str | None]:
    """Text of the rank and alpha sets: the one value, ``Dynamic`` for several, None for none.

    Example:
        >>> dim_alpha_text({8}, {4.0}), dim_alpha_text({8, 16}, {8.0, 16.0})
        (('8', '4'), ('Dynamic', 'Dynamic'))
    """
    if not ranks:
        return None, None
    dim = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    single = len(alphas) == 1 and None not in alphas
    alpha = format_number(float(next(iter(alphas)))) if single else "Dynamic"  # type: ignore[arg-type]
    return dim, alpha


def source_title(lora: LoraFile) -> str:
    """The name a source goes by: ``modelspec.title``, else ``ss_output_name``, else the file stem.

    Example:
        >>> source_title(lora)  # no title metadata
        'face'
    """
    metadata = lora.metadata
    return metadata.get("modelspec.title") or metadata.get("ss_output_name") or output_stem(lora.path)


def output_stem(path: Path) -> str:
    """The file name without ``.safetensors`` (what sd-scripts stores as ``ss_output_name``).

    Example:
        >>> output_stem(Path("dir/face.v2.safetensors"))
        'face.v2'
    """
    name = path.name
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else path.stem
