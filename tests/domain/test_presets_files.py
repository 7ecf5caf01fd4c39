"""Preset files, sheet TOML files and hint rows."""

from __future__ import annotations

import pytest

from lbw.domain.hints import SHEET_HINTS_TEXT, hint_rows, hint_table, select_hints, sheet_hints
from lbw.domain.layouts import SD17, SD26, XL12, XL20
from lbw.domain.presets import DEFAULT_PRESETS_TEXT, default_presets, read_presets
from lbw.domain.sheet import Sheet
from lbw.domain.sheet_file import sheet_from_toml, sheet_to_toml
from lbw.domain.weights import parse_weights
from lbw.errors import PresetError, SheetError

ONES17 = ",".join(["1"] * 17)
PRESET_FILE = f"""\
# my presets
Face:{ONES17}
no colon here

Bad:1,2,3
Face:0,{",".join(["1"] * 16)}
Inline:{ONES17} # note
Sym:R,U,X,X+0.5,1,1,1,1,1,1,1,1
"""


def test_defaults_are_lbw_def_weight_preset() -> None:
    doc = default_presets()
    assert doc.names() == (
        "NONE",
        "ALL",
        "INS",
        "IND",
        "INALL",
        "MIDD",
        "OUTD",
        "OUTS",
        "OUTALL",
        "ALL0.5",
        "FLUXALL",
    )
    assert doc.get("OUTALL").format() == "OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"
    assert doc.get("FLUXALL").layout.name == "FLUX61"
    assert doc.problems() == []
    assert DEFAULT_PRESETS_TEXT.count("\n") == 11


def test_problems_reported_with_line_numbers() -> None:
    doc = read_presets(PRESET_FILE, where="p.txt")
    assert [p.format("p.txt") for p in doc.problems()] == [
        "p.txt:3: error: no ':' (expected NAME:v1,v2,...); LBW ignores it",
        "p.txt:5: error: found 3 values; a weight vector has 12, 17, 20, 26 or 61 values; LBW ignores it",
        "p.txt:6: warning: 'Face' replaces the preset of line 2",
        "p.txt:7: warning: contains '#': LBW ignores the whole line, not only the comment",
    ]
    assert doc.names() == ("Face", "Sym")
    assert doc.get("Face").vector_text().startswith("0,1")  # the later line wins, as in LBW
    assert doc.get("Sym").is_symbolic


def test_unknown_preset_is_an_error_never_weight_one() -> None:
    with pytest.raises(
        PresetError, match=r"unknown preset 'OUTAL' in built-in presets \(11 presets\); did you mean"
    ):
        default_presets().get("OUTAL")
    with pytest.raises(PresetError, match="unknown preset 'all'"):
        default_presets().get("all")  # names are case-sensitive


def test_write_keeps_comments_and_replaces_in_place() -> None:
    doc = read_presets(PRESET_FILE)
    assert doc.text() == PRESET_FILE
    added = doc.with_preset(parse_weights("New:" + ",".join(["0.5"] * 12)))
    assert added.text() == PRESET_FILE + "New:" + ",".join(["0.5"] * 12) + "\n"
    with pytest.raises(PresetError, match="preset 'Face' already exists \\(line 6\\)"):
        doc.with_preset(parse_weights(f"Face:{ONES17}"))
    replaced = doc.with_preset(parse_weights("Face:" + ",".join(["0"] * 12)), replace_existing=True)
    lines = replaced.text().splitlines()
    assert lines[5] == "Face:" + ",".join(["0"] * 12)
    assert lines[1] == f"Face:{ONES17}"
    assert read_presets(replaced.text()).get("Face").layout == XL12
    with pytest.raises(PresetError, match="needs a name"):
        doc.with_preset(parse_weights(ONES17))


def test_crlf_and_bom() -> None:
    doc = read_presets("\ufeffA:" + ",".join(["1"] * 12) + "\r\n")
    assert doc.names() == ("A",)


