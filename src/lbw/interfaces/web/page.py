"""One workbench page (one language): the header, the six tabs, and the plumbing every tab uses.

State of a browser tab is one ``gr.State`` "session": the project shown, the project version the tab last saw, and
a tick. Every change goes through a service with that version (``VersionConflict`` when another tab or command
wrote first: the tab says "reload" and changes nothing); the session's new value fires one refresh that redraws
every tab from the store, so a reload shows exactly what is stored. Long actions (render, analyze, bake) go to the
server's job queue; their callbacks only poll it, so the page never waits on a render.

Example:
    >>> blocks = Page(ctx, "ja").build()
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import gradio as gr

from lbw.domain.text import printable
from lbw.errors import LbwError
from lbw.interfaces.web.context import WebContext
from lbw.interfaces.web.i18n import LANGUAGE_NAMES, LANGUAGES, text
from lbw.services.jobs import CANCELLED, DONE, Job

POLL_S = 0.4
CSS = """
#lbw-message p { margin: 0; }
.lbw-progress p { font-variant-numeric: tabular-nums; margin: 0; }
.lbw-lang a { margin-left: 0.6em; }
.lbw-hidden { display: none !important; }
"""

Refresher = Callable[..., list[Any]]
# Reads of the store memoised for the length of one redraw (several tabs ask for the same iterations).
_memo: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("lbw_web_memo", default=None)


def empty_session(project: str | None = None) -> dict[str, Any]:
    """A tab's session before a project is loaded."""
    return {"project": project, "version": None, "tick": 0}


