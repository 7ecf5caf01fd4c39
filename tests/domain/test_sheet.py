"""The Plot Helper sheet: the tutorial's Gobuhime example exactly, variants, bounds, fixing, done-ness."""

from __future__ import annotations

import pytest

from lbw.domain.layouts import SD17, SD26, XL12
from lbw.domain.sdscripts import parse_block_dims
from lbw.domain.sheet import OUTPUT_KEYS, Sheet, sheet_outputs, variants
from lbw.domain.weights import parse_weights
from lbw.errors import SheetError

GOBUHIME = "Gobuhime:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
UNFIXED = ("IN01", "IN03", "IN04", "IN05", "OUT00", "OUT01", "OUT06", "OUT07", "OUT08", "OUT09", "OUT11")

# plot-helper.md §2.2, seen exactly in the tutorial's screenshot LbwphWeights0.
SUB_WEIGHTS = """\
Sub:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubIN01_0:1,0,0,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubIN03_0:1,0,0.5,1,0,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubIN04_0:1,0,0.5,1,0.5,0,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubIN05_0:1,0,0.5,1,0.5,0.5,0,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubOUT00_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubOUT01_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5
SubOUT06_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0,0.5,0.5,0.5,0,0.5
SubOUT07_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0,0.5,0.5,0,0.5
SubOUT08_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0,0.5,0,0.5
SubOUT09_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0,0,0.5
SubOUT11_0:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0"""
SUB_PROMPT_SR = (
    "Sub, SubIN01_0, SubIN03_0, SubIN04_0, SubIN05_0, SubOUT00_0, SubOUT01_0, SubOUT06_0, SubOUT07_0, "
    "SubOUT08_0, SubOUT09_0, SubOUT11_0"
)
EBA = "IN01,IN03,IN04,IN05,OUT00,OUT01,OUT06,OUT07,OUT08,OUT09,OUT11"
SD_SCRIPTS = (
    '"down_lr_weight=0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0" "mid_lr_weight=1" '
    '"up_lr_weight=0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"'
)


def gobuhime() -> Sheet:
    weights = parse_weights(GOBUHIME)
    return Sheet.from_weights(weights, fixed=[b for b in SD26.ids if b not in UNFIXED])


def test_gobuhime_outputs_exactly() -> None:
    outputs = sheet_outputs(gobuhime()).as_dict()
    assert tuple(outputs) == OUTPUT_KEYS
    assert outputs["weight"] == GOBUHIME
    assert outputs["sub_weights"] == SUB_WEIGHTS
    assert outputs["sub_prompt_sr"] == SUB_PROMPT_SR
    assert outputs["eba_blocks"] == EBA
    assert outputs["sd_scripts"] == SD_SCRIPTS
    assert outputs["prompt_tag"] == "<lora:Gobuhime:1:lbw=Sub>"


def test_gobuhime_add_and_combined_lists() -> None:
    outputs = sheet_outputs(gobuhime()).as_dict()
    add_lines = outputs["add_weights"].split("\n")
    assert add_lines[0] == GOBUHIME.replace("Gobuhime:", "Add:")
    assert add_lines[1] == "AddIN01_1:1,0,1,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
    assert outputs["add_prompt_sr"] == SUB_PROMPT_SR.replace("Sub", "Add").replace("_0", "_1")
    assert outputs["subadd_weights"] == SUB_WEIGHTS + "\n" + outputs["add_weights"]
    assert outputs["addsub_weights"] == outputs["add_weights"] + "\n" + SUB_WEIGHTS
    assert outputs["subadd_prompt_sr"] == SUB_PROMPT_SR + ", " + outputs["add_prompt_sr"]
    assert outputs["addsub_prompt_sr"].startswith("Add, A")
    assert outputs["addsub_prompt_sr"].endswith(", " + SUB_PROMPT_SR)


def test_final_gobuhime_weights_and_sd_scripts() -> None:
    sheet = gobuhime()
    sheet = sheet.set_values({b: 0 for b in UNFIXED if b != "OUT06"}, fix=True).fix(["OUT06"])
    assert sheet.is_done
    assert sheet.status() == "done: all 26 blocks are fixed; WEIGHT is final"
    outputs = sheet_outputs(sheet).as_dict()
    assert outputs["weight"] == "Gobuhime:1,0,0,1,0,0,0,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0,0,0,0"
    assert outputs["sd_scripts"] == (
        '"down_lr_weight=0,0,1,0,0,0,0,1,1,0,0,0" "mid_lr_weight=1" "up_lr_weight=0,0,1,1,1,1,0.5,0,0,0,0,0"'
    )
    assert outputs["sub_prompt_sr"] == "Sub"
    assert outputs["add_prompt_sr"] == "Add"
    assert outputs["subadd_prompt_sr"] == "Sub, Add"
    assert outputs["eba_blocks"] == ""


