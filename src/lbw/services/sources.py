"""Input specs of ``lbw merge`` and ``lbw verify``: ``FILE[:strength[:weights]]`` and SuperMerger's list form.

Rules:
- ``FILE`` is the longest prefix, cut at a ``:``, that names an existing file (as given, or with
  ``.safetensors`` added, relative to the current folder or to ``lora_dir``). So paths may contain ``:``,
  and a SuperMerger-style bare name (``mylora``) finds ``mylora.safetensors``.
- ``strength`` is a number applied to the text encoder and the UNet alike (empty = the default).
- ``weights`` is everything after the second ``:`` (a preset, ``NAME:v1,...``, a vector or a sheet file).
- SuperMerger's text form ``name1:ratio1:Blocks1,name2:ratio2:Blocks2`` is one argument whose comma-separated
  items each start with an existing file; it is split into one spec per item. Inline vectors contain commas,
  so use one argument per LoRA for them.

Example:
    >>> parse_spec("face.safetensors:0.8:OUTALL")
    SourceSpec(path=PosixPath('face.safetensors'), strength=0.8, weights='OUTALL', text='face.safetensors:0.8:OUTALL')
    >>> [s.strength for s in split_specs(["a:1:ALL,b:0.5:INS"])]
    [1.0, 0.5]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lbw.domain.numbers import is_number_text
from lbw.domain.weights import BlockWeights
from lbw.errors import LoraFileError, WeightsError
from lbw.files.lora_file import LoraFile
from lbw.services.resolve import FactorPlan, load_weights, resolve_for_file

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class SourceSpec:
    """One input: its file, optional strength (None = default) and optional weights text (None = all 1)."""

    path: Path
    strength: float | None
    weights: str | None
    text: str


def parse_spec(text: str, *, lora_dir: str | Path | None = None) -> SourceSpec:
    """Split ``FILE[:strength[:weights]]`` (see the module rules); LoraFileError when no prefix is a file.

    Example:
        >>> parse_spec("C:/loras/a.safetensors::ALL").weights
        'ALL'
    """
    cuts = [i for i, char in enumerate(text) if char == ":"]
    for cut in [len(text), *reversed(cuts)]:
        path = find_file(text[:cut], lora_dir)
        if path is None:
            continue
        rest = text[cut + 1:] if cut < len(text) else None
        strength, weights = _split_rest(rest, text)
        return SourceSpec(path, strength, weights, text)
    first = text.split(":", 1)[0] if cuts else text
    where = f" or in {lora_dir}" if lora_dir else ""
    raise LoraFileError(f"no such LoRA file (also tried {first}{SUFFIX}{where})", where=first or text)


def split_specs(args: Iterable[str], *, lora_dir: str | Path | None = None) -> list[SourceSpec]:
    """Parse every argument; an argument in SuperMerger's comma-separated list form becomes several specs.

    Example:
        >>> len(split_specs(["a.safetensors", "b:1:ALL,c:0.5"]))
        3
    """
    specs: list[SourceSpec] = []
    for arg in args:
        items = arg.split(",")
        if len(items) > 1 and all(_starts_with_file(item, lora_dir) for item in items):
            specs.extend(parse_spec(item.strip(), lora_dir=lora_dir) for item in items)
        else:
            specs.append(parse_spec(arg, lora_dir=lora_dir))
    return specs


def find_file(name: str, lora_dir: str | Path | None) -> Path | None:
    """``name`` as an existing file: as given, with ``.safetensors`` added, or inside ``lora_dir``."""
    if not name:
        return None
    candidates = [Path(name), Path(name + SUFFIX)]
    if lora_dir is not None and not Path(name).is_absolute():
        candidates += [Path(lora_dir) / name, Path(lora_dir) / (name + SUFFIX)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _starts_with_file(item: str, lora_dir: str | Path | None) -> bool:
    item = item.strip()
    cuts = [i for i, char in enumerate(item) if char == ":"]
    return any(find_file(item[:cut], lora_dir) is not None for cut in [len(item), *cuts])


def _split_rest(rest: str | None, text: str) -> tuple[float | None, str | None]:
    if rest is None:
        return None, None
    strength_text, _, weights = rest.partition(":")
    strength = None
    if strength_text.strip():
        if not is_number_text(strength_text.strip()):
            raise WeightsError(f"strength {strength_text!r} is not a number (spec FILE[:strength[:weights]])",
                               where=text)
        strength = float(strength_text)
        if not math.isfinite(strength):
            raise WeightsError(f"strength {strength_text!r} is not finite", where=text)
    return strength, (weights if weights.strip() else None)


@dataclass(frozen=True)
class Defaults:
    """What a spec without its own strength or weights gets: te/unet multipliers, presets file, X, seed."""

    te: float = 1.0
    unet: float = 1.0
    weights: str | None = None
    presets_file: Path | None = None
    x: float = 1.0
    seed: int | None = None


@dataclass
class OpenSource:
    """An opened input: the spec, its lazy LoraFile and its resolved per-module factors."""

    spec: SourceSpec
    lora: LoraFile
    plan: FactorPlan
    weights_source: str


def open_source(spec: SourceSpec, defaults: Defaults) -> OpenSource:
    """Open the spec's file and resolve its weights (the spec's, else the default, else all 1).

    A spec strength sets both multipliers; without one the defaults' te/unet apply.

    Example:
        >>> source = open_source(parse_spec("a.safetensors:0.5:OUTALL"), Defaults())
        >>> source.plan.te, source.plan.unet
        (0.5, 0.5)
    """
    lora = LoraFile.open(spec.path)
    text = spec.weights if spec.weights is not None else defaults.weights
    if text is None:
        weights, origin = BlockWeights.filled(lora.layout, 1.0), "no weights (all 1)"
    else:
        loaded = load_weights(text, presets_file=defaults.presets_file, x=defaults.x, seed=defaults.seed)
        weights, origin = loaded.weights, loaded.source
    te, unet = (spec.strength, spec.strength) if spec.strength is not None else (defaults.te, defaults.unet)
    plan = resolve_for_file(weights, lora.modules, lora.architecture, te=te, unet=unet, where=str(spec.path))
    return OpenSource(spec, lora, plan, origin)
