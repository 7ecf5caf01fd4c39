"""Turn a user's weights argument into one factor per module of a LoRA file, the way LBW applies it.

A weights argument is a preset name (the built-in LBW presets, or a presets file given first), an inline
vector (``1,0,0.5,...`` or ``NAME:1,0,...``) of 12, 17, 20, 26 or 61 values, or a sheet file (``*.toml``).

Resolution (lbw-semantics §3.1, §5):
- the layout comes from the vector length; a block ID the vector does not have is 0 (LBW's zero fill);
- the ratio ρ of a module is its block's value; an unmapped module (conv_out, time_embed, ...) keeps ρ = 1;
- the module factor is ρ × the text-encoder multiplier (BASE, Flux CLIP/T5 and any text-encoder module) or
  ρ × the UNet multiplier (every other module, unmapped ones included). Both default to the strength;
- a module that no host of the architecture loads (``lbw.domain.hosts``: its name is in no key map, so no
  block weight ever reaches it) is kept untouched: factor 1, listed in the notes.

Example:
    >>> weights = load_weights("OUTALL")
    >>> plan = resolve_for_file(weights, lora.modules, lora.architecture, te=1, unet=0.8)
    >>> plan.factor(lora.modules[0])
    0.8
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lbw.domain.hosts import HOSTS, hosts_for
from lbw.domain.layouts import FLUX61, SD17, SD26, XL12, XL20, Layout
from lbw.domain.numbers import format_number
from lbw.domain.presets import default_presets, read_presets
from lbw.domain.sheet_file import sheet_from_toml
from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import PresetError, WeightsError
from lbw.files.families import normalise
from lbw.files.modules import Module

# Blocks scaled by the text-encoder multiplier.
TEXT_ENCODER_BLOCKS = frozenset({"BASE", "CLIP", "T5"})
# The factor-table row of modules no host loads.
NOT_LOADED = "loaded by no host"
_NAMES_SHOWN = 5
SHEET_SUFFIXES = (".toml",)


@dataclass(frozen=True)
class LoadedWeights:
    """A numeric weight vector and where it came from (for reports and metadata)."""

    weights: BlockWeights
    source: str


def load_weights(
    spec: str,
    *,
    presets_file: str | Path | None = None,
    x: float = 1.0,
    seed: int | None = None,
) -> LoadedWeights:
    """Read a weights argument: sheet file, inline vector or preset name; R/U/X resolved to numbers.

    A preset is looked up in ``presets_file`` first, then in LBW's built-in presets; an unknown name is a
    PresetError (LBW would silently run at full strength). ``X`` takes ``x``; the random ``R``/``U`` need a
    ``seed``, since a baked file must be reproducible.

    Example:
        >>> load_weights("Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1").weights.layout.name
        'SD17'
        >>> load_weights("OUTALL").source
        'preset OUTALL (built-in presets)'
    """
    text = spec.strip()
    if not text:
        raise WeightsError("the weights argument is empty; give a preset name, a vector or a sheet file")
    if text.lower().endswith(SHEET_SUFFIXES):
        weights, source = _sheet_weights(Path(text))
    elif "," in text:
        weights, source = parse_weights(text, where="weights"), "inline vector"
    else:
        weights, source = _preset(text, presets_file)
    return LoadedWeights(_numeric(weights, x=x, seed=seed), source)


def _sheet_weights(path: Path) -> tuple[BlockWeights, str]:
    if not path.is_file():
        raise WeightsError("sheet file not found", where=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read sheet file: {error}", where=str(path)) from None
    sheet = sheet_from_toml(text, where=str(path))
    return BlockWeights(sheet.layout, sheet.values, sheet.name), f"sheet {path}"


def _preset(name: str, presets_file: str | Path | None) -> tuple[BlockWeights, str]:
    if presets_file is not None:
        path = Path(presets_file)
        try:
            document = read_presets(path.read_text(encoding="utf-8-sig"), where=str(path))
        except (OSError, UnicodeDecodeError) as error:
            raise PresetError(f"cannot read presets file: {error}", where=str(path)) from None
        if name in document.presets():
            return document.get(name), f"preset {name} ({path})"
    builtin = default_presets()
    if name in builtin.presets():
        return builtin.get(name), f"preset {name} (built-in presets)"
    searched = f"{presets_file} and the built-in presets" if presets_file else "the built-in presets"
    known = [*builtin.names(), *(document.names() if presets_file is not None else ())]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "give a vector, a sheet file or --presets FILE"
    raise PresetError(f"unknown preset {name!r} (searched {searched}); {hint}")


def _numeric(weights: BlockWeights, *, x: float, seed: int | None) -> BlockWeights:
    if not weights.is_symbolic:
        return weights
    random = [bid for bid, value in weights.items() if str(value) in ("R", "U")]
    if random and seed is None:
        raise WeightsError(
            f"{', '.join(random)} hold random R/U values; a baked file must be reproducible: pass --seed N",
            where=weights.name,
        )
    return weights.resolve(seed if seed is not None else 0, x)


@dataclass(frozen=True)
class BlockRow:
    """One row of the resolved-factor table: block, ratio, multiplier, factor, module count, note."""

    block: str
    ratio: float
    multiplier: float
    modules: int
    note: str = ""

    @property
    def factor(self) -> float:
        """ratio × multiplier: what ΔW of the block's modules is multiplied by."""
        return self.ratio * self.multiplier


