"""``lbw demo``: the whole loop on a tiny local model, no downloads and no user files.

Builds a tiny SD1.5-layout pipeline and a matching LoCon LoRA, runs the Effective Block Analyzer over all 26
blocks, renders a Sub grid of the suggested sheet, bakes the suggested weights into a new LoRA file and verifies
the bake against the source, module by module.

Example:
    >>> result = run_demo(Path("lbw-demo"))
    >>> result.verification.passed
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lbw.render.runner import CellCallback
from lbw.services.bake import BakeOptions, BakeReport, bake
from lbw.services.demo_render import DEMO_LORA, DemoRender, demo_render
from lbw.services.sources import Defaults, SourceSpec, open_source
from lbw.services.verify import VerifyReport, verify


@dataclass
class DemoResult:
    """Where the demo put everything, and the bake's verification."""

    rendered: DemoRender
    baked: BakeReport
    verification: VerifyReport


def run_demo(
    folder: Path,
    *,
    device: str = "cpu",
    on_cell: CellCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Render (analyzer + Sub grid), then bake the suggested weights and verify the baked file."""
    rendered = demo_render(folder, device=device, on_cell=on_cell, on_stage=on_stage)
    sheet = rendered.eba.sheet
    if sheet is None:  # run_eba always suggests a sheet; guard the type for readers
        raise RuntimeError("the analyzer suggested no sheet")
    weights = sheet.weights
    dest = folder / f"{DEMO_LORA}-{weights.name or 'baked'}.safetensors"
    if on_stage:
        on_stage(f"baking {weights.format()} into {dest.name}")
    baked = bake(rendered.lora, dest, weights, options=BakeOptions(force=True))
    if on_stage:
        on_stage("verifying the baked file against the source, module by module")
    spec = SourceSpec(path=rendered.lora, strength=None, weights=weights.vector_text(), text=str(rendered.lora))
    source = open_source(spec, Defaults())
    try:
        verification = verify(dest, [source])
    finally:
        source.lora.close()
    return DemoResult(rendered, baked, verification)
