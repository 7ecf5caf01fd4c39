"""The state file of a project's tune: what lets an interrupted ``lbw tune`` continue where it stopped.

``<workspace>/projects/<id>/tune/state.json`` holds the options that define the tune (its fingerprint: strategy,
threshold, seeds, keep box, scorer, sampler seed; not the budget), the budget, the cells each phase rendered, the
sheet the tune started from, the tutorial's progress (step, round, decisions about to be applied, each block's
tries) and each strategy's result. It is written atomically after every plan and on Ctrl-C. The renders
themselves live in the workspace cell cache, so a re-run renders nothing twice: the same command continues, a
larger ``--budget`` continues a finished tune, ``--restart`` starts a new one (a new run folder).

Example:
    >>> state = new_state({"strategy": "both"}, 200, run=1)
    >>> state["status"], state["counts"]["tutorial"]
    ('running', 0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lbw.domain.text import json_text
from lbw.errors import ProjectError
from lbw.files.atomic import write_text_atomic
from lbw.services.tune_cells import PHASES

STATE_FORMAT = 1
STATE_FILE = "state.json"
MAX_STATE_BYTES = 64 * 1024 * 1024


def new_state(fingerprint: dict[str, Any], budget: int, *, run: int) -> dict[str, Any]:
    """A fresh state for run number ``run``."""
    return {
        "lbw_tune": STATE_FORMAT,
        "run": run,
        "fingerprint": fingerprint,
        "budget": budget,
        "status": "running",
        "counts": dict.fromkeys(PHASES, 0),
        "start": None,
        "iterations": [],
        "tutorial": {},
        "search": {},
        "random": {},
        "applied": None,
    }


def load_state(folder: Path) -> dict[str, Any] | None:
    """The state in ``folder`` (None when there is none); ProjectError naming the file when it is unreadable."""
    path = folder / STATE_FILE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ProjectError(f"cannot read the tune state: {error}", where=str(path)) from None
    if len(raw) > MAX_STATE_BYTES:
        raise ProjectError(f"the tune state is larger than {MAX_STATE_BYTES} bytes; start over with --restart",
                           where=str(path))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProjectError(f"not a tune state file ({error}); start over with --restart", where=str(path)) from None
    if not isinstance(data, dict) or data.get("lbw_tune") != STATE_FORMAT or not isinstance(data.get("counts"), dict):
        raise ProjectError(f'not a tune state file (expected "lbw_tune": {STATE_FORMAT}); start over with --restart',
                           where=str(path))
    for phase in PHASES:
        value = data["counts"].get(phase, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProjectError(f"tune state: counts.{phase} must be a count, got {value!r}; start over with "
                               "--restart", where=str(path))
    return data


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    write_text_atomic(path, json_text(state, indent=1, allow_nan=False) + "\n")
    return path


def next_run(folder: Path) -> int:
    """The number of a new run: one more than the highest ``run-NNNN`` folder in ``folder``."""
    numbers = [int(p.name[4:]) for p in folder.glob("run-*") if p.is_dir() and p.name[4:].isdigit()]
    return max(numbers, default=0) + 1


def tune_folder(workspace: Path, project_id: int) -> Path:
    """The folder of a project's tune (its state file and run folders): ``<workspace>/projects/<id>/tune``."""
    return Path(workspace) / "projects" / str(int(project_id)) / "tune"


def run_folder(folder: Path, run: int) -> Path:
    """Where run ``run`` writes its grid and report."""
    return folder / f"run-{run:04d}"


def describe_fingerprint(fingerprint: dict[str, Any]) -> str:
    """One line of the options a state was made with."""
    return ", ".join(f"{key} {value}" for key, value in fingerprint.items())
