"""sd-scripts ``--network_args`` for block-wise learning rates and dims (``networks/lora.py``).

SD1/SD2: ``down_lr_weight`` = IN00..IN11 (12), ``mid_lr_weight`` = M00 (1), ``up_lr_weight`` = OUT00..OUT11
(12); ``block_dims``/``block_alphas`` (and the ``conv_`` forms) take the same 25 positions. SDXL: 9 / 3 / 9
(M00 repeated three times: sd-scripts has three middle blocks) and 23 dims: position 0 is the time/label
embedding and 22 is ``out``; neither carries a LoRA module, lbw writes 0 there. BASE (the text encoders) has no
training equivalent: it is dropped, and every result says so.

Example:
    >>> w = parse_weights("G:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5")
    >>> network_args(w).args[:2]
    ('down_lr_weight=0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0', 'mid_lr_weight=1')
    >>> network_args(w, parse_block_dims(dims="8", alphas="4", layout=SD26)).args[3][:22]
    'block_dims=8,8,8,8,8,8'
"""

from __future__ import annotations

from dataclasses import dataclass

from lbw.domain.convert import expand
from lbw.domain.layouts import FLUX61, FULL_OF_SHORT, SD26, XL20, Layout
from lbw.domain.numbers import format_number, is_number_text, parse_number
from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import LbwError, WeightsError

BASE_NOTE = (
    "BASE (the text encoders) has no training equivalent: sd-scripts block arguments cover the UNet only, "
    "so BASE={base} is not in them (the text encoder follows text_encoder_lr / network_dim)"
)
# sd-scripts' keys for the per-block ranks and alphas, in the order lbw writes them.
DIM_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")


@dataclass(frozen=True)
class TrainingArgs:
    """``key=value`` items for ``--network_args`` and notes on what they do not carry over."""

    args: tuple[str, ...]
    notes: tuple[str, ...]

    def text(self) -> str:
        """The items quoted and space-separated, ready to paste after ``--network_args``."""
        return " ".join(f'"{arg}"' for arg in self.args)


@dataclass(frozen=True)
class BlockDims:
    """A rank (``dims``) or alpha per block for ``block_*`` and ``conv_block_*``; each optional.

    Vectors use any SD or SDXL layout (17/12 are zero-filled to 26/20), all of one model family.
    """

    dims: BlockWeights | None = None
    alphas: BlockWeights | None = None
    conv_dims: BlockWeights | None = None
    conv_alphas: BlockWeights | None = None

    def items(self) -> list[tuple[str, BlockWeights]]:
        """(sd-scripts key, vector) for every vector given, in ``DIM_KEYS`` order."""
        vectors = (self.dims, self.alphas, self.conv_dims, self.conv_alphas)
        return [(key, w) for key, w in zip(DIM_KEYS, vectors, strict=True) if w is not None]


def parse_block_dims(
    dims: str | None = None,
    alphas: str | None = None,
    conv_dims: str | None = None,
    conv_alphas: str | None = None,
    *,
    layout: Layout | None = None,
) -> BlockDims:
    """Read each of ranks/alphas as a weight vector (``NAME:``/bare) or one number for every block.

    A single number covers every block of ``layout`` (default: the layout of a vector given here, else SD26).

    Example:
        >>> parse_block_dims(dims="16", layout=XL12).dims.layout.name
        'XL20'
    """
    texts = dict(zip(DIM_KEYS, (dims, alphas, conv_dims, conv_alphas), strict=True))
    vectors: dict[str, BlockWeights] = {}
    numbers: dict[str, float] = {}
    for key, text in texts.items():
        if text is None:
            continue
        try:
            if is_number_text(text.strip()):
                numbers[key] = parse_number(text, what="value")
            else:
                vectors[key] = parse_weights(text)
        except LbwError as error:
            raise WeightsError(f"{key}: {error.message}", position=error.position) from None
    target = layout or next((w.layout for w in vectors.values()), SD26)
    full = FULL_OF_SHORT.get(target.name, target)
    for key, value in numbers.items():
        vectors[key] = BlockWeights.filled(full, value)
    by_key = {key.removeprefix("block_").replace("_block_", "_"): w for key, w in vectors.items()}
    return BlockDims(**by_key)


def network_args(lr_weights: BlockWeights | None = None, dims: BlockDims | None = None) -> TrainingArgs:
    """All block arguments at once: ``down/mid/up_lr_weight`` from LBW weights, then ranks and alphas.

    Refuses what sd-scripts would silently ignore: alphas or conv dims without ``block_dims`` or lr weights,
    conv alphas without conv dims; and vectors of different model families.

    Example:
        >>> network_args(parse_weights("1,1,1,1,1,0.5,0,0,0,0,0,0")).args[1]
        'mid_lr_weight=0.5,0.5,0.5'
    """
    dims = dims or BlockDims()
    _check_combination(lr_weights, dims)
    given: list[tuple[str, BlockWeights]] = [] if lr_weights is None else [("lr weights", lr_weights)]
    given += dims.items()
    first_key, first = given[0]
    args: list[str] = []
    notes: list[str] = []
    family: Layout | None = None
    for key, weights in given:
        values, layout, fill_note = _full(weights, key)
        if family is None:
            family = layout
            notes.append(BASE_NOTE.format(base=format_number(values["BASE"])))
        elif layout != family:
            raise WeightsError(
                f"{key} is {weights.layout.name} but {first_key} is {first.layout.name}: SD and SDXL blocks differ",
                where=weights.name,
            )
        if fill_note:
            notes.append(fill_note)
        if key == "lr weights":
            lr_args, lr_notes = _lr_weight(values, layout == XL20)
            args += lr_args
            notes += lr_notes
        else:
            args.append(f"{key}={_join(_positions(values, layout == XL20))}")
            notes += _dims_notes(key, values, weights.name)
    if dims.items() and family == XL20:
        notes.append(
            "SDXL: the first and last of the 23 values (time/label embedding, out) carry no LoRA modules; "
            "written as 0; M00 is repeated for the three middle blocks"
        )
    return TrainingArgs(tuple(args), tuple(notes))


