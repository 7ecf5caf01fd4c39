"""Shared tiny assets for the render tests: one SD1.5-layout model folder and one matching LoRA per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, LoRA file) built locally; torch limited to one thread (the machine is shared)."""
    import torch

    from lbw.services.demo_render import build_demo_assets

    torch.set_num_threads(1)
    return build_demo_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_pipe():
    """The in-memory tiny pipeline (same seed as the saved folder)."""
    import torch

    from lbw.render.tiny import build_tiny_sd15_pipeline

    torch.set_num_threads(1)
    pipe = build_tiny_sd15_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe
