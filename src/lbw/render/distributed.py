"""Render a plan's cells over Ray: one worker per GPU (or N CPU workers), results gathered where the plan runs.

``RayBackend`` is a backend like any other for ``run_plan``: the driver (the process that runs the plan) keeps a
``DiffusersBackend`` that never loads a model (it checks the plan, reads the LoRA headers and computes the same
cache keys as a local run), and the cells the cache lacks go to ``RenderWorker`` actors
(``lbw.render.ray_worker``), each holding its device's model for the whole run. Their images come back as PNG
bytes and the runner writes the cache, ``cells/``, the grid and ``plan.json`` exactly as in a local run.

- Work units keep the batched engine's benefit: jobs are grouped by checkpoint (and, with ``lora_mode="merge"``,
  by weights, as the local backend groups them) and each group is cut into batches. With ``batch_size`` the units
  are exactly the batches a local run renders and a worker renders each as one batch (so the images are
  byte-identical); without it each group is cut into one unit per worker, which the worker splits by its free
  memory (images within 1 level of 255 of a local run: other batches, other float rounding). A worker takes the
  next unit of the checkpoint it holds, else one of a checkpoint no other worker holds, so each loads few models.
- Workers: with GPUs in the cluster (``device`` auto or cuda) one per free GPU (``num_gpus=1``; ``workers`` may
  ask for fewer); otherwise ``workers`` CPU workers (default one per node) sharing the free CPUs, torch using as
  many threads as the worker has CPUs (or ``threads``). Workers are spread over the nodes.
- Files are never shipped: each worker checks that the model, ``--model-config`` and LoRA files exist at the same
  paths with the same size and first MiB as where the plan runs, and refuses naming its node and the path.
- Progress: workers stream step and cell messages (Ray generators); the driver's callbacks get every cell as it
  arrives and the steps of the batches in flight, so bars and ETA work as locally.
- Ctrl-C or an error: the workers are killed (``close``); every cell that arrived is already in the cache.
- ``address=None`` starts a local Ray (``ray.init(address="local")``: never someone else's cluster) with its temp
  folder under the system temp and stops it in ``close``; an address joins a running cluster (``auto``,
  ``HOST:6379``, ``ray://HOST:10001``). A Ray already initialised in this process is used as it is. Ray's logs stay
  out of the terminal (``log_to_driver=False``, errors only, no dashboard).

Example:
    >>> backend = RayBackend({"device": "auto", "batch_size": 8}, RayOptions(workers=2))
    >>> result = run_plan(plan, backend, "out")        # same files as run_plan(plan, DiffusersBackend(...), "out")
    >>> backend.close()
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.errors import RenderError
from lbw.render.backends.base import CellFailure, Hasher, StepCallback
from lbw.render.plan import Job, Plan, plan_to_json
from lbw.render.ray_worker import RenderWorker, file_manifest, first_line

RAY_MISSING = "rendering over Ray (--ray, --ray-address) needs Ray: install lbw[ray] (pip install 'lbw[ray]')"
# Seconds to wait for the workers to start and check their files (a busy cluster may hold them back).
START_TIMEOUT_S = 600.0
# Object store of a Ray that lbw starts: images pass through it, a few MB at a time.
LOCAL_OBJECT_STORE_BYTES = 256 << 20
# Where a Ray that lbw starts keeps its sessions (logs of every worker under session_*/logs).
LOCAL_TEMP = Path(tempfile.gettempdir()) / "lbw-ray"
# Seconds to reach a cluster's address before Ray is asked to join it.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to render: ``address`` None starts a local Ray; ``workers`` None: one per GPU, else one
    per node; ``threads``: torch threads of each CPU worker (default: its CPUs)."""

    address: str | None = None
    workers: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise RenderError(f"--workers must be at least 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise RenderError(f"--threads must be at least 1, got {self.threads}")
        if self.address is not None and self.address != "auto":
            host, _, port = self.address.removeprefix("ray://").rpartition(":")
            if not host.strip() or not port.isdigit() or not 0 < int(port) < 65536:
                raise RenderError(f"--ray-address {self.address!r}: expected auto, HOST:PORT (the head's GCS, 6379 by "
                                  "default) or ray://HOST:PORT (Ray Client, 10001)")


def ray_error_line(error: BaseException) -> str:
    """The line of a Ray error that says what went wrong: the last ``...Error: ...`` line of its (often remote)
    traceback, without terminal colours; else its first line.

    Example:
        >>> ray_error_line(RuntimeError("The actor died ...\\nModuleNotFoundError: No module named 'lbw'"))
        "ModuleNotFoundError: No module named 'lbw'"
    """
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(error))
    causes = [line.strip() for line in text.splitlines() if re.match(r"\s*[\w.]*(Error|Exception)\b[^:]*: ", line)]
    if causes:
        return causes[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address where nothing answers (Ray itself would retry for many minutes, warning on stderr);
    ``auto`` is left to Ray (``RAY_ADDRESS`` or the cluster started on this machine)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise RenderError(f"--ray-address {address}: nothing answers there ({first_line(error)}); is the Ray "
                          "cluster running (ray start --head)?") from None


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 goes to ``path`` inside the block (C++ libraries write there past Python's logging)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_ray() -> Any:
    """The ``ray`` module, or one RenderError saying what to install."""
    try:
        import ray
    except ImportError:
        raise RenderError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class Unit:
    """A batch of jobs for one worker: its checkpoint and the jobs' positions in ``plan.jobs()``."""

    model: str
    indices: tuple[int, ...]


def model_of(plan: Plan, job: Job) -> str:
    """The checkpoint ``job`` renders with (its axis value on a checkpoint axis)."""
    if plan.axis is not None and plan.axis.kind == "checkpoint":
        return str(job.axis_value)
    return str(plan.model)


def work_units(
    plan: Plan,
    jobs: Sequence[Job],
    workers: int,
    batch_size: int | None = None,
    group: Callable[[Job], str] | None = None,
) -> list[Unit]:
    """``jobs`` grouped by checkpoint (and by ``group(job)``), each group cut into batches of about equal size:
    at most ``batch_size`` (the local backend's batches), else one per worker.

    Example:
        >>> [len(u.indices) for u in work_units(plan, plan.jobs()[:10], workers=2, batch_size=4)]
        [4, 3, 3]
    """
    from lbw.render.backends.diffusers_backend import batch_split

    position = {job: index for index, job in enumerate(plan.jobs())}
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((model_of(plan, job), group(job) if group else ""), []).append(job)
    limit = batch_size or -(-len(jobs) // max(1, workers))
    units = []
    for (model, _), pending in groups.items():
        while pending:
            size = batch_split(len(pending), limit)
            units.append(Unit(model, tuple(position[job] for job in pending[:size])))
            pending = pending[size:]
    return units


def next_unit(units: deque[Unit], held: dict[int, str], slot: int) -> Unit:
    """The unit worker ``slot`` takes next: one of the checkpoint it holds, else one no other worker holds, else
    the first."""
    mine = held.get(slot)
    others = {model for other, model in held.items() if other != slot}
    for wanted in (lambda unit: unit.model == mine, lambda unit: unit.model not in others):
        for index, unit in enumerate(units):
            if wanted(unit):
                del units[index]
                return unit
    return units.popleft()


def worker_plan(plan: Plan) -> Plan:
    """``plan`` with its local paths absolute: a worker's working folder is not the driver's."""

    def absolute(text: str | None) -> str | None:
        return str(Path(text).absolute()) if text and Path(text).exists() else text

    loras = tuple(replace(spec, path=absolute(spec.path)) for spec in plan.loras)
    axis = plan.axis
    if axis is not None and axis.kind == "checkpoint":
        axis = replace(axis, values=tuple(absolute(str(value)) for value in axis.values))
    return replace(plan, model=absolute(plan.model), loras=loras, axis=axis)


def plan_files(plan: Plan, model_config: str | Path | None) -> list[str]:
    """The local files and folders the workers read: checkpoints, the configs folder, LoRAs."""
    models = [str(v) for v in plan.axis.values] if plan.axis and plan.axis.kind == "checkpoint" else [plan.model]
    paths = [m for m in models if m] + [spec.path for spec in plan.loras if spec.path]
    return [*paths, str(model_config)] if model_config else paths


def decode_cell(data: Any, plan: Plan) -> Image.Image:
    """A worker's PNG bytes as an RGB image of the plan's size (anything else is refused)."""
    size = (plan.settings.width, plan.settings.height)
    if not isinstance(data, bytes):
        raise RenderError("a Ray worker sent a cell that is not PNG bytes")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != size:
                raise RenderError(f"a Ray worker sent a {image.size[0]}x{image.size[1]} cell for a "
                                  f"{size[0]}x{size[1]} plan")
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RenderError(f"a Ray worker sent an unreadable cell: {first_line(error)}") from None


class RayBackend:
    """The diffusers backend over Ray workers (see the module docstring). ``options``: the ``DiffusersBackend``
    options (device auto/cpu/cuda, dtype, batch_size, model_config, lora_mode)."""

    name = "diffusers"

    def __init__(self, options: dict[str, Any], ray_options: RayOptions | None = None) -> None:
        self.ray = import_ray()
        self.settings = ray_options or RayOptions()
        device = options.get("device") or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise RenderError(f"--device {device}: with Ray each worker renders on its own device; use auto (GPUs "
                              "when the cluster has them), cuda or cpu")
        from lbw.render.backends.diffusers_backend import DiffusersBackend

        self.device = device
        # Images per work unit (None: one unit per worker and checkpoint); the workers batch within it.
        self.batch_size: int | None = options.get("batch_size")
        self.options = {**options, "device": device}
        # The driver's side: plan and LoRA checks, cache keys; it never loads a model.
        self.local = DiffusersBackend(**{**options, "device": "cpu"})
        self.workers: list[Any] = []
        self.nodes: list[str] = []
        self.where: dict[str, Any] = {}
        self.started_ray = False
        self.plan_text: str | None = None
        self.cells_per_worker: list[int] = []  # cells each worker sent back (this run's workers)

    # --- the backend contract ------------------------------------------------------------------------------

    def prepare(self, plan: Plan) -> None:
        """Check the plan here, start the workers (once) and have each check its files and read the plan."""
        self.local.prepare(plan)
        text = plan_to_json(worker_plan(plan))
        if text == self.plan_text and self.workers:
            return
        self._start()
        manifest = file_manifest(plan_files(plan, self.options.get("model_config")))
        answers = self._get([worker.setup.remote(text, manifest) for worker in self.workers])
        for answer in answers:
            if "error" in answer:
                raise RenderError(str(answer["error"]))
        kinds = sorted({f"{a['device']} {a['dtype']}" for a in answers})
        if len(kinds) > 1:
            raise RenderError(f"the Ray workers render on different devices ({', '.join(kinds)}); their images "
                              "would differ: pick one with --device")
        self.where = answers[0]
        self.nodes = [str(answer["node"]) for answer in answers]
        self.plan_text = text

    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """A local run's cache-key parts, with the device type and precision of the workers."""
        identity = self.local.identity(plan, hasher)
        identity.update(device=self.where["device"], dtype=self.where["dtype"])
        return identity

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """As the diffusers backend: seed, checkpoint, strengths and the ratios of the LoRAs' blocks."""
        return self.local.job_identity(plan, job)

    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image | CellFailure]]:
        """Hand the units to the workers, one at a time each; yield every cell as it arrives."""
        if plan_to_json(worker_plan(plan)) != self.plan_text or not self.workers:
            self.prepare(plan)
        ray = self.ray
        everything = plan.jobs()
        group = None
        if self.options.get("lora_mode") == "merge":
            def group(job: Job) -> str:
                weights = {k: v for k, v in self.local.job_identity(plan, job).items() if k != "seed"}
                return json.dumps(weights, sort_keys=True)
        units = deque(work_units(plan, jobs, len(self.workers), self.batch_size, group))
        held: dict[int, str] = {}
        running: dict[Any, tuple[int, Unit]] = {}
        steps: dict[int, tuple[float, str, int]] = {}

        def launch(slot: int) -> None:
            if units:
                unit = next_unit(units, held, slot)
                held[slot] = unit.model
                running[self.workers[slot].render.remote(list(unit.indices), self.batch_size)] = (slot, unit)

        finished = False
        try:
            for slot in range(len(self.workers)):
                launch(slot)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                stream = ready[0]
                slot, unit = running[stream]
                try:
                    message = ray.get(next(stream))
                except StopIteration:
                    del running[stream]
                    steps.pop(slot, None)
                    launch(slot)
                    continue
                except ray.exceptions.RayError as error:
                    raise RenderError(f"Ray worker on {self.nodes[slot]} failed: {ray_error_line(error)}") from None
                kind = message[0] if isinstance(message, tuple) and message else None
                if kind == "step":
                    steps[slot] = (float(message[1]), str(message[2]), int(message[3]))
                    if on_step is not None:
                        on_step(*combined_steps(steps))
                elif kind in ("cell", "failed"):
                    index = message[1]
                    if index not in unit.indices:
                        raise RenderError(f"Ray worker on {self.nodes[slot]} sent a cell it was not given")
                    image = decode_cell(message[2], plan) if kind == "cell" else CellFailure(str(message[2]))
                    self.cells_per_worker[slot] += 1
                    yield everything[index], image
                elif kind == "error":
                    raise RenderError(str(message[1]))
                else:
                    raise RenderError(f"Ray worker on {self.nodes[slot]} sent an unknown message")
            finished = True
        finally:
            if not finished:  # Ctrl-C, an error, or the caller stopped early: no worker keeps rendering
                self._stop_workers()

    def close(self) -> None:
        """Kill the workers; stop Ray when lbw started it."""
        self._stop_workers()
        if self.started_ray:
            self.started_ray = False
            self.ray.shutdown()
        self.local.close()

    # --- internals -----------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start (or join) Ray and one worker per device."""
        if self.workers:
            return
        ray = self.ray
        if not ray.is_initialized():
            address = self.settings.address
            if address is not None:
                check_reachable(address)
            quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
            messages = LOCAL_TEMP / f"lbw-init-{os.getpid()}.log"
            try:
                with stderr_to(messages):  # Ray's C++ core writes its connection retries to stderr
                    if address is None:
                        cpus = max(os.cpu_count() or 1, self.settings.workers or 1)
                        ray.init(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                                 include_dashboard=False, _temp_dir=str(LOCAL_TEMP), **quiet)
                    else:
                        ray.init(address=address, **quiet)
            except Exception as error:  # Ray raises ConnectionError, ValueError, RuntimeError... with long texts
                where = address or "a local Ray"
                raise RenderError(f"cannot start or join {where}: {first_line(error)} (Ray's messages: "
                                  f"{messages})") from None
            messages.unlink(missing_ok=True)
            self.started_ray = True
        count, actor_options, options, threads = self._placement()
        worker_class = ray.remote(RenderWorker).options(**actor_options)
        self.workers = [worker_class.remote(options, threads) for _ in range(count)]
        self.cells_per_worker = [0] * count

    def _placement(self) -> tuple[int, dict[str, Any], dict[str, Any], int | None]:
        """(how many workers, their Ray actor options, their backend options, their torch threads) from the
        cluster's resources."""
        ray = self.ray
        has_gpus = ray.cluster_resources().get("GPU", 0) >= 1
        free = ray.available_resources()  # on a shared cluster: what other jobs do not hold
        gpus, cpus = int(free.get("GPU", 0)), int(free.get("CPU", 0))
        wanted = self.settings.workers
        options = dict(self.options)
        if options.get("model_config"):
            options["model_config"] = str(Path(options["model_config"]).absolute())
        if self.device == "cuda" and not has_gpus:
            raise RenderError("--device cuda: the Ray cluster has no GPU")
        if self.device != "cpu" and has_gpus:
            count = wanted or gpus
            if count > gpus or count == 0:
                raise RenderError(f"{'--workers ' if wanted else ''}{count or 'no'} worker(s): the Ray cluster has "
                                  f"{gpus} free GPU(s) and each worker takes one (--device cpu renders on CPUs)")
            actor = {"num_gpus": 1, "num_cpus": 1, "scheduling_strategy": "SPREAD"}
            return count, actor, {**options, "device": "cuda"}, self.settings.threads
        nodes = sum(1 for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU"))
        count = wanted or max(1, nodes)
        if count > cpus:
            raise RenderError(f"{'--workers ' if wanted else ''}{count} worker(s): the Ray cluster has {cpus} free "
                              "CPU(s) and each worker needs one")
        share = max(1, cpus // count)
        actor = {"num_cpus": share, "scheduling_strategy": "SPREAD"}
        return count, actor, {**options, "device": "cpu"}, self.settings.threads or share

    def _get(self, refs: list[Any]) -> list[Any]:
        """``ray.get`` for the workers' start: bounded in time, failures as one line."""
        ray = self.ray
        try:
            return list(ray.get(refs, timeout=START_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError:
            self._stop_workers()
            raise RenderError(f"the Ray workers did not start within {START_TIMEOUT_S:.0f} s: the cluster lacks free "
                              f"resources for {len(refs)} worker(s) ({ray.cluster_resources()})") from None
        except ray.exceptions.RayError as error:
            self._stop_workers()
            raise RenderError(f"a Ray worker failed to start: {ray_error_line(error)} (is the same lbw installed on "
                              "every node?)") from None

    def _stop_workers(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):  # already gone with its node, or Ray is shutting down
                self.ray.kill(worker, no_restart=True)
        self.workers = []
        self.plan_text = None


def combined_steps(steps: dict[int, tuple[float, str, int]]) -> tuple[float, str, int]:
    """The step callback's (fraction, label, cells) over the batches in flight: fractions weighted by cells.

    Example:
        >>> combined_steps({0: (0.5, "IN01 (+3)", 4), 1: (1.0, "OUT11 (+3)", 4)})
        (0.75, '2 workers: IN01 (+3), OUT11 (+3)', 8)
    """
    cells = sum(count for _, _, count in steps.values()) or 1
    fraction = sum(fraction * count for fraction, _, count in steps.values()) / cells
    labels = ", ".join(label for _, label, _ in steps.values())
    label = labels if len(steps) == 1 else f"{len(steps)} workers: {labels}"
    return fraction, label, cells
