"""Hostile command-line input, printed text, plans, PNGs, presets and Ctrl-C, through the real CLI.

Real subprocesses (bytes that are not UTF-8 in argv, strict or ASCII stdout, a real SIGINT), real files (LoRA
fixtures with hostile metadata, crafted plan.json and PNG files), a real local TCP server that never answers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import lbw
from lbw.files.fixtures import write_fixture
from lbw.interfaces.cli.app import run

SRC = str(Path(lbw.__file__).resolve().parents[1])
MAIN = "from lbw.interfaces.cli.app import main; main()"
ONES12 = ",".join(["1"] * 12)
TINY = ["--allow-empty-prompt", "--steps", "4", "--width", "64", "--height", "64", "--threads", "1", "--device", "cpu"]
# Terminal control: C0 (but not \n), DEL, C1, bidi overrides, lone surrogates.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def lbw_process(args: list[str | bytes], *, env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen:
    """``lbw ARGS`` through the console-script entry point, in a child Python that imports this checkout."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1", **(env or {})}
    popen.setdefault("preexec_fn", default_sigint)
    return subprocess.Popen([sys.executable, "-c", MAIN, *args], env=environment, **popen)  # type: ignore[arg-type]


def default_sigint() -> None:
    """In the child: Ctrl-C as on a terminal, even when this test run is a background job (which ignores SIGINT,
    and a child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lbw_result(args: list[str | bytes], *, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    process = lbw_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from lbw.services.demo_render import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("tiny-assets"))


@pytest.fixture(scope="module")
def evil_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA whose metadata tries to set the window title, clear the screen, reverse text and inject CSI."""
    folder = tmp_path_factory.mktemp("evil")
    return write_fixture("sd15", folder / "evil.safetensors", rank=4, metadata={
        "ss_output_name": "\x1b]0;pwned\x07name",
        "ssmd_description": "before\x1b[2Jafter",
        "evil\x1b[31mkey": "v\u202etxt\x9b31m\x7fend",
    })


# ------------------------------------------------------------------------------ argv that is not UTF-8


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "utf-8:strict"}, {"LANG": "C", "LC_ALL": "C"}])
def test_text_argument_with_bytes_that_are_not_utf8_is_one_line(env: dict[str, str]) -> None:
    code, out, err = lbw_result(["weights", "parse", b"ab\xfe:" + ONES12.encode()], env=env)
    assert (code, out) == (2, b"")
    assert err == (b"lbw: error: argument TEXT 'ab\\xfe:" + ONES12.encode() + b"': not UTF-8 text (byte 0xfe); "
                   b"only file paths may hold such bytes\n")
    code, out, err = lbw_result(["plot", "x.toml", "--lora", "a", "--lora-name", b"n\xff"], env=env)
    assert (code, out) == (2, b"")
    assert err.startswith(b"lbw: error: --lora-name 'n\\xff': not UTF-8 text (byte 0xff)") and err.count(b"\n") == 1


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "utf-8:strict"}, {"LANG": "C", "LC_ALL": "C"}])
def test_path_with_bytes_that_are_not_utf8_prints_escaped(evil_lora: Path, assets: tuple[Path, Path],
                                                          tmp_path: Path, env: dict[str, str]) -> None:
    odd = tmp_path / os.fsdecode(b"lora\xfe.safetensors")
    odd.write_bytes(evil_lora.read_bytes())
    code, out, err = lbw_result(["inspect", os.fsencode(odd), "--no-norms", "--no-hash"], env=env)
    assert (code, err) == (0, b"")
    first = out.decode("utf-8").splitlines()[0]  # strict UTF-8: nothing undecodable was written
    assert first == f"{tmp_path}/lora\\udcfe.safetensors"
    # --lora may name a file: accepted, and the error that quotes it is one escaped line
    presets = tmp_path / "p.txt"
    presets.write_text(f"A:{ONES12}\n", encoding="utf-8")
    code, out, err = lbw_result(["plot", str(presets), "--lora", b"ab\xfe", "--model", str(assets[0]),
                                 "-o", str(tmp_path / "out"), *TINY], env=env)
    assert (code, out) == (2, b"")
    assert err == b"lbw: error: LoRA 'ab\\udcfe' has no local file; the diffusers backend reads files\n"
    code, out, err = lbw_result(["verify", str(evil_lora), "--against", os.fsencode(tmp_path / "x\udcfe")], env=env)
    assert (code, out) == (2, b"")  # a source path may hold such bytes: the error is about the file
    missing = f"{tmp_path}/x\\udcfe"
    assert err == f"lbw: error: {missing}: no such LoRA file (also tried {missing}.safetensors)\n".encode()
    assert not (tmp_path / "out").exists()


