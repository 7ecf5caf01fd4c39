"""Fast Frobenius norms vs dense ΔW norms on SDXL-like module shapes at rank 32 (fp16 inputs).

Prints, per case, the median time of the fast norm and of the dense norm (build ΔW, then its norm: the
baseline, measured in the same run) and their ratio; then the same for all cases together.

    .venv/bin/python benchmarks/bench_norms.py [--repeat 7] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from lbw.adapters import dense_frobenius_norm, frobenius_norm, kind_of_roles

RANK = 32


def _lora(gen, out, inp, kernel=None, rank=RANK, tucker=False):
    r = lambda *s: torch.randn(*s, generator=gen).to(torch.float16)  # noqa: E731
    alpha = torch.tensor(16.0)
    if kernel is None:
        return {"lora_up": r(out, rank), "lora_down": r(rank, inp), "alpha": alpha}
    if tucker:
        return {"lora_up": r(out, rank, 1, 1), "lora_mid": r(rank, rank, *kernel),
                "lora_down": r(rank, inp, 1, 1), "alpha": alpha}
    return {"lora_up": r(out, rank, 1, 1), "lora_down": r(rank, inp, *kernel), "alpha": alpha}


def _loha(gen, out, inp, rank):
    r = lambda *s: torch.randn(*s, generator=gen).to(torch.float16)  # noqa: E731
    return {"hada_w1_a": r(out, rank), "hada_w1_b": r(rank, inp), "hada_w2_a": r(out, rank),
            "hada_w2_b": r(rank, inp), "alpha": torch.tensor(4.0)}


def _lokr(gen, rank):
    r = lambda *s: torch.randn(*s, generator=gen).to(torch.float16)  # noqa: E731
    alpha = torch.tensor(4.0)
    return {"lokr_w1": r(8, 8), "lokr_w2_a": r(160, rank), "lokr_w2_b": r(rank, 160), "alpha": alpha}


def cases() -> dict[str, list[dict[str, torch.Tensor]]]:
    """Named groups of modules with the shapes of one SDXL transformer layer and its neighbours."""
    gen = torch.Generator().manual_seed(0)
    layer = [_lora(gen, 1280, 1280) for _ in range(6)] + [_lora(gen, 1280, 2048) for _ in range(2)]
    layer += [_lora(gen, 10240, 1280), _lora(gen, 1280, 5120)]
    return {
        "lora: one SDXL transformer layer (10 modules)": layer,
        "lora: 640-ch attention [640, 640] x4": [_lora(gen, 640, 640) for _ in range(4)],
        "locon: conv 3x3 [1280, 1280, 3, 3]": [_lora(gen, 1280, 1280, (3, 3))],
        "locon tucker: conv 3x3 [1280, 1280, 3, 3]": [_lora(gen, 1280, 1280, (3, 3), tucker=True)],
        "loha r=8: [1280, 1280]": [_loha(gen, 1280, 1280, 8)],
        "loha r=32: [1280, 1280] (dense fallback)": [_loha(gen, 1280, 1280, RANK)],
        "lokr: 8x8 ⊗ (160x32·32x160)": [_lokr(gen, RANK)],
    }


def median_seconds(
    fast: Callable[[], object], dense: Callable[[], object], repeat: int, sync: Callable[[], None]
) -> tuple[float, float]:
    """Medians of both, timed alternately so a change in machine load hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (fast, dense):  # warm-up
        fn()
    for _ in range(repeat):
        for fn, bucket in ((fast, times[0]), (dense, times[1])):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def norms(modules: list[dict[str, torch.Tensor]], norm: Callable[..., float]) -> list[float]:
    return [norm(kind_of_roles(m), m) for m in modules]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, rank {RANK}, "
          f"median of {args.repeat}")
    print(f"{'case':48} {'fast ms':>9} {'dense ms':>9} {'speed-up':>9} {'max rel diff':>13}")
    total_fast = total_dense = 0.0
    for name, modules in cases().items():
        modules = [{k: v.to(device) for k, v in m.items()} for m in modules]
        fast = partial(norms, modules, frobenius_norm)
        dense = partial(norms, modules, dense_frobenius_norm)
        diff = max(abs(a - b) / b for a, b in zip(fast(), dense(), strict=True))
        t_fast, t_dense = median_seconds(fast, dense, args.repeat, sync)
        total_fast += t_fast
        total_dense += t_dense
        print(f"{name:48} {t_fast * 1e3:9.2f} {t_dense * 1e3:9.2f} {t_dense / t_fast:8.1f}x {diff:13.2e}")
    ratio = total_dense / total_fast
    print(f"{'all cases':48} {total_fast * 1e3:9.2f} {total_dense * 1e3:9.2f} {ratio:8.1f}x")


if __name__ == "__main__":
    main()
