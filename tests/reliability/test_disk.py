"""Files on disk under stress, with real processes: SIGKILLed writers, concurrent writers, links (#8).

- a SIGKILLed writer's temporary file is removed by the next lbw write into the folder (and the user is told);
  a live writer's is kept, and nothing that is not provably a dead lbw writer's is ever removed;
- a failed ``meta`` edit writes nothing (no backup, no temporary file);
- two ``meta`` edits of one file both land; two ``bake``s to one new output: exactly one succeeds, the other
  exits 2 with one clear line;
- ``meta`` through a symbolic link edits the file it points to and keeps the link; a hard-linked file is refused
  unless ``--hardlinks in-place`` (every name sees the edit) or ``--hardlinks split`` (only this name).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lbw.files.atomic import write_text_atomic
from lbw.files.fixtures import write_fixture
from lbw.files.hashes import addnet_hash
from lbw.files.locks import lock_path
from lbw.files.safetensors_header import read_header
from lbw.files.stale import clean_stale_temps, parse_temp_name, temp_name
from lbw.interfaces.cli.app import run

CLI = "import sys; from lbw.interfaces.cli.app import run; sys.exit(run(sys.argv[1:]))"

# Writes a temporary file for argv[1] through atomic_path, says so, then waits for a line on stdin.
WRITER = textwrap.dedent("""
    import sys
    from lbw.files.atomic import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"x" * 300_000)
        print(tmp.name, flush=True)
        sys.stdin.readline()
""")

# A bake whose writer SIGKILLs its own process once the first MiB of the output is in the temporary file.
KILLED_BAKE = textwrap.dedent("""
    import builtins, os, signal, sys
    import lbw.files.writer as writer
    from lbw.interfaces.cli.app import run

    class Dying:
        def __init__(self, handle):
            self.handle, self.written = handle, 0
        def write(self, data):
            self.handle.write(data)
            self.written += len(data)
            if self.written > 1 << 20:
                self.handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return len(data)
        def __getattr__(self, name):
            return getattr(self.handle, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.handle.close()

    writer.open = lambda path, mode="r", *a, **k: Dying(builtins.open(path, mode, *a, **k)) if "w" in mode \\
        else builtins.open(path, mode, *a, **k)
    run(sys.argv[1:])
""")

KEEP_LOCK = textwrap.dedent("""
    import sys
    from lbw.files.locks import target_lock
    with target_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


@pytest.fixture()
def lora(tmp_path: Path) -> Path:
    return write_fixture("sd15", tmp_path / "style.safetensors", rank=2, select="layers_0_|down_blocks_0")


def _cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _lbw_litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".lbw-" in p.name)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# --- stale temporary files ---


