"""sd-scripts block arguments (lr weights, block_dims/alphas, conv forms) and the LoRA prompt tag."""

from __future__ import annotations

import re

import pytest

from lbw.domain.hints import sheet_hints
from lbw.domain.keymap import block_of
from lbw.domain.layouts import SD26, XL12, XL20
from lbw.domain.prompt import LEGACY_WARNING, lora_tag
from lbw.domain.sdscripts import BlockDims, lr_weight_args, network_args, parse_block_dims
from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import WeightsError

# plot-helper.md §6.5, the tutorial's two published lr_weight strings.
C186 = (
    '"down_lr_weight=0.6,0.8,1,0.8,0.8,0.6,0.6,0.6,1,0.6,0.6,0.6" "mid_lr_weight=1" '
    '"up_lr_weight=0.8,0.6,1,1,1,1,0.8,0.8,0.8,0.6,0.6,0.8"'
)
C721 = (
    '"down_lr_weight=0.1,0.2,0.7,0.2,0.2,0.1,0.1,0.1,0.7,0.1,0.1,0.1" "mid_lr_weight=0.7" '
    '"up_lr_weight=0.2,0.1,0.7,0.7,0.7,0.7,0.2,0.2,0.2,0.1,0.1,0.2"'
)


def classified(important: float, unclear: float, unneeded: float) -> BlockWeights:
    """The tutorial's classification (the hint row Char876_c: important 0.8, unclear 0.7, unneeded 0.6)."""
    row = sheet_hints().get("Char876_c")
    mapping = {0.8: important, 0.7: unclear, 0.6: unneeded}
    return BlockWeights(SD26, tuple(mapping[v] for v in row.numbers()), "C")


@pytest.mark.parametrize(("levels", "expected"), [((1, 0.8, 0.6), C186), ((0.7, 0.2, 0.1), C721)])
def test_c186_and_c721_derive_from_the_classification(levels: tuple[float, ...], expected: str) -> None:
    args = lr_weight_args(classified(*levels))
    assert args.text() == expected
    assert args.notes[0] == (
        "BASE (the text encoders) has no training equivalent: sd-scripts block arguments cover the UNet only, "
        f"so BASE={levels[0]:g} is not in them (the text encoder follows text_encoder_lr / network_dim)"
    )
    assert args.notes[-1].startswith("learning-rate weights do not reproduce LBW inference weights")


def test_sdxl_lr_weight_9_3_9() -> None:
    weights = parse_weights("X:1," + ",".join(str(i / 10) for i in range(9)) + ",0.5," + ",".join(["1"] * 9))
    args = lr_weight_args(weights)
    assert args.args == (
        "down_lr_weight=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8",
        "mid_lr_weight=0.5,0.5,0.5",
        "up_lr_weight=1,1,1,1,1,1,1,1,1",
    )
    assert "SDXL: mid_lr_weight repeats M00 three times (sd-scripts has three middle blocks)" in args.notes
    assert "blocks at 0 get no LoRA module (not trained, not saved): IN00" in args.notes


def test_sd17_is_zero_filled_first_and_says_so() -> None:
    args = lr_weight_args(parse_weights("1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"))
    assert args.args[0] == "down_lr_weight=0,1,1,0,1,1,0,1,1,0,0,0"
    assert args.args[2] == "up_lr_weight=0,0,0,1,1,1,1,1,1,1,1,1"
    assert args.notes[1] == (
        "expanded SD17 to SD26 with 0 in IN00,IN03,IN06,IN09,IN10,IN11,OUT00,OUT01,OUT02: "
        "a 0 there removes those blocks' modules if conv layers are trained"
    )
    assert not any("negative" in n for n in lr_weight_args(parse_weights("-1" + ",1" * 25)).notes)  # BASE
    negative = lr_weight_args(parse_weights("1,-1" + ",1" * 24)).notes
    assert "negative weights become 0 in sd-scripts (block_lr_zero_threshold)" in negative


def test_flux_refused() -> None:
    with pytest.raises(WeightsError, match="exist for SD and SDXL UNets only, not Flux"):
        lr_weight_args(parse_weights(",".join(["1"] * 61)))


def test_block_dims_sd_docs_example() -> None:
    dims = parse_block_dims("D:0,2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2", "1")
    args = network_args(None, dims)
    assert args.text() == (
        '"block_dims=2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2" '
        '"block_alphas=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"'
    )
    assert args.notes == (
        "BASE (the text encoders) has no training equivalent: sd-scripts block arguments cover the UNet only, "
        "so BASE=0 is not in them (the text encoder follows text_encoder_lr / network_dim)",
    )


