"""The ``a1111`` backend: a Stable Diffusion web UI (A1111 or Forge) started with ``--api`` and LBW installed.

Each job is one ``POST /sdapi/v1/txt2img`` with a fixed seed. The block weights travel as presets in the
LoRA Block Weight always-on arguments (``args[0]`` replaces the preset file for that request only; the user's
``lbwpresets.txt`` is never edited) and the prompt carries ``<lora:NAME:M:lbw=lbwcell>``. Before rendering the
backend checks that LBW is installed, the LoRAs are known (after one ``refresh-loras``) and the checkpoint
exists, and says which is missing. Progress is read from ``/sdapi/v1/progress`` while a job runs.

Example:
    >>> backend = A1111Backend(url="http://127.0.0.1:7860")
    >>> run_plan(plan, backend, "out")
"""

from __future__ import annotations

import base64
import difflib
import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.domain.layouts import layout_for_length
from lbw.errors import RenderError
from lbw.render.backends.base import Hasher, StepCallback
from lbw.render.backends.http import HttpClient
from lbw.render.blocks import format_value
from lbw.render.plan import Job, LoraSpec, Plan
from lbw.render.samplers import resolve_sampler
from lbw.render.weighting import lora_states

LBW_TITLE = "LoRA Block Weight"
CELL_PRESET = "lbwcell"


def lora_prompt_tag(name: str, te: float, unet: float, preset: str | None) -> str:
    """``<lora:NAME:M:lbw=P>``, or with ``te=``/``unet=`` when the two multipliers differ.

    Example:
        >>> lora_prompt_tag("face", 1, 1, "lbwcell")
        '<lora:face:1:lbw=lbwcell>'
    """
    if not name or any(ch in name for ch in ":<>\n"):
        raise RenderError(f"LoRA name {name!r} is empty or contains ':', '<' or '>'")
    strengths = format_value(unet) if te == unet else f"te={format_value(te)}:unet={format_value(unet)}"
    weights = f":lbw={preset}" if preset else ""
    return f"<lora:{name}:{strengths}{weights}>"


def preset_line(name: str, values: Sequence[float]) -> str:
    """``NAME:v1,...`` for LBW's preset argument (the length must be 12, 17, 20, 26 or 61)."""
    layout_for_length(len(values))
    return f"{name}:" + ",".join(format_value(v) for v in values)


def txt2img_payload(plan: Plan, job: Job) -> dict[str, Any]:
    """The ``/sdapi/v1/txt2img`` body for one job (block weights as always-on LBW presets)."""
    settings = plan.settings
    states = lora_states(plan, job)
    tags: list[str] = []
    presets: list[str] = []
    for number, (spec, state) in enumerate(zip(plan.loras, states, strict=True)):
        name = spec.name or (Path(spec.path).stem if spec.path else "")
        if spec.tuned:
            presets.append(preset_line(CELL_PRESET, job.cell.values))
            tags.append(lora_prompt_tag(name, state.text, state.unet, CELL_PRESET))
        elif spec.weights is not None:
            preset = f"lbwfixed{number}"
            presets.append(preset_line(preset, spec.weights))
            tags.append(lora_prompt_tag(name, state.text, state.unet, preset))
        else:
            tags.append(lora_prompt_tag(name, state.text, state.unet, None))
    sampler = resolve_sampler(settings.sampler, settings.scheduler)
    overrides: dict[str, Any] = {"CLIP_stop_at_last_layers": settings.clip_skip}
    checkpoint = job.axis_value if plan.axis is not None and plan.axis.kind == "checkpoint" else plan.model
    if checkpoint:
        overrides["sd_model_checkpoint"] = str(checkpoint)
    payload: dict[str, Any] = {
        "prompt": " ".join(part for part in (settings.prompt, *tags) if part),
        "negative_prompt": settings.negative_prompt,
        "seed": job.seed,
        "steps": settings.steps,
        "cfg_scale": settings.cfg,
        "width": settings.width,
        "height": settings.height,
        "sampler_name": sampler.name,
        "batch_size": 1,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        "override_settings": overrides,
        "override_settings_restore_afterwards": True,
    }
    if sampler.karras:
        payload["scheduler"] = "Karras"
    if presets:
        payload["alwayson_scripts"] = {LBW_TITLE: {"args": ["\n".join(presets), True, 0]}}
    return payload


