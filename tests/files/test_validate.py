"""lbw.files.validate agrees with the adapter math: every module it accepts computes, every module the math
refuses it refuses first (with the same shapes as real tensors); and lbw.files.json_text on hostile JSON."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lbw.adapters.dora import delta as dora_delta
from lbw.adapters.kinds import AdapterKind, kind_of_roles
from lbw.adapters.registry import delta
from lbw.errors import AdapterError, LbwError, LoraFileError
from lbw.files.json_text import load_json, preview, quoted
from lbw.files.validate import shape_problem

dim = st.integers(1, 3)
# Refusals the validation makes on purpose although the math could go on: SD layers are linear or conv2d.
STRICTER = ("lora_down must be [r, in] or [r, in, kh, kw]",)


def shape(lengths: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[int, ...]]:
    return lengths.flatmap(lambda n: st.tuples(*[dim] * n))


def perturbed(draw: st.DrawFn, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Consistent shapes, or (half the time) one role with a dimension changed, added or dropped."""
    if draw(st.booleans()):
        return shapes
    role = draw(st.sampled_from(sorted(shapes)))
    old = list(shapes[role])
    how = draw(st.sampled_from(["change", "add", "drop"]))
    if how == "change":
        old[draw(st.integers(0, len(old) - 1))] = draw(st.integers(1, 4))
    elif how == "add":
        old.insert(draw(st.integers(0, len(old))), draw(st.integers(1, 3)))
    elif len(old) > 1:
        del old[draw(st.integers(0, len(old) - 1))]
    return {**shapes, role: tuple(old)}


@st.composite
def lora_roles(draw: st.DrawFn) -> dict[str, tuple[int, ...]]:
    out, r, inp, k = draw(dim), draw(dim), draw(dim), draw(st.sampled_from([1, 3]))
    form = draw(st.sampled_from(["linear", "conv", "tucker"]))
    if form == "linear":
        shapes = {"lora_up": (out, r), "lora_down": (r, inp)}
    elif form == "conv":
        shapes = {"lora_up": (out, r, 1, 1), "lora_down": (r, inp, k, k)}
    else:
        r2 = draw(dim)
        shapes = {"lora_up": (out, r, 1, 1), "lora_mid": (r, r2, k, k), "lora_down": (r2, inp, 1, 1)}
    return perturbed(draw, shapes)


@st.composite
def loha_roles(draw: st.DrawFn) -> dict[str, tuple[int, ...]]:
    out, inp, k = draw(dim), draw(dim), draw(st.sampled_from([1, 3]))
    shapes: dict[str, tuple[int, ...]] = {}
    tucker = draw(st.booleans())
    for n in (1, 2):
        r = draw(dim)
        if tucker:
            shapes |= {f"hada_w{n}_a": (r, out), f"hada_w{n}_b": (r, inp), f"hada_t{n}": (r, r, k, k)}
        else:
            shapes |= {f"hada_w{n}_a": (out, r), f"hada_w{n}_b": (r, inp * k * k)}
    return perturbed(draw, shapes)


@st.composite
def lokr_roles(draw: st.DrawFn) -> dict[str, tuple[int, ...]]:
    r = draw(dim)
    shapes = ({"lokr_w1": (draw(dim), draw(dim))} if draw(st.booleans()) else
              {"lokr_w1_a": (draw(dim), r), "lokr_w1_b": (r, draw(dim))})
    out, inp, k = draw(dim), draw(dim), draw(st.sampled_from([1, 3]))
    form = draw(st.sampled_from(["full", "conv", "pair", "tucker"]))
    if form == "full":
        shapes["lokr_w2"] = (out, inp)
    elif form == "conv":
        shapes["lokr_w2"] = (out, inp, k, k)
    elif form == "pair":
        shapes |= {"lokr_w2_a": (out, r), "lokr_w2_b": (r, inp * k * k)}
    else:
        shapes |= {"lokr_w2_a": (r, out), "lokr_w2_b": (r, inp), "lokr_t2": (r, r, k, k)}
    return perturbed(draw, shapes)


