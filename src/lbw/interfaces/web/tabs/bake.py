"""The Bake & share tab: the factor table first, then the bake of the sheet into a new LoRA in the workspace with
``verify``'s maximum relative error per block, then the metadata form (Additional Networks fields, keywords, a
cover image chosen from a rendered cell, the tuned weights, the web UI sidecar ``.json``) with the written path
and hashes."""

from __future__ import annotations

from typing import Any

import gradio as gr

COVER_ITERATIONS = 3  # the cover list offers the cells of the latest grids


def build(page: Any) -> None:
    """Add the Bake & share tab to ``page``."""
    t, ctx = page.t, page.ctx
    with gr.Tab(t("tab.bake"), id="bake"):
        state = gr.Markdown(elem_id="lbw-bake-state")
        factors = gr.Dataframe(
            headers=[t("project.block"), "ρ", "×", t("bake.col.factor"), t("bake.col.modules"), ""],
            label=t("bake.factors"), interactive=False, type="array", max_height=400)
        with gr.Row():
            out_name = gr.Textbox(label=t("bake.output"), max_length=300, scale=3, elem_id="lbw-bake-name")
            force = gr.Checkbox(label="--force", value=False, scale=1)
            bake_btn = gr.Button(t("bake.run"), variant="primary", scale=1, elem_id="lbw-bake")
        progress = gr.Markdown(elem_classes="lbw-progress")
        job_state = gr.State(None)
        result = gr.Markdown(elem_id="lbw-bake-result")
        verify_table = gr.Dataframe(
            headers=[t("project.block"), t("bake.col.modules"), t("bake.col.error"), t("bake.col.ok")],
            label=t("bake.verify"), interactive=False, type="array", max_height=1400, elem_id="lbw-verify-table")
        with gr.Accordion(t("bake.meta"), open=True):
            target = gr.Dropdown(label=t("bake.file"), choices=[], elem_id="lbw-meta-file")
            with gr.Row():
                display_name = gr.Textbox(label=t("bake.meta.name"), max_length=200)
                author = gr.Textbox(label=t("bake.meta.author"), max_length=200)
            with gr.Row():
                keywords = gr.Textbox(label=t("bake.meta.keywords"), max_length=2000, elem_id="lbw-meta-keywords")
                url = gr.Textbox(label=t("bake.meta.url"), max_length=2000)
            description = gr.Textbox(label=t("bake.meta.description"), lines=3, max_length=20000)
            with gr.Row():
                cover = gr.Dropdown(label=t("bake.meta.cover"), choices=[], scale=2, elem_id="lbw-meta-cover")
                cover_preview = gr.Image(label=t("bake.meta.cover"), type="filepath", interactive=False, height=160,
                                         scale=1)
            with gr.Row():
                weights = gr.Checkbox(label=t("bake.meta.weights"), value=True)
                sidecar = gr.Checkbox(label=t("bake.meta.sidecar"), value=True)
            write_btn = gr.Button(t("bake.meta.write"), variant="primary", elem_id="lbw-meta-write")
            meta_result = gr.Markdown(elem_id="lbw-meta-result")

    def cover_choices(name: str) -> list[tuple[str, str]]:
        """The cells of the latest few grids (newest first): a cover is usually one just rendered."""
        from lbw.services.projects import get_iteration, list_iterations

        choices = []
        plots = [s for s in page.read(list_iterations, ctx.store, name) if s.kind != "eba"]
        for summary in reversed(plots[-COVER_ITERATIONS:]):
            view = page.read(get_iteration, ctx.store, name, summary.number)
            for cell in sorted(view.cells, key=lambda c: (c.position, c.seed)):
                label = f"#{view.number} {cell.label} · {t('plot.seed', seed=cell.seed)}"
                choices.append((label, ctx.roots.relative(cell.image)))
        return choices

    @page.on_refresh([state, factors, out_name, target, cover], inputs=[out_name, target, cover])
    def refresh(view: Any, session: dict[str, Any], name_v: str, target_v: str, cover_v: str) -> list[Any]:
        from lbw.errors import LbwError
        from lbw.services.workbench import baked_files, default_bake_name, factor_rows

        if view is None:
            return [t("app.no_project"), [], gr.skip(), gr.Dropdown(choices=[]), gr.Dropdown(choices=[])]
        sheet = view.sheet
        note = ("✓ " + t("sheet.done")) if sheet.is_done else ("⚠ " + t("bake.not_done",
                                                                             count=len(sheet.unfixed_ids)))
        note += f"\n\n`{sheet.weight_line()}`"
        try:
            rows = [list(row) for row in factor_rows(ctx.store, view.name, ctx.roots)]
        except LbwError as error:
            rows, note = [], note + "\n\n" + page.error_text(error)
        if page.sheet_only(session):  # no new bake or cell: the files and covers stay
            return [note, rows, name_v or default_bake_name(view), gr.skip(), gr.skip()]
        files = baked_files(ctx.roots)
        covers = cover_choices(view.name)
        cover_values = [v for _, v in covers]
        return [note, rows, name_v or default_bake_name(view),
                gr.Dropdown(choices=files, value=target_v if target_v in files else (files[0] if files else None)),
                gr.Dropdown(choices=covers, value=cover_v if cover_v in cover_values else None)]

    def start(session: dict[str, Any], name_v: str, force_v: bool) -> Any:
        from lbw.services.workbench import bake_project

        name, _ = page.checked(session)
        dest = str(name_v or "").strip()
        ctx.roots.check(dest, kind="workspace")  # refused before anything is queued

        def work(job: Any) -> Any:
            return bake_project(ctx.store, name, ctx.roots, dest, force=bool(force_v),
                                progress=lambda done, total: job.report(done, total))

        return "bake", "bake", work

    def finish(done: Any, session: dict[str, Any]) -> tuple[Any, ...]:
        report, check = done.report, done.verification
        written = report.written
        lines = [t("bake.written", path=done.shown),
                 f"- sshs_model_hash `{written.model_hash}`", f"- sshs_legacy_hash `{written.legacy_hash}`",
                 f"- {report.modules_in} → {report.modules_out} modules",
                 f"- verify: max {check.max_error:.3g} (tolerance {check.tolerance:g}) "
                 + ("✓" if check.passed else "✗")]
        rows = [[b.block, b.modules, f"{b.max_error:.3g}", "✓" if b.max_error <= check.tolerance else "✗"]
                for b in check.blocks]
        return "✓ " + t("bake.written", path=done.shown), page.bumped(session), "\n".join(lines), rows

    page.job_events(bake_btn.click, start, finish, [page.session, out_name, force], progress, job_state,
                    extra_outputs=[result, verify_table])

    def preview(choice: str | None) -> Any:
        if not choice:
            return None
        try:
            return str(ctx.roots.check(choice, kind="workspace", must_exist=True))
        except Exception:  # a stale choice: no preview
            return None

    cover.change(preview, inputs=[cover], outputs=[cover_preview], show_progress="hidden")

    def write(session: dict[str, Any], file: str | None, name_v: str, author_v: str, keywords_v: str, url_v: str,
              description_v: str, cover_v: str | None, weights_v: bool, sidecar_v: bool) -> tuple[Any, ...]:
        from lbw.errors import ProjectError
        from lbw.services.workbench import MetaForm, write_metadata

        name, _ = page.checked(session)
        if not file:
            raise ProjectError(t("bake.file") + ": —")
        form = MetaForm(display_name=name_v or "", author=author_v or "", keywords=keywords_v or "",
                        url=url_v or "", description=description_v or "", cover=cover_v or "",
                        weights=bool(weights_v), sidecar=bool(sidecar_v))
        done = write_metadata(ctx.store, name, ctx.roots, file, form)
        lines = [t("bake.written", path=ctx.roots.relative(done.path) if done.path else file)]
        lines += [f"- {key}" for key in done.changes]
        lines.append(f"- {t('bake.hashes')}: sshs_model_hash `{done.hashes.get('sshs_model_hash')}`, "
                     f"sshs_legacy_hash `{done.hashes.get('sshs_legacy_hash')}`")
        if done.sidecar is not None:
            lines.append(f"- sidecar: `{ctx.roots.relative(done.sidecar)}`")
        if done.backup is not None:
            lines.append(f"- backup: `{ctx.roots.relative(done.backup)}`")
        return "✓ " + t("msg.saved"), "\n".join(lines)

    page.action(write_btn.click, write, [page.session, target, display_name, author, keywords, url, description,
                                         cover, weights, sidecar], [page.message, meta_result])
