"""LBW vectors <-> ComfyUI Inspire Pack vectors, for one LoRA's present blocks.

Inspire indexes by the blocks a file really has: vector[0] is BASE (and every module outside the blocks),
then one value per distinct block number present, walking input -> middle -> output -> double -> single, each
bucket by number; neighbours with the same number share a slot; when the vector runs out the last value is
carried.
LBW indexes by fixed block IDs (26/20/61). See lbw-semantics §3.2-3.3.

``present`` is a list of ``(bucket, number)`` pairs, for example
``[("input", 1), ("middle", 1), ("output", 3)]``.

Example:
    >>> w = parse_weights("1,1,1,1,1,1,1,0.5,0,0,0,0,0,0,0,0,0")
    >>> lbw_to_inspire(w, [("input", 1), ("middle", 1), ("output", 3)]).vector
    (1.0, 1.0, 0.5, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lbw.domain.convert import expand
from lbw.domain.layouts import FLUX61, SD26, XL20, Layout
from lbw.domain.numbers import format_number, parse_number
from lbw.domain.weights import BlockWeights
from lbw.errors import WeightsError

BUCKETS: tuple[str, ...] = ("input", "middle", "output", "double", "single")
_UNET_BUCKETS = frozenset({"input", "middle", "output"})
_FLUX_BUCKETS = frozenset({"double", "single"})
_FLUX_OTHERS = ("CLIP", "T5", "IN", "OUT")

Block = tuple[str, int]
InspireElement = float | tuple[float, ...]


@dataclass(frozen=True)
class InspireVector:
    """An Inspire vector (BASE first) and what LBW -> Inspire could not express exactly."""

    vector: tuple[float, ...]
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        """Comma-joined, shortest numbers (Inspire's block_vector field)."""
        return ",".join(format_number(v) for v in self.vector)


@dataclass(frozen=True)
class LbwFromInspire:
    """LBW weights read from an Inspire vector, with what could not be expressed or was carried over."""

    weights: BlockWeights
    notes: tuple[str, ...] = ()


def block_id_of(block: Block) -> str:
    """LBW block ID of an Inspire (bucket, number) pair.

    Example:
        >>> block_id_of(("middle", 2)), block_id_of(("output", 11)), block_id_of(("single", 5))
        ('M00', 'OUT11', 'S05')
    """
    bucket, number = block
    if bucket == "middle":
        return "M00"
    prefix = {"input": "IN", "output": "OUT", "double": "D", "single": "S"}[bucket]
    return f"{prefix}{number:02d}"


def inspire_slots(present: Sequence[Block], layout: Layout) -> list[list[Block]]:
    """Group the present blocks into Inspire slots (index 1, 2, ...), validating them against ``layout``.

    Example:
        >>> inspire_slots([("middle", 1), ("input", 1)], SD26)
        [[('input', 1), ('middle', 1)]]
    """
    allowed = _FLUX_BUCKETS if layout == FLUX61 else _UNET_BUCKETS
    for bucket, number in present:
        if bucket not in allowed:
            valid = ", ".join(b for b in BUCKETS if b in allowed)
            raise WeightsError(f"block bucket {bucket!r} does not exist for {layout.name}; expected {valid}")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise WeightsError(f"block number {number!r} in {bucket} is not a non-negative integer")
        if bucket != "middle" and block_id_of((bucket, number)) not in layout:
            raise WeightsError(f"{bucket} block {number} does not exist in {layout.name}")
        if bucket == "middle" and number > 2:
            raise WeightsError(f"middle block {number} does not exist (middle_block has 0, 1, 2)")
    ordered = sorted(set(present), key=lambda b: (BUCKETS.index(b[0]), b[1]))
    slots: list[list[Block]] = []
    for block in ordered:
        if slots and slots[-1][-1][1] == block[1]:
            slots[-1].append(block)  # same number as the previous block: Inspire does not advance
        else:
            slots.append([block])
    return slots


def lbw_to_inspire(weights: BlockWeights, present: Sequence[Block]) -> InspireVector:
    """The Inspire vector that gives each present block its LBW weight.

    17/12 vectors are zero-filled to 26/20 first, as LBW does.

    Example:
        >>> lbw_to_inspire(parse_weights("0.5" + ",1" * 11), [("input", 4)]).vector
        (0.5, 1.0)
    """
    full = expand(weights, fill=0.0).weights
    values = dict(zip(full.layout.ids, full.numbers(), strict=True))
    notes: list[str] = []
    if full.layout == FLUX61:
        others = {bid: values[bid] for bid in _FLUX_OTHERS}
        if len(set(others.values())) > 1:
            shown = ", ".join(f"{bid}={format_number(v)}" for bid, v in others.items())
            notes.append(f"Inspire has one value for CLIP, T5, IN and OUT ({shown}); used CLIP")
        base = values["CLIP"]
    else:
        base = values["BASE"]
        if base != 1:
            notes.append(_OUTSIDE_NOTE.format(base=format_number(base)))
    vector = [base]
    for slot in inspire_slots(present, full.layout):
        ids = [block_id_of(b) for b in slot]
        distinct = {values[bid] for bid in ids}
        if len(distinct) > 1:
            shown = ", ".join(f"{bid}={format_number(values[bid])}" for bid in ids)
            notes.append(f"{shown} share one Inspire slot (same block number); used {ids[0]}")
        vector.append(values[ids[0]])
    return InspireVector(tuple(vector), tuple(notes))


def inspire_to_lbw(
    vector: Sequence[InspireElement], present: Sequence[Block], layout: Layout = SD26, name: str | None = None
) -> LbwFromInspire:
    """LBW weights (26, 20 or 61) equal to what ``vector`` does on a file with the ``present`` blocks.

    Absent blocks get 0; carry-over, shared middle values and sub-vectors are reported in ``notes``.

    Example:
        >>> r = inspire_to_lbw([1, 0.5], [("input", 1), ("input", 2), ("middle", 1)])
        >>> r.weights["IN02"], r.weights["M00"], r.notes[0][:21]
        (0.5, 0.5, 'the vector ran out at')
    """
    if layout not in (SD26, XL20, FLUX61):
        raise WeightsError(f"Inspire vectors convert to SD26, XL20 or FLUX61, not {layout.name}")
    if not vector:
        raise WeightsError("the Inspire vector is empty")
    notes: list[str] = []
    elements = [_element_value(e, i, notes) for i, e in enumerate(vector)]
    values = dict.fromkeys(layout.ids, 0.0)
    for bid in _FLUX_OTHERS if layout == FLUX61 else ("BASE",):
        values[bid] = elements[0]
    if layout != FLUX61 and elements[0] != 1:
        notes.append(_OUTSIDE_NOTE.format(base=format_number(elements[0])))
    index = 0
    carried: list[str] = []
    middle: dict[int, float] = {}
    for slot in inspire_slots(present, layout):
        if index + 1 < len(elements):
            index += 1
        else:
            carried.extend(block_id_of(b) for b in slot)
        for bucket, number in slot:
            if bucket == "middle":
                middle[number] = elements[index]
            else:
                values[block_id_of((bucket, number))] = elements[index]
    if middle:
        values["M00"] = middle.get(1, middle[min(middle)])
        if len(set(middle.values())) > 1:
            shown = ", ".join(f"middle_block.{n}={format_number(v)}" for n, v in sorted(middle.items()))
            notes.append(f"LBW has one M00; {shown} differ; used {format_number(values['M00'])}")
    if carried:
        notes.append(
            f"the vector ran out at {carried[0]}: its last value {format_number(elements[-1])} "
            f"is carried to {', '.join(carried)}"
        )
    if index + 1 < len(elements):
        notes.append(f"values {index + 2}..{len(elements)} are unused (the file has {index} block slots)")
    weights = BlockWeights(layout, tuple(values[bid] for bid in layout.ids), name)
    return LbwFromInspire(weights, tuple(notes))


def parse_inspire_vector(text: str) -> list[InspireElement]:
    """Parse Inspire's block_vector text: ``[NAME:]v0,v1,...``, a slot may be a space-separated sub-vector.

    Letters (R, U, A, B) must be resolved first.

    Example:
        >>> parse_inspire_vector("1,0.5 1,0")
        [1.0, (0.5, 1.0), 0.0]
    """
    body = text.partition(":")[2] if ":" in text else text
    elements: list[InspireElement] = []
    for index, token in enumerate(body.split(","), start=1):
        parts = token.split()
        if not parts:
            raise WeightsError(f"Inspire value {index} is empty")
        numbers = tuple(parse_number(p, what=f"Inspire value {index}") for p in parts)
        elements.append(numbers[0] if len(numbers) == 1 else numbers)
    return elements


def parse_present_blocks(text: str) -> list[Block]:
    """Parse ``input.1,middle.1,output_blocks.3`` (or ``input_blocks.1``) into (bucket, number) pairs.

    Example:
        >>> parse_present_blocks("input_blocks.4, middle_block.1 ,single.0")
        [('input', 4), ('middle', 1), ('single', 0)]
    """
    blocks: list[Block] = []
    for index, token in enumerate(text.split(","), start=1):
        head, dot, number = token.strip().partition(".")
        bucket = head.removesuffix("_blocks").removesuffix("_block")
        if not dot or bucket not in BUCKETS or not number.isdigit():
            raise WeightsError(
                f"present block {index} {token.strip()!r} is not BUCKET.N "
                f"with BUCKET one of {', '.join(BUCKETS)}"
            )
        blocks.append((bucket, int(number)))
    return blocks


_OUTSIDE_NOTE = (
    "BASE is {base}: Inspire also applies it to modules outside the blocks "
    "(time_embed, conv_out, label_emb), "
    "which LBW keeps at 1"
)


def _element_value(element: InspireElement, index: int, notes: list[str]) -> float:
    if isinstance(element, tuple):
        if not element:
            raise WeightsError(f"Inspire value {index + 1} is an empty sub-vector")
        if len(set(element)) > 1:
            shown = " ".join(format_number(v) for v in element)
            notes.append(
                f"value {index + 1} is a per-module sub-vector ({shown}); LBW has one value, used the first"
            )
        return float(element[0])
    return float(element)
