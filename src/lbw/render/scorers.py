"""Pluggable scorers for ``lbw tune``: the built-in ``lab-ssim`` and any installed through an entry point.

A package adds a scorer by declaring an entry point in the group ``lbw.scorers`` (``pyproject.toml``)::

    [project.entry-points."lbw.scorers"]
    face-id = "my_package.scorers:FaceScorer"

The object it names is a class or factory called without arguments, or an object, with a method
``score(candidate, full, off, keep)`` (``lbw.render.scores.Scorer``). lbw's own ``lab-ssim`` is declared the same
way and is also known without its entry point (an install whose metadata predates it still finds it).

Example:
    >>> "lab-ssim" in scorer_names()
    True
    >>> load_scorer("lab-ssim").name
    'lab-ssim'
"""

from __future__ import annotations

import contextlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from lbw.errors import RenderError

GROUP = "lbw.scorers"
DEFAULT_SCORER = "lab-ssim"
BUILTIN: dict[str, str] = {DEFAULT_SCORER: "lbw.render.scores:LabSsimScorer"}


def _entry_points() -> dict[str, EntryPoint]:
    """Installed entry points of the group by name (the first of duplicates), built-ins added when missing."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=GROUP):
        found.setdefault(point.name, point)
    for name, value in BUILTIN.items():
        found.setdefault(name, EntryPoint(name=name, value=value, group=GROUP))
    return found


def scorer_names() -> list[str]:
    """Every scorer name ``load_scorer`` accepts, sorted."""
    return sorted(_entry_points())


def load_scorer(name: str = DEFAULT_SCORER) -> Any:
    """The scorer named ``name``, ready to call; RenderError naming the known scorers or what failed."""
    points = _entry_points()
    point = points.get(name)
    if point is None:
        raise RenderError(f"unknown scorer {name!r}; installed: {', '.join(sorted(points))} (a package adds one "
                          f"through the entry point group {GROUP!r})")
    try:
        target = point.load()
        if isinstance(target, type) or (callable(target) and not callable(getattr(target, "score", None))):
            scorer = target()
        else:
            scorer = target
    except Exception as error:  # a plug-in's own failure: one line naming it
        raise RenderError(f"scorer {name!r} ({point.value}) could not be loaded: {type(error).__name__}: {error}"
                          ) from None
    if not callable(getattr(scorer, "score", None)):
        raise RenderError(f"scorer {name!r} ({point.value}) has no score(candidate, full, off, keep) method")
    if not isinstance(getattr(scorer, "name", None), str):
        with contextlib.suppress(AttributeError):
            scorer.name = name
    return scorer
