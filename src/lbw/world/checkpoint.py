"""Resumable training state without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step-NNNNNN`` holding ``tensors.safetensors`` (model parameters, optimizer moments,
EMA shadows, torch's RNG state) and ``state.json`` (step, optimizer hyper-parameters, loss history, wall time).
It is written to a temporary folder and renamed into place, so a killed run leaves the previous checkpoint intact.

Example:
    >>> save_checkpoint(work, 250, {"unet.conv_in.weight": w}, {"loss": [0.3]})
    >>> latest_checkpoint(work).name
    'step-000250'
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_PREFIX = "step-"


def save_checkpoint(work: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` under ``work`` atomically; keep only the two newest; return its folder."""
    work.mkdir(parents=True, exist_ok=True)
    final = work / f"{_PREFIX}{step:06d}"
    staging = work / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    save_file(contiguous, str(staging / "tensors.safetensors"))
    (staging / "state.json").write_text(json.dumps({"step": step, **state}), encoding="utf-8")
    for name in ("tensors.safetensors", "state.json"):
        with open(staging / name, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in sorted(work.glob(f"{_PREFIX}*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint folder under ``work``, or None."""
    done = [path for path in sorted(work.glob(f"{_PREFIX}*")) if (path / "state.json").is_file()]
    return done[-1] if done else None


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON state of one checkpoint folder."""
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return load_file(str(folder / "tensors.safetensors")), state


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensor names (``optim.3.exp_avg``)."""
    out: dict[str, torch.Tensor] = {}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{prefix}.{index}.{key}"] = tensor
    return out


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "optim"
) -> None:
    """Load the per-parameter state written by ``optimizer_tensors`` (hyper-parameters stay as configured)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        head, _, rest = name.partition(".")
        if head != prefix:
            continue
        index, _, key = rest.partition(".")
        state.setdefault(int(index), {})[key] = tensor
    current = optimizer.state_dict()
    current["state"] = state
    optimizer.load_state_dict(current)
