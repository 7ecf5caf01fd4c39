"""The world's shipped weights: a diffusers folder and two kohya LoRAs inside the package, with a manifest.

``weights/manifest.json`` lists every shipped file with its size and sha256, the training configuration, the
generator version and the measured training times. ``check_manifest`` verifies the files against it (a test does).

Example:
    >>> folder = model_folder()            # lbw/world/weights/model (a diffusers StableDiffusionPipeline)
    >>> lora_path("gobuhime").name
    'gobuhime.safetensors'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lbw.errors import LbwError

WEIGHTS = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
LORAS = ("gobuhime", "sailor")


def weights_folder() -> Path:
    return WEIGHTS


def shipped() -> bool:
    """True when the trained weights are present in the package."""
    return (WEIGHTS / MANIFEST).is_file() and (WEIGHTS / "model" / "model_index.json").is_file()


def model_folder() -> Path:
    """The shipped world model (a diffusers folder)."""
    if not shipped():
        raise LbwError("the built-in world model is not in this installation (lbw/world/weights is missing); "
                       "train it with `lbw world train`")
    return WEIGHTS / "model"


def lora_path(name: str) -> Path:
    """One of the shipped LoRAs (``gobuhime`` or ``sailor``)."""
    if name not in LORAS:
        raise LbwError(f"unknown world LoRA {name!r}; expected one of {', '.join(LORAS)}")
    path = WEIGHTS / "loras" / f"{name}.safetensors"
    if not path.is_file():
        raise LbwError(f"the built-in LoRA {name} is not in this installation", where=str(path))
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path = WEIGHTS) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def check_manifest(folder: Path = WEIGHTS) -> list[str]:
    """Problems found comparing the files under ``folder`` with its manifest (empty: all good)."""
    manifest = read_manifest(folder)
    problems: list[str] = []
    listed = manifest["files"]
    for relative, entry in listed.items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{relative}: {path.stat().st_size} bytes, manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{relative}: sha256 differs from the manifest")
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST and relative not in listed:
            problems.append(f"{relative}: not in the manifest")
    return problems


def package(model: Path, loras: dict[str, Path], info: dict[str, Any], dest: Path = WEIGHTS) -> Path:
    """Copy a trained model folder and LoRAs into ``dest`` and write the manifest (replacing what was there)."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model, staging / "model", ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.ckpt"))
    (staging / "loras").mkdir()
    for name, path in loras.items():
        shutil.copyfile(path, staging / "loras" / f"{name}.safetensors")
    files = {
        path.relative_to(staging).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    manifest = {"files": files, **info}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    return dest