def test_ascii_stdout_gets_escapes_not_a_crash() -> None:
    code, out, err = lbw_result(["weights", "parse", f"Café:{ONES12}"], env={"PYTHONIOENCODING": "ascii:strict"})
    assert (code, err) == (0, b"")
    assert out == f"Caf\\xe9:{ONES12}\n".encode()


# --------------------------------------------------------------------------- printed text from files


def test_printable_escapes_exactly_the_unsafe_characters() -> None:
    from lbw.domain.text import json_text, printable

    unsafe = "\x00\x07\t\n\r\x1b\x7f\x85\x9b\u061c\u200e\u200f\u202a\u202e\u2066\u2069\u2028\u2029\ud800\udcfe\udfff"
    assert printable(unsafe) == ("\\x00\\x07\\t\\n\\r\\x1b\\x7f\\x85\\x9b\\u061c\\u200e\\u200f\\u202a"
                                 "\\u202e\\u2066\\u2069\\u2028\\u2029\\ud800\\udcfe\\udfff")
    kept = "é ü 日本語 ΣΔW █ 😀 \u200d a\\b [bold]"  # letters, symbols, emoji (with a joiner), backslash, brackets
    assert printable(kept) == kept
    assert printable("a\nb\tc", keep="\n") == "a\nb\\tc"
    data = {"k\x1b": ["\x9b", "\u202e", "\udcfe", "\x7f", "é", "\n"]}
    text = json_text(data, indent=1)
    assert RAW_CONTROL.search(text) is None and json.loads(text) == data
    assert text.encode("utf-8")  # strict UTF-8 can write it


def test_inspect_and_meta_escape_control_characters(evil_lora: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["inspect", str(evil_lora), "--no-norms"], ["meta", str(evil_lora)]):
        assert run(argv) == 0
        out = capsys.readouterr().out
        assert RAW_CONTROL.search(out) is None, argv
        assert "\\x1b]0;pwned\\x07name" in out and "before\\x1b[2Jafter" in out
        assert "evil\\x1b[31mkey" in out and "v\\u202etxt\\x9b31m\\x7fend" in out