def test_a_killed_bakes_temp_file_is_removed_by_the_next_write(lora: Path, tmp_path: Path, capsys) -> None:
    big = write_fixture("sd15", tmp_path / "big.safetensors", rank=16, dtype="fp32",
                        select="down_blocks_0|up_blocks_3|encoder_layers_[0-3]_")
    killed = subprocess.run([sys.executable, "-c", KILLED_BAKE, "bake", str(big), "-w", "OUTALL", "-o",
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and not (tmp_path / "out.safetensors").exists()
    owner = parse_temp_name(temps[0].name)
    assert owner is not None and owner.pid != os.getpid()
    size = temps[0].stat().st_size
    assert size > 1 << 20

    assert run(["meta", str(lora), "--author", "me"]) == 0  # the next lbw write into the folder
    err = capsys.readouterr().err
    assert err == (f"lbw: note: removed 1 stale temporary file ({size / 1e6:.1f} MB) left by an interrupted lbw "
                   f"run (pid {owner.pid}) in {tmp_path}\n")
    assert _lbw_litter(tmp_path) == []
    assert read_header(lora).metadata["ssmd_author"] == "me"


def test_a_live_writers_temp_file_is_kept(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "sheet.toml")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        name = writer.stdout.readline().strip()
        assert parse_temp_name(name) is not None and parse_temp_name(name).pid == writer.pid  # type: ignore[union-attr]
        assert clean_stale_temps(tmp_path).removed == ()
        write_text_atomic(tmp_path / "other.txt", "y")  # a write into the folder, while the other one writes
        assert (tmp_path / name).stat().st_size == 300_000
    finally:
        writer.communicate("\n", timeout=30)
    assert writer.returncode == 0
    assert (tmp_path / "sheet.toml").stat().st_size == 300_000 and _lbw_litter(tmp_path) == []


def test_only_provably_dead_lbw_writers_files_are_removed(tmp_path: Path) -> None:
    own = temp_name("a.safetensors")
    pid_part = f"-{os.getpid()}-"
    host, boot = re.match(r"\..*\.lbw-([0-9a-f]{8})-([0-9a-f]{8})-", own).groups()  # type: ignore[union-attr]
    dead = own.replace(pid_part, f"-{_dead_pid()}-")
    other_boot = "f" * 8 if boot != "f" * 8 else "e" * 8
    removable = {
        "dead pid": dead.replace("a.", "dead.", 1),
        "reused pid": re.sub(rf"-{os.getpid()}-[0-9]+-", f"-{os.getpid()}-1-", own.replace("a.", "reused.", 1)),
        "other boot": own.replace(f"-{boot}-", f"-{other_boot}-").replace("a.", "boot.", 1),
    }
    kept = {
        "live pid": own.replace("a.", "live.", 1),
        "other host": dead.replace(f"-{host}-", f"-{'1' * 8 if host == '0' * 8 else '0' * 8}-")
                          .replace("a.", "host.", 1),
        "older lbw": ".a.safetensors.k2j4h6g8.tmp",
        "other program": "notes.tmp",
        "locked": dead.replace("a.", "locked.", 1),
    }
    for name in [*removable.values(), *kept.values()]:
        (tmp_path / name).write_bytes(b"z" * 1000)
    (tmp_path / "target.bin").write_bytes(b"keep me")
    link = dead.replace("a.", "link.", 1)
    (tmp_path / link).symlink_to(tmp_path / "target.bin")
    folder = dead.replace("a.", "folder.", 1)
    (tmp_path / folder).mkdir()
    holder = os.open(tmp_path / kept["locked"], os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # someone still writes it, whatever its name says
    try:
        cleanup = clean_stale_temps(tmp_path)
    finally:
        os.close(holder)
    assert sorted(item.path.name for item in cleanup.removed) == sorted(removable.values())
    assert cleanup.size == 3000
    assert cleanup.message().startswith("removed 3 stale temporary files (3.0 kB) left by interrupted lbw runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept.values(), "target.bin", link, folder])
    assert (tmp_path / "target.bin").read_bytes() == b"keep me"


# --- a failed edit writes nothing ---


def test_a_failed_meta_edit_leaves_no_backup_and_no_temp(lora: Path, tmp_path: Path) -> None:
    before = lora.read_bytes()
    bad_text = subprocess.run([sys.executable.encode(), b"-c", CLI.encode(), b"meta", bytes(lora), b"--name",
                               b"caf\xff"], capture_output=True, timeout=60)
    assert bad_text.returncode == 2
    assert bad_text.stderr.decode().startswith("lbw: error: --set-name 'caf\\xff': not UTF-8 text")
    full_disk = subprocess.run(
        [sys.executable, "-c", "import resource, signal, sys\n"
         "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
         f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) - 4096}, {len(before) - 4096}))\n" + CLI,
         "meta", str(lora), "--name", "Style"], capture_output=True, text=True, timeout=60)
    assert full_disk.returncode == 2
    assert full_disk.stderr == f"lbw: error: {lora}: cannot write: File too large; nothing was written\n"
    assert lora.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.safetensors"]


# --- concurrent writers ---


def test_two_meta_edits_waiting_on_a_third_writer_all_land(lora: Path, tmp_path: Path) -> None:
    original = lora.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", KEEP_LOCK, str(lora)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    edits = [_cli("meta", str(lora), "--set", "first=1"), _cli("meta", str(lora), "--set", "second=2")]
    for edit in edits:
        assert edit.stderr is not None
        assert edit.stderr.readline() == (f"lbw: note: waiting for another lbw process (pid {holder.pid}), which is "
                                          f"writing {lora}\n")
    holder.communicate("\n", timeout=30)
    for edit in edits:
        _, err = edit.communicate(timeout=60)
        assert edit.returncode == 0, err
    metadata = read_header(lora).metadata
    assert (metadata["first"], metadata["second"]) == ("1", "2")
    assert metadata["sshs_model_hash"] == addnet_hash(lora)
    assert (tmp_path / "style.safetensors.backup").read_bytes() == original  # once, the original
    assert _lbw_litter(tmp_path) == []


