"""Atomic writes: all or nothing, modes like a plain open(), clear errors; temporary names that name their
writer, target locks, the no-clobber final step, writes through links."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lbw.errors import OutputError
from lbw.files.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from lbw.files.locks import lock_path, target_lock
from lbw.files.stale import clean_stale_temps, parse_temp_name, temp_name, writer_gone


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x"
    assert _mode(tmp_path / "a.txt") == 0o644


def test_replacing_keeps_the_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert _mode(target) == 0o640


def test_an_exception_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_bad_destinations_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        write_text_atomic(tmp_path / "missing" / "a.txt", "x")
    with pytest.raises(OutputError, match="is a folder"):
        write_text_atomic(tmp_path, "x")


# --- temporary file names, stale temporary files, locks, no-clobber, links (#8) ---

KEEP_LOCK = textwrap.dedent("""
    import sys
    from lbw.files.locks import target_lock
    with target_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def _lbw_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".lbw-" in p.name)


def test_temp_names_name_their_writer_and_stay_short() -> None:
    name = temp_name("face.safetensors")
    assert name.startswith(".face.safetensors.lbw-") and name.endswith(".tmp")
    owner = parse_temp_name(name)
    assert owner is not None and owner.pid == os.getpid()
    assert not writer_gone(owner)  # this very process
    long_name = temp_name("é" * 200 + ".safetensors")
    assert len(long_name.encode()) <= 200 and parse_temp_name(long_name) is not None
    for foreign in (".face.safetensors.k2j4h6g8.tmp", "face.tmp", ".face.safetensors.lbw-lock",
                    name.replace(".tmp", ".tmp.bak"), name[1:], name.replace(f"-{os.getpid()}-", "-0-")):
        assert parse_temp_name(foreign) is None, foreign


def test_a_long_file_name_can_be_written(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 240 + ".txt")  # 244 bytes: no room left for a temporary name's additions
    write_text_atomic(target, "x")
    with target_lock(target):
        assert len(lock_path(target).name.encode()) < 160
    assert target.read_text() == "x" and _lbw_names(tmp_path) == []


def test_writing_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "sheet.toml"
    real.write_text("old")
    link = tmp_path / "sheet.toml"
    link.symlink_to(Path("real") / "sheet.toml")
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(Path("real") / "sheet.toml")
    assert real.read_text() == "new"
    dangling = tmp_path / "later.toml"
    dangling.symlink_to(tmp_path / "real" / "later.toml")
    write_text_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.toml").read_text() == "made"


def test_no_clobber_keeps_a_file_that_appears_during_the_write(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(OutputError, match=r"appeared while lbw was writing it .* Use --force") as raised, \
            atomic_path(target, replace=False) as tmp:
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")  # another program creates the output meanwhile
    assert str(raised.value).startswith(f"{target}: ")
    assert target.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(OutputError, match="already exists"):
        write_bytes_atomic(target, b"mine", replace=False)
    write_bytes_atomic(tmp_path / "new.bin", b"mine", replace=False)
    assert (tmp_path / "new.bin").read_bytes() == b"mine"


def test_before_commit_runs_only_for_a_complete_write(tmp_path: Path) -> None:
    calls: list[bytes] = []
    target = tmp_path / "a.txt"
    with atomic_path(target, before_commit=lambda: calls.append(b"ok")) as tmp:
        tmp.write_text("x")
        assert calls == []
    assert calls == [b"ok"] and target.read_text() == "x"
    with pytest.raises(ValueError), atomic_path(target, before_commit=lambda: calls.append(b"no")) as tmp:
        raise ValueError
    assert calls == [b"ok"]


def test_the_lock_refuses_another_process_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", KEEP_LOCK, str(target)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert lock_path(target).read_text() == f"{holder.pid}\n"
        with pytest.raises(OutputError) as raised, target_lock(target):
            pass
        assert str(raised.value) == (f"{target}: another lbw process (pid {holder.pid}) is writing this file right "
                                     "now; nothing was written (wait for it to finish, or choose another output)")
        with pytest.raises(OutputError, match=r"kept this file locked for over 0.2 s; gave up waiting"), \
                target_lock(target, wait=0.2):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0 and _lbw_names(tmp_path) == []  # the holder removed its lock file
    with target_lock(target) as path:
        assert path == lock_path(target) and path.exists()
    assert _lbw_names(tmp_path) == []


def test_the_lock_is_reentrant_in_a_thread_and_awaited_by_another(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    order: list[str] = []
    refusals: list[str] = []

    def waiting() -> None:
        with target_lock(target, wait=30):
            order.append("other")

    def not_waiting() -> None:
        try:
            with target_lock(target):
                order.append("never")
        except OutputError as error:
            refusals.append(str(error))

    with target_lock(target), target_lock(tmp_path / "." / "a.txt"):  # the same lock, spelt differently
        waiter, refused = threading.Thread(target=waiting), threading.Thread(target=not_waiting)
        waiter.start()
        refused.start()
        refused.join(30)
        waiter.join(0.3)
        assert waiter.is_alive()  # waiting for this thread
        order.append("first")
    waiter.join(30)
    assert order == ["first", "other"] and _lbw_names(tmp_path) == []
    assert refusals == [f"{target}: another thread of this process is writing this file right now; nothing was "
                        "written (wait for it to finish, or choose another output)"]


def test_a_write_that_runs_out_of_room_is_one_clear_error(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import resource, signal, sys
            from lbw.errors import OutputError
            from lbw.files.atomic import write_bytes_atomic
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
            try:
                write_bytes_atomic(sys.argv[1], b"x" * 5000)
            except OutputError as error:
                print(error)
        """), str(tmp_path / "big.bin")], capture_output=True, text=True, timeout=60)
    assert child.stdout == f"{tmp_path / 'big.bin'}: cannot write: File too large; nothing was written\n"
    assert list(tmp_path.iterdir()) == []


def test_stale_lock_files_nobody_holds_are_removed(tmp_path: Path) -> None:
    stale = lock_path(tmp_path / "a.safetensors")
    stale.write_text("12345\n")  # left by a killed writer
    big = tmp_path / ".notes.lbw-lock"
    big.write_text("x" * 1000)  # not a file lbw would write: kept
    assert clean_stale_temps(tmp_path).removed == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.lbw-lock"]
