"""Numbers and weight vectors: formatting, parsing, lookup, R/U/X resolution."""

from __future__ import annotations

import random

import pytest

from lbw.domain.layouts import FLUX61, SD17, SD26, XL12, XL20
from lbw.domain.numbers import format_number, parse_number
from lbw.domain.weights import BlockWeights, Special, parse_value, parse_weights
from lbw.errors import WeightsError


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.5, "0.5"),
        (0.25, "0.25"),
        (-0.5, "-0.5"),
        (0.1 + 0.2, "0.3"),
        (0.7 - 0.1, "0.6"),
        (1e-7, "0"),
        (1.0000004, "1"),
        (1.0000006, "1.000001"),
        (12.0, "12"),
        (1e20, "100000000000000000000"),
        (-3.25, "-3.25"),
    ],
)
def test_format_number_is_shortest_exact(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_format_number_refuses_non_finite(bad: float) -> None:
    with pytest.raises(WeightsError, match="not a finite number"):
        format_number(bad)


@pytest.mark.parametrize("text", ["nan", "inf", "1_0", "0x1", "", "1.2.3", "--1"])
def test_parse_number_refuses_non_decimal(text: str) -> None:
    with pytest.raises(WeightsError):
        parse_number(text)


def test_parse_value_tokens() -> None:
    assert parse_value("R") == Special("R")
    assert parse_value(" U ") == Special("U")
    assert parse_value("X") == Special("X", 0.0)
    assert parse_value("X+0.5") == Special("X", 0.5)
    assert parse_value("X-.25") == Special("X", -0.25)
    assert str(Special("X", -0.25)) == "X-0.25"
    assert parse_value(".5") == 0.5


@pytest.mark.parametrize(("layout", "n"), [(XL12, 12), (SD17, 17), (XL20, 20), (SD26, 26), (FLUX61, 61)])
def test_layout_follows_from_count(layout, n: int) -> None:
    weights = parse_weights("N:" + ",".join(["1"] * n))
    assert weights.layout == layout
    assert weights.name == "N"


def test_dummy26_lookup_and_mid_alias() -> None:
    weights = parse_weights("DUMMY26:1,0,1,2,3,4,5,6,7,8,9,10,11,1,0,1,2,3,4,5,6,7,8,9,10,11")
    assert weights["BASE"] == 1
    assert [weights[f"IN{i:02d}"] for i in range(12)] == list(range(12))
    assert weights["MID"] == weights["M00"] == 1
    assert [weights[f"OUT{i:02d}"] for i in range(12)] == list(range(12))
    with pytest.raises(WeightsError, match="block 'OUT12' is not in layout SD26"):
        weights["OUT12"]


def test_bare_vector_has_no_name_and_formats_without_spaces() -> None:
    weights = parse_weights(" 1 , 0.50 ,1.0,1,1,1,1,1,1,1,1,-0 ")
    assert weights.name is None
    assert weights.format() == "1,0.5,1,1,1,1,1,1,1,1,1,0"


def test_wrong_count_says_found_and_valid_counts() -> None:
    with pytest.raises(WeightsError) as info:
        parse_weights("A:1,2,3,4,5")
    assert str(info.value) == "found 5 values; a weight vector has 12, 17, 20, 26 or 61 values (at position 11)"


def test_bad_token_points_at_its_column() -> None:
    text = "Face:1,0,abc,1,1,1,1,1,1,1,1,1"
    with pytest.raises(WeightsError) as info:
        parse_weights(text)
    assert info.value.position == text.index("abc") + 1
    assert "value 3 'abc' is not a number, R, U, X, X+d or X-d" in str(info.value)


def test_empty_token_and_lower_case_token() -> None:
    with pytest.raises(WeightsError, match=r"value 12 is empty \(at position 23\)"):
        parse_weights("1,1,1,1,1,1,1,1,1,1,1,,1")
    with pytest.raises(WeightsError, match="upper case"):
        parse_weights("r,1,1,1,1,1,1,1,1,1,1,1")


@pytest.mark.parametrize("name", ["a#b", "a,b", "<x>", "  "])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(WeightsError):
        parse_weights(f"{name}:" + ",".join(["1"] * 12))


def test_resolve_uses_lbw_ranges_and_seed() -> None:
    weights = parse_weights("Rnd:" + ",".join(["R"] * 6 + ["U"] * 6))
    resolved = weights.resolve(seed=42)
    rng = random.Random(42)
    expected = [round(rng.random(), 3) for _ in range(6)] + [
        round(rng.uniform(-0.5, 1.5), 3) for _ in range(6)
    ]
    assert resolved.numbers() == tuple(expected)
    assert resolved == weights.resolve(seed=42)
    assert resolved != weights.resolve(seed=43)
    many = parse_weights(",".join(["R"] * 30 + ["U"] * 31))
    for seed in range(20):
        values = many.resolve(seed).numbers()
        assert all(0 <= v <= 1 for v in values[:30])  # [0, 1) rounded to 3 decimals
        assert all(-0.5 <= v <= 1.5 for v in values[30:])
        assert all(round(v, 3) == v for v in values)


def test_resolve_x_and_offsets() -> None:
    weights = parse_weights("X,X+0.5,X-1,1,1,1,1,1,1,1,1,1")
    assert weights.is_symbolic
    assert weights.resolve(seed=0).vector_text() == "1,1.5,0,1,1,1,1,1,1,1,1,1"
    assert weights.resolve(seed=0, x=0.3).vector_text() == "0.3,0.8,-0.7,1,1,1,1,1,1,1,1,1"
    with pytest.raises(WeightsError, match="BASE, IN04, IN05 still hold R/U/X"):
        weights.numbers()


def test_block_weights_is_immutable_and_checks_length() -> None:
    weights = BlockWeights.filled(XL12, 1, "A")
    with pytest.raises(AttributeError):
        weights.name = "B"  # type: ignore[misc]
    with pytest.raises(WeightsError, match="layout SD17 needs 17 values, got 2"):
        BlockWeights(SD17, (1.0, 1.0))
    assert weights.with_value("MID", 0.5)["M00"] == 0.5
    assert weights["M00"] == 1