def test_fractional_steps_print_shortest() -> None:
    sheet = Sheet.from_weights(parse_weights("S:0.7,1,1,1,1,1,1,1,1,1,1,1"), fixed=XL12.ids[1:], step=0.1)
    assert variants(sheet, "sub").prompt_sr() == "Sub, SubBASE_0.6"
    assert variants(sheet, "add").entries[1].weights.vector_text() == "0.8,1,1,1,1,1,1,1,1,1,1,1"


def test_bounds_leave_out_identical_variants_and_report() -> None:
    weights = parse_weights("S:0,0.25,1,1,1,1,1,1,1,1,1,1")
    sheet = Sheet(weights.name or "", XL12, weights.numbers(), frozenset(XL12.ids[2:]), 0.5, lower=0, upper=1)
    sub = variants(sheet, "sub")
    assert sub.prompt_sr() == "Sub, SubIN04_0"  # 0.25 - 0.5 clamped to 0
    assert [s.describe() for s in sub.skipped] == [
        "SubBASE: already at the lower bound 0; left out (it equals the base)"
    ]
    assert variants(sheet, "add").prompt_sr() == "Add, AddBASE_0.5, AddIN04_0.75"


def test_out_of_range_flagged_without_bounds() -> None:
    sheet = Sheet.new("A", XL12).fix(XL12.ids[1:])
    outputs = sheet_outputs(sheet)
    assert [v.name for v in outputs.out_of_range] == ["AddBASE_1.5"]
    assert outputs.lists["add"].prompt_sr() == "Add, AddBASE_1.5"


def test_fix_unfix_set_all_unfixed() -> None:
    sheet = Sheet.new("F", SD17, value=0.5)
    sheet = sheet.set_values({"BASE": 1, "MID": 1}, fix=True)
    assert sheet.fixed == {"BASE", "M00"}
    sheet = sheet.set_all_unfixed(0.25)
    assert (
        sheet.weight_line()
        == "F:1,0.25,0.25,0.25,0.25,0.25,0.25,1,0.25,0.25,0.25,0.25,0.25,0.25,0.25,0.25,0.25"
    )
    sheet = sheet.unfix(["BASE"])
    assert sheet.unfixed_ids[0] == "BASE"
    assert not sheet.is_done
    assert sheet.fix(SD17.ids).is_done


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": 0}, "step must be > 0, got 0"),
        ({"lower": 1, "upper": 0}, "lower bound 1 is above upper bound 0"),
        ({"lower": 0.75}, "values outside the bounds: BASE=0.5"),
        ({"fixed": frozenset({"IN00"})}, "block IN00 is not in XL12"),
        ({"name": "a#b"}, "sheet name 'a#b' contains '#'"),
    ],
)
def test_sheet_validation(kwargs: dict, message: str) -> None:
    base = {"name": "A", "layout": XL12, "values": (0.5,) * 12}
    with pytest.raises(SheetError, match=message):
        Sheet(**{**base, **kwargs})


def test_flux_and_unnamed_refused() -> None:
    with pytest.raises(SheetError, match="a sheet uses SD26, SD17, XL20 or XL12, not FLUX61"):
        Sheet.from_weights(parse_weights("F:" + ",".join(["1"] * 61)))
    with pytest.raises(SheetError, match="the sheet needs a name"):
        Sheet.from_weights(parse_weights(",".join(["1"] * 12)))


def test_legacy_tag_and_lora_name() -> None:
    sheet = Sheet(**{"name": "G", "layout": XL12, "values": (1.0,) * 12, "lora": "my-lora"})
    assert sheet_outputs(sheet).prompt_tag == "<lora:my-lora:1:lbw=Sub>"
    assert sheet_outputs(sheet, legacy_tag=True).prompt_tag == "<lora:my-lora:1:Sub>"
    assert sheet_outputs(sheet).add_prompt_tag == "<lora:my-lora:1:lbw=Add>"


def prompt_sr_items(text: str) -> list[str]:
    """How A1111's X/Y/Z plot reads Prompt S/R values: comma-separated, each item stripped."""
    return [item.strip() for item in text.split(",")]


def test_eba_blocks_of_the_screenshot() -> None:
    """ToolLbwEba_SdsLrw (seen): the example's weights with OUT06 also fixed."""
    sheet = gobuhime().fix(["OUT06"])
    assert sheet.eba_blocks() == "IN01,IN03,IN04,IN05,OUT00,OUT01,OUT07,OUT08,OUT09,OUT11"
    assert sheet_outputs(sheet).as_dict()["sd_scripts"] == SD_SCRIPTS  # weights unchanged


