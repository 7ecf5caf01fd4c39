"""Projects: the state of a tuning in one store, one function per user action (the CLI and the web call these).

A project is one tuning: the LoRA (and others rendered beside it), the model, the backend, the render settings,
the sheet (weights, Fix flags, step, bounds), the mode (sub/add/subadd/addsub) and its history. Every render is
an iteration (the sheet before, the plan, the cells with Diff %); every change of the sheet is a decision
(block, old value, new value, fixed, source, the iteration it followed, the time). Nothing is ever deleted:
``undo_to`` goes back to an iteration's sheet and is itself recorded as a decision.

Every mutating call takes ``expected_version`` (the ``version`` of the ``ProjectView`` the caller shows) and
raises ``VersionConflict`` when the project changed meanwhile (another tab or command): reload, then try again.
A call that changes nothing records nothing and keeps the version. Renders add iterations without changing the
version (they change no editable state), except that a render in another mode first switches the mode.

Imports stay light (no torch, numpy or PIL) until a render or an analyzer table is asked for.

This module is the public entry point; the actions live in modules split by concern and are re-exported here:
``project_lifecycle`` (workspace, create, read, list, settings, archive, export), ``project_settings`` (settings
checks and normalisation), ``project_edits`` (sheet edits and their decisions), ``project_iterations`` (renders,
analyzer runs, iterations, the log), ``project_types`` (the settings and views) and ``project_core`` (the shared
mutation transaction and views of store records, internal).

Example:
    >>> store = open_workspace("lbw-workspace")
    >>> view = create_project(store, "Face", ProjectSettings(lora="face.safetensors", model="model/",
    ...                                                      prompt="1girl"))
    >>> it = render_iteration(store, "Face")                      # the Sub grid of the sheet
    >>> view = fix_cell(store, "Face", "SubIN05_0", take=True, expected_version=view.version)
    >>> view.sheet.value("IN05"), "IN05" in view.sheet.fixed
    (0.0, True)
"""

from __future__ import annotations

from lbw.services.project_edits import (
    NO_CHANGE_MESSAGE,
    fix_block,
    fix_cell,
    replace_sheet,
    set_block,
    set_bounds,
    set_mode,
    set_step,
    start_sheet_from_analysis,
    undo_to,
    unfix_block,
)
from lbw.services.project_iterations import (
    CellProgress,
    StepProgress,
    analysis_table,
    get_iteration,
    list_iterations,
    project_log,
    render_iteration,
    run_analysis,
)
from lbw.services.project_lifecycle import (
    ExportResult,
    create_project,
    export_project,
    get_project,
    list_projects,
    open_workspace,
    set_archived,
    update_settings,
    weights_text,
)
from lbw.services.project_settings import (
    check_prompt,
    check_settings,
    lora_specs,
    read_settings_file,
    render_settings,
)
from lbw.services.project_types import (
    AnalysisBlockView,
    AnalysisView,
    CellView,
    DecisionView,
    IterationSummary,
    IterationView,
    LogEntry,
    OtherLora,
    ProjectSettings,
    ProjectView,
)
from lbw.store import DEFAULT_WORKSPACE, Store

__all__ = [
    "DEFAULT_WORKSPACE",
    "NO_CHANGE_MESSAGE",
    "AnalysisBlockView",
    "AnalysisView",
    "CellProgress",
    "CellView",
    "DecisionView",
    "ExportResult",
    "IterationSummary",
    "IterationView",
    "LogEntry",
    "OtherLora",
    "ProjectSettings",
    "ProjectView",
    "StepProgress",
    "Store",
    "analysis_table",
    "check_prompt",
    "check_settings",
    "create_project",
    "export_project",
    "fix_block",
    "fix_cell",
    "get_iteration",
    "get_project",
    "list_iterations",
    "list_projects",
    "lora_specs",
    "open_workspace",
    "project_log",
    "read_settings_file",
    "render_iteration",
    "render_settings",
    "replace_sheet",
    "run_analysis",
    "set_archived",
    "set_block",
    "set_bounds",
    "set_mode",
    "set_step",
    "start_sheet_from_analysis",
    "undo_to",
    "unfix_block",
    "update_settings",
    "weights_text",
]
