"""The History tab: every iteration with its grid (titles in the page's language), the decisions taken after it,
going back to an iteration's sheet (recorded; nothing deleted), two iterations compared, the project log."""

from __future__ import annotations

from typing import Any

import gradio as gr


def build(page: Any) -> None:
    """Add the History tab to ``page``."""
    t, ctx = page.t, page.ctx
    with gr.Tab(t("tab.history"), id="history"):
        table = gr.Dataframe(
            headers=[t("history.col.number"), t("history.col.kind"), t("history.col.cells"),
                     t("history.col.created")],
            label=t("history.table"), interactive=False, type="array", wrap=True, elem_id="lbw-history-table")
        thumbs = gr.Gallery(label=t("history.thumbs"), columns=6, height="auto", allow_preview=True,
                            object_fit="contain", elem_id="lbw-history-thumbs")
        with gr.Row():
            pick = gr.Dropdown(label=t("plot.iteration"), choices=[], scale=2, elem_id="lbw-history-pick")
            back_btn = gr.Button(t("history.go_back"), scale=1, elem_id="lbw-go-back")
        details = gr.Markdown(elem_id="lbw-history-details")
        gr.Markdown(f"### {t('history.compare')}")
        with gr.Row():
            left = gr.Dropdown(label="A", choices=[], scale=1)
            right = gr.Dropdown(label="B", choices=[], scale=1)
        with gr.Row():
            left_image = gr.Image(label="A", type="filepath", interactive=False, elem_id="lbw-compare-a")
            right_image = gr.Image(label="B", type="filepath", interactive=False, elem_id="lbw-compare-b")
        log = gr.Textbox(label=t("history.log"), lines=10, max_lines=30, interactive=False, buttons=["copy"],
                         elem_id="lbw-log")

    def grid_of(name: str, number: int) -> str | None:
        from lbw.services.projects import get_iteration

        view = page.read(get_iteration, ctx.store, name, number)
        return grid_path(view)

    def grid_path(view: Any) -> str | None:
        from lbw.services.workbench import localized_grid

        if view.kind == "eba":
            return str(view.grid) if view.grid else None
        path = localized_grid(view, page.lang, title=t("plot.grid_title", name=view.sheet_before.name,
                                                          mode=page.mode_name(view.kind), number=view.number),
                              column=lambda seed: t("plot.seed", seed=seed))
        return str(path)

    def thumb_path(name: str, summary: Any) -> str | None:
        """The iteration's grid in this language (made once, then read from its folder)."""
        from lbw.services.projects import get_iteration
        from lbw.services.workbench import localized_grid_path

        if summary.grid is None:
            return None
        if summary.kind == "eba":
            return str(summary.grid)
        cached = localized_grid_path(summary.grid, page.lang)
        if cached.is_file():
            return str(cached)
        return grid_path(page.read(get_iteration, ctx.store, name, summary.number))

    def describe(name: str, number: int) -> str:
        from lbw.services.projects import get_iteration

        view = page.read(get_iteration, ctx.store, name, number)
        lines = [f"**#{view.number} {page.mode_name(view.kind)}** · {view.created[:19].replace('T', ' ')}",
                 f"{t('history.col.weights')}: `{view.sheet_before.weight_line()}`", "",
                 f"{t('history.decisions')}:"]
        lines += [f"- {d.describe()}" for d in view.decisions] or ["- —"]
        return "\n".join(lines)

    @page.on_refresh([table, thumbs, pick, details, left, right, log])
    def refresh(view: Any, session: dict[str, Any]) -> list[Any]:
        from lbw.services.projects import list_iterations, project_log

        if view is None:
            return [[], [], gr.Dropdown(choices=[]), "", gr.Dropdown(choices=[]), gr.Dropdown(choices=[]), ""]
        log_text = "\n".join(f"{e.created[:19].replace('T', ' ')}  {e.text}" for e in project_log(ctx.store,
                                                                                                    view.name))
        if page.sheet_only(session):  # the same iterations: their decisions and the log changed
            latest = view.latest.number if view.latest is not None else None
            return [gr.skip(), gr.skip(), gr.skip(), describe(view.name, latest) if latest is not None else "",
                    gr.skip(), gr.skip(), log_text]
        rows, thumbs_v, choices = [], [], []
        for it in page.read(list_iterations, ctx.store, view.name):
            rows.append([it.number, page.mode_name(it.kind), it.cell_count, it.created[:19].replace("T", " ")])
            path = thumb_path(view.name, it)
            if path:
                thumbs_v.append((path, f"#{it.number} {page.mode_name(it.kind)}"))
            choices.append((f"#{it.number} {page.mode_name(it.kind)}", it.number))
        latest = choices[-1][1] if choices else None
        return [rows, thumbs_v, gr.Dropdown(choices=choices, value=latest),
                describe(view.name, latest) if latest is not None else "",
                gr.Dropdown(choices=choices), gr.Dropdown(choices=choices), log_text]

    def show(session: dict[str, Any], number: Any) -> tuple[Any, ...]:
        name, _ = page.checked(session)
        if number is None:
            return gr.skip(), gr.skip()
        return gr.skip(), describe(name, int(number))

    page.action(pick.input, show, [page.session, pick], [page.message, details])

    def go_back(session: dict[str, Any], number: Any) -> tuple[Any, ...]:
        from lbw.errors import ProjectError
        from lbw.services.projects import undo_to

        name, version = page.checked(session)
        if number is None:
            raise ProjectError(t("plot.no_iteration"))
        view = undo_to(ctx.store, name, int(number), source="click", expected_version=version)
        return "✓ " + t("msg.undo", number=int(number)), page.after(view, session, "sheet")

    page.action(back_btn.click, go_back, [page.session, pick], [page.message, page.session])

    def compare(session: dict[str, Any], number: Any) -> tuple[Any, ...]:
        name, _ = page.checked(session)
        if number is None:
            return gr.skip(), None
        return gr.skip(), grid_of(name, int(number))

    page.action(left.input, compare, [page.session, left], [page.message, left_image])
    page.action(right.input, compare, [page.session, right], [page.message, right_image])
