"""The ``a1111`` backend: a Stable Diffusion web UI (A1111 or Forge) started with ``--api`` and LBW installed.

Three ways to send the block weights (``mode``), all with a fixed seed per image:

- ``presets`` (default): one ``POST /sdapi/v1/txt2img`` per cell; the vector travels as a preset in the LoRA Block
  Weight always-on arguments (``args[0]`` replaces the preset file for that request only; the user's
  ``lbwpresets.txt`` is never edited) and the prompt carries ``<lora:NAME:M:lbw=lbwcellHASH>``.
- ``inline``: one request per cell with the vector in the tag, ``<lora:NAME:M:lbw=1,0,0.5,...>``; LBW runs with
  its own defaults (no always-on arguments are sent).
- ``xyz``: one request per seed (and axis value) with the built-in X/Y/Z plot script, X = Prompt S/R over the
  cells' preset names, lone images included; the axis index and the argument list come from
  ``/sdapi/v1/script-info``. The model stays loaded between cells.

Every preset name is ``lbwcell``/``lbwfixed`` + 12 hex digits of the SHA-256 of its vector, so the prompt text of
a cell changes exactly when its weights do. The web UI keeps the text-encoder output of the last prompt
(``StableDiffusionProcessing.cached_c``/``cached_uc``, "Persistent cond cache", on by default) and reuses it while
the prompt text and its extra-network arguments are unchanged; one fixed name for every cell made each cell reuse
the previous cell's text-encoder output (its BASE weight), so cells leaked into each other.

Before rendering the backend checks that LBW (and X/Y/Z) are installed, the LoRAs are known (after one
``refresh-loras``) and the checkpoint exists, and says which is missing. Progress is read from
``/sdapi/v1/progress`` while a request runs; a request fails when neither its answer nor the progress moved for the
read timeout (``--timeout``). Every answer's shape is checked (``Answer``) and every image decoded only after its
size matched the plan's.

Example:
    >>> backend = A1111Backend(url="http://127.0.0.1:7860", mode="inline")
    >>> run_plan(plan, backend, "out")
"""

from __future__ import annotations

import difflib
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.domain.layouts import layout_for_length
from lbw.errors import RenderError
from lbw.render.backends.answers import Answer
from lbw.render.backends.base import Hasher, StepCallback
from lbw.render.backends.http import CONNECT_TIMEOUT, MAX_BYTES, READ_TIMEOUT, Deadline, HttpClient
from lbw.render.backends.images import decode_image
from lbw.render.blocks import format_value
from lbw.render.plan import Job, LoraSpec, Plan
from lbw.render.samplers import resolve_sampler
from lbw.render.weighting import lora_states

LBW_TITLE = "LoRA Block Weight"
XYZ_TITLE = "x/y/z plot"
PROMPT_SR = "Prompt S/R"
CELL_PRESET = "lbwcell"
FIXED_PRESET = "lbwfixed"
MODES = ("presets", "inline", "xyz")
# X/Y/Z plot arguments 0-17 (webui 1.6-1.10; forks append more, which keep their defaults).
_XYZ_ARGS = 18


def lora_prompt_tag(name: str, te: float, unet: float, weights: str | None) -> str:
    """``<lora:NAME:M:lbw=W>`` (W: a preset name or an inline vector), ``te=``/``unet=`` when they differ.

    Example:
        >>> lora_prompt_tag("face", 1, 1, "lbwcell")
        '<lora:face:1:lbw=lbwcell>'
        >>> lora_prompt_tag("face", 0.5, 1, "1,0,1,1,1,1,1,1,1,1,1,1")
        '<lora:face:te=0.5:unet=1:lbw=1,0,1,1,1,1,1,1,1,1,1,1>'
    """
    if not name or any(ch in name for ch in ":<>\n"):
        raise RenderError(f"LoRA name {name!r} is empty or contains ':', '<' or '>'")
    strengths = format_value(unet) if te == unet else f"te={format_value(te)}:unet={format_value(unet)}"
    suffix = f":lbw={weights}" if weights else ""
    return f"<lora:{name}:{strengths}{suffix}>"


