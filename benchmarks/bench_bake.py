"""Benchmark ``lbw bake`` and ``lbw merge`` against a plain safetensors load + save of the same file.

Synthetic SDXL rank-32 fp16 LoRAs (lbw's fixtures, ~228 MB each) are written to a temporary folder. Measured in
this run, medians of several repeats:
- floor: ``safetensors.torch.load_file`` + ``save_file`` of the input (the practical floor for any rewrite);
- floor+: the floor plus what every correct LoRA writer also does: SHA-256 of the data region
  (``sshs_model_hash``) and fsync (atomic write);
- bake: ``lbw.services.bake.bake`` with a mixed block vector (target ≤ 1.5x the floor);
- peak memory of a bake, in a child process: peak RSS (VmHWM) minus the RSS after imports (target ≤ 2x the
  file size);
- merge of two such LoRAs without ``--rank`` (target ≤ 3x the floor).

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

# VmHWM (this process's peak RSS): unlike ru_maxrss, it is not inherited from the parent across fork/exec.
CHILD = """
import sys
from lbw.domain.layouts import XL20
from lbw.domain.weights import BlockWeights
from lbw.services.bake import bake
import torch, safetensors.torch  # noqa: F401 - loaded before the baseline
def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))
before = status_kb("VmRSS:")
values = tuple([0.75] + [(0.0, 0.5, -0.5, 1.75, 1.0, 2.5)[i % 6] for i in range(19)])
bake(sys.argv[1], sys.argv[2], BlockWeights(XL20, values, "Mixed"), options=None)
print(before, status_kb("VmHWM:"))
"""


def median_time(action: Callable[[], object], repeats: int, cleanup: Callable[[], None]) -> float:
    """Median wall time of ``action`` over ``repeats`` runs, ``cleanup`` between runs (not timed)."""
    times = []
    for _ in range(repeats):
        cleanup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    cleanup()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()

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
        print(f"fixtures: 2 x SDXL rank {args.rank} fp16, {size / 1e6:.1f} MB each "
              f"({time.perf_counter() - start:.1f} s to generate)")
        out = work / "out.safetensors"

        def remove() -> None:
            out.unlink(missing_ok=True)

        def floor() -> None:
            save_file(load_file(str(a)), str(out))

        def floor_plus() -> None:
            save_file(load_file(str(a)), str(out))
            with open(out, "rb") as handle:
                hashlib.sha256(handle.read()).hexdigest()
                os.fsync(handle.fileno())

        values = tuple([0.75] + [(0.0, 0.5, -0.5, 1.75, 1.0, 2.5)[i % 6] for i in range(19)])
        weights = BlockWeights(XL20, values, "Mixed")

        def do_bake() -> None:
            bake(a, out, weights)

        def do_merge() -> None:
            sources = [open_source(parse_spec(f"{a}:0.8"), Defaults()), open_source(parse_spec(f"{b}:0.5"), Defaults())]
            merge(sources, out)
            for source in sources:
                source.lora.close()

        t_floor = median_time(floor, args.repeats, remove)
        t_floor_plus = median_time(floor_plus, args.repeats, remove)
        t_bake = median_time(do_bake, args.repeats, remove)
        t_merge = median_time(do_merge, args.repeats, remove)
        child = subprocess.run([sys.executable, "-c", CHILD, str(a), str(out)], capture_output=True, text=True,
                               check=True)
        before_kb, peak_kb = (int(v) for v in child.stdout.split())
        added = (peak_kb - before_kb) * 1024

        print(f"floor  load+save            median {t_floor:7.3f} s")
        print(f"floor+ load+save+sha256+fsync median {t_floor_plus:7.3f} s")
        print(f"bake   mixed XL20 vector     median {t_bake:7.3f} s   ratio {t_bake / t_floor:5.2f}x floor "
              f"(target <= 1.5x), {t_bake / t_floor_plus:5.2f}x floor+")
        print(f"merge  2 LoRAs, no --rank    median {t_merge:7.3f} s   ratio {t_merge / t_floor:5.2f}x floor "
              f"(target <= 3x), {t_merge / t_floor_plus:5.2f}x floor+")
        print(f"bake peak memory: +{added / 1e6:.1f} MB over the {before_kb / 1e3:.0f} MB after imports = "
              f"{added / size:4.2f}x the file size (target <= 2x)")


if __name__ == "__main__":
    main()
