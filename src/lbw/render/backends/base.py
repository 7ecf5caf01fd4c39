"""The backend contract: turn plan jobs into images.

A backend validates what it needs before rendering (``prepare``: model and LoRAs present, extension
installed), says what determines each image (``identity``, ``job_identity``: these become the cache key), and
renders jobs, yielding each image as soon as it is done so the runner can store it (resumable runs). A cell the
server reports as failed is yielded as a :class:`CellFailure` instead of an image: the runner reports it and does
not cache it, so the next run tries it again.

Example:
    >>> backend.prepare(plan)
    >>> for job, image in backend.render(plan, plan.jobs()):
    ...     image.save(f"{job.cell.label}.png")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from lbw.render.plan import Job, Plan

# Content hash of a local file or folder.
Hasher = Callable[[Path], str]

# Called with (fraction 0..1 of the current job, a short status text[, cells drawn together in it]): a backend
# that draws a batch of cells at once passes the batch size, so progress counts cells; receivers take the third
# argument as optional (default 1).
StepCallback = Callable[..., None]


@dataclass(frozen=True)
class CellFailure:
    """What a backend yields instead of an image for a cell that failed (``reason``: one line, for the user)."""

    reason: str


class Backend(Protocol):
    """What the runner needs from a generation backend."""

    name: str

    def prepare(self, plan: Plan) -> None:
        """Check and load what ``plan`` needs; RenderError with a clear message if something is missing."""

    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """Plan-wide cache-key parts (model hash, LoRA hashes, server); called after ``prepare``.

        ``hasher`` returns the content hash of a local file or folder (memoised by the cache).
        """

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """Per-job cache-key parts: the effective weights and strengths, the seed, the axis value."""

    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image | CellFailure]]:
        """Render ``jobs`` (any order, grouped as the backend likes); yield each (job, image) when done."""

    def close(self) -> None:
        """Release models or connections."""
