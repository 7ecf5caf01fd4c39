"""Shared fixtures of the tune tests: the tiny demo model and LoRA, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model, LoRA) of the tiny random-weight demo (``build_demo_assets``), read-only for the tests."""
    import torch

    from lbw.services.demo_render import build_demo_assets

    torch.set_num_threads(1)
    return build_demo_assets(tmp_path_factory.mktemp("assets"))
