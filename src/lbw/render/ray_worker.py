"""The Ray side of distributed rendering: one ``RenderWorker`` per device, and the check of the files it reads.

A worker holds one ``DiffusersBackend`` for its whole life, so it loads each model once and renders many work
units. ``setup`` receives a plan as JSON (checked like any plan file) and the driver's manifest of the files the
plan reads (model folders or files, ``--model-config``, LoRAs); it refuses to render when a file is missing on its
node or differs from the driver's (size, SHA-256 of the first MiB), naming the node and the path: models are never
shipped through Ray's object store, every node reads its own copy at the same path. ``render`` streams its results
back as messages (a Ray generator), so the driver sees steps and cells as they happen:

- ``("step", fraction, label, cells)``: the backend's step callback;
- ``("cell", job_index, png_bytes)``: a finished image (the index is into ``plan.jobs()``);
- ``("failed", job_index, reason)``: a cell the backend reported as failed;
- ``("error", message)``: a user error (an ``LbwError``), or another exception's first line; the unit stops.

This module imports nothing from Ray: ``lbw.render.distributed`` wraps ``RenderWorker`` with ``ray.remote``.

Example:
    >>> manifest = file_manifest(["/models/sd15", "/loras/face.safetensors"])
    >>> check_manifest(manifest, "node gpu-1 (10.0.0.2)")   # on the worker: raises RenderError when a file differs
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lbw.errors import LbwError, RenderError

# Bytes hashed at the start of each file to tell copies apart cheaply (a model is GBs; its header differs first).
PREFIX_BYTES = 1 << 20
_DONE = object()


def _prefix_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(PREFIX_BYTES)).hexdigest()


def file_manifest(paths: Iterable[str]) -> list[dict[str, Any]]:
    """What the driver sees of each path: every file (one, or a folder's, sorted) with its size and the SHA-256 of
    its first MiB. Paths are made absolute (a worker's working folder is not the driver's).

    Example:
        >>> file_manifest(["/loras/face.safetensors"])[0]["files"]
        [['', 151432, '9b8f...']]
    """
    manifest = []
    for text in dict.fromkeys(paths):
        path = Path(text).absolute()
        if not path.exists():
            raise RenderError("file not found", where=str(path))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        entries = [
            ["" if p == path else p.relative_to(path).as_posix(), p.stat().st_size, _prefix_sha256(p)] for p in files
        ]
        manifest.append({"path": str(path), "folder": path.is_dir(), "files": entries})
    return manifest


def check_manifest(manifest: list[dict[str, Any]], node: str) -> None:
    """Refuse (RenderError naming ``node`` and the path) when a file of ``manifest`` is missing here, or its size
    or first MiB differs from the driver's. Files the driver's folder lacks are ignored."""
    hint = "; the model and LoRA files must exist at the same paths on every node of the cluster"
    for entry in manifest:
        root = Path(entry["path"])
        if entry["folder"] and not root.is_dir():
            raise RenderError(f"Ray worker on {node}: {root}: folder not found on this node{hint}")
        for relative, size, prefix in entry["files"]:
            path = root / relative if relative else root
            try:
                found = path.stat().st_size
            except OSError:
                raise RenderError(f"Ray worker on {node}: {path}: file not found on this node{hint}") from None
            if found != size:
                raise RenderError(f"Ray worker on {node}: {path}: {found} bytes on this node, {size} where the plan "
                                  f"runs (another version of the file?){hint}")
            if _prefix_sha256(path) != prefix:
                raise RenderError(f"Ray worker on {node}: {path}: the file differs from the one where the plan runs "
                                  f"(same size, other bytes in its first MiB){hint}")


def node_name() -> str:
    """``host (ip)`` of this process, for messages."""
    host = socket.gethostname()
    try:
        import ray

        address = ray.util.get_node_ip_address()
    except Exception:  # outside Ray (tests of the checks): the host name alone
        return host
    return f"{host} ({address})"


def first_line(error: BaseException) -> str:
    """``error`` as one line: its message's first line, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RenderWorker:
    """One device's renderer (wrapped with ``ray.remote`` by the driver); see the module docstring.

    ``options``: ``DiffusersBackend`` keyword arguments (device, dtype, batch_size, model_config, lora_mode);
    ``threads``: torch CPU threads (None: Ray's setting, the CPUs the worker was given).
    """

    def __init__(self, options: dict[str, Any], threads: int | None = None) -> None:
        self.options = dict(options)
        self.threads = threads
        self.node = node_name()
        self.backend: Any = None
        self.plan: Any = None
        self.plan_text = ""
        self.jobs: list[Any] = []

    def setup(self, plan_text: str, manifest: list[dict[str, Any]]) -> dict[str, Any]:
        """Check the files, read the plan and prepare the backend (once per plan); say what this worker is.

        Returns ``{"node", "device", "dtype"}``, or ``{"error": message}`` for a user error."""
        try:
            check_manifest(manifest, self.node)
            if self.backend is None:
                import torch

                from lbw.render.backends.diffusers_backend import DiffusersBackend

                if self.threads:
                    torch.set_num_threads(self.threads)
                self.backend = DiffusersBackend(**self.options)
            if plan_text != self.plan_text:
                from lbw.render.plan import plan_from_json

                plan = plan_from_json(plan_text, where="the plan sent by the driver")
                self.backend.prepare(plan)
                self.plan, self.plan_text, self.jobs = plan, plan_text, plan.jobs()
            return self.describe()
        except LbwError as error:
            return {"error": f"Ray worker on {self.node}: {error}" if self.node not in str(error) else str(error)}
        except Exception as error:  # a broken installation on one node: one line, with the node
            return {"error": f"Ray worker on {self.node}: {type(error).__name__}: {first_line(error)}"}

    def describe(self) -> dict[str, Any]:
        """Node, device type and precision of this worker: the parts of every cell's cache key that depend on
        where it renders, computed as a local run computes them (no file is hashed here)."""
        identity = self.backend.identity(self.plan, lambda _path: "")
        return {"node": self.node, "device": identity["device"], "dtype": identity["dtype"]}

    def render(self, indices: list[int], batch_size: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Render the jobs at ``indices`` of the prepared plan in batches of at most ``batch_size`` (None: what
        this worker's free memory holds); stream step, cell and error messages."""
        from lbw.render.backends.base import CellFailure
        from lbw.render.grid import png_bytes

        messages: queue.Queue[Any] = queue.Queue()
        position = {job: index for index, job in enumerate(self.jobs)}

        def on_step(fraction: float, label: str, cells: int = 1) -> None:
            messages.put(("step", float(fraction), str(label), int(cells)))

        def work() -> None:
            try:
                self.backend.batch_size = batch_size  # the driver's batches (halved here on out-of-memory)
                jobs = [self.jobs[i] for i in indices]
                for job, image in self.backend.render(self.plan, jobs, on_step):
                    if isinstance(image, CellFailure):
                        messages.put(("failed", position[job], image.reason))
                    else:
                        messages.put(("cell", position[job], png_bytes(image)))
            except LbwError as error:
                messages.put(("error", f"Ray worker on {self.node}: {error}"))
            except Exception as error:
                messages.put(("error", f"Ray worker on {self.node}: {type(error).__name__}: {first_line(error)}"))
            finally:
                messages.put(_DONE)

        # The backend runs in a thread so that its step callback can reach this generator as it happens.
        thread = threading.Thread(target=work, name="lbw-render", daemon=True)
        thread.start()
        while (message := messages.get()) is not _DONE:
            yield message
        thread.join()

    def pid(self) -> int:
        """This worker's process id (tests)."""
        return os.getpid()
