"""Reliability rounds for files on disk: SIGKILLed writers, concurrent ``meta`` edits, concurrent ``bake``s.

Every round runs the real CLI (``lbw.interfaces.cli.app.run``) in real child processes on small real LoRA files
(SD1.5 rank-4 fixtures from ``lbw.files.fixtures``):

- kill: a ``bake`` (even rounds) or an in-place ``meta`` edit (odd rounds) is SIGKILLed at a random moment: of its
  whole run (uniform over 1.2x its measured duration) in half the rounds, of its write (within 20 ms of its
  temporary file's appearance) in the others. Then another lbw write goes into the same folder. Counted: kills
  that left a temporary file, rounds with temporary or lock files still there after the next write, outputs
  that are damaged (a file that exists but does not read back with matching hashes), meta edits half applied.
- meta: two ``meta FILE --set KEY=...`` edits of one file, released at the same instant. Counted: exit codes,
  lost edits (an edit that exited 0 but whose key is not in the file) and damaged files.
- bake: two ``bake`` runs to one new OUT without ``--force``, with different weights, released at the same
  instant. Counted: exit codes, silently replaced outputs (both exit 0), refusals that are not one clear
  ``lbw: error:`` line with exit code 2, and outputs that are not exactly the winner's.

Children are forked from this process after the imports (fast), or started as new interpreters with ``--exec``
(slower, the most faithful). Exit code 0 when no round failed.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python tools/reliability_rounds.py [--rounds 20] [--seed 0] [--exec]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lbw.interfaces.cli.app import run

# Everything a bake needs is imported before forking, so forked children start at once.
for _module in ("torch", "rich.console", "rich.progress", "rich.table", "lbw.adapters.registry",
                "lbw.adapters.scale", "lbw.files.lora_file", "lbw.files.mapped", "lbw.files.writer",
                "lbw.services.bake", "lbw.services.meta", "lbw.services.resolve"):
    importlib.import_module(_module)
importlib.import_module("torch").set_num_threads(1)

WEIGHTS = ("OUTALL", "INALL")
CLI = "import sys; from lbw.interfaces.cli.app import run; sys.exit(run(sys.argv[1:]))"


class Child:
    """One CLI run in a child process, optionally held at a barrier until ``release``."""

    def __init__(self, argv: list[str], logs: Path, name: str, *, use_exec: bool, barrier: int | None = None):
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        self.code: int | None = None
        self.started = time.monotonic()
        if use_exec:
            gate = [] if barrier is None else ["-c", f"import os; os.read({barrier}, 1); " + CLI]
            command = [sys.executable, *(gate or ["-c", CLI]), *argv]
            with open(self.out, "wb") as out, open(self.err, "wb") as err:
                self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                    command, stdout=out, stderr=err, pass_fds=() if barrier is None else (barrier,))
            self.pid = self.process.pid
            return
        self.process = None
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 70
            try:
                out = os.open(self.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                err = os.open(self.err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(out, 1)
                os.dup2(err, 2)
                if barrier is not None:
                    os.read(barrier, 1)
                code = run(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        if self.code is None:
            if self.process is not None:
                self.code = self.process.wait()
            else:
                self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.code

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def lbw_files(folder: Path) -> tuple[list[str], list[str]]:
    """(temporary files, lock files) in ``folder``: every ``.*.tmp`` (lbw's or not) and ``.*.lbw-lock``."""
    names = sorted(os.listdir(folder))
    return ([n for n in names if n.startswith(".") and n.endswith(".tmp")],
            [n for n in names if n.startswith(".") and n.endswith(".lbw-lock")])


def read_back(path: Path) -> dict[str, str] | None:
    """The metadata of a LoRA that reads back whole with its stored hash equal to its data's SHA-256, else None."""
    from lbw.files.safetensors_header import read_header

    try:
        header = read_header(path)
        with open(path, "rb") as handle:
            handle.seek(header.data_start)
            digest = hashlib.sha256(handle.read()).hexdigest()
    except Exception:  # any failure means damaged
        return None
    if header.metadata.get("sshs_model_hash") != digest:
        return None
    return dict(header.metadata)


def timed(argv: list[str], logs: Path, use_exec: bool) -> float:
    child = Child(argv, logs, "calibrate", use_exec=use_exec)
    code = child.wait()
    if code != 0:
        raise SystemExit(f"calibration run {argv} failed ({code}): {child.stderr()}")
    return time.monotonic() - child.started


def kill_rounds(work: Path, source: Path, rounds: int, rng: random.Random, use_exec: bool) -> dict[str, object]:
    folder, logs = work / "kill", work / "logs"
    folder.mkdir()
    edited = folder / "edited.safetensors"
    other = folder / "other.safetensors"
    shutil.copyfile(source, edited)
    shutil.copyfile(source, other)
    bake_argv = [str(source), "-w", "OUTALL", "-o"]
    durations = {
        "bake": timed(["bake", *bake_argv, str(folder / "calibrate.safetensors")], logs, use_exec),
        "meta": timed(["meta", str(edited), "--set", "calibrate=1", "--no-backup"], logs, use_exec),
    }
    (folder / "calibrate.safetensors").unlink()
    counts: Counter[str] = Counter()
    for index in range(rounds):
        what = "bake" if index % 2 == 0 else "meta"
        out = folder / f"baked{index}.safetensors"
        argv = ["bake", *bake_argv, str(out)] if what == "bake" else \
            ["meta", str(edited), "--set", f"round{index}=x", "--author", f"round {index}"]
        earlier = set(lbw_files(folder)[0])
        child = Child(argv, logs, f"kill{index}", use_exec=use_exec)
        if index % 4 < 2:  # any moment of the run
            delay = rng.uniform(0, 1.2 * durations[what])
            time.sleep(max(0.0, delay - (time.monotonic() - child.started)))
        else:  # a moment of the write: once the temporary file is there, within 20 ms
            deadline = child.started + 3 * durations[what]
            while not set(lbw_files(folder)[0]) - earlier and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, 0.02))
        with contextlib.suppress(ProcessLookupError):  # over already (a zombie takes the signal without effect)
            child.kill()
        code = child.wait()
        counts["killed" if code == -signal.SIGKILL else "finished before the kill"] += 1
        temps, _ = lbw_files(folder)
        counts["kills that left a temporary file"] += bool(temps) and code == -signal.SIGKILL
        # The damage check: an output exists only whole; the edited file is whole and old or new, never mixed.
        if what == "bake":
            if out.exists() and read_back(out) is None:
                counts["damaged outputs"] += 1
        else:
            after = read_back(edited)
            if after is None:
                counts["damaged outputs"] += 1
            elif (after.get(f"round{index}") == "x") != (after.get("ssmd_author") == f"round {index}"):
                counts["half-applied edits"] += 1
        # The next lbw write into the folder.
        nxt = Child(["meta", str(other), "--set", f"next{index}=1", "--no-backup"], logs, f"next{index}",
                    use_exec=use_exec)
        if nxt.wait() != 0:
            counts["next writes that failed"] += 1
        counts["cleanup notes printed"] += "stale temporary" in nxt.stderr()
        temps, locks = lbw_files(folder)
        counts["rounds with temporary files left after the next write"] += bool(temps)
        counts["rounds with lock files left after the next write"] += bool(locks)
    temps, locks = lbw_files(folder)
    temp_bytes = sum((folder / name).stat().st_size for name in temps)
    return {"durations_s": {k: round(v, 3) for k, v in durations.items()}, **counts,
            "temporary files at the end": f"{len(temps)} ({temp_bytes:,} bytes)", "lock files at the end": len(locks)}