def vector_text(values: Sequence[float]) -> str:
    """``1,0,0.5,...``: an LBW weight string (the length must be 12, 17, 20, 26 or 61)."""
    layout_for_length(len(values))
    return ",".join(format_value(v) for v in values)


def preset_line(name: str, values: Sequence[float]) -> str:
    """``NAME:v1,...`` for LBW's preset argument."""
    return f"{name}:{vector_text(values)}"


def preset_name(prefix: str, values: Sequence[float]) -> str:
    """``PREFIX`` + 12 hex digits of the SHA-256 of the vector text: one name per vector, all names one width.

    The prompt text then differs exactly where the weights differ, so the web UI's cache of the text-encoder
    output (keyed by the prompt's text) is never reused for other weights.

    Example:
        >>> preset_name("lbwcell", [1.0] * 17)
        'lbwcell9b8f4488df78'
    """
    return f"{prefix}{hashlib.sha256(vector_text(values).encode('ascii')).hexdigest()[:12]}"


def cell_preset_name(values: Sequence[float]) -> str:
    """The preset name of the tuned LoRA's vector in one cell (``lbwcell`` + hash)."""
    return preset_name(CELL_PRESET, values)


def _lora_tags(plan: Plan, job: Job, mode: str) -> tuple[list[str], list[str]]:
    """Prompt tags and preset lines of every LoRA for ``job`` (preset names from the vectors' hashes)."""
    tags: list[str] = []
    presets: list[str] = []
    for spec, state in zip(plan.loras, lora_states(plan, job), strict=True):
        values = job.cell.values if spec.tuned else spec.weights
        weights = None
        if values is not None and mode == "inline":
            weights = vector_text(values)
        elif values is not None:
            weights = preset_name(CELL_PRESET if spec.tuned else FIXED_PRESET, values)
            line = preset_line(weights, values)
            if line not in presets:
                presets.append(line)
        tags.append(lora_prompt_tag(_name(spec), state.text, state.unet, weights))
    return tags, presets


def txt2img_payload(plan: Plan, job: Job, mode: str = "presets") -> dict[str, Any]:
    """The ``/sdapi/v1/txt2img`` body for one job (``presets`` or ``inline`` mode)."""
    if mode not in ("presets", "inline"):
        raise RenderError(f"one-cell payloads exist for presets and inline mode, not {mode!r}")
    tags, presets = _lora_tags(plan, job, mode)
    return _payload(plan, job, tags, presets)


def xyz_payload(plan: Plan, jobs: Sequence[Job], script_args: Sequence[Any]) -> dict[str, Any]:
    """One X/Y/Z plot request rendering ``jobs`` (same seed and axis value) with X = Prompt S/R over presets.

    ``script_args``: the script's 18+ argument defaults from script-info, with ``script_args[0]`` already set
    to the Prompt S/R axis index (``xyz_script_args``).
    """
    first = jobs[0]
    if any(job.seed != first.seed or job.axis_value != first.axis_value for job in jobs):
        raise RenderError("an X/Y/Z request renders the cells of one seed and one axis value")
    names = xyz_names(jobs)
    tags, presets = _lora_tags(plan, first, "presets")
    lines = {cell_preset_name(job.cell.values): preset_line(cell_preset_name(job.cell.values), job.cell.values)
             for job in jobs}
    presets += [line for line in lines.values() if line not in presets]
    payload = _payload(plan, first, tags, presets)
    args = list(script_args)
    args[1] = ",".join(names)  # preset names hold no comma or space: no CSV quoting needed
    payload["script_name"] = XYZ_TITLE
    payload["script_args"] = args
    return payload


