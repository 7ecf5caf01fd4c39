"""The ``comfyui`` backend: a running ComfyUI with the Inspire pack (``LoraLoaderBlockWeight //Inspire``).

Each job is one API-format graph (checkpoint -> block-weight LoRA loader(s) -> CLIP skip -> prompts ->
KSampler -> VAE decode -> SaveImage) queued with ``POST /prompt`` under the backend's ``client_id``. Progress
comes from ComfyUI's websocket (``/ws?clientId=...``, ``lbw.render.backends.comfy_ws``): each sampling step goes
to the step callback, and the read timeout (``--timeout``) is the longest a cell may go without a sign of life
(a new step, node or queue position), so a slow cell lives as long as ComfyUI works on it. When the websocket
cannot be opened (an old server, a proxy that refuses the upgrade) or breaks, one note says so and cells are
followed by polling ``/history/{prompt_id}`` instead; then ``--timeout`` bounds each cell from queueing to its
image. The outputs are read from ``/history`` and the image fetched with ``/view`` either way. LBW vectors are
converted to Inspire's convention for the blocks the LoRA file really has (``lbw.domain.inspire``), so the
LoRA must also be available locally (``--lora PATH --lora-name NAME_ON_SERVER``).

ComfyUI caches node outputs by their inputs; the block vector is an input of the loader node, so a cell never
reuses another cell's weights. A cell ComfyUI reports as failed is yielded as a ``CellFailure`` (not cached).
Every answer's shape is checked (``Answer``); the image's size is checked before it is decoded.

Example:
    >>> backend = ComfyUIBackend(url="http://127.0.0.1:8188")
    >>> run_plan(plan, backend, "out")
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.domain.inspire import lbw_to_inspire
from lbw.domain.layouts import LAYOUTS, layout_for_length
from lbw.domain.weights import BlockWeights
from lbw.errors import RenderError
from lbw.render.backends.answers import Answer
from lbw.render.backends.base import CellFailure, Hasher, StepCallback
from lbw.render.backends.comfy_ws import ProgressSocket, SocketLost
from lbw.render.backends.http import (
    CONNECT_TIMEOUT,
    MAX_BYTES,
    READ_TIMEOUT,
    Deadline,
    HttpClient,
    HttpError,
    node_errors_text,
    one_line,
)
from lbw.render.backends.images import open_image
from lbw.render.plan import Job, Plan, public_url
from lbw.render.samplers import comfy_sampler, resolve_sampler
from lbw.render.weighting import lora_states

LOADER = "LoraLoaderBlockWeight //Inspire"
SAVE_NODE = "9"
log = logging.getLogger("lbw.render")


def inspire_vector(layout: str, values: Sequence[float], present: Sequence[tuple[str, int]]) -> str:
    """The Inspire ``block_vector`` text for an LBW vector and the file's present blocks."""
    return lbw_to_inspire(BlockWeights(LAYOUTS[layout], tuple(values)), list(present)).text()


