"""The Analyze tab: run the Effective Block Analyzer (progress, ETA, cancel), the ranked table classified live
as the thresholds move (no re-render), each block's diff images and heatmaps, and "start the sheet from this"."""

from __future__ import annotations

from typing import Any

import gradio as gr


def build(page: Any) -> None:
    """Add the Analyze tab to ``page``."""
    t, ctx = page.t, page.ctx
    with gr.Tab(t("tab.analyze"), id="analyze"):
        with gr.Row():
            probe = gr.Number(label=t("analyze.probe"), value=0.5, minimum=-2, maximum=2, elem_id="lbw-probe")
            threshold = gr.Number(label=t("analyze.threshold"), value=20, precision=0, minimum=0, maximum=255,
                                  elem_id="lbw-analyze-threshold")
            important = gr.Number(label=t("analyze.important"), value=5.0, minimum=0, maximum=100,
                                  elem_id="lbw-important")
            unneeded = gr.Number(label=t("analyze.unneeded"), value=1.0, minimum=0, maximum=100,
                                 elem_id="lbw-unneeded")
        with gr.Row():
            run_btn = gr.Button(t("analyze.run"), variant="primary", elem_id="lbw-analyze")
            cancel_btn = gr.Button(t("plot.cancel"), variant="stop", elem_id="lbw-analyze-cancel")
        progress = gr.Markdown(elem_classes="lbw-progress", elem_id="lbw-analyze-progress")
        job_state = gr.State(None)
        with gr.Row():
            run_pick = gr.Dropdown(label=t("plot.iteration"), choices=[], scale=1)
            start_btn = gr.Button(t("analyze.start_sheet"), variant="primary", scale=1, elem_id="lbw-start-sheet")
        note = gr.Markdown(elem_id="lbw-analysis-note")
        table = gr.Dataframe(
            headers=[t("analyze.col.rank"), t("project.block"), t("analyze.col.diff"), t("analyze.col.roi"),
                     t("analyze.col.class")],
            label=t("analyze.table"), interactive=False, type="array", elem_id="lbw-analysis-table")
        with gr.Row():
            block_pick = gr.Dropdown(label=t("analyze.images"), choices=[], scale=1)
        images = gr.Gallery(label=t("analyze.images"), columns=4, height="auto", allow_preview=True)
        grids = gr.Gallery(label=t("analyze.grid"), columns=1, height="auto")

    def runs(name: str) -> list[tuple[str, int]]:
        from lbw.services.projects import list_iterations

        return [(f"#{it.number} ({it.created[:16].replace('T', ' ')})", it.number)
                for it in page.read(list_iterations, ctx.store, name) if it.kind == "eba"]

    def table_rows(name: str, number: int, important_v: Any, unneeded_v: Any) -> tuple[list[list[Any]], str]:
        from lbw.services.projects import analysis_table

        view = analysis_table(ctx.store, name, number, important=_float(important_v), unneeded=_float(unneeded_v))
        rows = [[row.rank, row.block, round(row.diff_percent, 2),
                 "" if row.roi_diff_percent is None else round(row.roi_diff_percent, 2),
                 t(f"class.{row.category}")] for row in view.rows]
        counts = {c: sum(1 for r in view.rows if r.category == c) for c in ("important", "unneeded", "unclear")}
        summary = ", ".join(f"{t(f'class.{c}')} {n}" for c, n in counts.items())
        if view.no_change:
            summary = "⚠ " + t("analyze.no_change")
        return rows, summary

    @page.on_refresh([run_pick, table, note, block_pick, images, grids], inputs=[important, unneeded])
    def refresh(view: Any, session: dict[str, Any], important_v: Any, unneeded_v: Any) -> list[Any]:
        from lbw.services.projects import get_iteration

        if view is None:
            return [gr.Dropdown(choices=[], value=None), [], "", gr.Dropdown(choices=[]), [], []]
        if page.sheet_only(session):  # the analyses did not change
            return [gr.skip()] * 6
        choices = runs(view.name)
        if not choices:
            return [gr.Dropdown(choices=[], value=None), [], t("analyze.none"), gr.Dropdown(choices=[]), [], []]
        number = choices[-1][1]
        iteration = page.read(get_iteration, ctx.store, view.name, number)
        rows, summary = table_rows(view.name, number, important_v, unneeded_v)
        blocks = [r[1] for r in rows]
        first = blocks[0] if blocks else None
        return [gr.Dropdown(choices=choices, value=number), rows, summary, gr.Dropdown(choices=blocks, value=first),
                block_images(view.name, number, first) if first else [],
                [(str(p), p.stem) for p in iteration.grids]]

    @page.on_refresh([threshold])
    def default_threshold(view: Any, session: dict[str, Any]) -> list[Any]:
        """The pixel threshold of the project's latest analysis; before the first, one that suits its render
        size."""
        from lbw.services.project_render import analysis_threshold
        from lbw.services.workbench import analysis_pixel_threshold

        if view is None or page.sheet_only(session):
            return [gr.skip()]
        used = page.read(analysis_pixel_threshold, ctx.store, view.name)
        return [analysis_threshold(view.settings) if used is None else used]

    def block_images(name: str, number: int, block: str) -> list[tuple[str, str]]:
        from lbw.services.projects import get_iteration
        from lbw.services.workbench import analysis_images

        iteration = page.read(get_iteration, ctx.store, name, number)
        return [(str(path), caption) for path, caption in analysis_images(ctx.store, iteration, block)]

    def reclassify(session: dict[str, Any], number: Any, important_v: Any, unneeded_v: Any) -> tuple[Any, ...]:
        name, _ = page.checked(session)
        if number is None:
            return gr.skip(), gr.skip(), gr.skip()
        rows, summary = table_rows(name, int(number), important_v, unneeded_v)
        return gr.skip(), rows, summary

    for box in (important, unneeded):  # the classes follow the thresholds at once, nothing re-renders
        page.action(box.change, reclassify, [page.session, run_pick, important, unneeded],
                    [page.message, table, note], show_progress="hidden")

    def show_run(session: dict[str, Any], number: Any, important_v: Any, unneeded_v: Any) -> tuple[Any, ...]:
        from lbw.services.projects import get_iteration

        name, _ = page.checked(session)
        if number is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        rows, summary = table_rows(name, int(number), important_v, unneeded_v)
        iteration = page.read(get_iteration, ctx.store, name, int(number))
        blocks = [r[1] for r in rows]
        return gr.skip(), rows, summary, gr.Dropdown(choices=blocks, value=blocks[0] if blocks else None), \
            [(str(p), p.stem) for p in iteration.grids]

    page.action(run_pick.input, show_run, [page.session, run_pick, important, unneeded],
                [page.message, table, note, block_pick, grids])

    def show_block(session: dict[str, Any], number: Any, block: str) -> tuple[Any, ...]:
        name, _ = page.checked(session)
        if number is None or not block:
            return gr.skip(), gr.skip()
        return gr.skip(), block_images(name, int(number), block)

    page.action(block_pick.change, show_block, [page.session, run_pick, block_pick], [page.message, images])

    def start(session: dict[str, Any], probe_v: Any, threshold_v: Any, important_v: Any, unneeded_v: Any) -> Any:
        from lbw.errors import ProjectError
        from lbw.services.projects import run_analysis
        from lbw.services.workbench import device_key

        name, _ = page.checked(session)
        view = page.project(session)
        probe_f, threshold_i = _float(probe_v), _float(threshold_v)
        if probe_f is None or threshold_i is None:
            raise ProjectError("the probe weight and the pixel threshold need numbers")
        important_f, unneeded_f = _float(important_v), _float(unneeded_v)

        def work(job: Any) -> Any:
            return run_analysis(ctx.store, name, probe=probe_f, threshold=int(threshold_i),
                                important=5.0 if important_f is None else important_f,
                                unneeded=1.0 if unneeded_f is None else unneeded_f,
                                progress=job.on_cell, on_step=job.on_step, cancel=job.cancel_event,
                                backend_options=ctx.backend_options())

        return device_key(view.settings, ctx.backend_options()), "EBA", work

    def finish(result: Any, session: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        message = "✓ " + t("msg.rendered", number=result.number, cells=len(result.cells))
        if result.analysis is not None and result.analysis.no_change:
            message = "⚠ " + t("analyze.no_change")
        return message, page.bumped(session)

    page.job_events(run_btn.click, start, finish, [page.session, probe, threshold, important, unneeded], progress,
                    job_state)
    page.cancel_event(cancel_btn, job_state)

    def start_sheet(session: dict[str, Any], number: Any, important_v: Any, unneeded_v: Any) -> tuple[Any, ...]:
        from lbw.errors import ProjectError
        from lbw.services.projects import start_sheet_from_analysis

        name, version = page.checked(session)
        if number is None:
            raise ProjectError(t("analyze.none"))
        view = start_sheet_from_analysis(ctx.store, name, int(number), important=_float(important_v),
                                         unneeded=_float(unneeded_v), source="click", expected_version=version)
        return "✓ " + view.sheet.status(), page.after(view, session, "sheet")

    page.action(start_btn.click, start_sheet, [page.session, run_pick, important, unneeded],
                [page.message, page.session])


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