class A1111Backend:
    """Render through a running web UI's API (see the module docstring)."""

    name = "a1111"

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:7860",
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 1.0,
        poll_interval: float = 0.5,
    ) -> None:
        self.client = HttpClient(url, timeout=timeout, retries=retries, backoff=backoff)
        self.poll_interval = poll_interval
        self._lora_hashes: dict[str, str] = {}

    def prepare(self, plan: Plan) -> None:
        """Check LBW, the LoRAs and the checkpoint(s) on the server; RenderError naming what is missing."""
        scripts = self.client.get_json("/sdapi/v1/scripts")
        titles = [str(t).lower() for t in (scripts.get("txt2img") or [])] if isinstance(scripts, dict) else []
        if LBW_TITLE.lower() not in titles:
            raise RenderError(
                "the LoRA Block Weight extension is not installed or not enabled "
                "(install hako-mikan/sd-webui-lora-block-weight and restart the web UI with --api)",
                where=self.client.base_url,
            )
        if not plan.loras:
            raise RenderError("the plan has no LoRA (use --lora NAME)")
        known = self._loras()
        missing = [spec for spec in plan.loras if _name(spec) not in known]
        if missing:
            self.client.post_json("/sdapi/v1/refresh-loras", {})
            known = self._loras()
            missing = [spec for spec in plan.loras if _name(spec) not in known]
        if missing:
            name = _name(missing[0])
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = (
                f"; did you mean {', '.join(close)}?" if close else f"; the web UI knows {len(known)} LoRAs"
            )
            raise RenderError(f"LoRA {name!r} is not known to the web UI{hint}", where=self.client.base_url)
        checkpoints = (
            [str(v) for v in plan.axis.values]
            if plan.axis and plan.axis.kind == "checkpoint"
            else ([plan.model] if plan.model else [])
        )
        if checkpoints:
            models = self.client.get_json("/sdapi/v1/sd-models")
            names = (
                {m.get(k) for m in models for k in ("title", "model_name", "filename")} if models else set()
            )
            for checkpoint in checkpoints:
                if checkpoint not in names:
                    raise RenderError(
                        f"checkpoint {checkpoint!r} is not known to the web UI", where=self.client.base_url
                    )

    def _loras(self) -> dict[str, str]:
        listing = self.client.get_json("/sdapi/v1/loras")
        known: dict[str, str] = {}
        for entry in listing if isinstance(listing, list) else []:
            meta = entry.get("metadata") or {}
            digest = str(meta.get("sshs_model_hash") or entry.get("path") or "")
            for key in ("name", "alias"):
                if entry.get(key):
                    known[str(entry[key])] = digest
        self._lora_hashes = known
        return known

    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """Server, checkpoint and LoRA identities (local file hash if the file is here, else the server's)."""
        loras = []
        for spec in plan.loras:
            local = hasher(Path(spec.path)) if spec.path else None
            loras.append({"name": _name(spec), "hash": local or self._lora_hashes.get(_name(spec), "")})
        return {"server": self.client.base_url, "model": plan.model, "loras": loras}

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """The request body itself determines the image."""
        return {"payload": txt2img_payload(plan, job)}

    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image]]:
        """One txt2img request per job, polling progress meanwhile."""
        for job in jobs:
            answer = self._with_progress(txt2img_payload(plan, job), job.cell.label, on_step)
            images = answer.get("images") if isinstance(answer, dict) else None
            if not images:
                raise RenderError(
                    f"the web UI returned no image for cell {job.cell.label!r}", where=self.client.base_url
                )
            yield job, _decode_image(images[0])

    def _with_progress(self, payload: dict[str, Any], label: str, on_step: StepCallback | None) -> Any:
        if on_step is None:
            return self.client.post_json("/sdapi/v1/txt2img", payload)
        done = threading.Event()
        poller = HttpClient(self.client.base_url, timeout=10.0, retries=0)

        def poll() -> None:
            while not done.wait(self.poll_interval):
                try:
                    state = poller.get_json("/sdapi/v1/progress", {"skip_current_image": "true"})
                except RenderError:
                    continue
                if isinstance(state, dict) and isinstance(state.get("progress"), int | float):
                    on_step(float(state["progress"]), label)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            return self.client.post_json("/sdapi/v1/txt2img", payload)
        finally:
            done.set()
            thread.join(timeout=5)
            on_step(1.0, label)

    def close(self) -> None:
        """Nothing to release (stateless HTTP)."""


def _name(spec: LoraSpec) -> str:
    return spec.name or (Path(spec.path).stem if spec.path else "")


def _decode_image(data: str) -> Image.Image:
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data)
        with Image.open(io.BytesIO(raw)) as image:
            return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise RenderError(f"the web UI sent an image lbw cannot decode: {error}") from None