def build_graph(
    plan: Plan,
    job: Job,
    vectors: Sequence[str | None],
    *,
    checkpoint: str,
    prefix: str = "lbw",
) -> dict[str, Any]:
    """The API-format graph of one job; ``vectors[i]``: LoRA i's Inspire vector (None: plain LoraLoader)."""
    settings = plan.settings
    sampler_name, scheduler = comfy_sampler(resolve_sampler(settings.sampler, settings.scheduler))
    graph: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}
    }
    model: list[Any] = ["1", 0]
    clip: list[Any] = ["1", 1]
    for number, (spec, state, vector) in enumerate(
        zip(plan.loras, lora_states(plan, job), vectors, strict=True)
    ):
        node = f"lora{number}"
        if vector is None:
            graph[node] = {
                "class_type": "LoraLoader",
                "inputs": {
                    "model": model,
                    "clip": clip,
                    "lora_name": spec.name,
                    "strength_model": state.unet,
                    "strength_clip": state.text,
                },
            }
        else:
            graph[node] = {
                "class_type": LOADER,
                "inputs": {
                    "model": model,
                    "clip": clip,
                    "category_filter": "All",
                    "lora_name": spec.name,
                    "strength_model": state.unet,
                    "strength_clip": state.text,
                    "inverse": False,
                    "seed": 0,
                    "A": 4.0,
                    "B": 1.0,
                    "preset": "Preset",
                    "block_vector": vector,
                    "bypass": False,
                },
            }
        model, clip = [node, 0], [node, 1]
    graph["2"] = {
        "class_type": "CLIPSetLastLayer",
        "inputs": {"clip": clip, "stop_at_clip_layer": -settings.clip_skip},
    }
    graph["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": settings.prompt}}
    graph["4"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"clip": ["2", 0], "text": settings.negative_prompt},
    }
    graph["5"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": settings.width, "height": settings.height, "batch_size": 1},
    }
    graph["6"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": ["5", 0],
            "seed": job.seed,
            "steps": settings.steps,
            "cfg": settings.cfg,
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "denoise": 1.0,
        },
    }
    graph["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    graph[SAVE_NODE] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}}
    return graph


class ComfyUIBackend:
    """Render through a running ComfyUI (see the module docstring)."""

    name = "comfyui"

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:8188",
        timeout: float = READ_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        deadline: float | None = None,
        max_bytes: int = MAX_BYTES,
        retries: int = 4,
        backoff: float = 1.0,
        poll_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        websocket: bool = True,
    ) -> None:
        self.deadline = Deadline(deadline, clock)
        self.client = HttpClient(url, connect_timeout=connect_timeout, read_timeout=timeout, deadline=self.deadline,
                                 max_bytes=max_bytes, retries=retries, backoff=backoff, clock=clock)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.clock = clock
        self.client_id = str(uuid.uuid4())
        self._present: list[tuple[tuple[str, int], ...] | None] = []
        self._socket: ProgressSocket | None = None
        self._polling = not websocket  # True once the websocket could not be used: follow cells via /history
        self._closed = False

    def prepare(self, plan: Plan) -> None:
        """Check the Inspire pack, the LoRA names and the checkpoint; read each LoRA's present blocks."""
        self.deadline.restart()
        comfy_sampler(resolve_sampler(plan.settings.sampler, plan.settings.scheduler))
        info = self._object_info(LOADER)
        if info is None:
            raise RenderError(
                "ComfyUI has no 'LoraLoaderBlockWeight //Inspire' node: "
                "install ltdrdata/ComfyUI-Inspire-Pack",
                where=self.client.base_url,
            )
        names = _choices(info, LOADER, "lora_name")
        checkpoints = _choices(self._object_info("CheckpointLoaderSimple"), "CheckpointLoaderSimple", "ckpt_name")
        if not plan.loras:
            raise RenderError("the plan has no LoRA (use --lora PATH --lora-name NAME)")
        self._present = []
        from lbw.files.lora_file import LoraFile

        for spec in plan.loras:
            if names and spec.name not in names:
                raise RenderError(
                    f"LoRA {spec.name!r} is not in ComfyUI's lora list (names there include the "
                    f"extension, e.g. {names[0]!r})",
                    where=self.client.base_url,
                )
            needs_vector = spec.tuned or spec.weights is not None
            if needs_vector and spec.path is None:
                raise RenderError(
                    f"LoRA {spec.name!r}: the comfyui backend needs the file locally "
                    "(--lora PATH --lora-name "
                    "NAME) to convert block weights to Inspire's per-file vector"
                )
            if needs_vector:
                with LoraFile.open(spec.path) as lora_file:
                    self._present.append(tuple(lora_file.inspire_blocks))
            else:
                self._present.append(None)
        for checkpoint in self._checkpoints(plan):
            if checkpoints and checkpoint not in checkpoints:
                raise RenderError(
                    f"checkpoint {checkpoint!r} is not in ComfyUI's checkpoint list",
                    where=self.client.base_url,
                )

    def _object_info(self, node: str) -> Answer | None:
        """``/object_info/NODE`` (None: the node is unknown: 404 or an empty mapping)."""
        path = f"/object_info/{urllib.parse.quote(node, safe='')}"
        try:
            info = Answer(f"GET {path}", self.client.get_json(path), where=self.client.base_url)
        except HttpError as error:
            if error.status == 404:
                return None
            raise
        return info if info.mapping() else None

    def _checkpoints(self, plan: Plan) -> list[str]:
        if plan.axis is not None and plan.axis.kind == "checkpoint":
            return [str(v) for v in plan.axis.values]
        if plan.model is None:
            raise RenderError("the plan names no checkpoint (use --model NAME as ComfyUI lists it)")
        return [plan.model]

    def vectors(self, plan: Plan, job: Job) -> list[str | None]:
        """Each LoRA's Inspire vector for ``job`` (None for LoRAs used without block weights)."""
        result: list[str | None] = []
        for spec, present in zip(plan.loras, self._present, strict=True):
            if present is None:
                result.append(None)
            elif spec.tuned:
                result.append(inspire_vector(plan.layout, job.cell.values, present))
            else:
                assert spec.weights is not None
                layout = layout_for_length(len(spec.weights)).name
                result.append(inspire_vector(layout, spec.weights, present))
        return result

    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """Server and LoRA identities (local file hashes where available)."""
        return {
            "server": self.client.base_url,
            "loras": [{"name": s.name, "hash": hasher(Path(s.path)) if s.path else None} for s in plan.loras],
        }

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """The graph itself determines the image."""
        return {"graph": self._graph(plan, job)}

    def _graph(self, plan: Plan, job: Job) -> dict[str, Any]:
        checkpoint = (
            str(job.axis_value) if plan.axis is not None and plan.axis.kind == "checkpoint" else plan.model
        )
        return build_graph(plan, job, self.vectors(plan, job), checkpoint=str(checkpoint))

    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image | CellFailure]]:
        """Queue one graph per job and follow it on the websocket (or by polling ``/history``)."""
        size = (plan.settings.width, plan.settings.height)
        self._open_socket()  # before the first prompt: ComfyUI sends a prompt's messages to the sockets open then
        for job in jobs:
            body = {"prompt": self._graph(plan, job), "client_id": self.client_id}
            answer = Answer("POST /prompt", self.client.post_json("/prompt", body), where=self.client.base_url)
            errors = answer.optional("node_errors")
            if errors is not None and errors.mapping():
                raise RenderError(f"ComfyUI rejected the graph: {node_errors_text(errors.mapping())}",
                                  where=self.client.base_url)
            prompt_id = answer.text_at("prompt_id")
            outputs = self._wait(prompt_id, job.cell.label, on_step)
            if isinstance(outputs, CellFailure):
                yield job, outputs
                continue
            yield job, self._fetch(outputs, job.cell.label, size)

    def _open_socket(self) -> None:
        """Open the progress websocket unless it is open or could not be used; a failure is noted once."""
        if self._socket is not None or self._polling:
            return
        try:
            self._socket = ProgressSocket.open(self.client.base_url, self.client_id,
                                               connect_timeout=self.client.connect_timeout, deadline=self.deadline,
                                               clock=self.clock)
        except SocketLost as lost:
            self._fall_back(f"no websocket progress ({lost.reason})")

    def _fall_back(self, why: str) -> None:
        """From now on follow cells by polling ``/history``; say so once."""
        self._polling = True
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if not self._closed:
            log.info("%s: %s: following each cell by polling /history (--timeout now bounds a cell from queueing "
                     "to its image)", public_url(self.client.base_url), why)

    def _wait(self, prompt_id: str, label: str, on_step: StepCallback | None) -> Answer | CellFailure:
        """Follow the prompt on the websocket until it ends, then read its outcome from ``/history``."""
        if self._socket is not None:
            try:
                reported = self._socket.follow(prompt_id, label, on_step, timeout=self.timeout,
                                               deadline=self.deadline, where=self.client.base_url)
            except SocketLost as lost:
                self._fall_back(f"the websocket broke ({lost.reason})")
            else:
                if reported == 1.0:
                    on_step = None  # the last step was reported already
        return self._poll(prompt_id, label, on_step)

    def _poll(self, prompt_id: str, label: str, on_step: StepCallback | None) -> Answer | CellFailure:
        """Poll ``/history/{prompt_id}`` until the prompt is done: its outputs, or why it failed."""
        path = f"/history/{urllib.parse.quote(prompt_id, safe='')}"
        queued = self.clock()
        while True:
            history = Answer(f"GET {path}", self.client.get_json(path), where=self.client.base_url)
            entry = history.optional(prompt_id)
            if entry is not None:
                status = entry.optional("status")
                state = status.optional_text("status_str") if status is not None else None
                if state == "error":
                    return CellFailure(f"ComfyUI: {_execution_error(status)}")
                completed = status.optional("completed") if status is not None else None
                if completed is None or completed.flag():
                    if on_step is not None:
                        on_step(1.0, label)
                    return entry.field("outputs", "the prompt's outputs")
            waited = self.clock() - queued
            if waited >= self.timeout:
                raise RenderError(f"GET {path}: cell {label!r} not finished within {self.timeout:g} s (--timeout)",
                                  where=self.client.base_url)
            pause = min(self.poll_interval, self.timeout - waited)
            if self.deadline.left() <= pause:
                raise self.deadline.error(f"GET {path}")
            time.sleep(pause)

    def _fetch(self, outputs: Answer, label: str, size: tuple[int, int]) -> Image.Image:
        save = outputs.optional(SAVE_NODE)
        images = save.field("images", "a list of saved images").items() if save is not None else []
        if not images:
            raise outputs.fail(f"holds no image of node {SAVE_NODE} for cell {label!r}")
        first = images[0]
        params = {
            "filename": first.text_at("filename"),
            "subfolder": first.optional_text("subfolder") or "",
            "type": first.optional_text("type") or "output",
        }
        raw = self.client.get_bytes("/view", params, limit=self.client.max_bytes + size[0] * size[1] * 5)
        return open_image(raw, label, size, "ComfyUI")

    def close(self) -> None:
        """Close the progress websocket."""
        self._closed = True
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _choices(info: Answer | None, node: str, field: str) -> list[str]:
    """The combo values of ``node``'s input ``field`` in an ``/object_info`` answer (empty when not listed).

    ComfyUI lists them as ``{NODE: {"input": {"required": {FIELD: [[choice, ...], {...}]}}}}``.
    """
    if info is None:
        return []
    entry = info.optional(node)
    inputs = entry.optional("input") if entry is not None else None
    required = inputs.optional("required") if inputs is not None else None
    spec = required.optional(field) if required is not None else None
    if spec is None:
        return []
    items = spec.items()
    if items and isinstance(items[0].value, list):
        return [choice.text() for choice in items[0].items()]
    if len(items) > 1 and items[0].value == "COMBO":  # the newer form: ["COMBO", {"options": [...]}]
        options = items[1].optional("options")
        return [choice.text() for choice in options.items()] if options is not None else []
    return []


def _execution_error(status: Answer) -> str:
    """The exception ComfyUI reports in a failed prompt's status messages, on one line."""
    messages = status.optional("messages")
    for message in messages.items() if messages is not None else []:
        parts = message.items()
        if len(parts) >= 2 and isinstance(parts[0].value, str) and parts[0].value == "execution_error":
            data = parts[1]
            kind = data.optional_text("exception_type") or ""
            text = data.optional_text("exception_message") or "no message"
            node = data.optional_text("node_type")
            where = f" in {node}" if node else ""
            return one_line(f"{kind.rsplit('.', 1)[-1]}{where}: {text}" if kind else f"{text}{where}")
    return "the prompt failed (no execution_error message)"
