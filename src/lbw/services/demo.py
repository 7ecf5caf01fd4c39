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
from dataclasses import dataclass, field
from pathlib import Path

from lbw.domain.weights import BlockWeights
from lbw.errors import RenderError
from lbw.render.plan import LoraSpec
from lbw.render.runner import CellCallback, RunResult, run_plan
from lbw.services.analyze import NO_CHANGE, EbaReport, eba_plan, run_eba
from lbw.services.bake import BakeOptions, BakeReport, bake
from lbw.services.demo_render import DEMO_LORA, build_demo_assets, demo_settings
from lbw.services.plot import plan_from_sheet
from lbw.services.sources import Defaults, SourceSpec, open_source
from lbw.services.verify import VerifyReport, verify

DEMO_REGION = "0.25,0.25,0.75,0.75"


@dataclass
class DemoResult:
    """Where the demo put everything, and the bake's verification."""

    model: Path
    lora: Path
    eba: EbaReport
    sub: RunResult
    baked: BakeReport
    verification: VerifyReport
    story: RunResult | None = None  # the world demo's before/after plan and its numbers
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)


def run_demo(
    folder: Path,
    *,
    device: str = "auto",
    on_cell: CellCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Build the assets, run the analyzer (26 blocks, one seed) and a Sub grid (two seeds) of the sheet it
    suggests, then bake the suggested weights and verify the baked file against the source."""
    from lbw.render.backends.diffusers_backend import DiffusersBackend

    stage = on_stage or (lambda text: None)
    stage("building a tiny SD1.5-layout model and a matching LoRA")
    model, lora = build_demo_assets(folder)
    spec = LoraSpec(path=str(lora), name=DEMO_LORA)
    plan = eba_plan(spec, model=str(model), settings=demo_settings(), name="Gobuhime", roi=DEMO_REGION)
    stage("Effective Block Analyzer: source + 26 blocks at 0.5")
    backend = DiffusersBackend(device=device)
    try:
        report = run_eba(plan, backend, folder / "eba", on_cell=on_cell)
        sheet = report.sheet
        if sheet is None:  # no block changed the image: nothing to bake
            raise RenderError(NO_CHANGE)
        stage("Sub grid of the suggested sheet (unclear blocks lowered one at a time)")
        sub_plan = plan_from_sheet(sheet, "sub", settings=demo_settings((1, 2)), loras=(spec,), model=str(model))
        sub = run_plan(sub_plan, backend, folder / "sub", cache_dir=folder / "eba" / "cache", on_cell=on_cell)
    finally:
        backend.close()
    baked, verification = bake_and_verify(lora, sheet.weights, folder / f"{DEMO_LORA}.safetensors", stage)
    return DemoResult(model, lora, report, sub, baked, verification)


def bake_and_verify(
    lora: Path, weights: BlockWeights, stem: Path, stage: Callable[[str], None]
) -> tuple[BakeReport, VerifyReport]:
    """Bake ``weights`` into ``<stem>-<weights name>.safetensors`` beside ``stem`` and verify it module by module."""
    dest = stem.with_name(f"{stem.stem}-{weights.name or 'baked'}.safetensors")
    stage(f"baking {weights.format()} into {dest.name}")
    baked = bake(lora, dest, weights, options=BakeOptions(force=True))
    stage("verifying the baked file against the source, module by module")
    source_spec = SourceSpec(path=lora, strength=None, weights=weights.vector_text(), text=str(lora))
    source = open_source(source_spec, Defaults())
    try:
        verification = verify(dest, [source])
    finally:
        source.lora.close()
    return baked, verification