def test_concurrent_meta_edits_of_one_file_all_land(lora: Path, tmp_path: Path) -> None:
    for round_ in range(3):
        edits = [_cli("meta", str(lora), "--set", f"r{round_}k{k}=v", "--no-backup") for k in range(3)]
        for edit in edits:
            edit.communicate(timeout=60)
            assert edit.returncode == 0
    metadata = read_header(lora).metadata
    assert {key for key in metadata if re.fullmatch(r"r\dk\d", key)} == {f"r{r}k{k}" for r in range(3)
                                                                          for k in range(3)}
    assert metadata["sshs_model_hash"] == addnet_hash(lora) and _lbw_litter(tmp_path) == []


def test_two_bakes_to_one_new_output_never_both_succeed(lora: Path, tmp_path: Path) -> None:
    out = tmp_path / "baked.safetensors"
    bakes = {weights: _cli("bake", str(lora), "-w", weights, "-o", str(out)) for weights in ("OUTALL", "INALL")}
    results = {weights: (bake.communicate(timeout=300), bake.returncode) for weights, bake in bakes.items()}
    codes = sorted(code for _, code in results.values())
    assert codes == [0, 2]
    winner = next(weights for weights, (_, code) in results.items() if code == 0)
    loser_err = next(err for (_, err), code in results.values() if code == 2)
    assert loser_err.count("\n") == 1 and loser_err.startswith(f"lbw: error: {out}: ")
    assert "is writing this file right now" in loser_err or "already exists" in loser_err
    assert read_header(out).metadata["lbw_baked_weights"].startswith(
        {"OUTALL": "OUTALL:", "INALL": "INALL:"}[winner])
    assert read_header(out).metadata["sshs_model_hash"] == addnet_hash(out)
    assert _lbw_litter(tmp_path) == []