def computes(kind: AdapterKind, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether the adapter math computes ΔW for tensors of these shapes (any error counts as refusal)."""
    roles = {role: torch.full(size, 0.5) for role, size in shapes.items()}
    try:
        result = delta(kind, roles)
    except (AdapterError, RuntimeError, ValueError, IndexError):
        return False
    assert math.isfinite(float(result.sum()))
    return True


def agree(kind: AdapterKind, shapes: dict[str, tuple[int, ...]]) -> None:
    problem = shape_problem(kind, shapes)
    if problem is None:
        assert computes(kind, shapes), shapes  # nothing validated can fail in the math
    elif computes(kind, shapes):
        assert problem[1].startswith(STRICTER), (shapes, problem)  # refused only where deliberately stricter


@settings(max_examples=300, deadline=None)
@given(lora_roles())
def test_lora_and_locon_shapes(shapes: dict[str, tuple[int, ...]]) -> None:
    agree(AdapterKind.LORA, shapes)


@settings(max_examples=300, deadline=None)
@given(loha_roles())
def test_loha_shapes(shapes: dict[str, tuple[int, ...]]) -> None:
    agree(AdapterKind.LOHA, shapes)


@settings(max_examples=300, deadline=None)
@given(lokr_roles())
def test_lokr_shapes(shapes: dict[str, tuple[int, ...]]) -> None:
    assert kind_of_roles(shapes) is AdapterKind.LOKR
    agree(AdapterKind.LOKR, shapes)


def test_lokr_tucker_with_a_1x1_kernel_computes() -> None:
    """Found by test_lokr_shapes: einsum leaves odd strides on size-1 dims and torch.kron failed on them."""
    shapes = {"lokr_w1_a": (1, 1), "lokr_w1_b": (1, 2), "lokr_w2_a": (1, 2), "lokr_w2_b": (1, 2),
              "lokr_t2": (1, 1, 1, 1)}
    assert shape_problem(AdapterKind.LOKR, shapes) is None
    roles = {role: torch.full(size, 0.5) for role, size in shapes.items()}
    result = delta(AdapterKind.LOKR, roles)  # W1 = [[0.25, 0.25]], W2 = 0.125 everywhere, [2, 2, 1, 1]
    assert result.shape == (2, 4, 1, 1) and torch.equal(result, torch.full((2, 4, 1, 1), 0.03125))


@settings(max_examples=200, deadline=None)
@given(st.tuples(dim, dim), st.tuples(dim, dim), shape(st.integers(1, 3)))
def test_dora_scale_shapes_match_the_norm_axis_rule(up: tuple[int, int], down: tuple[int, int],
                                                    scale: tuple[int, ...]) -> None:
    shapes = {"lora_up": up, "lora_down": (up[1], down[1]), "dora_scale": scale}
    roles = {role: torch.full(size, 0.5) for role, size in shapes.items()}
    try:
        dora_delta(roles, torch.ones(up[0], down[1]))
        computed = True
    except AdapterError:
        computed = False
    assert (shape_problem(AdapterKind.DORA, shapes) is None) == computed, shapes


def test_problems_name_the_role_and_both_shapes() -> None:
    assert shape_problem(AdapterKind.LORA, {"lora_up": (320, 4), "lora_down": (8, 320)}) == (
        "lora_down", "rank mismatch: lora_up [320, 4] has 4 columns but lora_down [8, 320] has 8 rows")
    assert shape_problem(AdapterKind.LOHA, {"hada_w1_a": (8, 2), "hada_w1_b": (2, 8), "hada_w2_a": (4, 2),
                                            "hada_w2_b": (2, 8)}) == (
        "hada_w2_a", "the two LoHa terms differ: hada_w1 gives [out, in] = [8, 8], hada_w2 gives [4, 8] "
                     "(kernel taps 1 vs 1)")
    assert shape_problem(AdapterKind.LOKR, {"lokr_w1": (2, 2), "lokr_w2_a": (3, 2), "lokr_w2_b": (2, 3),
                                            "lokr_t2": (2, 2, 3, 3)}) == (
        "lokr_t2", "lokr_t2 must be [3, 2, kh, kw], found [2, 2, 3, 3]")
    assert shape_problem(AdapterKind.FULL, {"diff": (3, 3)}) is None


# --- hostile JSON ---------------------------------------------------------------------------------------------

def refusal(text: str) -> str:
    with pytest.raises(LoraFileError) as caught:
        load_json(text, where="h.safetensors", what="header")
    message = str(caught.value)
    message.encode("utf-8")
    assert "\n" not in message and len(message) < 300
    return message


def test_deep_nesting_and_long_numbers_are_one_line() -> None:
    assert refusal("[" * 100_000 + "]" * 100_000) == ("h.safetensors: header nests lists or objects too deeply to "
                                                      "read (hundreds of levels)")
    assert refusal('{"a":' * 50_000 + "1" + "}" * 50_000).endswith("too deeply to read (hundreds of levels)")
    assert refusal('{"a": [' + "7" * 5000 + "]}") == ("h.safetensors: header holds a number too long to read "
                                                      "(more than 4300 digits)")
    assert load_json('{"a": ' + "7" * 4000 + "}", where="h", what="header")["a"] % 10 == 7


def test_repeated_keys_conflicting_are_refused_identical_kept() -> None:
    assert load_json('{"a": [1, 2], "a": [1, 2]}', where="h", what="header") == {"a": [1, 2]}
    assert refusal('{"t": {"dtype": "F16", "dtype": "F32"}}') == (
        "h.safetensors: header has the key 'dtype' twice with different values (duplicate key)")


def test_unpaired_surrogates_are_refused_anywhere_pairs_are_kept() -> None:
    assert load_json('{"emoji": "\\ud83d\\ude00"}', where="h", what="header") == {"emoji": "\U0001f600"}
    assert load_json('{"text": "\\\\ud800"}', where="h", what="header") == {"text": "\\ud800"}  # an escaped backslash
    assert "string 'a\\ud800' (under key 'k') holds an unpaired UTF-16 surrogate" in refusal('{"k": "a\\ud800"}')
    assert "key 'k\\udfff' holds an unpaired" in refusal('{"k\\udfff": 1}')
    assert "string '\\udc00' (under key 'shape')" in refusal('{"t": {"shape": [1, ["\\udc00"]]}}')
    assert "string '\\ud800'" in refusal('["\\ud800"]')


def test_errors_of_other_files_use_the_callers_class_and_lines() -> None:
    with pytest.raises(LbwError, match=r"^x.json: sidecar is not valid JSON: Expecting ',' delimiter at line 2 "
                                     r"column 5$"):
        load_json('{"a":\n "b": }', where="x.json", what="sidecar", error=LbwError)


def test_previews_are_short_and_printable() -> None:
    assert preview([[[[1]]], "x" * 100, 10**200]) == (
        "[[[…]], 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'…, <integer of 201 digits>]")
    assert preview(list(range(100))) == "[0, 1, 2, 3, …]"
    assert preview({"\x1b[31m": float("nan")}) == "{'\\x1b[31m': nan}"
    assert len(preview(["y" * 1000] * 4, limit=50)) == 50
    assert quoted("a\ud800b") == "'a\\ud800b'"
    assert quoted("z" * 500, limit=3) == "'zzz'…"
