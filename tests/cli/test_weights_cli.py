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
    assert "pass --present" in capsys.readouterr().err


def test_weights_show_table(capsys) -> None:
    assert run(["weights", "show", "T:1,0,0.5,1,1,1,1,1,1,1,1,1"]) == 0
    out = capsys.readouterr().out
    assert "T (XL12)" in out
    assert "IN04" in out and "0.5" in out