@pytest.mark.parametrize("command", ["bake", "merge"])
def test_an_output_another_lbw_writes_is_refused_at_once(lora: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / "baked.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", KEEP_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        argv = ["bake", str(lora), "-w", "OUTALL"] if command == "bake" else ["merge", f"{lora}:0.5", f"{lora}:0.3"]
        run_ = _cli(*argv, "-o", str(out))
        _, err = run_.communicate(timeout=300)
    finally:
        holder.communicate("\n", timeout=30)
    assert run_.returncode == 2
    assert err == (f"lbw: error: {out}: another lbw process (pid {holder.pid}) is writing this file right now; "
                   "nothing was written (wait for it to finish, or choose another output)\n")
    assert not out.exists() and _lbw_litter(tmp_path) == []


def test_an_overwrite_with_force_waits_for_the_other_writer(lora: Path, tmp_path: Path) -> None:
    out = tmp_path / "baked.safetensors"
    out.write_bytes(b"old")
    holder = subprocess.Popen([sys.executable, "-c", KEEP_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    bake = _cli("bake", str(lora), "-w", "OUTALL", "-o", str(out), "--force")
    assert bake.stderr is not None
    assert bake.stderr.readline() == (f"lbw: note: waiting for another lbw process (pid {holder.pid}), which is "
                                      f"writing {out}\n")
    assert out.read_bytes() == b"old"
    holder.communicate("\n", timeout=30)
    bake.communicate(timeout=300)
    assert bake.returncode == 0
    assert read_header(out).metadata["sshs_model_hash"] == addnet_hash(out) and _lbw_litter(tmp_path) == []


def test_a_bake_whose_source_hash_starts_late_still_completes(lora: Path, tmp_path: Path, monkeypatch) -> None:
    """The source is hashed on a pool thread while the modules are baked; on a busy machine that thread may
    start only after the last module (it used to find the memory map closed: exit 2 for no fault of the user)."""
    import time

    from lbw.domain.layouts import SD17
    from lbw.domain.weights import BlockWeights
    from lbw.files.mapped import MappedTensors
    from lbw.services.bake import bake

    hash_now = MappedTensors.data_sha256

    def late(self: MappedTensors) -> str:
        time.sleep(0.5)
        return hash_now(self)

    monkeypatch.setattr(MappedTensors, "data_sha256", late)
    report = bake(lora, tmp_path / "late.safetensors", BlockWeights.filled(SD17, 0.5))
    assert report.source_hash == addnet_hash(lora)
    assert read_header(tmp_path / "late.safetensors").metadata["lbw_baked_from_sshs_model_hash"] == addnet_hash(lora)


# --- links ---


def test_meta_through_a_symlink_edits_the_target_and_keeps_the_link(lora: Path, tmp_path: Path, capsys) -> None:
    ui = tmp_path / "ui" / "Lora"
    ui.mkdir(parents=True)
    link = ui / "style.safetensors"
    link.symlink_to(os.path.relpath(lora, ui))
    original = lora.read_bytes()
    assert run(["meta", str(link), "--author", "me", "--sidecar", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == str(lora) and result["link"] == str(link)
    assert result["backup"] == str(lora) + ".backup"
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(lora, ui)
    assert read_header(lora).metadata["ssmd_author"] == "me"
    assert read_header(lora).metadata["sshs_model_hash"] == addnet_hash(lora)
    assert Path(result["backup"]).read_bytes() == original
    assert result["sidecar"]["path"] == str(ui / "style.json") and (ui / "style.json").exists()  # beside the link
    assert sorted(p.name for p in ui.iterdir()) == ["style.json", "style.safetensors"]
    assert run(["meta", str(link), "--author", "you"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {lora} (through the link {link})"


def test_a_hard_linked_file_is_refused_unless_told_how(lora: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other-name.safetensors"
    os.link(lora, other)
    original = lora.read_bytes()
    assert run(["meta", str(lora), "--author", "me"]) == 2
    assert capsys.readouterr().err == (
        f"lbw: error: {lora}: has 2 hard links (other names share its bytes), so an atomic edit would give only "
        "this name the new metadata; choose --hardlinks in-place (every name sees the edit) or --hardlinks split "
        "(only this name gets an edited copy)\n")
    assert lora.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == [
        "other-name.safetensors", "style.safetensors"]


def test_hardlinks_in_place_edits_every_name(lora: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-name.safetensors"
    os.link(lora, other)
    inode, original = lora.stat().st_ino, lora.read_bytes()
    assert run(["meta", str(lora), "--author", "me", "--hardlinks", "in-place"]) == 0
    assert lora.stat().st_ino == inode and other.stat().st_ino == inode and lora.stat().st_nlink == 2
    assert read_header(other).metadata["ssmd_author"] == "me"
    assert read_header(other).metadata["sshs_model_hash"] == addnet_hash(other)
    assert (tmp_path / "style.safetensors.backup").read_bytes() == original
    assert _lbw_litter(tmp_path) == []
    # An interrupted in-place edit leaves the complete edited file; the next edit refuses to run over it.
    shutil.copyfile(lora, tmp_path / "style.safetensors.lbw-edit")
    assert run(["meta", str(lora), "--author", "you", "--hardlinks", "in-place"]) == 2
    assert read_header(other).metadata["ssmd_author"] == "me"


def test_hardlinks_split_edits_only_this_name(lora: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-name.safetensors"
    os.link(lora, other)
    original = lora.read_bytes()
    assert run(["meta", str(lora), "--author", "me", "--hardlinks", "split", "--no-backup"]) == 0
    assert read_header(lora).metadata["ssmd_author"] == "me"
    assert other.read_bytes() == original and lora.stat().st_nlink == 1 and other.stat().st_nlink == 1


def test_the_lock_file_of_a_killed_holder_does_not_block_the_next_writer(lora: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", KEEP_LOCK, str(lora)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    holder.kill()
    holder.wait(timeout=30)
    assert lock_path(lora).exists()  # a SIGKILL cannot clean up
    assert run(["meta", str(lora), "--author", "me", "--no-backup"]) == 0
    assert read_header(lora).metadata["ssmd_author"] == "me" and _lbw_litter(tmp_path) == []
