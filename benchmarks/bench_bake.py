"""Benchmark ``lbw bake`` and ``lbw merge`` against a plain safetensors load + save of the same file.

Synthetic SDXL rank-32 fp16 LoRAs (lbw's fixtures, ~228 MB each) are written to a temporary folder. Each repeat
runs every case once, in turn, so that machine load hits all of them alike, each after an ``os.sync`` (untimed:
the disk writes of one case must not slow the next); the medians are printed:
- floor: ``safetensors.torch.load_file`` + ``save_file`` of the input (the practical floor for any rewrite);
- floor+: the floor plus what the issue requires of every write, done one after the other: SHA-256 of the
  written data region (``sshs_model_hash``, read back from the page cache through a 1 MiB buffer; the legacy
  hash reads 64 KiB more) and an fsync (atomic write);
- bake: ``lbw.services.bake.bake`` with a mixed 20-value block vector (target <= 1.5x the floor);
- merge floor: ``load_file`` of both inputs + ``save_file`` of all their tensors in one file (the bytes a merge
  without ``--rank`` reads and writes: its output is as large as both inputs together); merge floor+: that plus
  the SHA-256 of the written data and an fsync, as above;
- merge of two such LoRAs without ``--rank`` (target <= 2x the merge floor).
Both ratios are printed for bake (to the floor) and merge (to the merge floor; and to the single-file floor, the
ratio given before the merge floor existed). Peak memory is measured in a child process per case: VmHWM (the
child's own peak RSS; ru_maxrss would include the parent's) minus VmRSS after the imports, against the input
size (one file for bake, both for merge; targets: bake <= 2x, merge <= 1.5x).

Run: ``.venv/bin/python benchmarks/bench_bake.py [--repeats 3] [--rank 32]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

VALUES = tuple([0.75] + [(0.0, 0.5, -0.5, 1.75, 1.0, 2.5)[i % 6] for i in range(19)])

# One case in a fresh process; prints the RSS after imports and the peak RSS (VmHWM), in kB.
CHILD = """
import sys
import torch, safetensors.torch  # noqa: F401 - loaded before the baseline
from lbw.domain.layouts import XL20
from lbw.domain.weights import BlockWeights
from lbw.services.bake import bake
from lbw.services.merge import merge
from lbw.services.sources import Defaults, open_source, parse_spec
def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))
case, out, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]
before = status_kb("VmRSS:")
if case == "floor":
    safetensors.torch.save_file(safetensors.torch.load_file(inputs[0]), out)
elif case == "mfloor":
    both = {f"{i}.{k}": v for i, path in enumerate(inputs) for k, v in safetensors.torch.load_file(path).items()}
    safetensors.torch.save_file(both, out)
    del both
elif case == "bake":
    bake(inputs[0], out, BlockWeights(XL20, tuple(float(v) for v in sys.argv[4].split(",")), "Mixed"))
else:
    merge([open_source(parse_spec(f"{inputs[0]}:0.8"), Defaults()),
           open_source(parse_spec(f"{inputs[1]}:0.5"), Defaults())], out)
