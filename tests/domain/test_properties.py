"""Property tests (hypothesis): round trips, one-block variants, and fuzzing for LbwError-only failures."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from lbw.domain.convert import convert, expand
from lbw.domain.inspire import parse_inspire_vector, parse_present_blocks
from lbw.domain.layouts import FULL_OF_SHORT, LAYOUTS, SD17, SD26, XL12, XL20
from lbw.domain.numbers import format_number
from lbw.domain.presets import read_presets
from lbw.domain.sdscripts import network_args, parse_block_dims
from lbw.domain.sheet import LIST_KINDS, Sheet, sheet_outputs, variants
from lbw.domain.sheet_file import sheet_from_toml, sheet_to_toml
from lbw.domain.weights import BlockWeights, Special, parse_weights
from lbw.errors import LbwError

FAST = settings(max_examples=150, deadline=None)

# Values with at most 6 decimals (what lbw prints), as floats.
exact_numbers = st.integers(min_value=-5_000_000, max_value=5_000_000).map(lambda n: n / 1_000_000)
specials = st.sampled_from([Special("R"), Special("U"), Special("X"), Special("X", 0.5), Special("X", -0.25)])
names = st.text(alphabet="abcXYZ019_-.", min_size=1, max_size=12)


@st.composite
def block_weights(draw, symbolic: bool = True):  # type: ignore[no-untyped-def]
    layout = draw(st.sampled_from(list(LAYOUTS.values())))
    value = st.one_of(exact_numbers, specials) if symbolic else exact_numbers
    values = draw(st.lists(value, min_size=len(layout), max_size=len(layout)))
    name = draw(st.one_of(st.none(), names))
    return BlockWeights(layout, tuple(values), name)


@FAST
@given(block_weights())
def test_format_parse_round_trip(weights: BlockWeights) -> None:
    text = weights.format()
    assert " " not in text
    assert parse_weights(text) == weights
    assert parse_weights(text).format() == text


@FAST
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=12, max_size=12))
def test_format_is_idempotent_for_any_float(values: list[float]) -> None:
    once = BlockWeights(XL12, tuple(values)).format()
    assert parse_weights(once).format() == once
    assert "e" not in once and ".0," not in once + ","


@FAST
@given(block_weights(symbolic=False), exact_numbers)
def test_expand_then_narrow_is_identity(weights: BlockWeights, fill: float) -> None:
    if weights.layout.name not in FULL_OF_SHORT:
        return
    full = expand(weights, fill=fill)
    assert len(full.filled) == len(full.weights) - len(weights)
    assert convert(full.weights, weights.layout, allow_drop=True).weights == weights


@st.composite
def sheets(draw):  # type: ignore[no-untyped-def]
    layout = draw(st.sampled_from([SD26, SD17, XL20, XL12]))
    step = draw(st.integers(min_value=1, max_value=1000).map(lambda n: n / 1000))
    lower = draw(st.one_of(st.none(), st.just(0.0), st.just(-1.0)))
    upper = draw(st.one_of(st.none(), st.just(1.0), st.just(2.0)))
    low, high = (-3.0 if lower is None else lower), (3.0 if upper is None else upper)
    grid = st.integers(min_value=int(low * 4), max_value=int(high * 4)).map(lambda n: n / 4)
    values = tuple(draw(st.lists(grid, min_size=len(layout), max_size=len(layout))))
    fixed = draw(st.frozensets(st.sampled_from(layout.ids)))
    return Sheet("P", layout, values, fixed, step, lower, upper)


@FAST
@given(sheets())
def test_every_variant_differs_from_its_base_in_exactly_one_block(sheet: Sheet) -> None:
    for kind in ("sub", "add"):
        listing = variants(sheet, kind)
        base = listing.entries[0].weights
        assert base.values == sheet.values
        assert len(listing.entries) - 1 + len(listing.skipped) == len(sheet.unfixed_ids)
        for variant in listing.entries[1:]:
            changed = [
                bid for (bid, a), (_, b) in zip(base.items(), variant.weights.items(), strict=True) if a != b
            ]
            assert changed == [variant.block_id]
            assert variant.block_id not in sheet.fixed
            new = variant.weights[variant.block_id]
            assert variant.name == f"{kind.capitalize()}{variant.block_id}_{format_number(new)}"
            assert (new < base[variant.block_id]) == (kind == "sub")
            assert sheet.lower is None or new >= sheet.lower
            assert sheet.upper is None or new <= sheet.upper
    outputs = sheet_outputs(sheet).as_dict()
    for kind in LIST_KINDS:
        assert len(outputs[f"{kind}_weights"].split("\n")) == len(outputs[f"{kind}_prompt_sr"].split(", "))
    assert sheet_from_toml(sheet_to_toml(sheet)) == sheet


TOKENS = st.sampled_from(
    [
        "1",
        "0",
        "0.5",
        "-1",
        "R",
        "U",
        "X",
        "X+1",
        "x",
        "#",
        ":",
        ",",
        " ",
        "",
        "1e309",
        "nan",
        "MID",
        "=",
        "\n",
    ]
)
fuzz_text = st.one_of(st.text(max_size=200), st.lists(TOKENS, max_size=80).map("".join))


def _only_lbw_errors(func, *args) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(LbwError):
        func(*args)


@settings(max_examples=400, deadline=None)
@given(fuzz_text)
def test_random_strings_raise_only_lbw_errors(text: str) -> None:
    _only_lbw_errors(parse_weights, text)
    _only_lbw_errors(parse_inspire_vector, text)
    _only_lbw_errors(parse_present_blocks, text)
    _only_lbw_errors(sheet_from_toml, text)
    _only_lbw_errors(lambda t: network_args(None, parse_block_dims(dims=t, conv_dims=t, conv_alphas=t)), text)
    doc = read_presets(text)  # never raises: problems are reported per line
    assert len(doc.lines) == len(text.removeprefix("\ufeff").splitlines())  # LBW's own line split
    assert doc.text() == text  # written back byte for byte


@settings(max_examples=150, deadline=None)
@given(st.lists(TOKENS, min_size=12, max_size=12).map(",".join))
def test_twelve_token_strings_parse_or_raise_lbw_error(text: str) -> None:
    _only_lbw_errors(lambda t: parse_weights(t).resolve(seed=1).numbers(), text)
    _only_lbw_errors(lambda t: network_args(parse_weights(t), parse_block_dims(dims=t, alphas=t)), text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_random_sheet_toml_bodies_raise_only_lbw_errors(body: str) -> None:
    _only_lbw_errors(sheet_from_toml, f'name = "A"\nlayout = "12"\n[blocks]\n{body}')
    _only_lbw_errors(sheet_from_toml, 'name = "A"\nlayout = "12"\n' + body)