def xyz_names(jobs: Sequence[Job]) -> list[str]:
    """The X values of an X/Y/Z request: each distinct cell preset name once, in job order (the first is in the
    prompt; Prompt S/R replaces it by each in turn)."""
    return list(dict.fromkeys(cell_preset_name(job.cell.values) for job in jobs))


def xyz_script_args(info: Any) -> list[Any]:
    """X/Y/Z plot arguments from ``/sdapi/v1/script-info``: defaults, X = Prompt S/R, lone images on.

    Positions (webui 1.6-1.10): x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
    z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    vary_seeds_x/y/z, margin_size, csv_mode; later positions (forks) keep their defaults.
    """
    answer = info if isinstance(info, Answer) else Answer("GET /sdapi/v1/script-info", info)
    entries = []
    for entry in answer.items():
        img2img = entry.optional("is_img2img")
        if entry.optional_text("name") == XYZ_TITLE and not (img2img is not None and img2img.flag()):
            entries.append(entry)
    if not entries:
        raise answer.fail("lists no txt2img 'x/y/z plot' script")
    args = entries[0].field("args", "the script's argument list").items()
    if len(args) < _XYZ_ARGS:
        raise RenderError(
            f"the X/Y/Z plot script takes {len(args)} arguments; lbw knows the {_XYZ_ARGS}-argument layout of "
            "webui 1.6 and later (use --a1111-mode presets)"
        )
    listed = args[0].field("choices", "the X types").items()
    choices = [choice.text() for choice in listed]
    if PROMPT_SR not in choices:
        raise RenderError(f"the X/Y/Z plot X type has no {PROMPT_SR!r} choice (choices: {len(choices)})")
    values = [arg.mapping().get("value") for arg in args]
    values[0:_XYZ_ARGS] = [
        choices.index(PROMPT_SR), "", [],  # X: Prompt S/R (values set per request)
        0, "", [],  # Y: Nothing
        0, "", [],  # Z: Nothing
        True, True, False,  # legend, lone images (every cell comes back), no sub-grids
        False, False, False, False,  # keep fixed seeds, vary none
        0, False,  # margin, csv mode
    ]
    return values


