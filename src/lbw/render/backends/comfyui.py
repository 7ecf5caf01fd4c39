"""The ``comfyui`` backend: a running ComfyUI with the Inspire pack (``LoraLoaderBlockWeight //Inspire``).

Each job is one API-format graph (checkpoint -> block-weight LoRA loader(s) -> CLIP skip -> prompts ->
KSampler -> VAE decode -> SaveImage) queued with ``POST /prompt``; completion is read by polling
``/history/{prompt_id}`` (lbw uses no websocket library), the image fetched with ``/view``. LBW vectors are
converted to Inspire's convention for the blocks the LoRA file really has (``lbw.domain.inspire``), so the
LoRA must also be available locally (``--lora PATH --lora-name NAME_ON_SERVER``).

Example:
    >>> backend = ComfyUIBackend(url="http://127.0.0.1:8188")
    >>> run_plan(plan, backend, "out")
"""

from __future__ import annotations

import io
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
from lbw.render.backends.base import Hasher, StepCallback
from lbw.render.backends.http import HttpClient, HttpError
from lbw.render.plan import Job, Plan
from lbw.render.samplers import comfy_sampler, resolve_sampler
from lbw.render.weighting import lora_states

LOADER = "LoraLoaderBlockWeight //Inspire"
SAVE_NODE = "9"


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
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
        poll_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = HttpClient(url, timeout=timeout, retries=retries, backoff=backoff)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.clock = clock
        self.client_id = str(uuid.uuid4())
        self._present: list[tuple[tuple[str, int], ...] | None] = []

    def prepare(self, plan: Plan) -> None:
        """Check the Inspire pack, the LoRA names and the checkpoint; read each LoRA's present blocks."""
        comfy_sampler(resolve_sampler(plan.settings.sampler, plan.settings.scheduler))
        info = self._object_info(LOADER)
        if not info:
            raise RenderError(
                "ComfyUI has no 'LoraLoaderBlockWeight //Inspire' node: "
                "install ltdrdata/ComfyUI-Inspire-Pack",
                where=self.client.base_url,
            )
        names = _choices(info[LOADER], "lora_name")
        checkpoint_info = self._object_info("CheckpointLoaderSimple")
        checkpoints = _choices(checkpoint_info.get("CheckpointLoaderSimple", {}), "ckpt_name")
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

    def _object_info(self, node: str) -> dict[str, Any]:
        try:
            info = self.client.get_json(f"/object_info/{urllib.parse.quote(node, safe='')}")
        except HttpError as error:
            if error.status == 404:
                return {}
            raise
        return info if isinstance(info, dict) else {}

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
    ) -> Iterator[tuple[Job, Image.Image]]:
        """Queue one graph per job and wait for it via ``/history``."""
        for job in jobs:
            answer = self.client.post_json(
                "/prompt", {"prompt": self._graph(plan, job), "client_id": self.client_id}
            )
            errors = answer.get("node_errors") if isinstance(answer, dict) else None
            if errors:
                raise RenderError(f"ComfyUI rejected the graph: {errors}", where=self.client.base_url)
            prompt_id = str(answer["prompt_id"])
            outputs = self._wait(prompt_id, job.cell.label, on_step)
            yield job, self._fetch(outputs, job.cell.label)

    def _wait(self, prompt_id: str, label: str, on_step: StepCallback | None) -> dict[str, Any]:
        deadline = self.clock() + self.timeout
        while self.clock() < deadline:
            history = self.client.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    messages = [m for m in status.get("messages", []) if m and m[0] == "execution_error"]
                    detail = messages[0][1].get("exception_message", "") if messages else "unknown error"
                    raise RenderError(
                        f"ComfyUI failed on cell {label!r}: {detail}", where=self.client.base_url
                    )
                if status.get("completed", True):
                    if on_step is not None:
                        on_step(1.0, label)
                    return dict(entry.get("outputs") or {})
            time.sleep(self.poll_interval)
        raise RenderError(
            f"ComfyUI did not finish cell {label!r} within {self.timeout:g} s", where=self.client.base_url
        )

    def _fetch(self, outputs: dict[str, Any], label: str) -> Image.Image:
        images = (outputs.get(SAVE_NODE) or {}).get("images") or []
        if not images:
            raise RenderError(f"ComfyUI returned no image for cell {label!r}", where=self.client.base_url)
        first = images[0]
        raw = self.client.get_bytes(
            "/view",
            {
                "filename": first["filename"],
                "subfolder": first.get("subfolder", ""),
                "type": first.get("type", "output"),
            },
        )
        try:
            with Image.open(io.BytesIO(raw)) as image:
                return image.convert("RGB")
        except OSError as error:
            raise RenderError(f"ComfyUI sent an image lbw cannot decode: {error}") from None

    def close(self) -> None:
        """Nothing to release (stateless HTTP)."""


def _choices(info: dict[str, Any], field: str) -> list[str]:
    """The combo values of an input in an ``/object_info`` entry (empty when not listed)."""
    spec = ((info.get("input") or {}).get("required") or {}).get(field)
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return [str(v) for v in spec[0]]
    return []