@dataclass(frozen=True)
class FactorPlan:
    """Per-module factors for one file: the LBW resolution of ``weights`` with multipliers te/unet."""

    weights: BlockWeights
    architecture: str
    te: float
    unet: float
    ratios: dict[str, float]
    rows: tuple[BlockRow, ...]
    notes: tuple[str, ...] = field(default=())

    def ratio(self, module: Module) -> float:
        """The block ratio ρ of a module (1 for unmapped modules and modules no host loads, 0 for blocks the
        vector lacks)."""
        if module.block is None or self.untouched(module):
            return 1.0
        return self.ratios.get(module.block, 0.0)

    def multiplier(self, module: Module) -> float:
        """The text-encoder or UNet multiplier that applies to a module (1 for modules no host loads)."""
        if self.untouched(module):
            return 1.0
        return self.te if is_text_encoder(module, self.architecture) else self.unet

    @staticmethod
    def untouched(module: Module) -> bool:
        """True for a module no host of the file's architecture loads: bake and merge keep it as it is."""
        return module.naming is not None and module.naming.loaded_nowhere

    def factor(self, module: Module) -> float:
        """ρ × multiplier: ΔW_out = factor · ΔW_in for every linear adapter kind."""
        return self.ratio(module) * self.multiplier(module)

    def applied_text(self) -> str:
        """The vector as applied, ``NAME:values`` (layout of the argument), for metadata and reports."""
        return self.weights.format()


def is_text_encoder(module: Module, architecture: str) -> bool:
    """True for text-encoder modules (they take the te multiplier, like LBW's BASE).

    Example:
        >>> is_text_encoder(lora.module("lora_te_text_model_encoder_layers_0_mlp_fc1"), "sd1")
        True
    """
    if module.block is not None:
        return module.block in TEXT_ENCODER_BLOCKS
    name = module.naming.name if module.naming is not None else normalise(module.name)
    return name.component not in ("", "unet")


def check_finite(value: float, what: str) -> float:
    """Refuse inf/nan multipliers with a WeightsError.

    Example:
        >>> check_finite(0.5, "--te")
        0.5
    """
    if not math.isfinite(value):
        raise WeightsError(f"{what} must be a finite number, found {value}")
    return float(value)


