"""The built-in ``diffusers`` backend: a local checkpoint, LoRAs read by lbw, block weights swapped in place.

- The model is loaded once per plan (once per checkpoint on a checkpoint axis): a diffusers folder
  (SD1.x/SD2.x ``StableDiffusionPipeline``, SDXL ``StableDiffusionXLPipeline``), or a single ``.safetensors``
  file through ``from_single_file`` with a local diffusers folder for the configs (``model_config``; lbw never
  downloads).
- LoRAs are read with ``lbw.files.lora_file.LoraFile``. ``lora_mode="batched"`` (the default) never writes the
  model's weights: every adapted layer computes W0·x + Σ s_b·ΔW(x) through the adapter's low-rank form with the
  block factor s_b of each batch element (``lora_layers.BatchedLoras``), so cells that differ only in block
  weights (an analyzer run, a Sub grid) share batches. ``lora_mode="merge"`` sets the touched layers to
  W0 + Σ m·ρ·ΔW per cell (``WeightPatcher``: a dense ΔW and a copy of W0 per layer) and batches seeds only.
- Prompt embeddings are cached per text-encoder state (text strength x ρ_BASE of each LoRA), so a plan whose
  cells keep BASE fixed encodes the prompt once; a batch takes each element's own embeddings.
- ``batch_size`` None (the default) sizes batches from free memory (CUDA: the device's free memory; CPU: the
  available RAM) and caps them (``MAX_BATCH``); every batch is halved on out-of-memory, down to 1. Every image
  has its own CPU generator seeded with its seed, so a cell looks the same whichever batch it was rendered in
  (up to float rounding).

Example:
    >>> backend = DiffusersBackend(device="auto")
    >>> result = run_plan(plan, backend, "out")
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.errors import LbwError, RenderError
from lbw.render.backends.base import Hasher, StepCallback
from lbw.render.plan import Job, Plan
from lbw.render.samplers import diffusers_scheduler, resolve_sampler
from lbw.render.weighting import LoraState, lora_states

_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
_PICKLES = (".ckpt", ".pt", ".pth", ".bin")
_DTYPES = ("fp32", "fp16", "bf16")
LORA_MODES = ("batched", "merge")
# Images per batch at most when batch_size is automatic (free memory usually allows fewer on full-size models).
MAX_BATCH = 64
# Bytes of activations per image per latent pixel per channel of the UNet's first block, measured on the full
# SD1.5 shape (CFG included; see docs/render.md "Memory"); half of the free memory is planned for them.
ACTIVATION_BYTES_PER_UNIT = 160


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda``/``cuda:N`` must exist.

    Example: ``resolve_device("auto")`` -> ``"cuda"`` on a GPU machine, ``"cpu"`` elsewhere.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device[5:]) if ":" in device else 0
        if index >= count:
            seen = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise RenderError(f"--device {device} was asked for but torch sees {seen}")
        return device
    raise RenderError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


def pipeline_class_name(model: Path, model_config: Path | None) -> str:
    """The diffusers pipeline class a checkpoint needs, from ``model_index.json`` (model or config)."""
    folder = model if model.is_dir() else model_config
    if folder is None:
        raise RenderError(
            "a single-file checkpoint needs --model-config FOLDER (a local diffusers folder of the same "
            "architecture, for the component configs); lbw never downloads",
            where=str(model),
        )
    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8"))["_class_name"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
        raise RenderError(
            f"not a diffusers model folder (model_index.json: {error})", where=str(folder)
        ) from None
    if name not in _PIPELINES:
        raise RenderError(
            f"pipeline {name} is not supported; expected one of {', '.join(_PIPELINES)}", where=str(folder)
        )
    return str(name)


def load_pipeline(
    model: str | Path, *, device: str, dtype: Any, model_config: str | Path | None = None
) -> Any:
    """Load a diffusers folder or a single ``.safetensors`` checkpoint locally, on ``device`` in ``dtype``."""
    import diffusers

    from lbw.render.tiny import quiet_logs

    quiet_logs()
    path = Path(model)
    if not path.exists():
        raise RenderError("model not found", where=str(path))
    if path.suffix.lower() in _PICKLES:
        raise RenderError("pickled checkpoints are never loaded; convert it to .safetensors", where=str(path))
    config = Path(model_config) if model_config is not None else None
    pipeline_class = getattr(diffusers, pipeline_class_name(path, config))
    extra: dict[str, Any] = {}
    if pipeline_class.__name__ == "StableDiffusionPipeline":
        extra = {"safety_checker": None, "requires_safety_checker": False}
    else:  # SDXL: the web UIs do not watermark (diffusers would, when invisible-watermark is installed)
        extra = {"add_watermarker": False}
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        if path.is_dir():
            pipe = pipeline_class.from_pretrained(str(path), local_files_only=True, dtype=dtype, **extra)
        else:
            pipe = pipeline_class.from_single_file(
                str(path), config=str(config), local_files_only=True, dtype=dtype, low_cpu_mem_usage=False, **extra
            )
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "" if path.is_dir() else " (is --model-config a diffusers folder of the same architecture?)"
        raise RenderError(f"cannot load the model: {first.rstrip(':')}{hint}", where=str(path)) from None
    if not path.is_dir():
        from lbw.render.backends.single_file import check_complete

        check_complete(path, pipe)  # diffusers leaves parameters the file lacks at random values
    check_tokenizers(pipe, path if path.is_dir() else config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def check_tokenizers(pipe: Any, folder: Path | None) -> None:
    """Each tokenizer pads prompts to ``model_max_length`` tokens: more than its text encoder has positions would
    fail inside the encoder (an index error, or a huge allocation when the config leaves the length unset)."""
    for suffix in ("", "_2"):
        tokenizer = getattr(pipe, f"tokenizer{suffix}", None)
        encoder = getattr(pipe, f"text_encoder{suffix}", None)
        if tokenizer is None or encoder is None:
            continue
        length = getattr(tokenizer, "model_max_length", None)
        positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
        if isinstance(length, int) and isinstance(positions, int) and length > positions:
            shown = f"{length}" if length < 10**9 else "unset (a huge default)"
            raise RenderError(
                f"tokenizer{suffix}/tokenizer_config.json: model_max_length is {shown} but text_encoder{suffix} has "
                f"{positions} positions; set \"model_max_length\": {positions}",
                where=str(folder) if folder is not None else None,
            )


class DiffusersBackend:
    """Render plans locally with diffusers (see the module docstring)."""

    name = "diffusers"

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        model_config: str | Path | None = None,
        dtype: str | None = None,
        lora_mode: str = "batched",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise RenderError(f"batch size must be >= 1, got {batch_size}")
        if dtype is not None and dtype not in _DTYPES:
            raise RenderError(f"unknown dtype {dtype!r}; expected {', '.join(_DTYPES)}")
        if lora_mode not in LORA_MODES:
            raise RenderError(f"unknown LoRA mode {lora_mode!r}; expected {' or '.join(LORA_MODES)}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.lora_mode = lora_mode
        self.model_config = model_config
        self.dtype_option = dtype
        self._loras: list[Any] = []
        self._pipe: Any = None
        self._pipe_model: str | None = None
        self._patcher: Any = None  # WeightPatcher (merge) or BatchedLoras (batched)
        self._patcher_key: tuple[str, ...] = ()
        self._scheduler_config: dict[str, Any] = {}
        self._embeddings: dict[tuple[Any, ...], Any] = {}
        self.loads = 0

    # --- contract ----------------------------------------------------------------------------------------

    def prepare(self, plan: Plan) -> None:
        """Check that the model(s) and LoRA files exist and read the LoRA headers."""
        from lbw.files.lora_file import LoraFile

        for model in self._models(plan):
            path = Path(model)
            if not path.exists():
                raise RenderError("model not found", where=model)
            pipeline_class_name(path, Path(self.model_config) if self.model_config else None)
        if not plan.loras:
            raise RenderError("the diffusers backend needs at least one LoRA file in the plan")
        self._loras = []
        for spec in plan.loras:
            if spec.path is None:
                raise RenderError(f"LoRA {spec.name!r} has no local file; the diffusers backend reads files")
            self._loras.append(LoraFile.open(spec.path))

    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """Model hash (or one per checkpoint on the axis), LoRA file hashes, device type and precision."""
        models = self._models(plan)
        device = self.device
        identity = {
            "model": {m: hasher(Path(m)) for m in models},
            "loras": [hasher(Path(spec.path)) for spec in plan.loras if spec.path],
            "model_config": str(self.model_config) if self.model_config else None,
            # Images differ (slightly) between CPU and GPU and between precisions.
            "device": device.split(":")[0],
            "dtype": str(_dtype(self.dtype_option, device)),
        }
        if self.lora_mode != "batched":  # merged weights round differently: their own cells (for comparisons)
            identity["lora_mode"] = self.lora_mode
        return identity

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """Seed, checkpoint, and per LoRA the strengths and the ratios of the blocks it has modules in."""
        states = lora_states(plan, job)
        return {
            "seed": job.seed,
            "model": self._model_for(plan, job),
            "loras": [
                state.restricted(module.block for module in lora_file.modules)
                for state, lora_file in zip(states, self._loras, strict=True)
            ],
        }

    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image]]:
        """Render ``jobs`` grouped by checkpoint; batched: any cells share a batch; merge: cells with the same
        weights share a batch (their seeds)."""
        by_model: dict[str, list[Job]] = {}
        for job in jobs:
            by_model.setdefault(self._model_for(plan, job), []).append(job)
        for model, model_jobs in by_model.items():
            self._load(model)
            if self.lora_mode == "batched":
                yield from self._render_batches(plan, model_jobs, on_step)
                continue
            groups: dict[str, list[Job]] = {}
            for job in model_jobs:
                weights = {k: v for k, v in self.job_identity(plan, job).items() if k != "seed"}
                groups.setdefault(json.dumps(weights, sort_keys=True), []).append(job)
            for group in groups.values():
                self._patcher.apply(lora_states(plan, group[0]))
                yield from self._render_batches(plan, group, on_step)

    def _render_batches(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None
    ) -> Iterator[tuple[Job, Image.Image]]:
        """``jobs`` in batches of about equal size; a batch that runs out of memory is halved and retried."""
        pending = list(jobs)
        while pending:
            size = batch_split(len(pending), self._batch_limit(plan))
            batch = pending[:size]
            images = self._generate_fitting(plan, batch, on_step)
            if images is None:
                continue  # out of memory: the batch size was halved, try again
            pending = pending[len(batch) :]
            yield from zip(batch, images, strict=True)

    def _batch_limit(self, plan: Plan) -> int:
        """``batch_size`` when given, else what the free memory holds (at least 1, at most ``MAX_BATCH``)."""
        if self.batch_size is not None:
            return self.batch_size
        cap = MAX_BATCH
        free = free_memory(self._device)
        if free is None:
            return min(4, cap)
        settings = plan.settings
        channels = _first_channels(self._pipe)
        element = torch_dtype_size(_dtype(self.dtype_option, self.device))
        latent_pixels = max(settings.width // 8, 1) * max(settings.height // 8, 1)
        per_image = ACTIVATION_BYTES_PER_UNIT * latent_pixels * channels * element
        return max(1, min(cap, int(free // 2 // max(per_image, 1))))

    def latents(self, plan: Plan, jobs: Sequence[Job]) -> Any:
        """The final latents of ``jobs`` (before the VAE) as one tensor, rendered in one batch (batched mode) or
        one cell at a time (merge mode): for exactness measurements (``benchmarks/bench_batched.py``)."""
        import torch

        self.prepare(plan)
        self._load(self._model_for(plan, jobs[0]))
        if self.lora_mode == "batched":
            return self._generate(plan, [lora_states(plan, job) for job in jobs], [job.seed for job in jobs], "",
                                  None, output_type="latent")
        found = []
        for job in jobs:
            states = lora_states(plan, job)
            self._patcher.apply(states)
            found.append(self._generate(plan, [states], [job.seed], "", None, output_type="latent"))
        return torch.cat(found)

    def close(self) -> None:
        """Drop the pipeline and the LoRA views."""
        self._pipe = None
        self._patcher = None
        self._embeddings.clear()
        for lora_file in self._loras:
            lora_file.close()

    # --- internals ---------------------------------------------------------------------------------------

    def _models(self, plan: Plan) -> list[str]:
        if plan.axis is not None and plan.axis.kind == "checkpoint":
            return [str(v) for v in plan.axis.values]
        if plan.model is None:
            raise RenderError("the plan names no model (use --model CKPT)")
        return [plan.model]

    def _model_for(self, plan: Plan, job: Job) -> str:
        if plan.axis is not None and plan.axis.kind == "checkpoint":
            return str(job.axis_value)
        assert plan.model is not None
        return plan.model

    def _load(self, model: str) -> None:
        """Load ``model`` unless it is loaded; (re)build the weight patcher for the current LoRA files."""
        import torch

        from lbw.render.backends.lora_layers import BatchedLoras
        from lbw.render.backends.lora_patch import WeightPatcher

        device = self.device
        if self._pipe is None or self._pipe_model != model:
            self._pipe = self._patcher = None
            self._pipe = load_pipeline(
                model, device=device, dtype=_dtype(self.dtype_option, device), model_config=self.model_config
            )
            self._pipe_model = model
            self._scheduler_config = dict(self._pipe.scheduler.config)  # the checkpoint's own
            self.loads += 1
        lora_key = tuple(str(lora_file.path) for lora_file in self._loras)
        if self._patcher is None or self._patcher_key != lora_key:
            if self._patcher is not None and self.lora_mode == "merge":
                self._patcher.restore()
            self._embeddings.clear()
            try:
                if self.lora_mode == "merge":
                    self._patcher = WeightPatcher(self._pipe, self._loras, device=device)
                else:
                    self._patcher = BatchedLoras(self._pipe, self._loras)
            except LbwError:
                raise
            except (RuntimeError, ValueError) as error:
                raise RenderError(f"cannot apply the LoRA to {model}: {error}") from None
            self._patcher_key = lora_key
        self._device = torch.device(device)

    def _generate_fitting(
        self, plan: Plan, batch: Sequence[Job], on_step: StepCallback | None
    ) -> list[Image.Image] | None:
        """Render ``batch``; on out-of-memory halve ``batch_size`` and return None (the caller retries)."""
        import torch

        out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        elements = [lora_states(plan, job) for job in batch]
        label = batch[0].cell.label if len(batch) == 1 else f"{batch[0].cell.label} (+{len(batch) - 1})"
        try:
            return self._generate(plan, elements, [job.seed for job in batch], label, on_step)
        except out_of_memory:
            if len(batch) == 1:
                size = f"{plan.settings.width}x{plan.settings.height}"
                raise RenderError(
                    f"out of {self._device.type.upper()} memory rendering one {size} image "
                    "(try --dtype fp16, a smaller size or another --device)"
                ) from None
            self.batch_size = len(batch) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None

    def _generate(
        self,
        plan: Plan,
        elements: Sequence[Sequence[LoraState]],
        seeds: Sequence[int],
        label: str,
        on_step: StepCallback | None,
        output_type: str = "pil",
    ) -> Any:
        """One image per seed; ``elements[b]``: the LoRA states of batch element b (merge mode: all the same, and
        already applied to the weights). ``output_type="latent"``: the final latents as a tensor instead."""
        import torch

        settings = plan.settings
        pipe = self._pipe
        sampler = resolve_sampler(settings.sampler, settings.scheduler)
        pipe.scheduler = diffusers_scheduler(sampler, self._scheduler_config)
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]

        def step_end(_pipe: Any, step: int, _t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step((step + 1) / settings.steps, label, len(seeds))
            return callback_kwargs

        with self._attached(), torch.inference_mode():
            per_element = [self._embeds(plan, states) for states in elements]
            kwargs = {name: torch.cat([embeds[name] for embeds in per_element]) for name in per_element[0]}
            if self.lora_mode == "batched":
                self._patcher.set_states(elements)
            output = pipe(
                **kwargs,
                num_inference_steps=settings.steps,
                guidance_scale=settings.cfg,
                width=settings.width,
                height=settings.height,
                generator=generators,
                output_type=output_type,
                callback_on_step_end=step_end,
            )
        if output_type != "pil":
            return output.images
        return [image.convert("RGB") for image in output.images]

    def _attached(self) -> Any:
        """The batched engine's wrappers on the model for one batch (nothing to attach in merge mode)."""
        from contextlib import nullcontext

        return self._patcher.attached() if self.lora_mode == "batched" else nullcontext()

    def _embeds(self, plan: Plan, states: Sequence[LoraState]) -> dict[str, Any]:
        """Prompt embeddings for the current text-encoder weights, cached by their state."""
        import torch

        settings = plan.settings
        key = (
            settings.prompt,
            settings.negative_prompt,
            settings.clip_skip,
            settings.cfg > 1,
            tuple(state.text_key() for state in states),
        )
        if key in self._embeddings:
            return self._embeddings[key]
        pipe = self._pipe
        clip_skip = settings.clip_skip - 1 or None
        if self.lora_mode == "batched":
            self._patcher.set_text_states(states)
        with torch.inference_mode():
            if type(pipe).__name__ == "StableDiffusionXLPipeline":
                embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                    settings.prompt,
                    device=self._device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=settings.cfg > 1,
                    negative_prompt=settings.negative_prompt,
                    clip_skip=clip_skip,
                )
                result = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
                if negative is not None:
                    result |= {
                        "negative_prompt_embeds": negative,
                        "negative_pooled_prompt_embeds": negative_pooled,
                    }
            else:
                embeds, negative = pipe.encode_prompt(
                    settings.prompt,
                    self._device,
                    1,
                    settings.cfg > 1,
                    settings.negative_prompt,
                    clip_skip=clip_skip,
                )
                result = {"prompt_embeds": embeds}
                if negative is not None:
                    result["negative_prompt_embeds"] = negative
        self._embeddings[key] = result
        return result


def batch_split(count: int, limit: int) -> int:
    """The size of the next batch: ``count`` jobs in batches of at most ``limit``, all about the same size.

    Example:
        >>> batch_split(54, 16)  # 4 batches: 14, 14, 13, 13
        14
    """
    limit = max(1, limit)
    batches = -(-count // limit)
    return -(-count // batches)


def free_memory(device: Any) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or the RAM available on Linux (None when unknown).

    Example: ``free_memory(torch.device("cpu"))`` -> ``17179869184`` on a machine with 16 GiB available.
    """
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def torch_dtype_size(dtype: Any) -> int:
    """Bytes per element of a torch dtype."""
    import torch

    return int(torch.empty((), dtype=dtype).element_size())


def _first_channels(pipe: Any) -> int:
    """Channels of the UNet's first block (320 for SD1.5 and SDXL), the scale of its activations."""
    channels = getattr(getattr(pipe.unet, "config", None), "block_out_channels", None)
    return int(channels[0]) if channels else 320


def _dtype(option: str | None, device: str) -> Any:
    import torch

    if option is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if option not in table:
        raise RenderError(f"unknown dtype {option!r}; expected fp32, fp16 or bf16")
    return table[option]