def test_sheet_toml_round_trip_and_readability() -> None:
    sheet = Sheet.from_weights(
        parse_weights("G:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"),
        fixed={"BASE", "IN00"},
        step=0.25,
    )
    sheet = Sheet(
        sheet.name, sheet.layout, sheet.values, sheet.fixed, 0.25, lower=0, upper=None, lora="g-lora"
    )
    text = sheet_to_toml(sheet)
    assert sheet_from_toml(text) == sheet
    lines = text.splitlines()
    assert 'name = "G"' in lines
    assert "step = 0.25" in lines
    assert "BASE  = { weight = 1, fixed = true }" in lines
    assert "OUT11 = { weight = 0.5, fixed = false }" in lines
    assert any(line.startswith("# upper = ...") for line in lines)


def test_sheet_toml_shorthand_and_mid_alias() -> None:
    body = "".join(f"{b} = 0.5\n" for b in XL12.ids if b != "M00") + "MID = { weight = 1, fixed = true }\n"
    sheet = sheet_from_toml(f'name = "A"\nlayout = "12"\n[blocks]\n{body}')
    assert sheet.layout == XL12
    assert sheet.fixed == {"M00"}
    assert sheet.value("M00") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "s.toml: not valid TOML"),
        ('name = "A"\nlayout = "26"\ncolour = 1\n[blocks]\n', "s.toml: unknown key 'colour'"),
        ('name = "A"\nlayout = "26"\n', "s.toml: missing key 'blocks'"),
        ('name = "A"\nlayout = "33"\n[blocks]\n', "s.toml: unknown layout '33'"),
        ('name = "A"\nlayout = "12"\n[blocks]\nBASE = 1\n', "s.toml: blocks missing: IN04,IN05"),
        ('name = "A"\nlayout = "12"\n[blocks]\nIN00 = 1\n', "s.toml: block 'IN00' is not in this layout"),
        ('name = "A"\nlayout = "12"\n[blocks]\nBASE = "1"\n', "s.toml: blocks.BASE must be a number"),
        (
            'name = "A"\nlayout = "12"\n[blocks]\nBASE = { weight = 1, fixed = 1 }\n',
            "fixed must be true or false",
        ),
        (
            'name = "A"\nlayout = "12"\n[blocks]\nBASE = ' + "9" * 400 + "\n",
            "s.toml: blocks.BASE is too large",
        ),
        (
            'name = "A"\nlayout = "12"\nstep = -1\n[blocks]\n' + "".join(f"{b} = 1\n" for b in XL12.ids),
            "s.toml: step must be > 0",
        ),
    ],
)
def test_sheet_toml_errors_name_the_file(text: str, message: str) -> None:
    with pytest.raises(SheetError) as info:
        sheet_from_toml(text, where="s.toml")
    assert message in str(info.value)


def test_sheet_hints_rows() -> None:
    hints = sheet_hints()
    assert hints.problems() == []
    assert len(hints.names()) == 10
    assert hints.get("Face_s").format() == SHEET_HINTS_TEXT.splitlines()[-1]
    rows = hint_rows(read_presets(f"Mine:{ONES17}\n", where="mine.txt"))
    assert [(r.name, r.source) for r in rows][-1] == ("Mine", "mine.txt")
    assert len(rows) == 11 + 10 + 1


def test_hint_table_converts_per_layout() -> None:
    rows = select_hints(hint_rows(), ["OUTALL", "Face_c", "FLUXALL"])
    table = hint_table(rows, SD26)
    assert [r.name for r in table.rows] == ["OUTALL", "Face_c"]
    assert ",".join(table.rows[0].cells) == "1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"
    assert table.rows[0].note == "SD17, 0 in the other blocks (LBW's fill)"
    assert table.left_out == ("FLUXALL (FLUX61)",)
    short = hint_table(select_hints(hint_rows(), ["Face_c"]), SD17)
    assert ",".join(short.rows[0].cells) == "0,1,1,1,0,0,1,0,1,1,0,1,1,1,0,0,1"
    assert hint_table(rows, XL20).rows == ()
    with pytest.raises(PresetError, match="unknown hint row 'Nope'"):
        select_hints(hint_rows(), ["Nope"])


# Lines as the web UI extension loads them (scripts/lora_block_weight.py: splitlines(); a line is skipped if it
# contains '#', has no ':' or its whole-line comma count is not 11/16/19/25/60; the name is
# line.split(":", 1)[0].strip(); values are converted only when a prompt uses the preset).
ONES12 = ",".join(["1"] * 12)


