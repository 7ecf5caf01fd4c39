"""`lbw presets` in-process, on real files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

from lbw.interfaces.cli.app import run


def test_presets_list_show_check_add(tmp_path: Path, capsys) -> None:
    assert run(["presets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "OUTALL" in listing and "FLUXALL" in listing
    file = tmp_path / "lbwpresets.txt"
    original = "# keep me\nFace:" + ",".join(["1"] * 17) + "\nbroken\n"
    file.write_text(original, encoding="utf-8")
    assert run(["presets", "check", str(file)]) == 1
    out = capsys.readouterr().out
    assert out == (
        f"{file}:3: error: no ':' (expected NAME:v1,v2,...); LBW ignores it\n"
        f"{file}: 1 presets, 1 error, 0 warnings\n"
    )
    assert run(["presets", "show", str(file), "Face"]) == 0
    assert capsys.readouterr().out == "Face:" + ",".join(["1"] * 17) + "\n"
    assert run(["presets", "show", str(file), "face"]) == 2
    assert "unknown preset 'face'" in capsys.readouterr().err
    new = "New:" + ",".join(["0.5"] * 12)
    assert run(["presets", "add", str(file), new]) == 0
    assert capsys.readouterr().out == f"added New (XL12) in {file}\n"
    assert file.read_text(encoding="utf-8") == original + new + "\n"
    assert run(["presets", "add", str(file), new]) == 2
    assert "already exists (line 4)" in capsys.readouterr().err
    assert run(["presets", "add", str(file), "New:" + ",".join(["0"] * 12), "--replace"]) == 0
    assert file.read_text(encoding="utf-8").splitlines()[-1] == "New:" + ",".join(["0"] * 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lbwpresets.txt"]  # no temp files left


def test_presets_missing_file_and_init(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.txt"
    assert run(["presets", "check", str(missing)]) == 2
    assert capsys.readouterr().err == f"lbw: error: {missing}: file not found\n"
    target = tmp_path / "defaults.txt"
    assert run(["presets", "init", str(target)]) == 0
    assert target.read_text(encoding="utf-8").startswith("NONE:0,0,0")
    assert run(["presets", "init", str(target)]) == 2
    capsys.readouterr()
    assert run(["presets", "defaults"]) == 0
    assert capsys.readouterr().out == target.read_text(encoding="utf-8")


def test_presets_refuse_a_folder_as_file(tmp_path: Path, capsys) -> None:
    assert run(["presets", "init", str(tmp_path), "--force"]) == 2
    assert capsys.readouterr().err == f"lbw: error: {tmp_path}: is a folder, expected a file\n"
    assert run(["presets", "add", str(tmp_path), "A:" + ",".join(["1"] * 12)]) == 2
    assert capsys.readouterr().err == f"lbw: error: {tmp_path}: is a folder, expected a file\n"
    assert list(tmp_path.iterdir()) == []