def meta_rounds(work: Path, source: Path, rounds: int, use_exec: bool) -> dict[str, object]:
    folder, logs = work / "meta", work / "logs"
    folder.mkdir()
    target = folder / "shared.safetensors"
    shutil.copyfile(source, target)
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for index in range(rounds):
        gate_r, gate_w = os.pipe()
        children = {key: Child(["meta", str(target), "--set", f"{key}={index}"], logs, f"meta{index}{key}",
                               use_exec=use_exec, barrier=gate_r) for key in (f"a{index}", f"b{index}")}
        os.write(gate_w, b"xx")
        for key, child in children.items():
            code = child.wait()
            codes[str(code)] += 1
            metadata = read_back(target)
            if metadata is None:
                counts["damaged files"] += 1
            elif code == 0 and metadata.get(key) != str(index):
                counts["lost edits"] += 1
        os.close(gate_r)
        os.close(gate_w)
    temps, locks = lbw_files(folder)
    return {"exit codes": dict(codes), "lost edits": counts["lost edits"], "damaged files": counts["damaged files"],
            "temporary files left": len(temps), "lock files left": len(locks)}


def bake_rounds(work: Path, source: Path, rounds: int, use_exec: bool) -> dict[str, object]:
    from lbw.services.resolve import load_weights

    folder, logs = work / "bake", work / "logs"
    folder.mkdir()
    applied = {name: load_weights(name).weights for name in WEIGHTS}
    counts: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for index in range(rounds):
        out = folder / f"new{index}.safetensors"
        gate_r, gate_w = os.pipe()
        children = {name: Child(["bake", str(source), "-w", name, "-o", str(out)], logs, f"bake{index}{name}",
                                use_exec=use_exec, barrier=gate_r) for name in WEIGHTS}
        os.write(gate_w, b"xx")
        codes = {name: child.wait() for name, child in children.items()}
        os.close(gate_r)
        os.close(gate_w)
        pairs[",".join(str(code) for code in sorted(codes.values()))] += 1
        winners = [name for name, code in codes.items() if code == 0]
        if len(winners) > 1:
            counts["silently replaced outputs"] += 1
        for name, code in codes.items():
            if code != 0:
                lines = children[name].stderr().strip().splitlines()
                if code != 2 or len(lines) != 1 or not lines[0].startswith("lbw: error: "):
                    counts["unclear refusals"] += 1
                else:
                    counts["refusals: " + _reason(lines[0])] += 1
        metadata = read_back(out) if out.exists() else None
        if len(winners) == 1:
            baked = None if metadata is None else metadata.get("lbw_baked_weights")
            if baked is None or baked != applied[winners[0]].format():
                counts["outputs that are not the winner's"] += 1
    temps, locks = lbw_files(folder)
    return {"exit code pairs": dict(pairs), **counts, "temporary files left": len(temps),
            "lock files left": len(locks)}