@pytest.mark.parametrize(
    ("line", "kind", "name"),
    [
        (f"n=1:{ONES12}", "preset", "n=1"),  # loaded (lbw= in a prompt is another matter: a warning)
        (f" Spaced :{ONES12}", "preset", "Spaced"),
        (f"\tTab\t:{ONES12}", "preset", "Tab"),
        (f"x>y:{ONES12}", "preset", "x>y"),
        (f":{ONES12}", "preset", ""),
        (f"a,b,c,d:{ONES17}", "preset", "a,b,c,d"),  # 3 + 16 = 19 commas: counted as a 20-value line, 17 values
        (f"a,b:{','.join(['1'] * 16)}", "broken", "a,b"),  # 16 commas on the line, 16 values
        (f"a,b:{ONES17}", "invalid", None),  # 17 commas: not a count LBW accepts
        (f"Q:1,1,q,{','.join(['1'] * 9)}", "broken", "Q"),
        (f"N:1,1,nan,{','.join(['1'] * 9)}", "broken", "N"),
        (f"E:1,,1,{','.join(['1'] * 9)}", "broken", "E"),
        (f"C:{ONES12}:x", "broken", "C"),  # the value is everything after the first ':'
        (f"K:{ONES12}#", "comment", None),
        (f"no colon {ONES12}", "invalid", None),
        (f"W:{ONES12},", "invalid", None),
        ("   ", "blank", None),
    ],
)
def test_each_line_is_classified_as_lbw_loads_it(line: str, kind: str, name: str | None) -> None:
    (parsed,) = read_presets(line + "\n").lines
    assert (parsed.kind, parsed.name) == (kind, name)
    doc = read_presets(line + "\n")
    if kind == "preset":
        assert doc.get(name).vector_text() == line.split(":", 1)[1].replace(" ", "")  # type: ignore[arg-type]
        assert doc.names() == (name,)
    else:
        assert doc.names() == ()


def test_a_later_line_lbw_cannot_use_still_replaces_the_name() -> None:
    doc = read_presets(f"Face:{ONES12}\nOther:{ONES12}\nFace:1,q,{','.join(['1'] * 10)}\n", where="p.txt")
    assert doc.names() == ("Other",)
    with pytest.raises(PresetError, match=r"preset 'Face' \(line 3 of p.txt\) cannot be used: value 2 'q'"):
        doc.get("Face")
    assert [p.severity for p in doc.problems()] == ["error", "warning"]


def test_tag_list_order_is_the_first_appearance() -> None:
    doc = read_presets(f"A:{ONES12}\nB:{ONES12}\nA:{','.join(['0'] * 12)}\n")
    assert doc.names() == ("A", "B")  # a dict assignment keeps A's place
    assert doc.get("A").vector_text() == ",".join(["0"] * 12)


def test_line_breaks_as_splitlines_and_written_back_byte_for_byte() -> None:
    text = f"\ufeffA:{ONES12}\r\nB:{ONES12}\x0cC:{ONES12}\u2028# note\rD:{ONES12}"
    doc = read_presets(text)
    assert [ln.name for ln in doc.lines] == ["A", "B", "C", None, "D"]
    assert doc.text() == text
    added = doc.with_preset(parse_weights(f"E:{ONES12}"))
    assert added.text() == text + f"\nE:{ONES12}\n"
    replaced = doc.with_preset(parse_weights(f"B:{','.join(['0'] * 12)}"), replace_existing=True)
    assert replaced.text() == text.replace(f"B:{ONES12}", f"B:{','.join(['0'] * 12)}")
    assert [p.message[:45] for p in doc.problems()] == ["the file starts with a byte order mark: LBW r"]


def test_names_lbw_loads_but_prompts_cannot_use_are_warnings() -> None:
    doc = read_presets(f"n=1:{ONES12}\n Sp :{ONES12}\nx>y:{ONES12}\n:{ONES12}\n")
    assert doc.names() == ("n=1", "Sp", "x>y", "")
    messages = [(p.line, p.severity, p.message.split(":")[0]) for p in doc.problems()]
    assert messages == [
        (1, "warning", "the name 'n=1' contains '='"),
        (2, "warning", "spaces around the name ' Sp '"),
        (3, "warning", "the name 'x>y' contains '>'"),
        (4, "warning", "empty name"),
    ]
    assert doc.get("n=1").name is None  # lbw itself would not write such a name (parse_weights refuses it)
