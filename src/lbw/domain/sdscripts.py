"""sd-scripts ``--network_args`` for block-wise learning rates and dims (``networks/lora.py``).

SD1/SD2: ``down_lr_weight`` = IN00..IN11 (12), ``mid_lr_weight`` = M00 (1), ``up_lr_weight`` = OUT00..OUT11
(12); ``block_dims``/``block_alphas`` take the same 25 positions. SDXL: 9 / 3 / 9 (M00 repeated three times:
sd-scripts has three middle blocks) and 23 dims (the two ends are the time/label embedding and out, which
carry no LoRA modules). BASE (the text encoders) has no training equivalent: it is dropped, and every
result says so.

Example:
    >>> w = parse_weights("G:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5")
    >>> lr_weight_args(w).args[:2]
    ('down_lr_weight=0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0', 'mid_lr_weight=1')
"""

from __future__ import annotations

from dataclasses import dataclass

from lbw.domain.convert import expand
from lbw.domain.layouts import FLUX61, XL20
from lbw.domain.numbers import format_number
from lbw.domain.weights import BlockWeights
from lbw.errors import WeightsError

BASE_NOTE = (
    "BASE (the text encoders) has no training equivalent: sd-scripts block arguments cover the UNet only, "
    "so BASE={base} is not in them (the text encoder follows text_encoder_lr / network_dim)"
)


@dataclass(frozen=True)
class TrainingArgs:
    """``key=value`` items for ``--network_args`` and notes on what they do not carry over."""

    args: tuple[str, ...]
    notes: tuple[str, ...]

    def text(self) -> str:
        """The items quoted and space-separated, ready to paste after ``--network_args``."""
        return " ".join(f'"{arg}"' for arg in self.args)


def _prepare(weights: BlockWeights, what: str) -> tuple[dict[str, float], list[str], bool]:
    if weights.layout == FLUX61:
        raise WeightsError(
            f"sd-scripts block {what} exist for SD and SDXL UNets only, not Flux", where=weights.name
        )
    conversion = expand(weights, fill=0.0)
    full = conversion.weights
    notes = [BASE_NOTE.format(base=format_number(full.numbers()[0]))]
    if conversion.filled:
        ids = ",".join(bid for bid, _ in conversion.filled)
        notes.append(
            f"expanded {weights.layout.name} to {full.layout.name} with 0 in {ids}: a 0 there removes "
            "those blocks' modules if conv layers are trained"
        )
    return dict(zip(full.layout.ids, full.numbers(), strict=True)), notes, full.layout == XL20


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


def _join(values: list[float]) -> str:
    return ",".join(format_number(v) for v in values)


def lr_weight_args(weights: BlockWeights) -> TrainingArgs:
    """``down_lr_weight``/``mid_lr_weight``/``up_lr_weight`` from LBW weights (17/12 are zero-filled first).

    Example:
        >>> lr_weight_args(parse_weights("1,1,1,1,1,0.5,0,0,0,0,0,0")).args[1]
        'mid_lr_weight=0.5,0.5,0.5'
    """
    values, notes, sdxl = _prepare(weights, "learning rates")
    count = 9 if sdxl else 12
    down = [values[b] for b in _ids("IN", count)]
    mid = [values["M00"]] * (3 if sdxl else 1)
    up = [values[b] for b in _ids("OUT", count)]
    if sdxl:
        notes.append("SDXL: mid_lr_weight repeats M00 three times (sd-scripts has three middle blocks)")
    everything = [*down, *mid, *up]
    if any(v < 0 for v in everything):
        notes.append("negative weights become 0 in sd-scripts (block_lr_zero_threshold)")
    zero_ids = [bid for bid in [*_ids("IN", count), "M00", *_ids("OUT", count)] if values[bid] <= 0]
    if zero_ids:
        notes.append(f"blocks at 0 get no LoRA module (not trained, not saved): {','.join(zero_ids)}")
    notes.append("learning-rate weights do not reproduce LBW inference weights: the trained LoRA will differ")
    args = (f"down_lr_weight={_join(down)}", f"mid_lr_weight={_join(mid)}", f"up_lr_weight={_join(up)}")
    return TrainingArgs(args, tuple(notes))


def block_dims_args(
    dims: BlockWeights, alphas: BlockWeights | None = None, *, conv: bool = False, ends: float = 0
) -> TrainingArgs:
    """``block_dims`` (+ ``block_alphas``) with 25 (SD) or 23 (SDXL) values from a rank (and alpha) per block.

    ``conv=True`` writes ``conv_block_dims``/``conv_block_alphas``. ``ends`` fills the SDXL end positions.

    Example:
        >>> dims = parse_weights("0,2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2")
        >>> block_dims_args(dims).args[0]
        'block_dims=2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2'
    """
    prefix = "conv_block" if conv else "block"
    dim_values, notes, sdxl = _prepare(dims, "dims")
    notes[0] = notes[0].replace("BASE=", "BASE rank ")
    bad = [bid for bid, v in dim_values.items() if bid != "BASE" and (v < 0 or v != int(v))]
    if bad:
        raise WeightsError(
            f"block dims must be non-negative integers; not at {','.join(bad)}", where=dims.name
        )
    args = [f"{prefix}_dims={_join(_positions(dim_values, sdxl, ends))}"]
    if alphas is not None:
        if expand(alphas).weights.layout != expand(dims).weights.layout:
            raise WeightsError(
                f"alphas use {alphas.layout.name} but dims use {dims.layout.name}", where=alphas.name
            )
        alpha_values, _, _ = _prepare(alphas, "alphas")
        args.append(f"{prefix}_alphas={_join(_positions(alpha_values, sdxl, ends))}")
    if sdxl:
        notes.append(
            f"SDXL: the first and last of the 23 values (time/label embedding, out) carry no LoRA modules; "
            f"written as {format_number(ends)}; M00 is repeated for the three middle blocks"
        )
    zero_ids = [bid for bid, v in dim_values.items() if bid != "BASE" and v == 0]
    if zero_ids:
        notes.append(f"rank 0 creates no module for {','.join(zero_ids)}")
    return TrainingArgs(tuple(args), tuple(notes))


def _positions(values: dict[str, float], sdxl: bool, ends: float) -> list[float]:
    if sdxl:
        return [
            ends,
            *(values[b] for b in _ids("IN", 9)),
            *[values["M00"]] * 3,
            *(values[b] for b in _ids("OUT", 9)),
            ends,
        ]
    return [*(values[b] for b in _ids("IN", 12)), values["M00"], *(values[b] for b in _ids("OUT", 12))]
