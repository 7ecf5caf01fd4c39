"""Layout conversions (17<->26, 12<->20) and LBW <-> ComfyUI Inspire vectors."""

from __future__ import annotations

import pytest

from lbw.domain.convert import convert, expand
from lbw.domain.inspire import (
    inspire_slots,
    inspire_to_lbw,
    lbw_to_inspire,
    parse_inspire_vector,
    parse_present_blocks,
)
from lbw.domain.layouts import FLUX61, SD17, SD26, XL12, XL20
from lbw.domain.weights import parse_weights
from lbw.errors import WeightsError

DUMMY17 = "DUMMY17:1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11"


def test_dummy17_parse_with_fill_0_matches_the_tutorial() -> None:
    result = convert(parse_weights(DUMMY17), SD26, fill=0)
    assert result.weights.format() == "DUMMY17:1,0,1,2,0,4,5,0,7,8,0,0,0,1,0,0,0,3,4,5,6,7,8,9,10,11"
    assert [bid for bid, _ in result.filled] == [
        "IN00",
        "IN03",
        "IN06",
        "IN09",
        "IN10",
        "IN11",
        "OUT00",
        "OUT01",
        "OUT02",
    ]
    assert result.notes() == (
        "filled 9 blocks absent from SD17 with 0: IN00,IN03,IN06,IN09,IN10,IN11,OUT00,OUT01,OUT02",
    )


def test_nin_example_expands_like_outall() -> None:
    weights = parse_weights("NIN:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")
    assert expand(weights).weights.vector_text() == "1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"


def test_fill_value_other_than_zero() -> None:
    weights = parse_weights("A:1,1,1,1,1,1,1,1,1,1,1,1")
    assert convert(weights, XL20, fill=0.5).weights.vector_text() == (
        "1,0.5,0.5,0.5,0.5,1,1,0.5,1,1,1,1,1,1,1,1,1,0.5,0.5,0.5"
    )


def test_narrowing_refuses_non_zero_drop_then_reports_it() -> None:
    weights = convert(parse_weights("A:" + ",".join(["1"] * 17)), SD26).weights.with_value("IN03", 0.5)
    with pytest.raises(WeightsError) as info:
        convert(weights, SD17)
    assert str(info.value) == (
        "A: converting to SD17 would drop non-zero blocks IN03=0.5; "
        "pass allow_drop (--allow-drop) to drop them"
    )
    result = convert(weights, SD17, allow_drop=True)
    assert result.weights.format() == "A:" + ",".join(["1"] * 17)
    assert result.dropped == (("IN03", 0.5),)
    assert result.notes() == ("dropped 1 non-zero blocks: IN03=0.5",)


def test_narrowing_zeros_is_silent_and_round_trips() -> None:
    weights = parse_weights(DUMMY17)
    assert convert(convert(weights, SD26).weights, SD17).weights == weights
    xl = parse_weights("B:1,0.5,0.25,1,0,1,1,1,1,0.5,0.5,0.5")
    assert convert(convert(xl, XL20).weights, XL12).weights == xl


def test_cross_family_refused() -> None:
    with pytest.raises(WeightsError, match="cannot convert SD26 to XL20"):
        convert(parse_weights(",".join(["1"] * 26)), XL20)
    with pytest.raises(WeightsError, match="cannot convert SD17 to FLUX61"):
        convert(parse_weights(DUMMY17), FLUX61)


# --- Inspire --------------------------------------------------------------------------------------------

SD_LORA_PRESENT = (
    [("input", n) for n in (1, 2, 4, 5, 7, 8)] + [("middle", 1)] + [("output", n) for n in range(3, 12)]
)
SD_LOCON_PRESENT = (
    [("input", n) for n in range(1, 12)]
    + [("middle", n) for n in range(3)]
    + [("output", n) for n in range(12)]
)


def test_sd_lora_inspire_vector_has_17_values_in_lbw_order() -> None:
    weights = parse_weights(DUMMY17)
    result = lbw_to_inspire(weights, SD_LORA_PRESENT)
    assert result.text() == "1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11"
    assert result.notes == ()


def test_sd_locon_inspire_vector_has_27_values_and_mid_three_times() -> None:
    weights = parse_weights("DUMMY26:1,0,1,2,3,4,5,6,7,8,9,10,11,0.5,0,1,2,3,4,5,6,7,8,9,10,11")
    result = lbw_to_inspire(weights, SD_LOCON_PRESENT)
    assert len(result.vector) == 27
    assert result.text() == "1,1,2,3,4,5,6,7,8,9,10,11,0.5,0.5,0.5,0,1,2,3,4,5,6,7,8,9,10,11"