def _reason(line: str) -> str:
    if "is writing this file" in line:
        return "another lbw is writing it"
    if "already exists" in line:
        return "already exists"
    if "appeared while" in line:
        return "created meanwhile"
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exec", dest="use_exec", action="store_true", help="new interpreters instead of forks")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lbw-rounds-"))
    (work / "logs").mkdir()
    started = time.monotonic()
    try:
        source = work / "source.safetensors"
        subprocess.run([sys.executable, "-c", "import sys; from lbw.files.fixtures import write_fixture; "
                        "write_fixture('sd15', sys.argv[1], rank=4, seed=1)", str(source)], check=True)
        report = {
            "kill": kill_rounds(work, source, args.rounds, rng, args.use_exec),
            "meta": meta_rounds(work, source, args.rounds, args.use_exec),
            "bake": bake_rounds(work, source, args.rounds, args.use_exec),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    failures = sum(int(report["kill"].get(k, 0)) for k in (  # type: ignore[union-attr]
        "rounds with temporary files left after the next write", "rounds with lock files left after the next write",
        "damaged outputs", "half-applied edits", "next writes that failed", "lock files at the end"))
    failures += sum(int(report["meta"][k]) for k in ("lost edits", "damaged files", "temporary files left",  # type: ignore[index]
                                                     "lock files left"))
    failures += sum(int(report["bake"].get(k, 0)) for k in (  # type: ignore[union-attr]
        "silently replaced outputs", "unclear refusals", "outputs that are not the winner's",
        "temporary files left", "lock files left"))
    report["failures"] = failures
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for section in ("kill", "meta", "bake"):
            print(f"{section} rounds ({args.rounds}):")
            for key, value in report[section].items():  # type: ignore[union-attr]
                print(f"  {key}: {value}")
        print(f"failures: {failures}   ({report['seconds']} s{', work kept in ' + str(work) if args.keep else ''})")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
