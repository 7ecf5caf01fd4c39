"""The Sheet tab's Auto section: ``lbw tune`` on the project as one queued job (progress with ETA and the best
candidate so far, cancellable, continued by pressing Auto again); the other tabs redraw from the store as each
round is recorded; at the end the score table and the before/after grid, read back from the tune's report."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from lbw.domain.text import printable
from lbw.interfaces.web.i18n import MESSAGES

STRATEGIES = ("tutorial", "search", "both")
MASK_COLOUR = "#ff3b30"  # the brush: any painted pixel is kept, whatever its colour
BLANK = 236  # the grey canvas to draw on before anything was rendered


def build(page: Any) -> None:
    """Add the Auto section to the tab being built (the Sheet tab)."""
    from lbw.services.tune import DEFAULT_BUDGET

    t, ctx = page.t, page.ctx
    with gr.Accordion(t("tune.title"), open=True, elem_id="lbw-auto-section"):
        gr.Markdown(t("tune.intro"))
        with gr.Row():
            keep_box = gr.Textbox(label=t("tune.keep_box"), max_length=200, scale=3, elem_id="lbw-auto-box")
            budget = gr.Number(label=t("tune.budget"), value=DEFAULT_BUDGET, scale=1, elem_id="lbw-auto-budget")
            threshold = gr.Number(label=t("tune.threshold"), value=0.9, step=0.05, scale=1,
                                  elem_id="lbw-auto-threshold")
        with gr.Accordion(t("tune.mask.title"), open=False, elem_id="lbw-auto-mask-section"):
            gr.Markdown(t("tune.mask.help"))
            editor = gr.ImageEditor(label=t("tune.mask.editor"), type="numpy", image_mode="RGBA", sources=(),
                                    transforms=(), layers=False, buttons=[], height=420,
                                    brush=gr.Brush(colors=[MASK_COLOUR], default_color=MASK_COLOUR,
                                                   color_mode="fixed"),
                                    eraser=gr.Eraser(), elem_id="lbw-auto-mask-editor")
            with gr.Row():
                save_mask = gr.Button(t("tune.mask.save"), scale=1, elem_id="lbw-auto-mask-save")
                use_mask = gr.Checkbox(label=t("tune.mask.use"), value=False, scale=2, elem_id="lbw-auto-use-mask")
            mask_note = gr.Markdown(elem_id="lbw-auto-mask-note")
        with gr.Row():
            strategy = gr.Radio([(t(f"tune.row.{k}"), k) for k in STRATEGIES], value="both", scale=2,
                                label=t("tune.strategy"), elem_id="lbw-auto-strategy")
            held_out = gr.Textbox(label=t("tune.held_out"), max_length=200, scale=2, elem_id="lbw-auto-held-out")
            restart = gr.Checkbox(label=t("tune.restart"), value=False, scale=1, elem_id="lbw-auto-restart")
        with gr.Row():
            run_btn = gr.Button(t("tune.run"), variant="primary", scale=3, elem_id="lbw-auto")
            cancel_btn = gr.Button(t("plot.cancel"), variant="stop", scale=1, elem_id="lbw-auto-cancel")
        progress = gr.Markdown(elem_classes="lbw-progress", elem_id="lbw-auto-progress")
        job_state = gr.State(None)
        summary = gr.Markdown(elem_id="lbw-auto-summary")
        table = gr.Dataframe(
            headers=[t("tune.col.name"), t("tune.col.effect_tuning"), t("tune.col.effect_held"),
                     t("tune.col.side_tuning"), t("tune.col.side_held")],
            label=t("tune.table"), interactive=False, type="array", wrap=True, visible=False,
            elem_id="lbw-auto-table")
        grid = gr.Image(label=t("tune.grid"), type="filepath", interactive=False, buttons=["download"], visible=False,
                        elem_id="lbw-auto-grid")

    def row_name(name: str) -> str:
        key = f"tune.row.{name}"
        return t(key) if key in MESSAGES else name

    def described(name: str, last: Any) -> tuple[str, list[list[str]], str | None]:
        """The summary, the score table and the grid (in the page's language) of the project's last tune."""
        from lbw.errors import LbwError
        from lbw.services.tune_live import report_summary, score_rows, tune_grid

        if last is None:
            return t("tune.none"), [], None
        if not last.finished or last.report is None:
            return t("tune.unfinished", cells=last.cells, budget=last.budget), [], None
        data = last.report
        about = report_summary(data)

        def listed(numbers: tuple[int, ...], mark: str = "") -> str:
            return ", ".join(f"{mark}{n}" for n in numbers) or "-"

        lines = [
            "✓ " + t("tune.summary", winner=row_name(about.winner), cells=last.cells, budget=last.budget,
                     iterations=listed(about.iterations, "#")),
            "",
            f"`{printable(about.weights)}`",
            "",
            t("tune.goal", threshold=about.threshold, box=printable(about.keep_box),
              tuning=listed(about.tuning_seeds), held=listed(about.held_out_seeds)),
        ]
        lines += [f"- {printable(note)}" for note in about.notes]
        rows = [[row_name(name), *numbers] for name, *numbers in score_rows(data)]
        try:
            grid = tune_grid(ctx.store, name, page.lang, grid_words())
        except LbwError as error:
            grid = last.grid
            lines.append(t("tune.grid.english", error=printable(page.error_text(error))))
        return "\n".join(lines), rows, str(grid) if grid else None

    def grid_words() -> Any:
        """The before/after grid's words in the page's language."""
        from lbw.services.tune_report import GridWords

        return GridWords(title=t("tune.grid.title"), box=t("tune.grid.box"), mask=t("tune.grid.mask"),
                         scores=t("tune.grid.scores"), seed=t("plot.seed"), tuning=t("tune.grid.tuning"),
                         held_out=t("tune.grid.held_out"),
                         rows={key: row_name(key) for key in ("ALL", "OFF", "tutorial", "search", "random")})

    def mask_line(name: str) -> str:
        from lbw.services.keep_draw import drawn_mask_counts

        counts = drawn_mask_counts(ctx.store, name)
        return t("tune.mask.none") if counts is None else t("tune.mask.current", kept=counts[0], total=counts[1])

    @page.on_refresh([keep_box, summary, table, grid, editor, mask_note])
    def refresh(view: Any, session: dict[str, Any]) -> list[Any]:
        from lbw.services.keep_draw import editor_background
        from lbw.services.tune_live import last_tune

        if view is None:
            return [gr.skip(), "", gr.Dataframe(value=[], visible=False), gr.Image(value=None, visible=False),
                    None, ""]
        if page.sheet_only(session):  # no tune ran since the last redraw
            return [gr.skip()] * 6
        text, rows, image = described(view.name, last_tune(ctx.store, view.name))
        cell = editor_background(ctx.store, view.name)
        width, height = view.settings.width, view.settings.height
        background = str(cell) if cell is not None else np.full((height, width, 3), BLANK, dtype=np.uint8)
        brush = gr.Brush(colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed",
                         default_size=max(2, min(width, height) // 24))
        return [gr.Textbox(placeholder=view.settings.roi or ""), text, gr.Dataframe(value=rows, visible=bool(rows)),
                gr.Image(value=image, visible=image is not None),
                gr.ImageEditor(value={"background": background, "layers": [], "composite": None}, brush=brush),
                mask_line(view.name)]

    def keep_drawn(session: dict[str, Any], value: Any) -> tuple[Any, ...]:
        from lbw.services.keep_draw import save_drawn_mask

        name, _ = page.checked(session)
        _, kept, total = save_drawn_mask(ctx.store, name, value)
        line = t("tune.mask.saved", kept=kept, total=total)
        return "✓ " + line, line, True

    page.action(save_mask.click, keep_drawn, [page.session, editor], [page.message, mask_note, use_mask])

    def start(session: dict[str, Any], box: Any, drawn: Any, cells: Any, least: Any, kind: Any, held: Any,
              again: Any) -> Any:
        from lbw.errors import ProjectError
        from lbw.services.keep_draw import drawn_mask
        from lbw.services.tune import run_tune
        from lbw.services.tune_live import TuneWatch, tune_form
        from lbw.services.workbench import device_key

        name, _ = page.checked(session)
        view = page.project(session)
        mask = drawn_mask(ctx.store, name) if drawn else None
        if drawn and mask is None:
            raise ProjectError(t("tune.mask.missing"))
        options = tune_form(view, keep_box=box, keep_mask=mask, budget=cells, strategy=kind, threshold=least,
                            held_out=held, restart=bool(again))
        watch = TuneWatch(options.budget)

        def work(job: Any) -> Any:
            job.detail = watch  # the progress line reads it

            def on_cell(done: int, total: int, label: str, cached: bool) -> None:
                watch.on_cell(done, total, label, cached)
                now = watch.now()
                job.report(now.cells, now.budget)  # raises when cancelled: the tune saves its state and stops

            return run_tune(ctx.store, name, options, progress=watch.on_event, on_cell=on_cell,
                            cancel=job.cancel_event, backend_options=ctx.backend_options())

        return device_key(view.settings, ctx.backend_options()), t("tune.run"), work

    def line(job: Any) -> str | None:
        watch = job.detail
        if watch is None:
            return None
        now, snap = watch.now(), job.snapshot()
        if snap.finished:
            return "✓ " + t("tune.done_in", cells=now.rendered, elapsed=f"{snap.elapsed:.0f}")
        eta = now.eta(snap.elapsed)
        phase = t(f"tune.phase.{now.phase or 'start'}") if f"tune.phase.{now.phase or 'start'}" in MESSAGES \
            else printable(now.phase)
        text = "▶ " + t("tune.progress", phase=phase, cells=now.cells, budget=now.budget,
                        elapsed=f"{snap.elapsed:.0f}", eta="?" if eta is None else f"{eta:.0f}")
        if now.best is not None:
            text += " · " + t("tune.best", effect=f"{now.best.effect:.3f}", side=f"{now.best.side:.3f}")
        if now.text:
            text += "  \n" + printable(now.text)
        return text

    def settled(session: dict[str, Any]) -> dict[str, Any]:
        """After a cancel or a failure: the project as the tune left it (its new version: edits go on)."""
        from lbw.errors import LbwError

        try:
            return page.after(page.project(session), session)
        except LbwError:  # the project is gone: a plain redraw says so
            return page.bumped(session)

    def finish(report: Any, session: dict[str, Any]) -> tuple[Any, ...]:
        return "✓ " + t("tune.finished", winner=row_name(report.winner)), settled(session)

    page.job_events(run_btn.click, start, finish, [page.session, keep_box, use_mask, budget, threshold, strategy,
                                                    held_out, restart], progress, job_state,
                    line=line, changes=lambda job: job.detail.now().events if job.detail is not None else 0,
                    cancelled=t("tune.cancelled"), settle=settled)
    page.cancel_event(cancel_btn, job_state)
