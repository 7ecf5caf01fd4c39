"""The Plot tab: render the mode's grid of the current sheet (queued, progress and ETA, cancellable), the cells as
a grid (blocks x seeds) with labels and Diff %, a click on a cell offers "take this value" or "keep", and a second
iteration beside the first."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lbw.domain.sheet import LIST_KINDS

NONE = ""
CELLS_PER_ROW = 6


def build(page: Any) -> None:
    """Add the Plot tab to ``page``."""
    t, ctx = page.t, page.ctx
    with gr.Tab(t("tab.plot"), id="plot"):
        with gr.Row():
            mode = gr.Radio([(t(f"mode.{k}"), k) for k in LIST_KINDS], label=t("sheet.mode"), scale=3,
                            elem_id="lbw-plot-mode")
            render_btn = gr.Button(t("plot.render", mode="Sub"), variant="primary", scale=2,
                                   elem_id="lbw-render")
            cancel_btn = gr.Button(t("plot.cancel"), variant="stop", scale=1, elem_id="lbw-cancel")
        progress = gr.Markdown(elem_classes="lbw-progress", elem_id="lbw-plot-progress")
        job_state = gr.State(None)
        status = gr.Markdown(elem_id="lbw-plot-status")
        with gr.Row():
            shown = gr.Dropdown(label=t("plot.iteration"), choices=[], scale=1, elem_id="lbw-plot-iteration")
            compare = gr.Dropdown(label=t("plot.compare"), choices=[], scale=1, elem_id="lbw-plot-compare")
        with gr.Group(visible=False) as chosen:
            selected = gr.Markdown(elem_id="lbw-selected")
            with gr.Row():
                take_btn = gr.Button(t("plot.take_short"), variant="primary", elem_id="lbw-take")
                keep_btn = gr.Button(t("plot.keep_short"), elem_id="lbw-keep")
                next_btn = gr.Button(t("plot.render_next"), elem_id="lbw-render-next")
        with gr.Row():
            gallery_a = gr.Gallery(label=t("plot.cells"), columns=2, height="auto", allow_preview=False,
                                   object_fit="contain", elem_id="lbw-cells-a")
            gallery_b = gr.Gallery(label=t("plot.compare"), columns=2, height="auto", allow_preview=False,
                                   object_fit="contain", visible=False, elem_id="lbw-cells-b")
        cells_a = gr.State([])
        cells_b = gr.State([])
        choice = gr.State(None)

    def iterations(name: str) -> list[tuple[str, int]]:
        from lbw.services.projects import list_iterations

        return [(f"#{it.number} {page.mode_name(it.kind)} ({it.cell_count})", it.number)
                for it in page.read(list_iterations, ctx.store, name) if it.kind != "eba"]

    def caption(cell: Any) -> str:
        parts = [cell.label]
        if cell.block is not None and cell.value is not None:
            parts.append(f"{cell.block}={cell.value:g}")
        if cell.diff_percent is not None:
            parts.append(t("plot.diff", value=f"{cell.diff_percent:.1f}"))
        return " · ".join(parts)

    def gallery(name: str, number: int | None, *, visible: bool = True) -> tuple[Any, list[dict[str, Any]]]:
        """The Gallery update showing iteration ``number`` and what each of its cells is."""
        from lbw.services.projects import get_iteration

        if number is None:
            return gr.Gallery(value=[], columns=2, visible=visible), []
        view = page.read(get_iteration, ctx.store, name, int(number))
        cells = sorted(view.cells, key=lambda c: (c.position, c.seed))
        seeds = sorted({c.seed for c in cells})
        items = [(str(c.image), caption(c)) for c in cells]
        info = [{"label": c.label, "block": c.block, "value": c.value, "seed": c.seed, "iteration": view.number,
                 "diff": c.diff_percent,
                 "base": None if c.block is None else view.sheet_before.value(c.block)} for c in cells]
        label = t("plot.grid_title", name=view.sheet_before.name, mode=page.mode_name(view.kind), number=view.number)
        # a row holds whole blocks: every seed of a cell side by side, as many cells as fit in about 6 columns
        columns = len(seeds) * max(1, CELLS_PER_ROW // max(1, len(seeds)))
        return gr.Gallery(value=items, columns=columns, label=label, visible=visible), info

    def status_line(view: Any) -> str:
        sheet = view.sheet
        if sheet.is_done:
            return "✓ " + t("sheet.done") + f"  `{sheet.weight_line()}`"
        return f"{t('sheet.unfixed', count=len(sheet.unfixed_ids))}: {', '.join(sheet.unfixed_ids)}"

    @page.on_refresh([mode, render_btn, status, shown, compare, gallery_a, cells_a, gallery_b, cells_b],
                     inputs=[compare])
    def refresh(view: Any, session: dict[str, Any], compare_v: Any) -> list[Any]:
        if view is None:
            return [gr.skip(), gr.skip(), t("app.no_project"), gr.Dropdown(choices=[], value=None),
                    gr.Dropdown(choices=[], value=None), gr.Gallery(value=[]), [], gr.Gallery(visible=False), []]
        button = gr.Button(value=t("plot.render", mode=page.mode_name(view.mode)))
        if page.sheet_only(session):  # the grids did not change: only the mode and the open blocks
            return [view.mode, button, status_line(view), *[gr.skip()] * 6]
        choices = iterations(view.name)
        numbers = [n for _, n in choices]
        latest = numbers[-1] if numbers else None
        keep = int(compare_v) if compare_v not in (None, NONE) and int(compare_v) in numbers else None
        gal_a, info_a = gallery(view.name, latest)
        gal_b, info_b = gallery(view.name, keep, visible=keep is not None)
        note = status_line(view) if numbers else t("plot.no_iteration") + " " + status_line(view)
        return [view.mode, button, note,
                gr.Dropdown(choices=choices, value=latest), gr.Dropdown(choices=[("—", NONE), *choices],
                                                                        value=keep if keep is not None else NONE),
                gal_a, info_a, gal_b, info_b]

    def show(session: dict[str, Any], number: Any) -> tuple[Any, ...]:
        name, _ = page.checked(session)
        gal, info = gallery(name, None if number in (None, NONE) else int(number))
        return gr.skip(), gal, info, gr.Group(visible=False), None

    page.action(shown.input, show, [page.session, shown], [page.message, gallery_a, cells_a, chosen, choice])

    def show_compare(session: dict[str, Any], number: Any) -> tuple[Any, ...]:
        name, _ = page.checked(session)
        if number in (None, NONE):
            return gr.skip(), gr.Gallery(value=[], visible=False), []
        gal, info = gallery(name, int(number))
        return gr.skip(), gal, info

    page.action(compare.input, show_compare, [page.session, compare], [page.message, gallery_b, cells_b])

    def select(cells: list[dict[str, Any]], evt: gr.SelectData) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(cells):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        cell = cells[index]
        head = f"**{cell['label']}** · {t('plot.seed', seed=cell['seed'])} · #{cell['iteration']}"
        if cell.get("diff") is not None:
            head += " · " + t("plot.diff", value=f"{cell['diff']:.1f}")
        if cell["block"] is None:
            return t("plot.base_cell", label=cell["label"]), gr.Group(visible=True), None, \
                gr.Button(visible=False), gr.Button(visible=False)
        value, base = _fmt(cell["value"]), _fmt(cell["base"])
        return (head, gr.Group(visible=True), cell,
                gr.Button(t("plot.take", block=cell["block"], value=value), visible=True),
                gr.Button(t("plot.keep", block=cell["block"], value=base), visible=True))

    for gal, cells in ((gallery_a, cells_a), (gallery_b, cells_b)):
        gal.select(select, inputs=[cells], outputs=[selected, chosen, choice, take_btn, keep_btn],
                   show_progress="hidden")

    def decide(take: bool) -> Any:
        def run(session: dict[str, Any], cell: dict[str, Any] | None) -> tuple[Any, ...]:
            from lbw.errors import ProjectError
            from lbw.services.projects import fix_cell

            name, version = page.checked(session)
            if not cell or cell.get("block") is None:
                raise ProjectError("pick a cell that varies a block first")
            view = fix_cell(ctx.store, name, cell["label"], take=take, iteration=int(cell["iteration"]),
                            source="click", expected_version=version)
            block = cell["block"]
            message = "✓ " + t("msg.fixed", block=block, value=_fmt(view.sheet.value(block)))
            return message, page.after(view, session, "sheet"), gr.Group(visible=False), None

        run.__name__ = "take" if take else "keep"
        return run

    page.action(take_btn.click, decide(True), [page.session, choice], [page.message, page.session, chosen, choice])
    page.action(keep_btn.click, decide(False), [page.session, choice], [page.message, page.session, chosen, choice])

    def switch_mode(session: dict[str, Any], kind: str) -> tuple[Any, ...]:
        from lbw.services.projects import set_mode

        name, version = page.checked(session)
        view = set_mode(ctx.store, name, kind, source="click", expected_version=version)
        return "✓ " + t("msg.mode", mode=page.mode_name(kind)), page.after(view, session, "sheet")

    page.action(mode.input, switch_mode, [page.session, mode], [page.message, page.session])

    def start(session: dict[str, Any]) -> Any:
        from lbw.services.projects import render_iteration
        from lbw.services.workbench import device_key

        name, version = page.checked(session)
        view = page.project(session)

        def work(job: Any) -> Any:
            return render_iteration(ctx.store, name, progress=job.on_cell, on_step=job.on_step,
                                    cancel=job.cancel_event, backend_options=ctx.backend_options(),
                                    expected_version=version, source="click")

        return device_key(view.settings, ctx.backend_options()), page.mode_name(view.mode), work

    def finish(result: Any, session: dict[str, Any]) -> tuple[Any, ...]:
        return ("✓ " + t("msg.rendered", number=result.number, cells=len(result.cells)), page.bumped(session),
                gr.Group(visible=False), None)

    for button in (render_btn, next_btn):
        page.job_events(button.click, start, finish, [page.session], progress, job_state,
                        extra_outputs=[chosen, choice])
    page.cancel_event(cancel_btn, job_state)


def _fmt(value: Any) -> str:
    from lbw.domain.numbers import format_number

    return "-" if value is None else format_number(float(value))