# sd-scripts' block index of a kohya module name (plot-helper.md §6.3), restated from the reference.
def sd_scripts_index(name: str, sdxl: bool) -> int:
    if sdxl:
        kind, number = re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_", name).groups()
        return {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}[kind] + int(number)
    match = re.match(r"lora_unet_(up|down)_blocks_(\d+)_(resnets|attentions|upsamplers|downsamplers)_(\d+)_", name)
    if match is None:
        assert "mid_block_" in name
        return 12
    direction, i, kind, j = match.groups()
    idx = 3 * int(i) + (2 if kind.endswith("samplers") else int(j))
    return (1 + idx) if direction == "down" else (13 + idx)


SD_NAMES = [
    "lora_unet_down_blocks_0_attentions_0_proj_in",
    "lora_unet_down_blocks_0_resnets_1_conv1",
    "lora_unet_down_blocks_0_downsamplers_0_conv",
    "lora_unet_down_blocks_2_downsamplers_0_conv",
    "lora_unet_down_blocks_3_resnets_1_conv2",
    "lora_unet_mid_block_attentions_0_proj_out",
    "lora_unet_mid_block_resnets_1_conv1",
    "lora_unet_up_blocks_0_resnets_2_conv1",
    "lora_unet_up_blocks_0_upsamplers_0_conv",
    "lora_unet_up_blocks_1_attentions_2_proj_in",
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_v",
]
XL_NAMES = [
    "lora_unet_input_blocks_1_0_in_layers_2",
    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k",
    "lora_unet_input_blocks_8_1_proj_in",
    "lora_unet_middle_block_0_in_layers_2",
    "lora_unet_middle_block_1_proj_out",
    "lora_unet_middle_block_2_out_layers_3",
    "lora_unet_output_blocks_0_1_proj_in",
    "lora_unet_output_blocks_8_0_skip_connection",
]


@pytest.mark.parametrize(("layout", "names", "count"), [(SD26, SD_NAMES, 25), (XL20, XL_NAMES, 23)])
def test_dims_positions_match_sd_scripts_block_index(layout, names: list[str], count: int) -> None:
    """Every module gets, in sd-scripts, the rank lbw wrote for the LBW block that module is in."""
    ranks = BlockWeights(layout, tuple(float(10 + i) for i in range(len(layout))))
    args = network_args(None, BlockDims(dims=ranks, conv_dims=ranks))
    written = [int(v) for v in args.args[0].removeprefix("block_dims=").split(",")]
    assert len(written) == count
    assert args.args[1].removeprefix("conv_block_dims=") == args.args[0].removeprefix("block_dims=")
    for name in names:
        block = block_of(name, "sdxl" if layout == XL20 else None)
        assert written[sd_scripts_index(name, layout == XL20)] == ranks[block], name


def test_sdxl_dims_ends_are_time_embed_and_out() -> None:
    """plot-helper.md §6.3: index 0 = time/label embedding, 22 = out; 1-9 IN00-IN08, 10-12 M00, 13-21 OUT."""
    ranks = parse_weights("D:99," + ",".join(str(i) for i in range(1, 10)) + ",10," + ",".join(map(str, range(11, 20))))
    args = network_args(None, BlockDims(dims=ranks, alphas=ranks))
    assert args.args[0] == "block_dims=0,1,2,3,4,5,6,7,8,9,10,10,10,11,12,13,14,15,16,17,18,19,0"
    assert args.args[1] == "block_alphas=0,1,2,3,4,5,6,7,8,9,10,10,10,11,12,13,14,15,16,17,18,19,0"
    assert args.notes[-1] == (
        "SDXL: the first and last of the 23 values (time/label embedding, out) carry no LoRA modules; "
        "written as 0; M00 is repeated for the three middle blocks"
    )


def test_lr_weights_and_dims_together_in_one_string() -> None:
    final = parse_weights("Gobuhime:1,0,0,1,0,0,0,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0,0,0,0")
    args = network_args(final, parse_block_dims(dims="16", alphas="8", layout=final.layout))
    assert args.text() == (
        '"down_lr_weight=0,0,1,0,0,0,0,1,1,0,0,0" "mid_lr_weight=1" "up_lr_weight=0,0,1,1,1,1,0.5,0,0,0,0,0" '
        f'"block_dims={",".join(["16"] * 25)}" "block_alphas={",".join(["8"] * 25)}"'
    )
    assert sum(n.startswith("BASE (the text encoders)") for n in args.notes) == 1


