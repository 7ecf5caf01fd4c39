"""Benchmark: the built-in world at the demo's settings (64x64, 8 DPM++ 2M steps, CFG 5).

Issue #9's speed targets: one image in at most 0.3 s on this CPU, and the demo's analyzer (26 blocks + the source,
2 seeds: 54 images) under 30 s. Renders the analyzer plan of the world's gobuhime LoRA with lbw's diffusers backend
twice into fresh caches: the merge engine (weights rewritten per cell, a cell's seeds batched; the baseline) and the
batched engine (every cell and seed in a few batches, automatic batch size); the first run of each engine (it loads the
model) is reported apart. Prints seconds per image, the analyzer's wall time and the ratio (medians of the repeats).

    .venv/bin/python benchmarks/bench_world.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from lbw.render.backends.diffusers_backend import DiffusersBackend
    from lbw.render.plan import LoraSpec
    from lbw.render.runner import run_plan
    from lbw.services.analyze import eba_plan
    from lbw.services.demo_render import world_demo_assets, world_settings
    from lbw.world.assets import shipped

    if not shipped():
        print("the world's weights are not installed (lbw world package)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model, lora = world_demo_assets()
    plan = eba_plan(LoraSpec(path=str(lora), name=lora.stem), model=str(model), settings=world_settings((1, 2)))
    images = len(plan.jobs())
    results: dict[str, float] = {}
    for mode in ("merge", "batched"):
        backend = DiffusersBackend(device="cpu", lora_mode=mode)
        times = []
        for _ in range(args.repeats + 1):  # the first run also loads the model
            with tempfile.TemporaryDirectory() as scratch:
                began = time.perf_counter()
                run_plan(plan, backend, Path(scratch), grid=False)
                times.append(time.perf_counter() - began)
        backend.close()
        first, times = times[0], times[1:]
        results[mode] = statistics.median(times)
        print(f"{mode:>8}: analyzer {images} images in {results[mode]:.1f} s (median of {args.repeats}, "
              f"spread {min(times):.1f}-{max(times):.1f} s) = {results[mode] / images:.3f} s an image; "
              f"first run with the model load {first:.1f} s")
    print(f"batched / merge speed: {results['merge'] / results['batched']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
