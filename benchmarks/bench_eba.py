"""Benchmark: an Effective Block Analyzer run over all 26 blocks of a tiny SD1.5-layout model.

lbw's pipeline (one model load, ΔW computed once, weights swapped in place where they change, prompt embeddings
cached, seeds batched, duplicate cells rendered once) against a naive baseline measured in the same run that, for
every cell, reloads the model from disk, re-reads and re-applies the LoRA and renders one image. Both produce the
same cells (checked). Prints medians, cells per second and the ratio.

    .venv/bin/python benchmarks/bench_eba.py [--repeats 3] [--seeds 1,2] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lbw.files.lora_file import LoraFile
from lbw.render.backends.diffusers_backend import DiffusersBackend, load_pipeline, resolve_device
from lbw.render.backends.lora_patch import WeightPatcher
from lbw.render.plan import LoraSpec, Plan
from lbw.render.runner import run_plan
from lbw.render.weighting import lora_states
from lbw.services.analyze import eba_plan
from lbw.services.demo_render import build_demo_assets, demo_settings


def lbw_run(plan: Plan, out: Path, device: str) -> tuple[float, dict]:
    start = time.perf_counter()
    backend = DiffusersBackend(device=device, dtype="fp32", batch_size=4)
    result = run_plan(plan, backend, out, cache_dir=out / "cache", grid=False)
    elapsed = time.perf_counter() - start
    return elapsed, {job: np.asarray(result.image(job)) for job in plan.jobs()}


def naive_run(plan: Plan, device: str) -> tuple[float, dict]:
    settings = plan.settings
    images = {}
    start = time.perf_counter()
    for job in plan.jobs():
        pipe = load_pipeline(plan.model, device=device, dtype=torch.float32)
        patcher = WeightPatcher(pipe, [LoraFile.open(spec.path) for spec in plan.loras], device=device)
        patcher.apply(lora_states(plan, job))
        output = pipe(settings.prompt, negative_prompt=settings.negative_prompt, num_inference_steps=settings.steps,
                      guidance_scale=settings.cfg, width=settings.width, height=settings.height,
                      generator=[torch.Generator("cpu").manual_seed(job.seed)])
        images[job] = np.asarray(output.images[0].convert("RGB"))
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory(prefix="lbw-bench-eba-") as tmp:
        folder = Path(tmp)
        model, lora = build_demo_assets(folder / "assets")
        plan = eba_plan(LoraSpec(path=str(lora), name="tiny"), model=str(model), settings=demo_settings(seeds))
        cells = len(plan.jobs())
        lbw_times, naive_times = [], []
        worst = 0
        for repeat in range(args.repeats):
            lbw_time, lbw_images = lbw_run(plan, folder / f"lbw{repeat}", device)
            naive_time, naive_images = naive_run(plan, device)
            lbw_times.append(lbw_time)
            naive_times.append(naive_time)
            worst = max(worst, max(int(np.abs(lbw_images[j].astype(int) - naive_images[j]).max()) for j in lbw_images))
    lbw_median, naive_median = statistics.median(lbw_times), statistics.median(naive_times)
    print(f"EBA over 26 blocks, tiny SD1.5 layout, 64x64, {plan.settings.steps} steps, seeds {args.seeds}: "
          f"{cells} cells, device {device} (fp32), torch threads {args.threads}, {args.repeats} repeats")
    print(f"lbw pipeline   median {lbw_median:8.2f} s  {cells / lbw_median:7.2f} cells/s")
    print(f"naive baseline median {naive_median:8.2f} s  {cells / naive_median:7.2f} cells/s")
    print(f"ratio (naive / lbw): {naive_median / lbw_median:.2f}x   max pixel difference between the two: {worst}")


if __name__ == "__main__":
    main()
