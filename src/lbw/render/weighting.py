"""What each LoRA's strengths and block ratios are for one job of a plan (no torch).

The tuned LoRA takes the cell's vector, multiplied by the strength axis value when there is one; other LoRAs
take their own fixed vector (all 1 when none). Short vectors (17/12) are zero-filled to 26/20 by ID, as
LBW does.

Example:
    >>> states = lora_states(plan, plan.jobs()[0])
    >>> states[0].ratio("IN01"), states[0].unet
    (0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lbw.domain.layouts import FULL_OF_SHORT, LAYOUTS, layout_for_length
from lbw.render.blocks import expand_to_full
from lbw.render.plan import Job, LoraSpec, Plan


@dataclass(frozen=True)
class LoraState:
    """How one LoRA applies in a cell: UNet and text-encoder strengths and the ratio per block ID."""

    unet: float
    text: float
    ratios: Mapping[str, float]

    def ratio(self, block: str | None) -> float:
        """ρ of ``block``; 1 for modules in no block; 0 for blocks the vector does not list (LBW's fill)."""
        return 1.0 if block is None else float(self.ratios.get(block, 0.0))

    def text_key(self) -> tuple[float, float]:
        """What the text encoder's weights depend on: the text strength and ρ_BASE."""
        return (self.text, self.ratio("BASE"))

    def restricted(self, blocks: Iterable[str | None]) -> dict[str, object]:
        """Cache-key view: strengths and the ratios of ``blocks`` only (others cannot change the image)."""
        present = sorted({b for b in blocks if b is not None})
        return {"unet": self.unet, "text": self.text, "ratios": {b: self.ratio(b) for b in present}}


def ratios_of(layout: str, values: tuple[float, ...]) -> dict[str, float]:
    """Block ID -> ratio for a vector, short layouts zero-filled to the full one."""
    target = FULL_OF_SHORT.get(layout, LAYOUTS[layout])
    return dict(zip(target.ids, expand_to_full(layout, values), strict=True))


def lora_states(plan: Plan, job: Job) -> list[LoraState]:
    """One LoraState per LoRA of ``plan`` for ``job``."""
    states = []
    for spec in plan.loras:
        if spec.tuned:
            factor = float(job.axis_value) if plan.axis is not None and plan.axis.kind == "strength" else 1.0
            ratios = ratios_of(plan.layout, job.cell.values)
            states.append(LoraState(spec.strength * factor, spec.text_strength * factor, ratios))
        else:
            states.append(LoraState(spec.strength, spec.text_strength, fixed_ratios(spec)))
    return states


def fixed_ratios(spec: LoraSpec) -> dict[str, float]:
    """The ratios of a LoRA that is not tuned: its own vector, or 1 everywhere."""
    if spec.weights is None:
        return _AllOnes()
    layout = layout_for_length(len(spec.weights))
    return ratios_of(layout.name, spec.weights)


class _AllOnes(dict[str, float]):
    """A ratio mapping that answers 1 for every block (a LoRA used without block weights)."""

    def get(self, key: str, default: float | None = None) -> float:  # type: ignore[override]
        return 1.0