def lr_weight_args(weights: BlockWeights) -> TrainingArgs:
    """``down_lr_weight``/``mid_lr_weight``/``up_lr_weight`` from LBW weights (17/12 are zero-filled first).

    Example:
        >>> lr_weight_args(parse_weights("1,1,1,1,1,0.5,0,0,0,0,0,0")).args[1]
        'mid_lr_weight=0.5,0.5,0.5'
    """
    return network_args(weights)


def _check_combination(lr_weights: BlockWeights | None, dims: BlockDims) -> None:
    has_lr = lr_weights is not None
    if not has_lr and not dims.items():
        raise WeightsError("nothing to write: give lr weights, dims or alphas")
    if dims.alphas is not None and dims.dims is None and not has_lr:
        raise WeightsError("sd-scripts ignores block_alphas unless block_dims or lr weights are given")
    if dims.conv_dims is not None and dims.dims is None and not has_lr:
        raise WeightsError("sd-scripts ignores conv_block_dims unless block_dims or lr weights are given")
    if dims.conv_alphas is not None and dims.conv_dims is None:
        raise WeightsError("sd-scripts ignores conv_block_alphas without conv_block_dims")


_FILL_EFFECT = {
    "lr weights": "a 0 there removes those blocks' modules if conv layers are trained",
    "block_dims": "rank 0: no module there",
    "conv_block_dims": "rank 0: no conv module there",
    "block_alphas": "sd-scripts reads alpha 0 as alpha = rank",
    "conv_block_alphas": "sd-scripts reads alpha 0 as alpha = rank",
}


def _full(weights: BlockWeights, key: str) -> tuple[dict[str, float], Layout, str]:
    """Values by block ID on the full layout (26/20), and a note when 17/12 were zero-filled."""
    if weights.layout == FLUX61:
        raise WeightsError("sd-scripts block arguments exist for SD and SDXL UNets only, not Flux", where=weights.name)
    conversion = expand(weights, fill=0.0)
    full = conversion.weights
    note = ""
    if conversion.filled:
        ids = ",".join(bid for bid, _ in conversion.filled)
        prefix = "" if key == "lr weights" else f"{key}: "
        note = f"{prefix}expanded {weights.layout.name} to {full.layout.name} with 0 in {ids}: {_FILL_EFFECT[key]}"
    return dict(zip(full.layout.ids, full.numbers(), strict=True)), full.layout, note


def _lr_weight(values: dict[str, float], sdxl: bool) -> tuple[list[str], list[str]]:
    count = 9 if sdxl else 12
    down = [values[b] for b in _ids("IN", count)]
    mid = [values["M00"]] * (3 if sdxl else 1)
    up = [values[b] for b in _ids("OUT", count)]
    notes = []
    if sdxl:
        notes.append("SDXL: mid_lr_weight repeats M00 three times (sd-scripts has three middle blocks)")
    if any(v < 0 for v in [*down, *mid, *up]):
        notes.append("negative weights become 0 in sd-scripts (block_lr_zero_threshold)")
    zero_ids = [bid for bid in [*_ids("IN", count), "M00", *_ids("OUT", count)] if values[bid] <= 0]
    if zero_ids:
        notes.append(f"blocks at 0 get no LoRA module (not trained, not saved): {','.join(zero_ids)}")
    notes.append("learning-rate weights do not reproduce LBW inference weights: the trained LoRA will differ")
    args = [f"down_lr_weight={_join(down)}", f"mid_lr_weight={_join(mid)}", f"up_lr_weight={_join(up)}"]
    return args, notes


def _dims_notes(key: str, values: dict[str, float], where: str | None) -> list[str]:
    unet = {bid: v for bid, v in values.items() if bid != "BASE"}
    if key.endswith("alphas"):
        negative = {bid: v for bid, v in unet.items() if v < 0}
        if negative:
            raise WeightsError(f"{key} must be >= 0 (0 means alpha = rank); got {_listing(negative)}", where=where)
        return []
    bad = {bid: v for bid, v in unet.items() if v < 0 or v != int(v)}
    if bad:
        raise WeightsError(f"{key} must be non-negative integers (ranks); got {_listing(bad)}", where=where)
    zero_ids = [bid for bid, v in unet.items() if v == 0]
    return [f"{key}: rank 0 creates no module for {','.join(zero_ids)}"] if zero_ids else []


def _listing(values: dict[str, float], shown: int = 3) -> str:
    """``IN00=2.5, IN01=2.5, IN02=2.5 and 22 more``."""
    items = [f"{bid}={format_number(v)}" for bid, v in values.items()]
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


def _join(values: list[float]) -> str:
    return ",".join(format_number(v) for v in values)


def _positions(values: dict[str, float], sdxl: bool) -> list[float]:
    """The 25 (SD) or 23 (SDXL) sd-scripts positions; SDXL's module-less ends are 0."""
    if sdxl:
        return [
            0.0,
            *(values[b] for b in _ids("IN", 9)),
            *[values["M00"]] * 3,
            *(values[b] for b in _ids("OUT", 9)),
            0.0,
        ]
    return [*(values[b] for b in _ids("IN", 12)), values["M00"], *(values[b] for b in _ids("OUT", 12))]