def test_parse_block_dims_numbers_vectors_and_layouts() -> None:
    dims = parse_block_dims(dims="8", alphas="1,1,1,1,1,1,1,1,1,1,1,1")
    assert dims.dims.layout == XL20 and dims.dims.numbers() == (8.0,) * 20  # layout from the vector given
    assert dims.alphas.layout == XL12
    assert parse_block_dims(conv_dims="4").conv_dims.layout == SD26  # nothing says otherwise: SD
    assert parse_block_dims(conv_alphas="0.5", layout=XL12).conv_alphas.layout == XL20
    assert parse_block_dims() == BlockDims()
    args = network_args(None, parse_block_dims(dims="1,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4", alphas="2"))
    assert args.args[0] == "block_dims=0,4,4,0,4,4,0,4,4,0,0,0,4,0,0,0,4,4,4,4,4,4,4,4,4"
    assert args.notes[1] == (
        "block_dims: expanded SD17 to SD26 with 0 in IN00,IN03,IN06,IN09,IN10,IN11,OUT00,OUT01,OUT02: "
        "rank 0: no module there"
    )
    assert args.notes[2] == "block_dims: rank 0 creates no module for IN00,IN03,IN06,IN09,IN10,IN11,OUT00,OUT01,OUT02"


@pytest.mark.parametrize(
    ("kwargs", "lr", "message"),
    [
        ({}, False, "nothing to write: give lr weights, dims or alphas"),
        ({"alphas": "1"}, False, "sd-scripts ignores block_alphas unless block_dims or lr weights are given"),
        ({"conv_dims": "4"}, False, "sd-scripts ignores conv_block_dims unless block_dims or lr weights are given"),
        ({"dims": "4", "conv_alphas": "1"}, False, "sd-scripts ignores conv_block_alphas without conv_block_dims"),
        ({"dims": "2.5"}, False, r"block_dims must be non-negative integers \(ranks\); got IN00=2.5, IN01=2.5, "
         r"IN02=2.5 and 22 more"),
        ({"dims": "-1"}, True, "block_dims must be non-negative integers"),
        ({"dims": "4", "alphas": "1,1,-2,1,1,1,1,1,1,1,1,1,1,1,1,1,1"}, False,
         r"block_alphas must be >= 0 \(0 means alpha = rank\); got IN02=-2"),
        ({"dims": "1,1,1,1,1,1,1,1,1,1,1,1"}, True, "block_dims is XL12 but lr weights is SD26: SD and SDXL"),
        ({"dims": "q"}, False, "block_dims: value 1 'q' is not a number"),
        ({"dims": "4,4"}, False, "block_dims: found 2 values"),
    ],
)
def test_network_args_refusals(kwargs: dict, lr: bool, message: str) -> None:
    weights = parse_weights("G" + ":1" + ",1" * 25) if lr else None
    with pytest.raises(WeightsError, match=message):
        network_args(weights, parse_block_dims(**kwargs))


def test_alphas_with_lr_weights_only_are_accepted() -> None:
    """sd-scripts uses block_alphas with lr weights even without block_dims (dims = network_dim)."""
    dims = parse_block_dims(alphas="2", conv_dims="4", layout=XL12)
    args = network_args(parse_weights("1,1,1,1,1,1,1,1,1,1,1,1"), dims)
    assert args.args[3:] == (
        "block_alphas=0," + ",".join(["2"] * 21) + ",0",
        "conv_block_dims=0," + ",".join(["4"] * 21) + ",0",
    )


def test_lora_tag() -> None:
    assert lora_tag("gobuhime-Defmix2", "Sub") == "<lora:gobuhime-Defmix2:1:lbw=Sub>"
    assert lora_tag("gobuhime-Defmix2", "Sub", legacy=True) == "<lora:gobuhime-Defmix2:1:Sub>"
    assert lora_tag("x", "XYZ", multiplier=0.75) == "<lora:x:0.75:lbw=XYZ>"
    assert "web UI >= 1.5" in LEGACY_WARNING
    with pytest.raises(WeightsError, match="LoRA name 'a:b'"):
        lora_tag("a:b", "Sub")
