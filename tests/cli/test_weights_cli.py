"""`lbw weights` in-process."""

from __future__ import annotations

from lbw.interfaces.cli.app import run

DUMMY17 = "DUMMY17:1,1,2,4,5,7,8,1,3,4,5,6,7,8,9,10,11"


def test_parse_dummy17_to_26_fill_0(capsys) -> None:
    assert run(["weights", "parse", DUMMY17, "--to", "26", "--fill", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "DUMMY17:1,0,1,2,0,4,5,0,7,8,0,0,0,1,0,0,0,3,4,5,6,7,8,9,10,11\n"
    assert (
        err == "lbw: note: filled 9 blocks absent from SD17 with 0: "
        "IN00,IN03,IN06,IN09,IN10,IN11,OUT00,OUT01,OUT02\n"
    )


def test_parse_canonicalises_and_resolves(capsys) -> None:
    assert run(["weights", "parse", "A: 1.0 ,0.50,R,U,X+0.5,1,1,1,1,1,1,1", "--seed", "7", "--x", "0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("A:1,0.5,") and out.endswith(",0.5,1,1,1,1,1,1,1")
    assert run(["weights", "parse", "A:R,1,1,1,1,1,1,1,1,1,1,1"]) == 0
    out, err = capsys.readouterr()
    assert out == "A:R,1,1,1,1,1,1,1,1,1,1,1\n"
    assert "pass --seed" in err


def test_parse_errors_are_one_line_exit_2(capsys) -> None:
    assert run(["weights", "parse", "A:1,2,3"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == "lbw: error: found 3 values; a weight vector has 12, 17, 20, 26 or 61 values (at position 7)\n"
    )
    assert run(["weights", "parse", "A:1,1,q,1,1,1,1,1,1,1,1,1"]) == 2
    assert capsys.readouterr().err == (
        "lbw: error: value 3 'q' is not a number, R, U, X, X+d or X-d (at position 7)\n"
    )


def test_convert_refuses_drop_then_allows(capsys) -> None:
    vector = "A:1,0.5," + ",".join(["1"] * 24)
    assert run(["weights", "convert", vector, "--to", "17"]) == 2
    assert "would drop non-zero blocks IN00=0.5" in capsys.readouterr().err
    assert run(["weights", "convert", vector, "--to", "17", "--allow-drop"]) == 0
    out, err = capsys.readouterr()
    assert out == "A:" + ",".join(["1"] * 17) + "\n"
    assert "dropped 9 non-zero blocks: IN00=0.5, IN03=1" in err


def test_convert_inspire_both_ways(capsys) -> None:
    present = "input.4,input.5,input.7,input.8,middle.1,output.0,output.1,output.2,output.3,output.4,output.5"
    assert (
        run(["weights", "convert", "X:1,0,0.5,1,1,0.25,1,1,1,1,1,0", "--to", "inspire", "--present", present])
        == 0
    )
    assert capsys.readouterr().out == "1,0,0.5,1,1,0.25,1,1,1,1,1,0\n"
    assert (
        run(
            [
                "weights",
                "convert",
                "1,0,0.5",
                "--from",
                "inspire",
                "--to",
                "20",
                "--present",
                present,
                "--name",
                "Back",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out == "Back:1,0,0,0,0,0,0.5,0,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0,0,0\n"
    assert "the vector ran out at IN07" in err
    assert run(["weights", "convert", "1,0", "--to", "inspire"]) == 2
    assert "pass --lora FILE or --present" in capsys.readouterr().err


def test_weights_show_table(capsys) -> None:
    assert run(["weights", "show", "T:1,0,0.5,1,1,1,1,1,1,1,1,1"]) == 0
    out = capsys.readouterr().out
    assert "T (XL12)" in out
    assert "IN04" in out and "0.5" in out


def test_parse_dummy26_as_seen(capsys) -> None:
    """ParseWeight26 (seen): BASE 1, IN00..IN11 = 0..11, MID 1, OUT00..OUT11 = 0..11."""
    dummy26 = "DUMMY26:1,0,1,2,3,4,5,6,7,8,9,10,11,1,0,1,2,3,4,5,6,7,8,9,10,11"
    assert run(["weights", "parse", dummy26, "--to", "26"]) == 0
    assert capsys.readouterr() == (dummy26 + "\n", "")
    assert run(["weights", "show", dummy26]) == 0
    rows = [line.split("│")[1:3] for line in capsys.readouterr().out.splitlines() if line.count("│") == 3]
    table = {block.strip(): value.strip() for block, value in rows}
    assert table["BASE"] == "1" and table["M00"] == "1"
    assert [table[f"IN{i:02d}"] for i in range(12)] == [str(i) for i in range(12)]
    assert [table[f"OUT{i:02d}"] for i in range(12)] == [str(i) for i in range(12)]


def test_fill_needs_to_and_bad_layout_names_the_option(capsys) -> None:
    assert run(["weights", "parse", DUMMY17, "--fill", "0.5"]) == 2
    assert capsys.readouterr() == ("", "lbw: error: --fill only applies when converting: add --to 26 (or --to 20)\n")
    assert run(["weights", "parse", DUMMY17, "--to", "26", "--fill", "0.5"]) == 0
    filled = "DUMMY17:1,0.5,1,2,0.5,4,5,0.5,7,8,0.5,0.5,0.5,1,0.5,0.5,0.5,3,4,5,6,7,8,9,10,11"
    assert capsys.readouterr().out == filled + "\n"
    assert run(["weights", "parse", DUMMY17, "--to", "99"]) == 2
    assert capsys.readouterr().err == (
        "lbw: error: --to '99' is not a layout; expected 26, 17, 20, 12 or 61 (or SD26, SD17, XL20, XL12, FLUX61)\n"
    )


FINAL = "Gobuhime:1,0,0,1,0,0,0,0,1,1,0,0,0,1,0,0,1,1,1,1,0.5,0,0,0,0,0"


def test_sdscripts_lr_weights_of_the_final_gobuhime(capsys) -> None:
    assert run(["weights", "sdscripts", FINAL]) == 0
    out, err = capsys.readouterr()
    assert out == (
        '"down_lr_weight=0,0,1,0,0,0,0,1,1,0,0,0" "mid_lr_weight=1" "up_lr_weight=0,0,1,1,1,1,0.5,0,0,0,0,0"\n'
    )
    assert err.splitlines()[0].startswith("lbw: note: BASE (the text encoders) has no training equivalent")


def test_sdscripts_block_dims_sd_and_sdxl(capsys) -> None:
    dims = "0,2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2"
    assert run(["weights", "sdscripts", "--dims", dims, "--alphas", "1"]) == 0
    assert capsys.readouterr().out == (
        '"block_dims=2,4,4,4,8,8,8,8,12,12,12,12,16,12,12,12,12,8,8,8,8,4,4,4,2" '
        f'"block_alphas={",".join(["1"] * 25)}"\n'
    )
    assert run(["weights", "sdscripts", "--dims", "8", "--conv-dims", "4", "--conv-alphas", "1", "--layout", "20"]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f'"block_dims=0,{",".join(["8"] * 21)},0" "conv_block_dims=0,{",".join(["4"] * 21)},0" '
        f'"conv_block_alphas=0,{",".join(["1"] * 21)},0"\n'
    )
    assert "lbw: note: SDXL: the first and last of the 23 values (time/label embedding, out)" in err


def test_sdscripts_errors(capsys) -> None:
    cases = [
        ([], "nothing to write: give lr weights, dims or alphas"),
        (["--alphas", "1"], "sd-scripts ignores block_alphas unless block_dims or lr weights are given"),
        (["--dims", "8", "--conv-alphas", "1"], "sd-scripts ignores conv_block_alphas without conv_block_dims"),
        ([FINAL, "--dims", "8", "--layout", "20"], "block_dims is XL20 but lr weights is SD26: SD and SDXL"),
        (["--dims", "8", "--layout", "5"], "--layout '5' is not a layout"),
        (["--dims", "2.5"], "block_dims must be non-negative integers (ranks); got IN00=2.5, IN01=2.5, IN02=2.5 and"),
    ]
    for args, message in cases:
        assert run(["weights", "sdscripts", *args]) == 2, args
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"lbw: error: {message}") and err.count("\n") == 1, err


def test_convert_to_and_from_inspire_for_a_lora_file(tmp_path, capsys) -> None:
    from lbw.files.fixtures import write_fixture

    locon = write_fixture("sd15_locon", tmp_path / "locon.safetensors")
    plain = write_fixture("sd15", tmp_path / "plain.safetensors")
    weights = "G:1,0,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
    assert run(["weights", "convert", weights, "--to", "inspire", "--lora", str(locon)]) == 0
    inspire = capsys.readouterr().out.strip()
    # BASE, input 1..11, middle 0,1,2 (all M00), output 0..11: 27 values (LyCORIS/LoCon convention)
    assert inspire == "1,0.5,1,0.5,0.5,0.5,0,1,1,0,0,0,1,1,1,0.5,0.5,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
    assert run(["weights", "convert", inspire, "--from", "inspire", "--to", "26", "--lora", str(locon)]) == 0
    assert capsys.readouterr().out.strip() == weights.split(":", 1)[1]
    assert run(["weights", "convert", weights, "--to", "inspire", "--lora", str(plain)]) == 0
    assert capsys.readouterr().out.strip() == "1,0.5,1,0.5,0.5,1,1,1,1,1,1,0.5,0.5,0.5,0.5,0,0.5"
    assert run(["weights", "convert", weights, "--to", "inspire", "--lora", str(plain), "--present", "input.1"]) == 2
    assert "not both" in capsys.readouterr().err
