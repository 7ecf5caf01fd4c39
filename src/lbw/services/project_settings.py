"""Project settings: the checks a render would make, normalisation of local paths, the plan settings and LoRA
list a render uses, and reading an exported ``settings.json``.

Example:
    >>> settings = ProjectSettings(lora="face.safetensors", model="model/", prompt="1girl", steps=20)
    >>> check_settings(settings)                 # ProjectError when a render would refuse them
    >>> render_settings(settings).steps, lora_specs(settings)[0].tuned
    (20, True)
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from lbw.domain.layouts import SD26
from lbw.domain.text import printable
from lbw.errors import LbwError, ProjectError
from lbw.render.plan import Cell, LoraSpec, Plan, Settings, require_prompt
from lbw.services.project_types import A1111_MODES, BACKENDS, ProjectSettings


def check_prompt(settings: ProjectSettings, allow_empty: bool = False) -> None:
    """Refuse a render without a prompt (a LoRA's trigger usually lives there) unless ``allow_empty``."""
    try:
        require_prompt(settings.prompt, allow_empty)
    except LbwError as error:
        raise ProjectError(error.message) from None


def render_settings(settings: ProjectSettings) -> Settings:
    """The plan settings of a project."""
    return Settings(prompt=settings.prompt, negative_prompt=settings.negative, steps=settings.steps, cfg=settings.cfg,
                    sampler=settings.sampler, scheduler=settings.scheduler, width=settings.width,
                    height=settings.height, clip_skip=settings.clip_skip, seeds=settings.seeds)


def lora_specs(settings: ProjectSettings) -> tuple[LoraSpec, ...]:
    """The tuned LoRA first, then the others at their strengths (ProjectError when the project has no LoRA)."""
    if not settings.lora:
        raise ProjectError("the project has no LoRA; set one (lbw project set NAME --lora FILE)")
    specs = [LoraSpec(path=_local(settings.lora), name=settings.lora_name or _stem(settings.lora),
                      strength=settings.strength, te_strength=settings.te_strength, tuned=True)]
    for other in settings.other_loras:
        specs.append(LoraSpec(path=_local(other.path), name=other.name or _stem(other.path), strength=other.strength,
                              tuned=False))
    return tuple(specs)


def check_settings(settings: ProjectSettings) -> None:
    """Refuse settings a render would refuse (sizes, steps, seeds, sampler, backend, URL, region)."""
    if settings.backend not in BACKENDS:
        raise ProjectError(f"unknown backend {settings.backend!r}; expected one of {', '.join(BACKENDS)}")
    if settings.a1111_mode not in A1111_MODES:
        raise ProjectError(f"unknown a1111 mode {settings.a1111_mode!r}; expected one of {', '.join(A1111_MODES)}")
    for url in () if settings.url is None else settings.url.split(","):  # several: a pool of servers
        if not url.strip().startswith(("http://", "https://")):
            raise ProjectError(f"the server URL must start with http:// or https://, got {printable(url)!r}")
    loras = (LoraSpec(name="x", strength=settings.strength, te_strength=settings.te_strength),
             *(LoraSpec(name="o", strength=o.strength, tuned=False) for o in settings.other_loras))
    try:
        Plan(kind="custom", layout="SD26", cells=(Cell("check", (1.0,) * len(SD26)),), settings=render_settings(
            settings), loras=loras)
    except LbwError as error:
        raise ProjectError(f"setting refused: {error.message}") from None
    if settings.roi:
        from lbw.render.analysis import Box

        try:
            Box.parse(settings.roi, settings.width, settings.height)
        except LbwError as error:
            raise ProjectError(f"setting 'roi' refused: {error.message}") from None


def read_settings_file(path: str | os.PathLike[str]) -> ProjectSettings:
    """Settings from an exported ``settings.json`` (or a bare settings object)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise ProjectError("settings file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProjectError(f"not a settings JSON file: {error}", where=str(path)) from None
    if isinstance(data, dict) and "lbw_project" in data:
        data = data.get("settings")
    return ProjectSettings.from_dict(data, where=str(path))


# ------------------------------------------------------------------------------------------ internals


def _normalised(settings: ProjectSettings) -> ProjectSettings:
    """Local paths made absolute (a server-side name is kept as given)."""
    return replace(
        settings,
        lora=_absolute(settings.lora),
        model=_absolute(settings.model),
        other_loras=tuple(replace(o, path=_absolute(o.path) or o.path) for o in settings.other_loras),
    )


def _absolute(value: str | None) -> str | None:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def _local(value: str) -> str | None:
    path = Path(value)
    return str(path.resolve()) if path.exists() else None


def _stem(value: str) -> str:
    path = Path(value)
    return path.stem if path.suffix else value
