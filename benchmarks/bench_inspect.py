"""Benchmark ``lbw inspect`` on a synthetic SDXL rank-32 fp16 LoRA against a dense-ΔW baseline.

The file (986 modules, 2958 tensors, ~228 MB) is written by ``lbw.files.fixtures`` into a temporary folder.
Measured in the same run, each a median of several repetitions:

- fast:       ``inspect_file`` (header, modules, per-block Gram-matrix norms, metadata; hashes off)
- fast+hash:  the same plus the sshs_model_hash / legacy hash of the 228 MB data region
- dense:      the baseline: the same file opened the same way, every module's ΔW built and its norm taken
              (``dense_frobenius_norm``), at the faster of 1 thread and torch's default thread count;
              "dense+hash" adds the same hashing the fast path does

It also checks that the fast and dense per-module norms agree. Run: ``.venv/bin/python benchmarks/bench_inspect.py``
(``--rank``, ``--repeats``, ``--dense-repeats`` to change the workload).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lbw.adapters import lora as lora_math
from lbw.files.fixtures import write_fixture
from lbw.files.lora_file import LoraFile
from lbw.services.inspect import file_hashes, inspect_file, module_norms


def timed(function: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    """Median seconds over ``repeats`` calls, all timings, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def dense_norms(path: Path, threads: int) -> dict[str, float]:
    """Baseline: open the file the same way and build every module's ΔW to take its norm."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lora = LoraFile.open(path)
        return {m.name: lora_math.dense_frobenius_norm(lora.module_tensors(m)) for m in lora.modules}
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-repeats", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sdxl_r32.safetensors"
        start = time.perf_counter()
        write_fixture("sdxl", path, rank=args.rank, alpha=args.rank / 2, dtype="fp16", seed=0)
        print(f"fixture: SDXL rank {args.rank} fp16, {path.stat().st_size / 1e6:.1f} MB, "
              f"written in {time.perf_counter() - start:.1f} s")
        inspect_file(path)  # warm the page cache and imports

        fast, fast_all, report = timed(lambda: inspect_file(path, hashes=False), args.repeats)
        hashed, hashed_all, _ = timed(lambda: inspect_file(path), args.repeats)
        default_threads = torch.get_num_threads()
        dense_by_threads = {}
        for threads in sorted({1, default_threads}):
            median, all_times, dense = timed(lambda t=threads: dense_norms(path, t), args.dense_repeats)
            dense_by_threads[threads] = (median, all_times, dense)
        best_threads = min(dense_by_threads, key=lambda t: dense_by_threads[t][0])
        dense_time, _, dense_result = dense_by_threads[best_threads]

        hash_time, _, _ = timed(lambda: file_hashes(path), args.repeats)
        fast_result = module_norms(LoraFile.open(path))
        worst = max(abs(fast_result[name] - value) / value for name, value in dense_result.items())

    print(f"modules: {report.module_count}, tensors: {report.tensor_count}, blocks: {len(report.blocks)}")
    print(f"fast inspect (no hash)   median {fast:.3f} s   runs {[round(t, 3) for t in fast_all]}")
    print(f"fast inspect (with hash) median {hashed:.3f} s   runs {[round(t, 3) for t in hashed_all]}")
    for threads, (median, all_times, _) in dense_by_threads.items():
        print(f"dense ΔW baseline ({threads} thread{'s' if threads > 1 else ''}) median {median:.3f} s   "
              f"runs {[round(t, 3) for t in all_times]}")
    print(f"hashing alone (sshs_model_hash + legacy) median {hash_time:.3f} s")
    ratio, ratio_hashed = dense_time / fast, (dense_time + hash_time) / hashed
    print(f"ratio dense / fast (no hash):                 {ratio:.1f}x")
    print(f"ratio dense+hash / fast (with hash):          {ratio_hashed:.1f}x")
    print(f"largest relative difference fast vs dense norm: {worst:.2e}")
    print(f"targets: >= 20x faster than dense: {'met' if min(ratio, ratio_hashed) >= 20 else 'NOT met'}; "
          f"under 2 s: {'met' if hashed < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