def resolve_for_file(
    weights: BlockWeights,
    modules: Sequence[Module],
    architecture: str,
    *,
    te: float = 1.0,
    unet: float = 1.0,
    where: str | None = None,
) -> FactorPlan:
    """Resolve numeric ``weights`` against a file's modules (LBW zero fill, unmapped = 1).

    A 61-value (Flux) vector on a non-Flux file, or a non-61 vector on a Flux file, is refused: the block IDs
    would mean nothing there. An SD vector on an SDXL file (or the reverse) is applied by block ID, as LBW
    does, with a note.

    Example:
        >>> plan = resolve_for_file(parse_weights("1," * 16 + "0.5"), lora.modules, "sd1")
        >>> plan.ratios["OUT11"], plan.ratios["IN00"]
        (0.5, 0.0)
    """
    te, unet = check_finite(te, "--te"), check_finite(unet, "--unet")
    layout = weights.layout
    is_flux_vector = layout is FLUX61
    if is_flux_vector != (architecture == "flux"):
        file_kind = "a Flux file" if architecture == "flux" else f"an {architecture} file"
        raise WeightsError(
            f"a {len(layout)}-value ({layout.name}) vector cannot weight {file_kind}; "
            + ("Flux needs 61 values" if architecture == "flux" else "61 values are for Flux only"),
            where=where,
        )
    values = dict(zip(layout.ids, weights.numbers(), strict=True))
    full = FLUX61 if is_flux_vector else SD26
    ratios = {block: values.get(block, 0.0) for block in full.ids}
    untouched = [m for m in modules if FactorPlan.untouched(m)]
    modules = [m for m in modules if not FactorPlan.untouched(m)]
    counts = Counter(module.block for module in modules)
    notes = list(_layout_notes(layout, architecture))
    zeroed = [b for b in full.ids if counts.get(b) and b not in values]
    if zeroed:
        notes.append(f"{len(zeroed)} blocks with modules are not in {layout.name} and get 0 (LBW's fill): "
                     + ", ".join(zeroed))
    rows = []
    for block in full.ids:
        if block in values or counts.get(block):
            multiplier = te if block in TEXT_ENCODER_BLOCKS else unet
            note = "" if block in values else "not in vector: 0"
            rows.append(BlockRow(block, ratios[block], multiplier, counts.get(block, 0), note))
    unmapped = [m for m in modules if m.block is None]
    if unmapped:
        te_count = sum(is_text_encoder(m, architecture) for m in unmapped)
        if te_count:
            rows.append(BlockRow("unmapped (text encoder)", 1.0, te, te_count, "LBW keeps ratio 1"))
        if len(unmapped) - te_count:
            rows.append(BlockRow("unmapped", 1.0, unet, len(unmapped) - te_count, "LBW keeps ratio 1"))
    if untouched:
        rows.append(BlockRow(NOT_LOADED, 1.0, 1.0, len(untouched), "kept untouched"))
        notes.append(not_loaded_note(untouched, architecture))
    return FactorPlan(weights, architecture, te, unet, ratios, tuple(rows), tuple(notes))


def not_loaded_note(modules: Sequence[Module], architecture: str) -> str:
    """The note for modules no host loads: how many, which hosts were checked, the first names.

    Example:
        >>> not_loaded_note(lora.modules[:2], "flux")
        '2 modules are loaded by no host (web UI Forge, ComfyUI), so no weight reaches them anywhere: kept ...'
    """
    hosts = ", ".join(HOSTS[h] for h in hosts_for(architecture))
    shown = ", ".join(m.name for m in modules[:_NAMES_SHOWN]) + (" ..." if len(modules) > _NAMES_SHOWN else "")
    return (f"{len(modules)} modules are loaded by no host ({hosts}), so no weight reaches them anywhere: kept "
            f"untouched (factor 1) (lbw inspect lists them per host): {shown}")


def _layout_notes(layout: Layout, architecture: str) -> tuple[str, ...]:
    if architecture == "sdxl" and layout in (SD17, SD26):
        return (f"{layout.name} is an SD1/SD2 layout; applied to this SDXL file by block ID, as LBW does",)
    if architecture in ("sd1", "sd2") and layout in (XL12, XL20):
        return (f"{layout.name} is an SDXL layout; applied to this {architecture} file by block ID, "
                "as LBW does",)
    return ()


def format_factor_table(plan: FactorPlan) -> list[tuple[str, str, str, str, str, str]]:
    """The table rows as text: block, ratio, multiplier, factor, modules, note (for rich or plain output).

    Example:
        >>> format_factor_table(plan)[0]
        ('BASE', '1', '1', '1', '72', '')
    """
    return [
        (row.block, format_number(row.ratio), format_number(row.multiplier), format_number(row.factor),
         str(row.modules), row.note)
        for row in plan.rows
    ]