print(before, status_kb("VmHWM:"))
"""


def peak_memory(case: str, out: Path, inputs: list[str]) -> tuple[int, int]:
    """(RSS after imports, peak RSS) in bytes of one case run in a child process."""
    out.unlink(missing_ok=True)
    child = subprocess.run([sys.executable, "-c", CHILD, case, str(out), *inputs], capture_output=True,
                           text=True, check=True)
    out.unlink(missing_ok=True)
    before_kb, peak_kb = (int(v) for v in child.stdout.split())
    return before_kb * 1024, peak_kb * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    from lbw.domain.layouts import XL20
    from lbw.domain.weights import BlockWeights
    from lbw.files.fixtures import write_fixture
    from lbw.services.bake import bake
    from lbw.services.merge import merge
    from lbw.services.sources import Defaults, open_source, parse_spec

    with tempfile.TemporaryDirectory(prefix="lbw-bench-bake-") as folder:
        work = Path(folder)
        start = time.perf_counter()
        a = write_fixture("sdxl", work / "a.safetensors", rank=args.rank, dtype="fp16", seed=0)
        b = write_fixture("sdxl", work / "b.safetensors", rank=args.rank, alpha=args.rank // 2, dtype="fp16", seed=1)
        size = a.stat().st_size
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; fixtures: 2 x SDXL rank {args.rank} fp16, "
              f"{size / 1e6:.1f} MB each ({time.perf_counter() - start:.1f} s to generate); "
              f"medians of {args.repeats}")
        out = work / "out.safetensors"
        weights = BlockWeights(XL20, VALUES, "Mixed")

        def floor() -> None:
            save_file(load_file(str(a)), str(out))

        def merge_floor() -> None:
            save_file({f"{i}.{k}": v for i, path in enumerate((a, b)) for k, v in load_file(str(path)).items()},
                      str(out))

        def merge_floor_plus() -> None:
            merge_floor()
            hash_and_sync()

        def floor_plus() -> None:
            save_file(load_file(str(a)), str(out))
            hash_and_sync()

        def hash_and_sync() -> None:
            digest, buffer = hashlib.sha256(), bytearray(1 << 20)
            with open(out, "rb+", buffering=0) as handle:
                handle.seek(8 + int.from_bytes(handle.read(8), "little"))
                while count := handle.readinto(buffer):
                    digest.update(memoryview(buffer)[:count])
                handle.seek(0x100000)
                hashlib.sha256(handle.read(0x10000)).hexdigest()
                os.fsync(handle.fileno())
            digest.hexdigest()

        def do_bake() -> None:
            bake(a, out, weights)

        def do_merge() -> None:
            sources = [open_source(parse_spec(f"{a}:0.8"), Defaults()), open_source(parse_spec(f"{b}:0.5"), Defaults())]
            merge(sources, out)
            for source in sources:
                source.lora.close()

        cases: dict[str, Callable[[], None]] = {"floor": floor, "floor+": floor_plus, "bake": do_bake,
                                                "mfloor": merge_floor, "mfloor+": merge_floor_plus,
                                                "merge": do_merge}
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, action in cases.items():
                out.unlink(missing_ok=True)
                os.sync()  # the previous case's data reach the disk first, not during this case
                begin = time.perf_counter()
                action()
                times[name].append(time.perf_counter() - begin)
        out.unlink(missing_ok=True)
        median = {name: statistics.median(values) for name, values in times.items()}

        def row(name: str, label: str, target: str = "") -> None:
            shown = " ".join(f"{t:.3f}" for t in times[name])
            line = f"{label:36s} median {median[name]:6.3f} s  (runs {shown})"
            if name == "bake":
                line += (f"   {median[name] / median['floor']:4.2f}x floor{target}, "
                         f"{median[name] / median['floor+']:4.2f}x floor+")
            if name == "merge":
                line += (f"   {median[name] / median['mfloor']:4.2f}x merge floor{target}, "
                         f"{median[name] / median['mfloor+']:4.2f}x merge floor+, "
                         f"{median[name] / median['floor']:4.2f}x floor")
            print(line)

        row("floor", "floor   safetensors load + save")
        row("floor+", "floor+  + sha256 + fsync")
        row("bake", "bake    mixed XL20 vector", " (target <= 1.5x)")
        row("mfloor", "merge floor  load both + save")
        row("mfloor+", "merge floor+ + sha256 + fsync")
        row("merge", "merge   2 LoRAs, no --rank", " (target <= 2x)")
        vector = ",".join(str(v) for v in VALUES)
        both = size + b.stat().st_size  # the merged file is about as large (its header aside)
        memory_cases = (("floor", [str(a)], size, ""), ("bake", [str(a), vector], size, " (target <= 2x)"),
                        ("mfloor", [str(a), str(b)], both, ""), ("merge", [str(a), str(b)], both, " (target <= 1.5x)"))
        for case, inputs, against, target in memory_cases:
            before, peak = peak_memory(case, out, inputs)
            grown = peak - before
            print(f"peak memory {case:6s}: +{grown / 1e6:6.1f} MB over {before / 1e6:.0f} MB after imports = "
                  f"{grown / against:4.2f}x the input ({against / 1e6:.0f} MB){target}"
                  + (f", {grown / both:4.2f}x the merged file" if case in ("mfloor", "merge") else ""))


if __name__ == "__main__":
    main()
