"""Benchmark: cells as batch elements against sequential rendering with repatching, and how exact it is.

Speed: the Effective Block Analyzer over 26 blocks x 2 seeds (54 images) on the tiny SD1.5-layout model
(``lbw.services.demo_render.build_demo_assets``, 64x64, 4 steps, CFG 7): ``--lora-mode merge`` (the engine before
issue #11: weights rewritten per cell, the seeds of a cell batched, ``--batch-size 4``) against the batched engine
(every cell and seed in a few batches, automatic batch size). Each mode runs in its own process (peak RSS is per
process); the model is loaded once, then each repeat renders every cell again into a fresh cache (median of the
repeats; the load is reported apart). Prints cells per second, peak RSS and the ratio.

Exactness: per cell, the final latents (relative L2 error) and the images (max abs difference, levels of 255) of
the batched engine against merged weights, and against the LoRA baked with the cell's weights, on the tiny SD1.5
(the analyzer's 27 cells, 2 seeds) and SDXL models (21 cells of the XL20 analyzer, 1 seed).

    .venv/bin/python benchmarks/bench_batched.py [--repeats 3] [--threads 1] [--no-exactness]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SEEDS = (1, 2)


def sd15_plan(folder: Path, seeds: tuple[int, ...] = SEEDS):
    from lbw.render.plan import LoraSpec
    from lbw.services.analyze import eba_plan
    from lbw.services.demo_render import build_demo_assets, demo_settings

    model, lora = build_demo_assets(folder)
    return eba_plan(LoraSpec(path=str(lora), name="tiny"), model=str(model), settings=demo_settings(seeds))


def speed_child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from lbw.render.backends.diffusers_backend import DiffusersBackend
    from lbw.render.runner import run_plan

    torch.set_num_threads(args.threads)
    plan = sd15_plan(Path(args.assets))
    options = {"lora_mode": "merge", "batch_size": 4} if args.mode == "merge" else {}
    backend = DiffusersBackend(device="cpu", dtype="fp32", **options)
    out = Path(args.out)
    start = time.perf_counter()
    result = run_plan(plan, backend, out / "first", grid=False)
    first = time.perf_counter() - start
    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        run_plan(plan, backend, out / f"repeat{repeat}", grid=False)
        times.append(time.perf_counter() - start)
    images = {f"{job.cell_index}_{job.seed}": np.asarray(result.image(job)) for job in plan.jobs()}
    np.savez(out / "images.npz", **images)
    print(json.dumps({"mode": args.mode, "cells": len(plan.jobs()), "first": first, "median": statistics.median(times),
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "batch_size": backend.batch_size or backend._batch_limit(plan)}))


def speed(args: argparse.Namespace, folder: Path) -> None:
    import numpy as np

    rows = {}
    for mode in ("merge", "batched"):
        out = folder / mode
        command = [sys.executable, __file__, "--mode", mode, "--assets", str(folder / "assets"), "--out", str(out),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(output.strip().splitlines()[-1])
    merged, batched = (np.load(folder / mode / "images.npz") for mode in ("merge", "batched"))
    worst = max(int(np.abs(merged[k].astype(int) - batched[k].astype(int)).max()) for k in merged.files)
    cells = rows["batched"]["cells"]
    print(f"Analyzer over 26 blocks x {len(SEEDS)} seeds ({cells} images), tiny SD1.5 layout, 64x64, 4 steps, CFG 7, "
          f"CPU fp32, torch threads {args.threads}, median of {args.repeats} warm repeats")
    print("mode                      render s   cells/s   first run s (with load)   peak RSS MiB")
    labels = {"merge": "sequential + repatching", "batched": "batched"}
    for mode, row in rows.items():
        size = row['batch_size'] if mode == 'merge' else f"auto: {row['batch_size']}"
        print(f"{labels[mode]:25s} {row['median']:8.2f}  {cells / row['median']:8.2f}   {row['first']:8.2f}"
              f"                {row['peak'] / 2**20:8.0f}   batch size {size}")
    print(f"ratio (sequential / batched): {rows['merge']['median'] / rows['batched']['median']:.2f}x   "
          f"max pixel difference between the two: {worst}")


def _relative(a, b) -> float:
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


def _measure(plan, baked_plan, label: str) -> None:
    """Latents and images of ``plan`` (batched vs merged) and of its weighted cell vs ``baked_plan``."""
    import numpy as np

    from lbw.render.backends.diffusers_backend import DiffusersBackend

    jobs = plan.jobs()
    batched_backend = DiffusersBackend(device="cpu", dtype="fp32", batch_size=len(jobs))
    merged_backend = DiffusersBackend(device="cpu", dtype="fp32", lora_mode="merge")
    batched = batched_backend.latents(plan, jobs)
    merged = merged_backend.latents(plan, jobs)
    baked_jobs = baked_plan.jobs()
    baked_backend = DiffusersBackend(device="cpu", dtype="fp32")
    baked = baked_backend.latents(baked_plan, baked_jobs)
    images = {}
    for name, backend in (("batched", batched_backend), ("merged", merged_backend)):
        by_job = dict(backend.render(plan, jobs))
        images[name] = np.stack([np.asarray(by_job[job], int) for job in jobs])
    baked_images = np.stack([np.asarray(image, int) for _, image in baked_backend.render(baked_plan, baked_jobs)])
    weighted = [index for index, job in enumerate(jobs) if job.cell.label == "W"]
    print(f"{label}: {len(jobs)} cells; batched vs merged: latents relative error {_relative(batched, merged):.1e}, "
          f"max pixel difference {int(np.abs(images['batched'] - images['merged']).max())}; "
          f"cell W vs the LoRA baked with W: latents {_relative(batched[weighted], baked):.1e}, "
          f"pixels {int(np.abs(images['batched'][weighted] - baked_images).max())}")


def exactness(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from lbw.domain.layouts import SD26, XL20
    from lbw.domain.weights import weights_from_numbers
    from lbw.files.fixtures import lora_tensors_for_models
    from lbw.render.backends.diffusers_backend import load_pipeline
    from lbw.render.plan import Cell, LoraSpec, Plan
    from lbw.render.tiny import build_tiny_sdxl
    from lbw.services.bake import bake
    from lbw.services.demo_render import demo_settings

    mixed = {"SD26": (1, 0, 0.5, -0.5, 1.5, 1, 0, 0.5, 1, -0.5, 1.5, 0, 1, 0.5, 1, 1.5, -0.5, 0, 1, 0.5, 1, 1, -0.5,
                      1.5, 0, 1),
             "XL20": (0.5, 1, 0, -0.5, 1.5, 0.5, 1, 0, 1.5, -0.5, 0.5, 1, 0, 1.5, 0.5, -0.5, 1, 0.5, 0, 1)}
    plan = sd15_plan(folder / "assets")
    sdxl = build_tiny_sdxl(folder / "sdxl")
    pipe = load_pipeline(sdxl, device="cpu", dtype=torch.float32)
    xl_lora = folder / "sdxl-locon.safetensors"
    save_file(lora_tensors_for_models(pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], rank=2, alpha=64.0,
                                      preset="lycoris_full", conv_rank=2, conv_alpha=64.0, seed=5), str(xl_lora))
    del pipe
    xl_settings = replace(demo_settings((1,)), steps=2)
    xl_cells = [Cell("source", (1.0,) * 20)] + [
        Cell(f"{block}_0.5", tuple(0.5 if b == block else 1.0 for b in XL20.ids), block) for block in XL20.ids]
    for layout, layout_ids, base, label in (("SD26", SD26, plan, "tiny SD1.5"), ("XL20", XL20, None, "tiny SDXL")):
        if base is None:
            base = Plan(kind="custom", layout="XL20", cells=tuple(xl_cells), settings=xl_settings,
                        loras=(LoraSpec(path=str(xl_lora), name="xl"),), model=str(sdxl))
        lora = Path(base.loras[0].path)
        baked = folder / f"baked-{layout}.safetensors"
        bake(lora, baked, weights_from_numbers(layout_ids, tuple(map(float, mixed[layout]))))
        cells = (*base.cells, Cell("W", tuple(map(float, mixed[layout]))))
        with_w = replace(base, kind="custom", cells=cells, eba=None)
        baked_plan = replace(with_w, cells=(Cell("W", (1.0,) * len(layout_ids.ids)),),
                             loras=(replace(base.loras[0], path=str(baked)),))
        _measure(with_w, baked_plan, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-exactness", action="store_true")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        speed_child(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lbw-bench-batched-") as tmp:
        folder = Path(tmp)
        sd15_plan(folder / "assets")
        speed(args, folder)
        if not args.no_exactness:
            exactness(folder)


if __name__ == "__main__":
    main()
