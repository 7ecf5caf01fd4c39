"""sd-scripts block arguments and the LoRA prompt tag."""

from __future__ import annotations

import pytest

from lbw.domain.prompt import LEGACY_WARNING, lora_tag
from lbw.domain.sdscripts import block_dims_args, lr_weight_args
from lbw.domain.weights import parse_weights
from lbw.errors import WeightsError

# plot-helper.md §6.5: the tutorial's C721 weights as an LBW-26 vector give its published lr_weight string.
C721 = (
    "C721:0.7,0.1,0.2,0.7,0.2,0.2,0.1,0.1,0.1,0.7,0.1,0.1,0.1,"
    + "0.7,0.2,0.1,0.7,0.7,0.7,0.7,0.2,0.2,0.2,0.1,0.1,0.2"
)


def test_c721_lr_weight_string() -> None:
    args = lr_weight_args(parse_weights(C721))
    assert args.text() == (
        '"down_lr_weight=0.1,0.2,0.7,0.2,0.2,0.1,0.1,0.1,0.7,0.1,0.1,0.1" "mid_lr_weight=0.7" '
        '"up_lr_weight=0.2,0.1,0.7,0.7,0.7,0.7,0.2,0.2,0.2,0.1,0.1,0.2"'
    )
    assert args.notes[0].startswith("BASE (the text encoders) has no training equivalent")
    assert "BASE=0.7 is not in them" in args.notes[0]


def test_sdxl_lr_weight_9_3_9() -> None:
    weights = parse_weights("X:1," + ",".join(str(i / 10) for i in range(9)) + ",0.5," + ",".join(["1"] * 9))
    args = lr_weight_args(weights)
    assert args.args == (
        "down_lr_weight=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8",
        "mid_lr_weight=0.5,0.5,0.5",
        "up_lr_weight=1,1,1,1,1,1,1,1,1",
    )
    assert any("repeats M00 three times" in n for n in args.notes)


def test_sd17_is_zero_filled_first_and_says_so() -> None:
    args = lr_weight_args(parse_weights("1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"))
    assert args.args[0] == "down_lr_weight=0,1,1,0,1,1,0,1,1,0,0,0"
    assert any(n.startswith("expanded SD17 to SD26 with 0 in IN00,IN03") for n in args.notes)
    assert not any(
        "negative" in n for n in lr_weight_args(parse_weights("-1" + ",1" * 25)).notes
    )  # BASE dropped
    assert any("negative" in n for n in lr_weight_args(parse_weights("1,-1" + ",1" * 24)).notes)


def test_flux_refused() -> None:
    with pytest.raises(WeightsError, match="SD and SDXL UNets only"):
        lr_weight_args(parse_weights(",".join(["1"] * 61)))


def test_block_dims_sd_docs_example() -> None:
    dims = parse_weights("D:0,2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2")
    alphas = parse_weights("A:0" + ",1" * 25)
    args = block_dims_args(dims, alphas)
    assert args.text() == (
        '"block_dims=2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2" '
        '"block_alphas=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"'
    )
    assert args.notes[0].startswith("BASE (the text encoders) has no training equivalent")


def test_block_dims_sdxl_23_with_ends_and_conv() -> None:
    dims = parse_weights("D:8," + ",".join(["4"] * 9) + ",16," + ",".join(["2"] * 9))
    args = block_dims_args(dims, conv=True)
    values = args.args[0].removeprefix("conv_block_dims=").split(",")
    assert len(values) == 23
    assert values == ["0", *["4"] * 9, "16", "16", "16", *["2"] * 9, "0"]


def test_block_dims_must_be_integers() -> None:
    with pytest.raises(WeightsError, match="non-negative integers; not at IN01"):
        block_dims_args(parse_weights("1,0,2.5" + ",1" * 23))


def test_lora_tag() -> None:
    assert lora_tag("gobuhime-Defmix2", "Sub") == "<lora:gobuhime-Defmix2:1:lbw=Sub>"
    assert lora_tag("gobuhime-Defmix2", "Sub", legacy=True) == "<lora:gobuhime-Defmix2:1:Sub>"
    assert lora_tag("x", "XYZ", multiplier=0.75) == "<lora:x:0.75:lbw=XYZ>"
    assert "web UI >= 1.5" in LEGACY_WARNING
    with pytest.raises(WeightsError, match="LoRA name 'a:b'"):
        lora_tag("a:b", "Sub")
