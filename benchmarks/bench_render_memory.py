"""Benchmark: peak memory of the diffusers backend's LoRA modes on a full-size model shape (random weights, CPU).

Each mode runs in its own process (peak RSS is per process): build the UNet and text encoder(s) at full size with
random weights (fp32 unless --dtype), attach a full-size LoCon (``lbw.files.fixtures``), run one UNet step on a
CFG batch (2 x --images) of --latent x --latent latents, and report the process's peak RSS against the model's
own size:

- ``none``: the model alone (no LoRA), the floor;
- ``merge``: ``WeightPatcher`` (W0 copy and dense ΔW per touched layer, weights rewritten);
- ``batched``: ``BatchedLoras`` (the LoRA's factors only, weights untouched).

    .venv/bin/python benchmarks/bench_render_memory.py [--arch sd15|sdxl] [--latent 64] [--rank 16] [--images 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

MODES = ("none", "merge", "batched")
FIXTURES = {"sd15": "sd15_locon", "sdxl": "sdxl_locon"}


def rss_bytes() -> int:
    """The current resident set size of this process (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def child(args: argparse.Namespace) -> None:
    import torch

    from lbw.files.fixtures.architectures import build_models
    from lbw.files.lora_file import LoraFile
    from lbw.render.weighting import LoraState

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    floor = rss_bytes()
    start = time.perf_counter()
    unet, encoders = build_models(args.arch)
    models = [unet, *encoders]
    with torch.no_grad():
        for index, model in enumerate(models):
            models[index] = model = model.to_empty(device="cpu").to(dtype)
            generator = torch.Generator().manual_seed(index)
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.normal_(0.0, 0.02, generator=generator)
    unet, encoders = models[0], models[1:]
    model_bytes = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    loaded = rss_bytes()
    pipe = SimpleNamespace(unet=unet, text_encoder=encoders[0],
                           text_encoder_2=encoders[1] if len(encoders) > 1 else None)
    # a few blocks at 1 and 0.5, the others at 0 (LBW's fill): the merge engine still holds every touched layer
    state = LoraState(1.0, 1.0, {b: 1.0 for b in ("BASE", "IN01", "IN02", "M00", "OUT03", "OUT11")} | {"IN04": 0.5})
    engine = None
    factor_bytes = 0
    if args.mode == "merge":
        from lbw.render.backends.lora_patch import WeightPatcher

        WeightPatcher(pipe, [LoraFile.open(args.lora)]).apply([state])
    elif args.mode == "batched":
        from lbw.render.backends.lora_layers import BatchedLoras

        engine = BatchedLoras(pipe, [LoraFile.open(args.lora)])
        engine.set_states([[state]] * args.images)
        factor_bytes = engine.factor_bytes()
    attached = rss_bytes()
    batch = 2 * args.images
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, unet.config.in_channels, args.latent, args.latent, generator=generator).to(dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator).to(dtype)
    extra = {}
    if args.arch == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(batch, 1280, dtype=dtype),
                                       "time_ids": torch.zeros(batch, 6, dtype=dtype)}}
    step = time.perf_counter()
    with torch.inference_mode():
        if engine is not None:
            with engine.attached():
                unet(latents, torch.tensor(500), encoder_hidden_states=context, **extra)
        else:
            unet(latents, torch.tensor(500), encoder_hidden_states=context, **extra)
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": args.mode, "model_bytes": model_bytes, "floor": floor, "loaded": loaded,
                      "attached": attached, "peak": peak, "factor_bytes": factor_bytes,
                      "build_s": step - start, "step_s": done - step}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd15", choices=sorted(FIXTURES))
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--lora", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    from lbw.files.fixtures import write_fixture

    with tempfile.TemporaryDirectory(prefix="lbw-bench-mem-") as tmp:
        lora = write_fixture(FIXTURES[args.arch], Path(tmp) / "locon.safetensors", rank=args.rank, dtype="fp16")
        lora_bytes = lora.stat().st_size
        rows = []
        for mode in args.modes.split(","):
            command = [sys.executable, __file__, "--mode", mode, "--lora", str(lora), "--arch", args.arch,
                       "--latent", str(args.latent), "--images", str(args.images), "--dtype", args.dtype]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    gib = 1024**3
    model = rows[0]["model_bytes"]
    print(f"{args.arch} shape, random weights, {args.dtype}, CPU; LoCon rank {args.rank} ({lora_bytes / gib:.3f} GiB "
          f"file, fp16); one UNet step, batch {2 * args.images} (CFG), {args.latent}x{args.latent} latents")
    print(f"model parameters: {model / gib:.2f} GiB")
    print("mode      peak RSS  peak - interpreter  / model   LoRA held  step s")
    for row in rows:
        above = row["peak"] - row["floor"]
        print(f"{row['mode']:8s} {row['peak'] / gib:8.2f}  {above / gib:18.2f}  {above / model:7.2f}x "
              f"{row['factor_bytes'] / gib:9.3f}  {row['step_s']:6.1f}")


if __name__ == "__main__":
    main()
