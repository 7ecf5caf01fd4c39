"""Sampler names: the web UI's names (the plan's convention) mapped to diffusers schedulers and ComfyUI names.

A plan stores the A1111 sampler name (``DPM++ 2M``) and optionally a schedule (``Karras``); the older combined
form ``DPM++ 2M Karras`` is accepted too.

Example:
    >>> resolve_sampler("DPM++ 2M Karras", None)
    Sampler(name='DPM++ 2M', karras=True)
    >>> comfy_sampler(resolve_sampler("Euler a", None))
    ('euler_ancestral', 'normal')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lbw.errors import RenderError

# A1111 name -> (diffusers scheduler class, extra config, ComfyUI sampler name or None when it has none).
_TABLE: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "Euler": ("EulerDiscreteScheduler", {}, "euler"),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, "euler_ancestral"),
    "Heun": ("HeunDiscreteScheduler", {}, "heun"),
    "LMS": ("LMSDiscreteScheduler", {}, "lms"),
    "DPM2": ("KDPM2DiscreteScheduler", {}, "dpm_2"),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, "dpm_2_ancestral"),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}, "dpmpp_2m"),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "dpmpp_2m_sde"),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}, "dpmpp_sde"),
    "DDIM": ("DDIMScheduler", {}, "ddim"),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, None),
    "UniPC": ("UniPCMultistepScheduler", {}, "uni_pc"),
}
SAMPLER_NAMES: tuple[str, ...] = tuple(_TABLE)  # for lists in pages and help texts
_KARRAS_OK = {
    "Euler",
    "Euler a",
    "Heun",
    "LMS",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "UniPC",
}
_SCHEDULES = ("Automatic", "Normal", "Karras")


@dataclass(frozen=True)
class Sampler:
    """A sampler name from the table and whether it uses Karras sigmas."""

    name: str
    karras: bool = False


def sampler_names() -> tuple[str, ...]:
    """The sampler names lbw knows (A1111 spelling)."""
    return tuple(_TABLE)


def resolve_sampler(sampler: str, schedule: str | None) -> Sampler:
    """Read ``sampler`` (``DPM++ 2M``, ``DPM++ 2M Karras``) and ``schedule`` (None, Normal, Karras...)."""
    name = sampler.strip()
    karras = False
    if name.endswith(" Karras"):
        name, karras = name[: -len(" Karras")], True
    if schedule is not None:
        if schedule.capitalize() not in _SCHEDULES:
            raise RenderError(f"unknown schedule {schedule!r}; expected one of {', '.join(_SCHEDULES)}")
        karras = karras or schedule.capitalize() == "Karras"
    if name not in _TABLE:
        raise RenderError(f"unknown sampler {sampler!r}; expected one of {', '.join(_TABLE)}")
    if karras and name not in _KARRAS_OK:
        raise RenderError(f"sampler {name!r} has no Karras schedule")
    return Sampler(name, karras)


def diffusers_scheduler(sampler: Sampler, base_config: dict[str, Any]) -> Any:
    """A diffusers scheduler for ``sampler`` built from the checkpoint's scheduler config (no download)."""
    import diffusers

    class_name, extra, _ = _TABLE[sampler.name]
    scheduler_class = getattr(diffusers, class_name)
    # Private keys (``_use_default_values``) would make diffusers drop the options set here.
    config = {**{k: v for k, v in base_config.items() if not k.startswith("_")}, **extra}
    if sampler.karras:
        config["use_karras_sigmas"] = True
    try:
        return scheduler_class.from_config(config)
    except ImportError as error:
        first = str(error).strip().splitlines()[0]
        raise RenderError(f"sampler {sampler.name!r} is not available here: {first}") from None


def comfy_sampler(sampler: Sampler) -> tuple[str, str]:
    """ComfyUI's (sampler_name, scheduler) for ``sampler``; RenderError when ComfyUI has no such sampler."""
    name = _TABLE[sampler.name][2]
    if name is None:
        raise RenderError(f"ComfyUI has no {sampler.name!r} sampler; choose another --sampler")
    return name, "karras" if sampler.karras else "normal"