def test_all_fixed_prefixes_match_the_overview_screenshot() -> None:
    """plot-helper.md §2.3 (seen, every block fixed): Sub, Add, "Sub, A..." and "Add,Su..."."""
    outputs = sheet_outputs(gobuhime().fix(SD26.ids)).as_dict()
    assert outputs["sub_prompt_sr"] == "Sub"
    assert outputs["add_prompt_sr"] == "Add"
    assert outputs["subadd_prompt_sr"] == "Sub, Add"
    assert outputs["addsub_prompt_sr"] == "Add, Sub"  # the sheet shows "Add,Su": same items for X/Y/Z plot
    assert prompt_sr_items(outputs["addsub_prompt_sr"]) == prompt_sr_items("Add,Sub")
    sub, add = GOBUHIME.replace("Gobuhime", "Sub"), GOBUHIME.replace("Gobuhime", "Add")
    assert outputs["subadd_weights"].split("\n") == [sub, add]
    assert outputs["addsub_weights"].split("\n") == [add, sub]
    assert outputs["eba_blocks"] == ""


def test_tutorial_progression_subadd_stage() -> None:
    """§5 step 5: IN01, OUT01, OUT07, OUT11 then IN03, OUT00, OUT09 at 0 and fixed; SubAdd on the other four."""
    sheet = gobuhime().set_values(dict.fromkeys(["IN01", "OUT01", "OUT07", "OUT11"], 0.0), fix=True)
    assert sheet.eba_blocks() == "IN03,IN04,IN05,OUT00,OUT06,OUT08,OUT09"
    sheet = sheet.set_values(dict.fromkeys(["IN03", "OUT00", "OUT09"], 0.0), fix=True)
    subadd = variants(sheet, "subadd")
    assert subadd.prompt_sr() == (
        "Sub, SubIN04_0, SubIN05_0, SubOUT06_0, SubOUT08_0, Add, AddIN04_1, AddIN05_1, AddOUT06_1, AddOUT08_1"
    )
    base = "1,0,0,1,0,0.5,0.5,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0.5,0,0,0"
    assert subadd.preset_text().split("\n")[0] == f"Sub:{base}"
    assert subadd.preset_text().split("\n")[5] == f"Add:{base}"
    assert subadd.preset_text().split("\n")[9] == "AddOUT08_1:1,0,0,1,0,0.5,0.5,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,1,0,0,0"
    assert variants(sheet, "addsub").prompt_sr() == (
        "Add, AddIN04_1, AddIN05_1, AddOUT06_1, AddOUT08_1, Sub, SubIN04_0, SubIN05_0, SubOUT06_0, SubOUT08_0"
    )


def test_going_deeper_with_step_025() -> None:
    """§5 step 7: step 0.25; Sub on the 1-blocks (and OUT06), Add on the 0-blocks (and OUT06)."""
    final = parse_weights("Gobuhime:1,0,0,1,0,0,0,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0,0,0,0")
    ones = [b for b, v in final.items() if v == 1]
    zeros = [b for b, v in final.items() if v == 0]
    sheet = Sheet.from_weights(final, fixed=SD26.ids, step=0.25)
    sub = variants(sheet.unfix([*ones, "OUT06"]), "sub")
    assert sub.prompt_sr() == (
        "Sub, SubBASE_0.75, SubIN02_0.75, SubIN07_0.75, SubIN08_0.75, SubM00_0.75, SubOUT02_0.75, "
        "SubOUT03_0.75, SubOUT04_0.75, SubOUT05_0.75, SubOUT06_0.25"
    )
    add = variants(sheet.unfix([*zeros, "OUT06"]), "add")
    assert add.prompt_sr().split(", ")[:3] == ["Add", "AddIN00_0.25", "AddIN01_0.25"]
    assert add.prompt_sr().split(", ")[-2:] == ["AddOUT10_0.25", "AddOUT11_0.25"]
    assert "AddOUT06_0.75" in add.prompt_sr().split(", ")
    assert len(add.entries) == 1 + len(zeros) + 1
    assert add.entries[-1].weights.vector_text() == "1,0,0,1,0,0,0,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0,0,0,0.25"


def test_sheet_outputs_with_block_dims() -> None:
    sheet = gobuhime()
    outputs = sheet_outputs(sheet, dims=parse_block_dims(dims="8", alphas="4", layout=sheet.layout))
    assert outputs.as_dict()["sd_scripts"] == (
        f'{SD_SCRIPTS} "block_dims={",".join(["8"] * 25)}" "block_alphas={",".join(["4"] * 25)}"'
    )
