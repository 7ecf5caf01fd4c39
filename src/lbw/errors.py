"""One exception family for everything a user can get wrong.

The CLI prints ``str(error)`` on one line and exits with code 2. Messages name the file, key or
position and say what was expected.

Example:
    >>> raise WeightsError("expected 12, 17, 20, 26 or 61 values, found 5", position=4)
"""

from __future__ import annotations


class LbwError(Exception):
    """Base of all user-facing errors. ``where`` (file, key, position) is prefixed to the message."""

    def __init__(self, message: str, *, where: str | None = None, position: int | None = None) -> None:
        self.message = message
        self.where = where
        self.position = position
        super().__init__(self.__str__())

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        suffix = f" (at position {self.position})" if self.position is not None else ""
        return f"{prefix}{self.message}{suffix}"


class WeightsError(LbwError):
    """A weight vector, token or layout conversion is invalid."""


class PresetError(LbwError):
    """A preset file or preset name is invalid."""


class SheetError(LbwError):
    """A sheet file or sheet operation is invalid."""


class LoraFileError(LbwError):
    """A LoRA file cannot be read, is malformed, or is of a kind lbw refuses (pickles)."""


class AdapterError(LbwError):
    """An adapter module has missing or inconsistent tensors, or an operation it cannot support."""


class OutputError(LbwError):
    """An output path is unusable (exists without --force, is the input, cannot be written)."""


class RenderError(LbwError):
    """A plot plan, generation backend or analysis input is invalid or failed."""


class StoreError(LbwError):
    """The project store (workspace database) cannot be opened, is from a newer lbw, or lacks a project."""


class VersionConflict(StoreError):
    """A project changed since the caller read it (another tab or command): reload, then try again."""

    def __init__(self, project: str, expected: int, found: int) -> None:
        self.project = project
        self.expected = expected
        self.found = found
        super().__init__(
            f"project {project!r} changed in another tab or command (version {found}, you had {expected}); reload"
        )


class ProjectError(LbwError):
    """A project action cannot be done as asked (a bad setting, an unknown cell, an empty prompt, a cancel)."""


class Cancelled(ProjectError):
    """A render or analysis was cancelled by the user; nothing was recorded as an iteration."""
