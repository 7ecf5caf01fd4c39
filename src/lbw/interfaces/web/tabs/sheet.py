"""The Sheet tab: the Plot Helper itself. One row per block (ID, weight, Fix, ‖ΔW‖ share, analyzer Diff %, a hint
row beside it), name, step, bounds and mode, the Auto section (``tabs.auto``: ``lbw tune`` as a job), and every
output of the original sheet with a copy button."""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any

import gradio as gr

from lbw.domain.sheet import LIST_KINDS
from lbw.interfaces.web.tabs import auto

MAX_SHEET_BYTES = 256 * 1024


def build(page: Any) -> None:
    """Add the Sheet tab to ``page``."""
    t, ctx = page.t, page.ctx
    with gr.Tab(t("tab.sheet"), id="sheet"):
        status = gr.Markdown(elem_id="lbw-sheet-status")
        with gr.Row():
            name = gr.Textbox(label=t("sheet.name"), max_length=100, scale=2)
            mode = gr.Radio([(t(f"mode.{k}"), k) for k in LIST_KINDS], label=t("sheet.mode"), scale=3,
                            elem_id="lbw-sheet-mode")
        with gr.Row():
            step = gr.Number(label=t("sheet.step"), value=0.5, elem_id="lbw-step")
            lower = gr.Number(label=t("sheet.lower"), value=None)
            upper = gr.Number(label=t("sheet.upper"), value=None)
            hint = gr.Dropdown(label=t("sheet.hint_row"), choices=[], allow_custom_value=False)
        table = gr.Dataframe(
            headers=[t("sheet.col.id"), t("sheet.col.weight"), t("sheet.col.fix"), t("sheet.col.share"),
                     t("sheet.col.diff"), t("sheet.col.hint")],
            datatype=["str", "number", "bool", "number", "number", "str"], type="array", interactive=True,
            static_columns=[0, 3, 4, 5], label=t("sheet.table"), max_height=900, elem_id="lbw-sheet-table")
        apply_btn = gr.Button(t("sheet.apply"), variant="primary", elem_id="lbw-sheet-apply")
        auto.build(page)  # the Auto section: lbw tune as a job
        with gr.Accordion(t("sheet.outputs"), open=True):
            weight = gr.Textbox(label=t("sheet.weight"), buttons=["copy"], interactive=False, elem_id="lbw-weight")
            with gr.Row():
                eba_blocks = gr.Textbox(label=t("sheet.eba_blocks"), buttons=["copy"], interactive=False)
                tag = gr.Textbox(label=t("sheet.prompt_tag"), buttons=["copy"], interactive=False)
            lists: dict[str, tuple[gr.Textbox, gr.Textbox]] = {}
            for kind in LIST_KINDS:
                with gr.Row():
                    lists[kind] = (
                        gr.Textbox(label=t("sheet.presets", mode=t(f"mode.{kind}")), buttons=["copy"], lines=3,
                                   max_lines=8, interactive=False),
                        gr.Textbox(label=t("sheet.prompt_sr", mode=t(f"mode.{kind}")), buttons=["copy"], lines=3,
                                   max_lines=8, interactive=False),
                    )
            sdscripts = gr.Textbox(label=t("sheet.sdscripts"), buttons=["copy"], lines=2, interactive=False)
        upload = gr.File(label=t("sheet.import"), file_types=[".toml"], type="filepath")

    outputs = [weight, eba_blocks, tag, *[box for pair in lists.values() for box in pair], sdscripts]

    def hint_choices() -> list[str]:
        from lbw.domain.hints import hint_rows

        return [""] + [row.name for row in hint_rows()]

    def rows_of(view: Any, hint_name: str | None) -> list[list[Any]]:
        from lbw.errors import LbwError
        from lbw.services.workbench import block_shares, latest_analysis

        sheet = view.sheet
        shares: dict[str, float] = {}
        if view.settings.lora and view.settings.backend == "diffusers":
            try:
                shares = dict(block_shares(view.settings.lora, ctx.roots))
            except LbwError:
                shares = {}
        diffs: dict[str, float] = {}
        found = page.read(latest_analysis, ctx.store, view.name)
        if found is not None:
            diffs = {row.block: row.score for row in found[1].rows}
        hints = hint_values(sheet.layout, hint_name)
        rows = []
        for index, block in enumerate(sheet.layout.ids):
            share = shares.get(block)
            rows.append([block, sheet.values[index], block in sheet.fixed,
                         None if share is None else round(share, 2),
                         None if block not in diffs else round(diffs[block], 2),
                         hints[index] if hints else ""])
        return rows

    def hint_values(layout: Any, hint_name: str | None) -> list[str] | None:
        from lbw.domain.hints import hint_rows, hint_table, select_hints

        if not hint_name:
            return None
        table = hint_table(select_hints(hint_rows(), [hint_name]), layout)
        return list(table.rows[0].cells) if table.rows else None

    def output_values(view: Any) -> list[str]:
        return list(_outputs(view.sheet))

    def status_line(view: Any) -> str:
        sheet = view.sheet
        if sheet.is_done:
            return "✓ " + t("sheet.done")
        return f"**{sheet.name}** · {t('sheet.unfixed', count=len(sheet.unfixed_ids))}: {', '.join(sheet.unfixed_ids)}"

    @page.on_refresh([status, name, mode, step, lower, upper, hint, table, *outputs], inputs=[hint])
    def refresh(view: Any, session: dict[str, Any], hint_name: str | None) -> list[Any]:
        if view is None:
            return [t("app.no_project"), *[gr.skip()] * (7 + len(outputs))]
        sheet = view.sheet
        return [status_line(view), sheet.name, view.mode, sheet.step, sheet.lower, sheet.upper,
                gr.Dropdown(choices=hint_choices(), value=hint_name or ""), rows_of(view, hint_name),
                *output_values(view)]

    def show_hint(session: dict[str, Any], hint_name: str | None) -> tuple[Any, ...]:
        view = page.project(session)
        return gr.skip(), rows_of(view, hint_name)

    page.action(hint.input, show_hint, [page.session, hint], [page.message, table])

    def switch_mode(session: dict[str, Any], kind: str) -> tuple[Any, ...]:
        from lbw.services.projects import set_mode

        name_, version = page.checked(session)
        view = set_mode(ctx.store, name_, kind, source="click", expected_version=version)
        return "✓ " + t("msg.mode", mode=t(f"mode.{kind}")), page.after(view, session, "sheet")

    page.action(mode.input, switch_mode, [page.session, mode], [page.message, page.session])

    def apply(session: dict[str, Any], rows: Any, name_v: str, step_v: Any, lower_v: Any, upper_v: Any
              ) -> tuple[Any, ...]:
        from lbw.errors import ProjectError
        from lbw.services.projects import replace_sheet

        name_, version = page.checked(session)
        view = page.project(session)
        sheet = view.sheet
        values, fixed = list(sheet.values), set(sheet.fixed)
        ids = list(sheet.layout.ids)
        for row in rows or []:
            if not row or row[0] not in ids:
                continue
            index = ids.index(row[0])
            values[index] = _number(row[1], f"{row[0]} weight")
            (fixed.add if _truthy(row[2]) else fixed.discard)(row[0])
        new = replace(sheet, name=str(name_v or sheet.name).strip(), values=tuple(values), fixed=frozenset(fixed),
                      step=_number(step_v, "step"), lower=_optional(lower_v), upper=_optional(upper_v))
        if new.layout != sheet.layout:
            raise ProjectError("the sheet's layout cannot change here")
        view = replace_sheet(ctx.store, name_, new, source="click", expected_version=version)
        return "✓ " + t("msg.saved"), page.after(view, session, "sheet")

    page.action(apply_btn.click, apply, [page.session, table, name, step, lower, upper],
                [page.message, page.session])

    def import_toml(session: dict[str, Any], path: str | None) -> tuple[Any, ...]:
        from pathlib import Path

        from lbw.domain.sheet_file import sheet_from_toml
        from lbw.errors import ProjectError
        from lbw.services.projects import replace_sheet

        if not path:
            return gr.skip(), gr.skip()
        name_, version = page.checked(session)
        real = ctx.roots.check(path, must_exist=True)  # only Gradio's upload folder (inside the workspace)
        if real.stat().st_size > MAX_SHEET_BYTES:
            raise ProjectError(f"a sheet file is at most {MAX_SHEET_BYTES // 1024} KiB")
        try:
            text_ = real.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ProjectError(f"cannot read the sheet file: {error}") from None
        sheet = sheet_from_toml(text_, where=Path(path).name)
        view = replace_sheet(ctx.store, name_, sheet, source="command", expected_version=version)
        return "✓ " + t("msg.saved"), page.after(view, session, "sheet")

    page.action(upload.upload, import_toml, [page.session, upload], [page.message, page.session])


@functools.lru_cache(maxsize=32)
def _outputs(sheet: Any) -> tuple[str, ...]:
    """Every output string of a sheet (computed once per sheet: the page redraws after every click)."""
    from lbw.domain.sheet import sheet_outputs

    out = sheet_outputs(sheet)
    values = [out.weight, out.eba_blocks, out.prompt_tag]
    for kind in LIST_KINDS:
        values += [out.lists[kind].preset_text(), out.lists[kind].prompt_sr()]
    values.append(out.sd_scripts.text())
    return tuple(values)


def _number(value: Any, what: str) -> float:
    from lbw.errors import ProjectError

    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProjectError(f"{what}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise ProjectError(f"{what}: {value!r} is not a finite number")
    return number


def _optional(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return _number(value, "bound")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "x", "✓")
    return bool(value)
