"""Benchmark: one plan rendered in one process against the same plan over Ray workers on this machine.

The plan is an Effective Block Analyzer run over all 26 blocks of the tiny SD1.5-layout model (64x64, 4 steps,
CFG 7, fp32 on the CPU). The local run is one process with one torch thread (``--local-threads 1,2`` adds runs
with more; the fastest is the baseline: on a busy machine more threads can be slower); the Ray run starts
a local Ray (as ``lbw plot --ray --workers N`` does) with N CPU workers sharing the cores. Start-up costs are
printed apart: Ray's own start, the workers' start (a process each, torch imported, files checked) and the first
render (each worker imports diffusers and loads the model), then the median of warm renders (each into a fresh cache).
The images of both runs are compared (automatic batch sizes: one batch locally, one unit per worker, so float
rounding may differ by one level of 255).

    .venv/bin/python benchmarks/bench_ray.py [--workers 2] [--seeds 1] [--repeats 1] [--local-threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lbw.render.backends.diffusers_backend import DiffusersBackend
from lbw.render.distributed import LOCAL_OBJECT_STORE_BYTES, LOCAL_TEMP, RayBackend, RayOptions
from lbw.render.plan import LoraSpec, Plan
from lbw.render.runner import RunResult, run_plan
from lbw.services.analyze import eba_plan
from lbw.services.demo_render import build_demo_assets, demo_settings


def timed_runs(plan: Plan, backend: object, folder: Path, repeats: int) -> tuple[float, list[float], RunResult]:
    """(the first run's seconds, the warm runs' seconds, the last result), each run into a fresh cache."""
    start = time.perf_counter()
    result = run_plan(plan, backend, folder / "first", grid=False)  # type: ignore[arg-type]
    first = time.perf_counter() - start
    warm = []
    for repeat in range(repeats):
        start = time.perf_counter()
        result = run_plan(plan, backend, folder / f"warm{repeat}", grid=False)  # type: ignore[arg-type]
        warm.append(time.perf_counter() - start)
    return first, warm, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--local-threads", default="1", help="torch threads of the local runs, e.g. 1,2")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory(prefix="lbw-bench-ray-") as tmp:
        folder = Path(tmp)
        model, lora = build_demo_assets(folder / "assets")
        plan = eba_plan(LoraSpec(path=str(lora), name="tiny"), model=str(model), settings=demo_settings(seeds))
        cells = len(plan.jobs())

        local: dict[int, tuple[float, float]] = {}
        for threads in sorted({int(t) for t in args.local_threads.split(",")}):
            torch.set_num_threads(threads)
            backend = DiffusersBackend(device="cpu")
            first, warm, local_result = timed_runs(plan, backend, folder / f"local{threads}", args.repeats)
            backend.close()
            local[threads] = (first, statistics.median(warm))

        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", object_store_memory=LOCAL_OBJECT_STORE_BYTES, _temp_dir=str(LOCAL_TEMP))
        ray_start = time.perf_counter() - start
        spread = RayBackend({"device": "cpu"}, RayOptions(workers=args.workers))
        start = time.perf_counter()
        spread.prepare(plan)
        workers_start = time.perf_counter() - start
        ray_first, ray_warm, ray_result = timed_runs(plan, spread, folder / "ray", args.repeats)
        per_worker = list(spread.cells_per_worker)
        spread.close()
        start = time.perf_counter()
        ray.shutdown()
        ray_stop = time.perf_counter() - start
        worst = max(int(np.abs(np.asarray(local_result.image(job), dtype=np.int16)
                               - np.asarray(ray_result.image(job), dtype=np.int16)).max()) for job in plan.jobs())
    ray_median = statistics.median(ray_warm)
    threads = max(1, cores // args.workers)
    print(f"EBA over 26 blocks, tiny SD1.5 layout, 64x64, {plan.settings.steps} steps, seeds {args.seeds}: {cells} "
          f"cells, CPU fp32, {cores} cores, {args.repeats} warm repeat(s)")
    for count, (first, warm) in local.items():
        print(f"local, 1 process x {count} thread(s): first run {first:.2f} s (model load included), warm {warm:.2f} s "
              f"= {cells / warm:.1f} cells/s")
    print(f"Ray, {args.workers} workers x {threads} thread(s): Ray start {ray_start:.2f} s, workers start "
          f"{workers_start:.2f} s, first run {ray_first:.2f} s (diffusers and the model loaded in each worker), "
          f"warm {ray_median:.2f} s = {cells / ray_median:.1f} cells/s, Ray stop {ray_stop:.2f} s; cells per worker "
          f"{per_worker}")
    best = min(local, key=lambda count: local[count][1])
    first, warm = local[best]
    print(f"ratio (warm, best local time / Ray time): {warm / ray_median:.2f}x; one cold run end to end: local "
          f"{first:.2f} s, Ray {ray_start + workers_start + ray_first + ray_stop:.2f} s (start and stop included); "
          f"max pixel difference {worst}")

if __name__ == "__main__":
    main()