def _payload(plan: Plan, job: Job, tags: list[str], presets: list[str]) -> dict[str, Any]:
    settings = plan.settings
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
        # The combined name ("DPM++ 2M Karras") works on every version; webui >= 1.9 also reads "scheduler".
        "sampler_name": f"{sampler.name} Karras" if sampler.karras else sampler.name,
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
    """Render through a running web UI's API (see the module docstring).

    ``timeout``: the read timeout (the longest silence of a request, progress included); ``connect_timeout``;
    ``deadline``: seconds for a whole run (None: no limit); ``max_bytes``: the largest non-image answer.
    """

    name = "a1111"

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:7860",
        timeout: float = READ_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        deadline: float | None = None,
        max_bytes: int = MAX_BYTES,
        retries: int = 4,
        backoff: float = 1.0,
        poll_interval: float = 0.5,
        mode: str = "presets",
    ) -> None:
        if mode not in MODES:
            raise RenderError(f"unknown a1111 mode {mode!r}; expected one of {', '.join(MODES)}")
        self.deadline = Deadline(deadline)
        self.client = HttpClient(url, connect_timeout=connect_timeout, read_timeout=timeout, deadline=self.deadline,
                                 max_bytes=max_bytes, retries=retries, backoff=backoff)
        self.poll_interval = poll_interval
        self.mode = mode
        self._lora_hashes: dict[str, str] = {}
        self._model_hashes: dict[str, str] = {}
        self._xyz_args: list[Any] = []
        self._alive: float | None = None

    def _get(self, path: str) -> Answer:
        return Answer(f"GET {path}", self.client.get_json(path), where=self.client.base_url)

    def prepare(self, plan: Plan) -> None:
        """Check LBW, the LoRAs and the checkpoint(s) on the server; RenderError naming what is missing."""
        self.deadline.restart()
        scripts = self._get("/sdapi/v1/scripts")
        titles = [item.text().lower() for item in scripts.field("txt2img", "a list of script titles").items()]
        if LBW_TITLE.lower() not in titles:
            raise RenderError(
                "the LoRA Block Weight extension is not installed or not enabled "
                "(install hako-mikan/sd-webui-lora-block-weight and restart the web UI with --api)",
                where=self.client.base_url,
            )
        if not plan.loras:
            raise RenderError("the plan has no LoRA (use --lora NAME)")
        if self.mode == "xyz":
            self._prepare_xyz(plan, titles)
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
                f"; did you mean {', '.join(map(repr, close))}?" if close else f"; the web UI knows {len(known)} LoRAs"
            )
            raise RenderError(f"LoRA {name!r} is not known to the web UI{hint}", where=self.client.base_url)
        checkpoints = (
            [str(v) for v in plan.axis.values]
            if plan.axis and plan.axis.kind == "checkpoint"
            else ([plan.model] if plan.model else [])
        )
        models = self._get("/sdapi/v1/sd-models").items()
        if not checkpoints:  # the web UI's current checkpoint renders: key the cache by it too
            current = self._get("/sdapi/v1/options").optional_text("sd_model_checkpoint")
            checkpoints = [current] if current else []
        for checkpoint in checkpoints:
            entry = next((m for m in models if checkpoint in _model_names(m)), None)
            if entry is None:
                raise RenderError(f"checkpoint {checkpoint!r} is not known to the web UI", where=self.client.base_url)
            digest = entry.optional_text("sha256") or entry.optional_text("hash") or entry.text_at("title")
            self._model_hashes[checkpoint] = digest

    def _prepare_xyz(self, plan: Plan, titles: list[str]) -> None:
        if XYZ_TITLE not in titles:
            raise RenderError("the web UI lists no 'x/y/z plot' script", where=self.client.base_url)
        if not any(spec.tuned for spec in plan.loras):
            raise RenderError("xyz mode needs a tuned LoRA (its tag carries the Prompt S/R search string)")
        settings = plan.settings
        if CELL_PRESET in settings.prompt or CELL_PRESET in settings.negative_prompt:
            raise RenderError(f"xyz mode: the prompt must not contain {CELL_PRESET!r} (the Prompt S/R names)")
        self._xyz_args = xyz_script_args(self._get("/sdapi/v1/script-info"))

    def _loras(self) -> dict[str, str]:
        known: dict[str, str] = {}
        for entry in self._get("/sdapi/v1/loras").items():
            metadata = entry.optional("metadata")
            digest = (metadata.optional_text("sshs_model_hash") if metadata is not None else None) or ""
            digest = digest or entry.optional_text("path") or ""
            for key in ("name", "alias"):
                value = entry.text_at(key) if key == "name" else entry.optional_text(key)
                if value:
                    known[value] = digest
        self._lora_hashes = known
        return known

    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """Server, checkpoint hashes (the server's) and LoRA hashes (the local file's if here, else the server's)."""
        loras = []
        for spec in plan.loras:
            local = hasher(Path(spec.path)) if spec.path else None
            loras.append({"name": _name(spec), "hash": local or self._lora_hashes.get(_name(spec), "")})
        return {"server": self.client.base_url, "models": self._model_hashes, "loras": loras}

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """The mode and the one-cell request body (xyz: the presets body, whichever cells share the request)."""
        mode = "presets" if self.mode == "xyz" else self.mode
        return {"mode": self.mode, "payload": txt2img_payload(plan, job, mode)}

    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image]]:
        """One txt2img request per job, or (xyz) per seed and axis value; progress is polled meanwhile."""
        size = (plan.settings.width, plan.settings.height)
        if self.mode != "xyz":
            for job in jobs:
                payload = txt2img_payload(plan, job, self.mode)
                images = self._images(payload, 1, job.cell.label, size, on_step)
                yield job, decode_image(images[0], job.cell.label, size)
            return
        for group in self.units(jobs):
            payload = xyz_payload(plan, group, self._xyz_args)
            names = xyz_names(group)
            # images[0] is the X/Y/Z grid; the lone images follow in X order.
            images = self._images(payload, len(names) + 1, f"seed {group[0].seed} (X/Y/Z)", size, on_step)
            for job in group:
                data = images[1 + names.index(cell_preset_name(job.cell.values))]
                yield job, decode_image(data, job.cell.label, size)

    def units(self, jobs: Sequence[Job]) -> list[list[Job]]:
        """The jobs as the requests that draw them: one each, or (xyz) one per seed and axis value, in order.
        A server pool hands out these units."""
        if self.mode != "xyz":
            return [[job] for job in jobs]
        groups: dict[tuple[Any, int], list[Job]] = {}
        for job in jobs:
            groups.setdefault((job.axis_value, job.seed), []).append(job)
        return list(groups.values())

    def _images(
        self, payload: dict[str, Any], count: int, label: str, size: tuple[int, int], on_step: StepCallback | None
    ) -> list[str]:
        """The first ``count`` base64 images of the answer to ``payload``."""
        # base64 PNGs of noise-like images take about 4 bytes per pixel; the X/Y/Z grid is as large as its cells
        limit = self.client.max_bytes + 2 * count * size[0] * size[1] * 5
        answer = Answer("POST /sdapi/v1/txt2img", self._with_progress(payload, label, on_step, limit),
                        where=self.client.base_url)
        images = answer.field("images", "a list of base64 images").items()
        if len(images) < count:
            raise answer.fail(f"holds {len(images)} image(s) for {label!r}, expected {count}")
        return [image.text() for image in images[:count]]

    def _with_progress(self, payload: dict[str, Any], label: str, on_step: StepCallback | None, limit: int) -> Any:
        """POST txt2img while a second thread reads ``/sdapi/v1/progress``: its changes keep the request alive
        (the read timeout counts silence, not the whole request) and feed ``on_step``."""
        done = threading.Event()
        poller = HttpClient(self.client.base_url, connect_timeout=min(self.client.connect_timeout, 10.0),
                            read_timeout=min(self.client.read_timeout, 10.0), deadline=self.deadline, retries=0)
        self._alive = None

        def poll() -> None:
            seen: tuple[Any, ...] | None = None
            while not done.wait(self.poll_interval):
                try:
                    state = poller.get_json("/sdapi/v1/progress", {"skip_current_image": "true"})
                except RenderError:
                    continue
                sign = _progress_sign(state)
                if sign is None or done.is_set():
                    continue
                if seen is not None and sign != seen:
                    self._alive = time.monotonic()
                seen = sign
                if on_step is not None:
                    on_step(float(sign[0]), label)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            return self.client.post_json("/sdapi/v1/txt2img", payload, limit=limit, activity=lambda: self._alive)
        finally:
            done.set()
            thread.join(timeout=1)
            if on_step is not None:
                on_step(1.0, label)

    def close(self) -> None:
        """Nothing to release (stateless HTTP)."""


def _progress_sign(state: Any) -> tuple[Any, ...] | None:
    """What changes while the web UI works: progress, job number, sampling step (None: not a progress answer)."""
    if not isinstance(state, dict):
        return None
    progress = state.get("progress")
    if not isinstance(progress, int | float) or isinstance(progress, bool):
        return None
    inner = state.get("state") if isinstance(state.get("state"), dict) else {}
    keys = ("job", "job_no", "job_count", "job_timestamp", "sampling_step", "sampling_steps")
    return (min(max(float(progress), 0.0), 1.0), *(str(inner.get(k)) for k in keys))


def _model_names(entry: Answer) -> set[str]:
    names = {entry.text_at("title")}
    names.update(v for v in (entry.optional_text("model_name"), entry.optional_text("filename")) if v)
    return names


def _name(spec: LoraSpec) -> str:
    return spec.name or (Path(spec.path).stem if spec.path else "")