def test_lbw_to_inspire_reports_base_and_shared_slot() -> None:
    weights = parse_weights("0.5,1,1,1,1,1,1,0.25,1,1,1,1,1,1,1,1,1")  # SD17, BASE 0.5, M00 0.25
    result = lbw_to_inspire(weights, [("input", 1), ("middle", 1)])
    assert result.vector == (0.5, 1.0)
    assert result.notes[0].startswith("BASE is 0.5: Inspire also applies it to modules outside the blocks")
    assert result.notes[1] == "IN01=1, M00=0.25 share one Inspire slot (same block number); used IN01"


def test_inspire_slots_order_and_sharing() -> None:
    slots = inspire_slots([("output", 3), ("middle", 1), ("input", 1), ("input", 2)], SD26)
    assert slots == [[("input", 1)], [("input", 2)], [("middle", 1)], [("output", 3)]]
    shared = inspire_slots([("input", 1), ("middle", 1), ("output", 1)], SD26)
    assert shared == [[("input", 1), ("middle", 1), ("output", 1)]]


def test_inspire_to_lbw_carry_over_and_middle_per_distinct_n() -> None:
    vector = [1, 0.2, 0.3, 0.4, 0.5, 0.6]
    present = [
        ("input", 4),
        ("input", 5),
        ("middle", 0),
        ("middle", 1),
        ("middle", 2),
        ("output", 0),
        ("output", 1),
    ]
    result = inspire_to_lbw(vector, present, XL20, name="X")
    w = result.weights
    assert (w["IN04"], w["IN05"], w["M00"], w["OUT00"], w["OUT01"]) == (0.2, 0.3, 0.5, 0.6, 0.6)
    assert w["IN00"] == 0 and w["BASE"] == 1
    assert result.notes == (
        "LBW has one M00; middle_block.0=0.4, middle_block.1=0.5, middle_block.2=0.6 differ; used 0.5",
        "the vector ran out at OUT00: its last value 0.6 is carried to OUT00, OUT01",
    )


def test_inspire_to_lbw_round_trip_for_lbw_expressible_vectors() -> None:
    weights = parse_weights("DUMMY26:1,0,1,2,3,4,5,6,7,8,9,10,11,0.5,0,1,2,3,4,5,6,7,8,9,10,11")
    vector = lbw_to_inspire(weights, SD_LOCON_PRESENT).vector
    back = inspire_to_lbw(vector, SD_LOCON_PRESENT, SD26, name="DUMMY26")
    assert back.weights.with_value("IN00", 0) == weights  # IN00 (conv_in) absent from the file -> 0
    assert back.notes == ()


def test_inspire_unused_values_and_sub_vectors_reported() -> None:
    result = inspire_to_lbw(parse_inspire_vector("1,0.5 1,0,0"), [("input", 1)], SD26)
    assert result.weights["IN01"] == 0.5
    assert result.notes == (
        "value 2 is a per-module sub-vector (0.5 1); LBW has one value, used the first",
        "values 3..4 are unused (the file has 1 block slots)",
    )


def test_flux_inspire() -> None:
    weights = parse_weights("F:" + ",".join(["1", "1", "1"] + ["0.5"] * 19 + ["0"] * 38 + ["1"]))
    present = [("double", n) for n in range(19)] + [("single", n) for n in range(38)]
    result = lbw_to_inspire(weights, present)
    assert len(result.vector) == 58
    assert result.vector[:2] == (1.0, 0.5) and result.vector[-1] == 0.0
    back = inspire_to_lbw(result.vector, present, FLUX61, name="F")
    assert back.weights == weights


def test_present_block_validation() -> None:
    assert parse_present_blocks("input_blocks.4,middle_block.1,output.0") == [
        ("input", 4),
        ("middle", 1),
        ("output", 0),
    ]
    with pytest.raises(WeightsError, match=r"present block 2 'mid\.1' is not BUCKET\.N"):
        parse_present_blocks("input.1,mid.1")
    with pytest.raises(WeightsError, match="input block 9 does not exist in XL20"):
        lbw_to_inspire(parse_weights(",".join(["1"] * 20)), [("input", 9)])
    with pytest.raises(WeightsError, match="'double' does not exist for SD26"):
        lbw_to_inspire(parse_weights(DUMMY17), [("double", 1)])