class Page:
    """Builds the Blocks of one language and holds the components the tabs share."""

    def __init__(self, ctx: WebContext, lang: str) -> None:
        self.ctx = ctx
        self.lang = lang
        self.refreshers: list[tuple[Refresher, list[Any], list[Any]]] = []
        self.session: gr.State
        self.message: gr.Markdown

    # ------------------------------------------------------------------------------------------- words
    def t(self, key: str, **values: Any) -> str:
        """A message of this page's language."""
        return text(self.lang, key, **values)

    def mode_name(self, kind: str) -> str:
        """``sub`` -> "Sub" (ja: "Sub (減算)"); ``eba`` -> the analyzer."""
        if kind == "eba":
            return "EBA"
        return self.t(f"mode.{kind}")

    def error_text(self, error: BaseException) -> str:
        """The line an error shows: the conflict message for a version conflict, else the error itself."""
        from lbw.errors import VersionConflict

        if isinstance(error, VersionConflict):
            return "⚠ " + self.t("msg.conflict")
        return "⚠ " + self.t("msg.error", message=printable(str(error)))

    @staticmethod
    def read(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a read of the store), computed once per redraw: the tabs redraw from one snapshot."""
        memo = _memo.get()
        if memo is None:
            return fn(*args)
        key = (fn, args)
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]

    # ----------------------------------------------------------------------------------------- session
    def project(self, session: dict[str, Any]) -> Any:
        """The session's project as stored now (ProjectError when the tab has none)."""
        from lbw.errors import ProjectError
        from lbw.services.projects import get_project

        name = (session or {}).get("project")
        if not name:
            raise ProjectError(self.t("msg.no_project"))
        return get_project(self.ctx.store, name)

    def checked(self, session: dict[str, Any]) -> tuple[str, int]:
        """(project name, the version this tab saw): what every change passes to the services."""
        from lbw.errors import ProjectError

        name, version = (session or {}).get("project"), (session or {}).get("version")
        if not name or version is None:
            raise ProjectError(self.t("msg.no_project"))
        return name, int(version)

    @staticmethod
    def after(view: Any, session: dict[str, Any], scope: str = "all") -> dict[str, Any]:
        """The session after a change: the project's new version and a new tick (fires the redraw).

        ``scope="sheet"`` (a change of the sheet or mode only) redraws only what a sheet shows, as long as no
        iteration appeared since this tab last drew (another tab's render): then everything is redrawn.
        """
        same = (session or {}).get("project") == view.name and (session or {}).get("iterations") == \
            view.iteration_count
        return {"project": view.name, "version": view.version, "tick": int((session or {}).get("tick", 0)) + 1,
                "scope": scope if same else "all", "iterations": view.iteration_count}

    @staticmethod
    def bumped(session: dict[str, Any]) -> dict[str, Any]:
        """The same project and version, a new tick and a full redraw (after a render: new iterations)."""
        return {**(session or {}), "tick": int((session or {}).get("tick", 0)) + 1, "scope": "all",
                "iterations": None}

    @staticmethod
    def sheet_only(session: dict[str, Any]) -> bool:
        """True when this redraw follows a change of the sheet or mode only (tabs skip what cannot change)."""
        return (session or {}).get("scope") == "sheet"

    # ----------------------------------------------------------------------------------------- wiring
    def on_refresh(self, outputs: Sequence[Any], inputs: Sequence[Any] = ()) -> Callable[[Refresher], Refresher]:
        """Register ``fn(view_or_None, session, *inputs) -> updates`` to redraw ``outputs`` whenever the session
        changes (``inputs``: components whose values the redraw needs, e.g. the thresholds shown)."""

        def register(fn: Refresher) -> Refresher:
            self.refreshers.append((fn, list(outputs), list(inputs)))
            return fn

        return register

    def action(self, event: Any, fn: Callable[..., Any], inputs: Sequence[Any], outputs: Sequence[Any],
               **kwargs: Any) -> Any:
        """Wire ``event`` to ``fn``; outputs[0] is the message line. An LbwError shows there, nothing else moves.

        A function that only shows something (a table for other thresholds, a block's images) returns
        ``gr.skip()`` for the message: its ``.change`` events also fire when a redraw sets a value, and must not
        wipe out what the last action said."""

        @functools.wraps(fn)
        def run(*args: Any) -> Any:
            try:
                result = fn(*args)
            except LbwError as error:
                return (self.error_text(error), *[gr.skip()] * (len(outputs) - 1))
            return result

        kwargs.setdefault("show_progress", "hidden")  # quick actions: the message line says what happened
        return event(run, inputs=list(inputs), outputs=list(outputs), **kwargs)

    def job_events(
        self,
        event: Any,
        start: Callable[..., tuple[str, str, Callable[[Job], Any]]],
        finish: Callable[[Any, dict[str, Any]], tuple[Any, ...]],
        inputs: Sequence[Any],
        progress: gr.Markdown,
        job_state: gr.State,
        extra_outputs: Sequence[Any] = (),
        *,
        line: Callable[[Job], str | None] | None = None,
        changes: Callable[[Job], object] | None = None,
        cancelled: str | None = None,
        settle: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> Any:
        """Wire a long action: ``start(*inputs)`` -> (device, label, work); the work runs in the job queue while
        this polls it and shows progress and ETA; ``finish(result, session)`` -> (message, new session, *extra).

        ``inputs[0]`` must be the session. Outputs: message, progress line, job id, session, ``extra_outputs``.
        A work that records as it goes (the tune: an iteration per round) passes ``line(job)``, its own progress
        line (None: the usual one), and ``changes(job)``, a value that moves when the page should redraw from the
        store while the work runs; ``cancelled`` is the message after a cancel (default: nothing was recorded)
        and ``settle(session)`` the session after a cancel or a failure (default: a full redraw).
        """
        skips = [gr.skip()] * len(extra_outputs)

        def run(*args: Any) -> Generator[tuple[Any, ...], None, None]:
            session = args[0]
            try:
                device, label, work = start(*args)
            except LbwError as error:
                yield self.error_text(error), "", None, gr.skip(), *skips
                return
            job = self.ctx.queue.submit(device, work, label=label)
            seen = changes(job) if changes is not None else None
            while True:
                snap = job.snapshot()
                if snap.finished:
                    break
                shown = (line(job) if line is not None and snap.state != "queued" else None) or \
                    self.progress_line(snap)
                if job.cancelled:
                    shown = "■ " + self.t("msg.cancelling") + "  \n" + shown
                now = changes(job) if changes is not None else None
                if now != seen:  # the work recorded something: every tab redraws from the store
                    seen, session = now, self.bumped(session)
                    yield gr.skip(), shown, job.id, session, *skips
                else:
                    yield gr.skip(), shown, job.id, gr.skip(), *skips
                job.wait(POLL_S)
            snap = job.snapshot()
            after_stop = settle or self.bumped
            if job.state == DONE:
                try:
                    message, new_session, *extra = finish(job.result, session)
                except LbwError as error:
                    yield self.error_text(error), "", None, after_stop(session), *skips
                    return
                shown = (line(job) if line is not None else None) or self.progress_line(snap)
                yield message, shown, None, new_session, *extra
            elif job.state == CANCELLED:
                yield "■ " + (cancelled or self.t("msg.cancelled")), "", None, after_stop(session), *skips
            else:
                message = "⚠ " + self.t("msg.error", message=printable(job.error or "?"))
                yield message, "", None, after_stop(session), *skips

        return event(run, inputs=list(inputs),
                     outputs=[self.message, progress, job_state, self.session, *extra_outputs],
                     concurrency_limit=None, show_progress="hidden")

    def cancel_event(self, button: gr.Button, job_state: gr.State) -> None:
        """Wire a Cancel button to the job whose id ``job_state`` holds."""

        def cancel(job_id: int | None) -> Any:
            # Nothing is written from here: this answer could reach the page after the job's own last message
            # (a job that stops at once) and leave "Cancel…" standing; the job's progress line says it instead.
            job = self.ctx.queue.get(job_id) if isinstance(job_id, int) else None
            if job is not None and not job.snapshot().finished:
                job.cancel()
            return gr.skip()

        button.click(cancel, inputs=[job_state], outputs=[self.message], concurrency_limit=None, queue=False)

    def progress_line(self, snap: Any) -> str:
        """``3/12 cells, 4 s elapsed, about 11 s left`` (or the place in the queue)."""
        if snap.state == DONE:
            return "✓ " + self.t("msg.done_in", total=snap.total, elapsed=f"{snap.elapsed:.0f}")
        if snap.state == "queued":
            return "▶ " + self.t("msg.queued", ahead=snap.ahead)
        if not snap.total:
            return f"▶ {snap.label} … {snap.elapsed:.0f} s"
        eta = "?" if snap.eta is None else f"{snap.eta:.0f}"
        return "▶ " + self.t("msg.progress", done=int(snap.done), total=snap.total, elapsed=f"{snap.elapsed:.0f}",
                              eta=eta)

    # ------------------------------------------------------------------------------------------ build
    def build(self) -> gr.Blocks:
        """The whole page."""
        from lbw.interfaces.web.tabs import analyze, bake, history, plot, project, sheet

        with gr.Blocks(analytics_enabled=False, title=self.t("app.title")) as blocks:
            self.session = gr.State(empty_session())
            with gr.Row():
                gr.Markdown(f"## {self.t('app.title')}\n{self.t('app.subtitle')}")
                gr.HTML(self._language_links(), elem_classes="lbw-lang")
            self.font_note = gr.Markdown(self._font_note())
            self.message = gr.Markdown("", elem_id="lbw-message")
            # the session tick of the last finished redraw (scripts and tests wait on it; never shown)
            self.tick_marker = gr.HTML("", elem_id="lbw-tick", elem_classes="lbw-hidden")
            with gr.Tabs():
                project.build(self)
                analyze.build(self)
                sheet.build(self)
                plot.build(self)
                history.build(self)
                bake.build(self)
            outputs = [self.message, self.tick_marker] + [c for _, comps, _ in self.refreshers for c in comps]
            inputs = [self.session] + [c for _, _, extra in self.refreshers for c in extra]
            self.session.change(self._refresh, inputs=inputs, outputs=outputs, show_progress="hidden")
            blocks.load(self._on_load, inputs=[self.session], outputs=[self.session, self.message])
        return blocks

    def _language_links(self) -> str:
        links = []
        for lang in LANGUAGES:
            name = LANGUAGE_NAMES[lang]
            if lang == self.lang:
                links.append(f"<b>{name}</b>")
            else:  # the same project in the other language
                links.append(f'<a href="../{lang}/" onclick="this.href=\'../{lang}/\'+location.search">{name}</a>')
        return f"{self.t('app.language')}: " + " ".join(links)

    def _font_note(self) -> str:
        from lbw.render.fonts import INSTALL_HINT, find_cjk_font

        if find_cjk_font() is not None:
            return ""
        return "⚠ " + self.t("app.font_missing", hint=INSTALL_HINT)

    def _on_load(self, session: dict[str, Any], request: gr.Request) -> tuple[Any, str]:
        """Open ``?project=NAME`` (else the server's first project, else the latest one changed)."""
        from lbw.services.projects import get_project, list_projects

        wanted = None
        if request is not None:
            wanted = request.query_params.get("project")
        try:
            if wanted:
                view = get_project(self.ctx.store, wanted)
            elif self.ctx.first_project:
                view = get_project(self.ctx.store, self.ctx.first_project)
            else:
                views = list_projects(self.ctx.store)
                if not views:
                    return {**empty_session(), "tick": 1}, self.t("app.no_project")
                view = max(views, key=lambda v: v.updated)
        except LbwError as error:
            return {**empty_session(), "tick": 1}, self.error_text(error)
        return self.after(view, session), ""

    def _refresh(self, session: dict[str, Any], *extra: Any) -> list[Any]:
        token = _memo.set({})
        try:
            return self._redraw(session, *extra)
        finally:
            _memo.reset(token)

    def _redraw(self, session: dict[str, Any], *extra: Any) -> list[Any]:
        started = time.perf_counter()
        view = None
        message: Any = gr.skip()
        if (session or {}).get("project"):
            try:
                view = self.project(session)
            except LbwError as error:
                message = self.error_text(error)
        updates: list[Any] = [message, f"<span>{int((session or {}).get('tick', 0))}</span>"]
        values = iter(extra)
        for fn, comps, inputs in self.refreshers:
            args = [next(values) for _ in inputs]
            try:
                result = fn(view, session, *args)
            except LbwError as error:
                updates[0] = self.error_text(error)
                result = [gr.skip()] * len(comps)
            if len(result) != len(comps):  # a programming error: say which tab
                raise RuntimeError(f"refresher {fn.__qualname__} returned {len(result)} updates for {len(comps)}")
            updates.extend(result)
        self.last_refresh_s = time.perf_counter() - started
        return updates
