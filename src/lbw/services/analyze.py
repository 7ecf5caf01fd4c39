"""``lbw eba``: run the Effective Block Analyzer, rank the blocks, suggest a classification and a sheet.

Example:
    >>> plan = eba_plan(LoraSpec(path="face.safetensors"), model="model/", settings=Settings(prompt="1girl"),
    ...                 roi="0.25,0,0.75,0.5")
    >>> report = run_eba(plan, DiffusersBackend(), Path("out/eba"))
    >>> report.ranked[0].block, report.classes["IN01"]
    ('OUT03', 'unneeded')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbw.domain.layouts import SD26
from lbw.domain.sheet import Sheet
from lbw.domain.sheet_file import sheet_to_toml
from lbw.domain.weights import validate_name
from lbw.errors import LbwError, RenderError
from lbw.files.atomic import write_text_atomic
from lbw.files.generated import check_overwrite, write_generated
from lbw.render.analysis import IMPORTANT, UNCLEAR, UNNEEDED, BlockChange, Box, Thresholds, classify, rank
from lbw.render.backends.base import Backend, StepCallback
from lbw.render.eba import SOURCE_LABEL, SeedAnalysis, analyze_seed, eba_cells, mean_changes
from lbw.render.paths import inside, safe_component
from lbw.render.plan import Axis, EbaSpec, LoraSpec, Plan, Settings
from lbw.render.runner import CellCallback, RunResult, axis_texts, run_plan

# The tutorial's sheet entry for each class: (weight, fixed).
SHEET_ENTRY = {IMPORTANT: (1.0, True), UNNEEDED: (0.0, True), UNCLEAR: (0.5, False)}


def eba_plan(
    lora: LoraSpec,
    *,
    model: str | None,
    settings: Settings,
    blocks: Sequence[str] = SD26.ids,
    probe: float = 0.5,
    base: float = 1.0,
    threshold: int = 20,
    diff_color: str = "black",
    transpose: bool = False,
    roi: str | None = None,
    thresholds: Thresholds | None = None,
    others: Sequence[LoraSpec] = (),
    axis: Axis | None = None,
    name: str | None = None,
) -> Plan:
    """An analyzer plan: the source plus one cell per block at ``probe`` (LBW's Range ``probe,base``).

    Every analysis option is stored in the plan (``plan.eba``), so ``lbw plot plan.json`` repeats it. The
    region is checked against the image size here, before anything renders.
    """
    rule = thresholds or Thresholds()
    if roi:
        Box.parse(roi, settings.width, settings.height)
    spec = EbaSpec(
        probe=probe,
        base=base,
        blocks=tuple(blocks),
        threshold=threshold,
        diff_color=diff_color,
        transpose=transpose,
        roi=roi or None,
        important=rule.important,
        unneeded=rule.unneeded,
    )
    plan_name = name or (Path(lora.path).stem if lora.path else lora.name) or "eba"
    return Plan(
        kind="eba",
        layout="SD26",
        cells=eba_cells(tuple(blocks), probe, base),
        settings=settings,
        loras=(lora, *others),
        model=model,
        axis=axis,
        eba=spec,
        name=plan_name,
    )


@dataclass
class EbaReport:
    """The analyzer's result: per-seed analyses, mean metrics, ranking, classes and the suggested sheet."""

    run: RunResult
    seeds: list[SeedAnalysis]
    changes: tuple[BlockChange, ...]
    thresholds: Thresholds
    roi: Box | None
    classes: dict[str, str] = field(default_factory=dict)
    sheet: Sheet | None = None
    sheet_path: Path | None = None
    report_path: Path | None = None

    @property
    def max_diff_percent(self) -> float:
        """The largest Diff % of any block (0 when no block changed a single sample)."""
        return max((c.diff_percent for c in self.changes), default=0.0)

    @property
    def no_change(self) -> bool:
        """True when no block changed the image at all: no sheet is suggested (check prompt, trigger, strength)."""
        return self.max_diff_percent == 0.0

    @property
    def ranked(self) -> list[BlockChange]:
        """Blocks, largest change first."""
        return rank(self.changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``analysis.json`` holds)."""
        return {
            "plan": str(self.run.plan_path),
            "threshold": (self.run.plan.eba or EbaSpec()).threshold,
            "range": None if self.run.plan.eba is None else [self.run.plan.eba.probe, self.run.plan.eba.base],
            "region": None if self.roi is None else self.roi.as_text(),
            "classification": {
                "important_at_least": self.thresholds.important,
                "unneeded_below": self.thresholds.unneeded,
                "score": "region Diff %" if self.roi else "Diff %",
            },
            "blocks": [
                {
                    "block": c.block,
                    "diff_percent": c.diff_percent,
                    "roi_diff_percent": c.roi_diff_percent,
                    "roi_share_percent": c.roi_share_percent,
                    "class": self.classes[c.block],
                }
                for c in self.ranked
            ],
            "seeds": {str(a.seed): {c.block: c.diff_percent for c in a.changes} for a in self.seeds},
            "grids": [str(a.grid) for a in self.seeds],
            "suggested_sheet": None if self.sheet_path is None else str(self.sheet_path),
            "suggested_weights": None if self.sheet is None else self.sheet.weight_line(),
            "no_change": self.no_change,
        }


def suggested_sheet(name: str, classes: dict[str, str], lora: str | None = None) -> Sheet:
    """A sheet from the classes: important -> 1 fixed, unneeded -> 0 fixed, unclear -> 0.5 unfixed.

    Blocks the analyzer did not test stay at 1 and unfixed.
    """
    values = []
    fixed = set()
    for block in SD26.ids:
        value, is_fixed = SHEET_ENTRY[classes[block]] if block in classes else (1.0, False)
        values.append(value)
        if is_fixed:
            fixed.add(block)
    return Sheet(_sheet_name(name), SD26, tuple(values), frozenset(fixed), lora=lora or None)


def _sheet_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name) or "Eba"
    try:
        return validate_name(cleaned)
    except LbwError:
        return "Eba"


NO_CHANGE = "no block changed the image (max Diff % = 0): check the prompt/trigger/strength"
SUGGESTED_SHEET = "suggested-sheet.toml"


def analyze_run(run: RunResult, *, force: bool = False) -> EbaReport:
    """Compute the analyzer outputs from a finished run's saved cell images and write them next to it.

    The suggested sheet is written only when some block changed the image (``report.no_change`` otherwise), and
    never over a suggested sheet the user edited unless ``force`` (``lbw.files.generated``).
    """
    plan = run.plan
    if plan.kind != "eba" or plan.eba is None:
        raise RenderError(f"plan kind is {plan.kind!r}; the analyzer needs an eba plan")
    spec = plan.eba
    thresholds = Thresholds(spec.important, spec.unneeded)
    roi = Box.parse(spec.roi, plan.settings.width, plan.settings.height) if spec.roi else None
    out = run.out_dir
    seeds: list[SeedAnalysis] = []
    axis_values = plan.axis.values if plan.axis else (None,)
    folders = axis_texts(plan)
    for value in axis_values:
        for seed in plan.settings.seeds:
            images = {
                job.cell.label: run.image(job)
                for job in run.cell_paths
                if job.seed == seed and job.axis_value == value
            }
            # an axis value may be a server's checkpoint name: one safe folder name, inside the output folder
            target = out if plan.axis is None else inside(out, f"{safe_component(plan.axis.kind)}_{folders[value]}")
            target.mkdir(parents=True, exist_ok=True)
            seeds.append(analyze_seed(plan, seed, images, target, roi=roi, transpose=spec.transpose))
    changes = mean_changes(seeds)
    report = EbaReport(run, seeds, changes, thresholds, roi, classify(changes, thresholds))
    tuned = next((lora for lora in plan.loras if lora.tuned), None)
    if not report.no_change:
        report.sheet = suggested_sheet(plan.name, report.classes, tuned.name if tuned else None)
        report.sheet_path = write_generated(out / SUGGESTED_SHEET, sheet_to_toml(report.sheet), force=force)
    report.report_path = out / "analysis.json"
    write_text_atomic(report.report_path, json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def run_eba(
    plan: Plan,
    backend: Backend,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    on_cell: CellCallback | None = None,
    on_step: StepCallback | None = None,
    force: bool = False,
) -> EbaReport:
    """Render the analyzer plan (cached, resumable) and analyze it with the options stored in ``plan.eba``.

    An edited ``suggested-sheet.toml`` in ``out_dir`` is refused before anything renders (unless ``force``).
    """
    if plan.eba is None or not any(cell.label == SOURCE_LABEL for cell in plan.cells):
        raise RenderError("an analyzer plan needs its eba settings and its source cell")
    check_overwrite(Path(out_dir) / SUGGESTED_SHEET, force=force)
    run = run_plan(plan, backend, out_dir, cache_dir=cache_dir, on_cell=on_cell, on_step=on_step, grid=False)
    return analyze_run(run, force=force)
