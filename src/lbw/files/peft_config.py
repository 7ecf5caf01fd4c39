"""The alpha of PEFT/diffusers LoRA modules, read from the ``lora_adapter_metadata`` JSON (no tensor holds it).

PEFT saves no ``alpha`` tensor: the scale comes from the ``LoraConfig`` (``lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern`` and ``alpha_pattern`` override per module).
diffusers stores that config as JSON in the metadata key ``lora_adapter_metadata`` (lora-files.md §2.3): a
model save writes the config keys as they are (``{"r": 8, "lora_alpha": 16, ...}``), a pipeline save prefixes
them with the component (``{"unet.r": 8, "text_encoder.lora_alpha": 4, ...}``). A file without that key has
scale 1 (alpha = rank), as every loader assumes.

lbw works with alpha/r where r is the module's rank, so a config scale s becomes ``alpha = s * r``.

Example:
    >>> configs = adapter_configs({"lora_adapter_metadata": '{"unet.r": 8, "unet.lora_alpha": 4}'}, "a")
    >>> config_alpha(configs, "unet.mid_block.attentions.0.proj_in", rank=8)
    4.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lbw.errors import LoraFileError
from lbw.files.json_text import load_json, preview, quoted

ADAPTER_METADATA_KEY = "lora_adapter_metadata"
_FIELDS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora")
# LoraConfig's own defaults, used by diffusers when a field is missing (LoraConfig(**metadata)).
_DEFAULT_R = 8
# Largest rank or alpha accepted from a config: every value up to it is an exact float.
_LARGEST = 2**53
_DEFAULT_ALPHA = 8


@dataclass(frozen=True)
class AdapterConfig:
    """The scale-setting fields of one PEFT ``LoraConfig``."""

    r: int
    lora_alpha: float
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    use_rslora: bool

    def scale(self, path: str) -> float:
        """The scale PEFT applies to the module at ``path`` (relative to the adapted model).

        Example:
            >>> AdapterConfig(8, 16, {}, {"to_q": 8}, False).scale("down_blocks.0.attn1.to_q")
            1.0
        """
        rank = _pattern_value(self.rank_pattern, path, self.r)
        alpha = _pattern_value(self.alpha_pattern, path, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def adapter_configs(metadata: Mapping[str, str], where: str) -> dict[str, AdapterConfig]:
    """The configs in ``lora_adapter_metadata`` by component (``""`` for an unprefixed model save); ``{}``
    when the key is absent. A value that is not the JSON diffusers writes is a LoraFileError naming ``where``.

    Example:
        >>> sorted(adapter_configs({"lora_adapter_metadata": '{"r": 4, "lora_alpha": 2}'}, "a"))
        ['']
    """
    raw = metadata.get(ADAPTER_METADATA_KEY)
    if raw is None:
        return {}
    data = load_json(raw, where=where, what=f"metadata {ADAPTER_METADATA_KEY}")
    if not isinstance(data, dict):
        raise LoraFileError(f"metadata {ADAPTER_METADATA_KEY} must be a JSON object", where=where)
    fields: dict[str, dict[str, object]] = {}
    for key, value in data.items():
        component, _, name = key.rpartition(".")
        if name in _FIELDS:
            fields.setdefault(component, {})[name] = value
    return {component: _config(values, where) for component, values in fields.items()
            if "r" in values or "lora_alpha" in values}


def config_alpha(configs: Mapping[str, AdapterConfig], module: str, rank: int) -> float | None:
    """The alpha (in lbw's alpha/rank terms) of a PEFT-named ``module`` of ``rank``; None when no config covers it.

    ``module`` is the file's module name (``unet.down_blocks.0….to_q``); a prefixed config applies to the
    modules under its component and matches patterns against the rest of the name.

    Example:
        >>> configs = {"": AdapterConfig(8, 8, {}, {}, True)}
        >>> round(config_alpha(configs, "transformer_blocks.0.attn.to_q", 8), 4)   # rsLoRA: 8/sqrt(8) * 8
        22.6274
    """
    name = module.removeprefix("base_model.model.")
    component, _, rest = name.partition(".")
    if component in configs and rest:
        return configs[component].scale(rest) * rank
    if "" in configs:
        return configs[""].scale(name) * rank
    return None


def _config(values: Mapping[str, object], where: str) -> AdapterConfig:
    def fail(problem: str) -> LoraFileError:
        return LoraFileError(f"metadata {ADAPTER_METADATA_KEY}: {problem}", where=where)

    def number(value: object, label: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == math.inf:
            raise fail(f"{label} must be a positive number, found {preview(value)}")
        if value > _LARGEST:
            raise fail(f"{label} must be at most 2**53, found {preview(value)}")
        return value

    def patterns(label: str) -> dict[str, float]:
        value = values.get(label) or {}
        if not isinstance(value, dict):
            raise fail(f"{label} must be an object, found {type(value).__name__}")
        return {str(key): number(item, f"{label}[{quoted(key)}]") for key, item in value.items()}

    rslora = values.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise fail(f"use_rslora must be true or false, found {preview(rslora)}")
    return AdapterConfig(
        r=int(number(values.get("r", _DEFAULT_R), "r")),
        lora_alpha=float(number(values.get("lora_alpha", _DEFAULT_ALPHA), "lora_alpha")),
        rank_pattern={key: int(value) for key, value in patterns("rank_pattern").items()},
        alpha_pattern=patterns("alpha_pattern"),
        use_rslora=rslora,
    )


def _pattern_value(patterns: Mapping[str, float], path: str, default: float) -> float:
    """PEFT's rule: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", path)`` wins."""
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", path):
                return value
        except re.error:
            if path == pattern or path.endswith("." + pattern):
                return value
    return default
