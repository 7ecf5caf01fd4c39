"""Sampler names: web UI names to diffusers schedulers and ComfyUI names."""

from __future__ import annotations

import pytest

from lbw.errors import RenderError
from lbw.render.samplers import Sampler, comfy_sampler, diffusers_scheduler, resolve_sampler
from lbw.render.tiny import _scheduler


def test_names_and_schedules():
    assert resolve_sampler("DPM++ 2M Karras", None) == Sampler("DPM++ 2M", True)
    assert resolve_sampler("DPM++ 2M", "Karras") == Sampler("DPM++ 2M", True)
    assert comfy_sampler(resolve_sampler("Euler a", "Normal")) == ("euler_ancestral", "normal")
    assert comfy_sampler(resolve_sampler("DPM++ 2M Karras", None)) == ("dpmpp_2m", "karras")
    with pytest.raises(RenderError, match="unknown sampler 'Euler b'"):
        resolve_sampler("Euler b", None)
    with pytest.raises(RenderError, match="has no Karras schedule"):
        resolve_sampler("DDIM", "Karras")
    with pytest.raises(RenderError, match="ComfyUI has no 'PLMS' sampler"):  # never silently another one
        comfy_sampler(resolve_sampler("PLMS", None))


def test_diffusers_schedulers_keep_the_checkpoint_config():
    base = dict(_scheduler().config)
    karras = diffusers_scheduler(Sampler("DPM++ 2M", True), base)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler" and karras.config.use_karras_sigmas
    euler = diffusers_scheduler(Sampler("Euler"), base)  # the backend always starts from the checkpoint config
    assert type(euler).__name__ == "EulerDiscreteScheduler" and not euler.config.use_karras_sigmas
    assert euler.config.beta_schedule == "scaled_linear" and euler.config.steps_offset == 1