def test_json_output_is_valid_json_without_raw_control_characters(evil_lora: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for argv, path in ((["inspect", str(evil_lora), "--no-norms", "--json"], ("metadata", "other")),
                       (["meta", str(evil_lora), "--json"], ("metadata", "other"))):
        assert run(argv) == 0
        out = capsys.readouterr().out
        assert RAW_CONTROL.search(out) is None, argv
        data = json.loads(out)
        for key in path:
            data = data[key]
        assert data["evil\x1b[31mkey"] == "v\u202etxt\x9b31m\x7fend"  # the exact value reads back


def test_error_messages_escape_file_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "a\x1b]0;t\x07\x1b[2J.safetensors"
    assert run(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"lbw: error: {tmp_path}/a\\x1b]0;t\\x07\\x1b[2J.safetensors: file not found\n"
    presets = tmp_path / "p\u202e.txt"
    presets.write_text(f"E\x1b[2J:{ONES12}\nline\x0bbreak\n", encoding="utf-8")
    assert run(["presets", "list", str(presets)]) == 0
    out = capsys.readouterr().out
    assert RAW_CONTROL.search(out) is None and "E\\x1b[2J" in out and "p\\u202e.txt" in out
    assert run(["presets", "check", str(presets)]) == 1
    assert RAW_CONTROL.search(capsys.readouterr().out) is None


# ------------------------------------------------------------------------------ hostile plans and PNGs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, *chunks: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + b"".join(chunks)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + _chunk(b"IEND", b""))


PLAN = {"lbw_plan": 1, "kind": "presets", "layout": "XL12", "cells": [{"label": "A", "values": [1] * 12}],
        "settings": {"seeds": [1]}}
PLAN_TEXT = json.dumps(PLAN)
TWO_MB = zlib.compress(b" " * (2 * 1024 * 1024), 9)
HOSTILE = {
    "deep.json": ('{"lbw_plan": 1, "cells": ' + "[" * 100_000 + "]" * 100_000 + "}",
                  "invalid plan JSON: nested deeper than 16 levels"),
    "deep-ok-for-json.json": ('{"lbw_plan": 1, "cells": ' + "[" * 200 + "]" * 200 + "}",
                              "invalid plan JSON: nested deeper than 16 levels"),
    "infinity.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": [Infinity]'),
                      "invalid plan JSON: Infinity is not a JSON number"),
    "nan.json": (PLAN_TEXT.replace("[1, 1,", "[NaN, 1,"), "invalid plan JSON: NaN is not a JSON number"),
    "overflow.json": (PLAN_TEXT.replace("[1, 1,", "[1e999, 1,"), 'invalid plan JSON: "1e999" is out of range'),
    "digits.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": [' + "7" * 5000 + "]"),
                    "invalid plan JSON: a number with 5000 digits"),
    "seed-range.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": [4294967296]'),
                        "seed 4294967296 is not an integer from 0 to 4294967295"),
    "seed-negative.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": [-1]'),
                           "seed -1 is not an integer from 0 to 4294967295"),
    "seed-text.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": ["1"]'),
                       'plan field settings.seeds[0]: expected an integer, found "1"'),
    "seed-bool.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": [true]'),
                       "plan field settings.seeds[0]: expected an integer, found true"),
    "huge-image.json": (PLAN_TEXT.replace('"seeds": [1]', '"seeds": [1], "width": 65536'),
                        "width must be from 8 to 8192, got 65536"),
    "label.json": (PLAN_TEXT.replace('"label": "A"', '"label": {"a": 1}'),
                   "plan field cells[0].label: expected a string, found dict"),
    "unknown.json": (PLAN_TEXT.replace('"kind"', '"x\\u001b[2J": 1, "kind"'),
                     'unknown plan field "x\\u001b[2J"'),
    "big.json": (" " * (4 * 1024 * 1024 + 1), "larger than 4 MiB; not an lbw plan"),
    "bomb.png": (_png(65535, 65535, _chunk(b"tEXt", b"lbw_plan\x00" + PLAN_TEXT.encode())),
                 "refused: Image size (4294836225 pixels) exceeds limit of 178956970 pixels"),
    "ztxt.png": (_png(8, 8, _chunk(b"zTXt", b"lbw_plan\x00\x00" + TWO_MB)),
                 "refused: a text chunk is too large (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)"),
    "itxt.png": (_png(8, 8, _chunk(b"iTXt", b"lbw_plan\x00\x01\x00\x00\x00" + TWO_MB)),
                 "refused: a text chunk is too large (Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK)"),
    "not-a.png": (b"GIF89a" + b"\x00" * 64, "cannot read PNG: cannot identify image file"),
    "cut.png": (_png(8, 8, _chunk(b"tEXt", b"lbw_plan\x00" + PLAN_TEXT.encode()))[:40],
                "cannot read PNG: "),
    "plan-in-png.png": (_png(8, 8, _chunk(b"tEXt", b"lbw_plan\x00" + PLAN_TEXT.replace("[1]", "[1.5]").encode())),
                        "plan field settings.seeds[0]: expected an integer, found 1.5"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_plan_sources_are_one_line_errors(name: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    content, message = HOSTILE[name]
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "out"
    assert run(["plot", str(source), "-o", str(out), "--backend", "a1111", "--url", "http://127.0.0.1:9"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"lbw: error: {source}: {message}"), captured.err
    assert captured.err.count("\n") == 1 and RAW_CONTROL.search(captured.err) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_hostile_plan_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    source = tmp_path / "deep.json"
    source.write_text(HOSTILE["deep.json"][0], encoding="utf-8")
    code, out, err = lbw_result(["plot", str(source), "-o", str(tmp_path / "out")])
    assert (code, out) == (2, b"")
    assert err == f"lbw: error: {source}: invalid plan JSON: nested deeper than 16 levels\n".encode()


def test_seeds_option_is_range_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    presets = tmp_path / "p.txt"
    presets.write_text(f"A:{ONES12}\n", encoding="utf-8")
    assert run(["plot", str(presets), "--lora", "x", "--seeds", "1,4294967296", "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "lbw: error: seed 4294967296 is not an integer from 0 to 4294967295\n"


# ------------------------------------------------------------------------------------------ Ctrl-C


@pytest.fixture()
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (closed after the test)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    accepted = threading.Event()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            held.append(connection)
            accepted.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    listener.close()


def _interrupt(process: subprocess.Popen, ready: threading.Event | None = None, *, until: object = None) -> None:
    """Send SIGINT once ``ready`` is set (or ``until()`` is true), waiting at most 120 s for it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (ready is not None and ready.is_set()) or (until is not None and until()):  # type: ignore[operator]
            break
        time.sleep(0.01)
    assert process.poll() is None, "the command ended before it could be interrupted"
    process.send_signal(signal.SIGINT)


def test_ctrl_c_while_waiting_for_a_server(silent_server: tuple[str, threading.Event], tmp_path: Path) -> None:
    url, accepted = silent_server
    presets = tmp_path / "p.txt"
    presets.write_text(f"A:{ONES12}\n", encoding="utf-8")
    process = lbw_process(["plot", str(presets), "--lora", "x", "--backend", "a1111", "--url", url, "--prompt", "x",
                           "-o", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _interrupt(process, accepted)  # lbw sits in a socket read, like a long sleep
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (130, b"", b"lbw: interrupted\n")


def _maps(process: subprocess.Popen) -> str:
    try:
        return Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch being imported")
def test_ctrl_c_while_torch_is_importing(assets: tuple[Path, Path], tmp_path: Path) -> None:
    model, lora = assets
    process = lbw_process(["eba", str(lora), "--model", str(model), "-o", str(tmp_path / "out"), *TINY],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _interrupt(process, until=lambda: "libtorch" in _maps(process))  # torch's libraries are being loaded
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (130, b"", b"lbw: interrupted\n")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_ctrl_c_inside_progress_bars_on_a_terminal(assets: tuple[Path, Path], tmp_path: Path) -> None:
    """stderr is a pseudo-terminal, so rich draws its live progress bars; Ctrl-C lands inside them."""
    import pty

    model, lora = assets
    out_dir = tmp_path / "out"
    controller, terminal = pty.openpty()
    process = lbw_process(["eba", str(lora), "--model", str(model), "--blocks", "IN01,IN02,IN04,IN05,OUT03,OUT11",
                           "-o", str(out_dir), *TINY], stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    screen = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    _interrupt(process, until=lambda: len(list((out_dir / "cache").glob("*.png"))) >= 2)
    out, _ = process.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(controller)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace")).replace("\r", "\n")
    lines = [line for line in text.splitlines() if line.startswith("lbw:")]
    assert process.returncode == 130 and out == b""
    assert len(lines) == 1 and lines[0].startswith("lbw: interrupted: stopped after "), text
    assert "Traceback" not in text and "cells" in text  # the bars were there


# ------------------------------------------------------------------------------ presets as LBW loads them


def test_presets_check_reports_what_lbw_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "lbwpresets.txt"
    file.write_bytes((
        f"\ufeffFirst:{ONES12}\r\n"
        f"n=1:{ONES12}\r\n"
        f" Spaced :{ONES12}\n"
        f"a,b,c,d:{','.join(['1'] * 17)}\n"
        f"a,b:{','.join(['1'] * 16)}\n"
        f"q:1,1,q,{','.join(['1'] * 9)}\n"
        f"x>y:{ONES12}\n"
        f"split\x0cTwo:{ONES12}\n"
    ).encode())
    assert run(["presets", "check", str(file)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{file}:1: warning: the file starts with a byte order mark: LBW reads it as part of the first name "
        "('\\ufeffFirst'), so `lbw=First` finds nothing and runs at full strength; save the file as UTF-8 "
        "without BOM",
        f"{file}:2: warning: the name 'n=1' contains '=': LBW loads it, but in a prompt `lbw=n=1` holds a second "
        "'=', so the web UI reads that item as a multiplier and fails ('could not convert string to float')",
        f"{file}:3: warning: spaces around the name ' Spaced ': LBW strips them (`lbw=Spaced` works), but its "
        "tag list shows them until 'Reload Tags', and `lbw=` with the spaces finds nothing (full strength)",
        f"{file}:5: error: the name 'a,b' holds 1 of the line's commas: LBW loads the line under that name with "
        "16 values and fails when a prompt uses it",
        f"{file}:6: error: value 3 'q' is not a number, R, U, X, X+d or X-d (at position 7); LBW loads the line "
        "as 'q' but a prompt using it fails in LBW",
        f"{file}:7: warning: the name 'x>y' contains '>': a prompt tag ends at '>', so no prompt can name it",
        f"{file}:8: error: no ':' (expected NAME:v1,v2,...); LBW ignores it",
        f"{file}: 6 presets, 3 errors, 4 warnings",
    ]
    assert run(["presets", "show", str(file), "n=1", "Spaced", "a,b,c,d", "Two"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"n=1:{ONES12}", f"Spaced:{ONES12}", f"a,b,c,d:{','.join(['1'] * 17)}", f"Two:{ONES12}"]
    assert run(["presets", "show", str(file), "q"]) == 2
    assert capsys.readouterr().err.startswith(f"lbw: error: preset 'q' (line 6 of {file}) cannot be used: value 3")
    new = f"New:{','.join(['0.5'] * 12)}"
    before = file.read_bytes()
    assert run(["presets", "add", str(file), new]) == 0
    assert file.read_bytes() == before + new.encode() + b"\n"  # BOM, CRLF and the \f line break kept


# ------------------------------------------------------------------------------------ negative vectors


NEGATIVE12 = "-1,0,0,0,0,0,0,0,0,0,0,-0.5"


def test_vectors_may_start_with_a_minus_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["weights", "parse", NEGATIVE12]) == 0
    assert capsys.readouterr().out == f"{NEGATIVE12}\n"
    assert run(["weights", "parse", "--to", "20", NEGATIVE12, "--fill", "-0.25"]) == 0
    assert capsys.readouterr().out == "-1,-0.25,-0.25,-0.25,-0.25,0,0,-0.25,0,0,0,0,0,0,0,0,-0.5,-0.25,-0.25,-0.25\n"
    assert run(["weights", "show", "-.5,0,0,0,0,0,0,0,0,0,0,0"]) == 0
    assert "│ BASE  │   -0.5 │" in capsys.readouterr().out
    assert run(["weights", "convert", NEGATIVE12, "--to", "20", "--name", "Neg"]) == 0
    assert capsys.readouterr().out == "Neg:-1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,-0.5,0,0,0\n"
    assert run(["weights", "convert", "-1,0.5", "--from", "inspire", "--to", "20", "--present", "input.4"]) == 0
    assert capsys.readouterr().out == "-1,0,0,0,0,0.5,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n"  # an Inspire vector too
    assert run(["weights", "sdscripts", "-1," + ",".join(["1"] * 16)]) == 0
    assert capsys.readouterr().out == ('"down_lr_weight=0,1,1,0,1,1,0,1,1,0,0,0" "mid_lr_weight=1" '
                                       '"up_lr_weight=0,0,0,1,1,1,1,1,1,1,1,1"\n')
    assert run(["weights", "parse", "--", NEGATIVE12]) == 0  # an explicit -- still works
    assert capsys.readouterr().out == f"{NEGATIVE12}\n"
    file = tmp_path / "p.txt"
    assert run(["presets", "add", str(file), NEGATIVE12]) == 2
    assert capsys.readouterr().err == "lbw: error: a preset needs a name: write NAME:v1,v2,...\n"
    assert run(["weights", "parse", NEGATIVE12, "--too", "26"]) == 2  # a mistyped option is still an error
    assert "No such option: --too" in capsys.readouterr().err
