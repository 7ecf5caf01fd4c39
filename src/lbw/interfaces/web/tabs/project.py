"""The Project tab: pick or create a project, its LoRA (from the LoRA folders, with what ``inspect`` says), the
model and backend (with a connection test), the render settings, and the LoRA's per-block ‖ΔW‖ share chart."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from lbw.render.samplers import SAMPLER_NAMES

BACKENDS = ("diffusers", "a1111", "comfyui")
# The js of the project picker: keep ?project=NAME in the address, so a reload opens the same project.
KEEP_IN_URL = """(name) => { const u = new URL(window.location.href); if (name) { u.searchParams.set('project', name); }
window.history.replaceState(null, '', u); return name; }"""


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def build(page: Any) -> None:
    """Add the Project tab to ``page``."""
    t, ctx = page.t, page.ctx
    with gr.Tab(t("tab.project"), id="project"):
        with gr.Row():
            picker = gr.Dropdown(label=t("project.pick"), choices=[], interactive=True, scale=3,
                                 elem_id="lbw-project-picker")
            reload_btn = gr.Button(t("app.reload"), scale=1, elem_id="lbw-reload")
        with gr.Row():
            new_name = gr.Textbox(label=t("project.new_name"), scale=3, max_length=100)
            create_btn = gr.Button(t("project.create"), scale=1)
            demo_btn = gr.Button(t("project.demo"), scale=1, visible=ctx.assets is not None)
        with gr.Accordion(t("project.loras_table"), open=False):
            loras_table = gr.Dataframe(
                headers=[t("project.col.file"), t("project.col.arch"), t("project.col.layout"), t("project.col.rank"),
                         t("project.col.size"), t("project.col.kinds")],
                interactive=False, type="array", wrap=True, elem_id="lbw-loras-table")
            refresh_btn = gr.Button(t("project.refresh"), size="sm")
        with gr.Row():
            lora = gr.Dropdown(label=t("project.lora_folder"), choices=[], allow_custom_value=True, scale=2,
                               elem_id="lbw-lora")
            model = gr.Dropdown(label=t("project.model"), choices=[], allow_custom_value=True, scale=2,
                                elem_id="lbw-model")
        with gr.Row():
            backend = gr.Radio(list(BACKENDS), value="diffusers", label=t("project.backend"), scale=2)
            url = gr.Textbox(label=t("project.url"), scale=2, max_length=500)
            test_btn = gr.Button(t("project.test"), scale=1)
        test_out = gr.Markdown()
        with gr.Accordion(t("project.settings"), open=True):
            prompt = gr.Textbox(label=t("project.prompt"), lines=2, max_length=20000, elem_id="lbw-prompt")
            negative = gr.Textbox(label=t("project.negative"), lines=1, max_length=20000)
            with gr.Row():
                seeds = gr.Textbox(label=t("project.seeds"), value="1", max_length=800)
                width = gr.Number(label=t("project.width"), value=512, precision=0, minimum=8)
                height = gr.Number(label=t("project.height"), value=512, precision=0, minimum=8)
                steps = gr.Number(label=t("project.steps"), value=20, precision=0, minimum=1)
                cfg = gr.Number(label=t("project.cfg"), value=7.0)
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLER_NAMES), value="Euler", label=t("project.sampler"),
                                      allow_custom_value=True)
                clip_skip = gr.Number(label=t("project.clip_skip"), value=1, precision=0, minimum=1)
                strength = gr.Number(label=t("project.strength"), value=1.0)
                te_strength = gr.Textbox(label=t("project.te_strength"), max_length=40)
                roi = gr.Textbox(label=t("project.roi"), max_length=200)
            save_btn = gr.Button(t("project.save"), variant="primary", elem_id="lbw-save-settings")
        chart = gr.BarPlot(x="block", y="share", title=t("project.share_chart"), x_title=t("project.block"),
                           y_title=t("project.share_axis"), x_label_angle=-60, height=280)

    fields = [lora, model, backend, url, prompt, negative, seeds, width, height, steps, cfg, sampler, clip_skip,
              strength, te_strength, roi]

    def catalogue_rows() -> tuple[list[list[str]], list[tuple[str, str]]]:
        from lbw.services.workbench import lora_catalogue

        entries = lora_catalogue(ctx.roots)
        rows = [[e.shown, e.architecture, e.layout, e.rank, _size(e.size), e.error or e.kinds] for e in entries]
        choices = [(e.shown, str(e.path)) for e in entries if e.error is None]
        return rows, choices

    @page.on_refresh([picker, loras_table, *fields, chart])
    def refresh(view: Any, session: dict[str, Any]) -> list[Any]:
        from lbw.services.projects import list_projects
        from lbw.services.workbench import model_choices, with_seeds_text

        if page.sheet_only(session):
            return [gr.skip()] * (3 + len(fields))
        names = [v.name for v in list_projects(ctx.store)]
        rows, lora_choices = catalogue_rows()
        models = [(shown, str(path)) for shown, path in model_choices(ctx.roots)]
        if view is None:
            return [gr.Dropdown(choices=names, value=None), rows, gr.Dropdown(choices=lora_choices),
                    gr.Dropdown(choices=models), *[gr.skip()] * (len(fields) - 2), None]
        s = view.settings
        return [
            gr.Dropdown(choices=names, value=view.name),
            rows,
            gr.Dropdown(choices=lora_choices, value=s.lora),
            gr.Dropdown(choices=models, value=s.model),
            s.backend, s.url or "", s.prompt, s.negative, with_seeds_text(s), s.width, s.height, s.steps, s.cfg,
            s.sampler, s.clip_skip, s.strength, "" if s.te_strength is None else f"{s.te_strength:g}", s.roi or "",
            share_chart(view),
        ]

    def share_chart(view: Any) -> Any:
        from lbw.errors import LbwError
        from lbw.services.workbench import block_shares

        if not view.settings.lora or view.settings.backend != "diffusers":
            return None
        try:
            shares = block_shares(view.settings.lora, ctx.roots)
        except LbwError:
            return None
        frame = pd.DataFrame({"block": [b for b, _ in shares], "share": [round(s, 2) for _, s in shares]})
        return gr.BarPlot(value=frame, sort=[b for b, _ in shares])

    def form_changes(*values: Any) -> dict[str, Any]:
        from lbw.errors import ProjectError
        from lbw.services.workbench import guard_settings, parse_seeds

        (lora_v, model_v, backend_v, url_v, prompt_v, negative_v, seeds_v, width_v, height_v, steps_v, cfg_v,
         sampler_v, clip_v, strength_v, te_v, roi_v) = values

        def number(value: Any, what: str, kind: type = float) -> Any:
            if value is None or value == "":
                raise ProjectError(f"{what}: a number is needed")
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ProjectError(f"{what}: {str(value)[:40]!r} is not a number") from None

        te_text = str(te_v or "").strip()
        changes = {
            "lora": lora_v or None, "model": model_v or None, "backend": backend_v or "diffusers",
            "url": str(url_v or "").strip() or None, "prompt": str(prompt_v or ""),
            "negative": str(negative_v or ""), "seeds": list(parse_seeds(seeds_v or "")),
            "width": number(width_v, "width", int), "height": number(height_v, "height", int),
            "steps": number(steps_v, "steps", int), "cfg": number(cfg_v, "CFG"),
            "sampler": str(sampler_v or "Euler"), "clip_skip": number(clip_v, "clip skip", int),
            "strength": number(strength_v, "strength"),
            "te_strength": None if not te_text else number(te_text, "text encoder strength"),
            "roi": str(roi_v or "").strip() or None,
        }
        return guard_settings(ctx.roots, changes)

    def save(session: dict[str, Any], *values: Any) -> tuple[Any, ...]:
        from lbw.services.projects import update_settings

        name, version = page.checked(session)
        view = update_settings(ctx.store, name, form_changes(*values), expected_version=version, source="click")
        return "✓ " + t("msg.saved"), page.after(view, session)

    page.action(save_btn.click, save, [page.session, *fields], [page.message, page.session])

    def create(session: dict[str, Any], name: str, *values: Any) -> tuple[Any, ...]:
        from lbw.services.projects import ProjectSettings, create_project

        changes = form_changes(*values)
        settings = ProjectSettings.from_dict({k: v for k, v in changes.items()})
        view = create_project(ctx.store, name or "", settings)
        return "✓ " + t("msg.saved"), page.after(view, session), view.name

    page.action(create_btn.click, create, [page.session, new_name, *fields], [page.message, page.session, picker])

    def open_demo(session: dict[str, Any]) -> tuple[Any, ...]:
        from lbw.services.workbench import open_demo_project

        if ctx.assets is None:
            return gr.skip(), gr.skip()
        view = open_demo_project(ctx.store, ctx.assets)
        return gr.skip(), page.after(view, session)

    page.action(demo_btn.click, open_demo, [page.session], [page.message, page.session])

    def pick(name: str, session: dict[str, Any]) -> tuple[Any, ...]:
        from lbw.services.projects import get_project

        if not name or name == (session or {}).get("project"):
            return gr.skip(), gr.skip()
        view = get_project(ctx.store, name)
        return gr.skip(), page.after(view, session)

    page.action(picker.input, pick, [picker, page.session], [page.message, page.session], js=KEEP_IN_URL)

    def reload(session: dict[str, Any]) -> tuple[Any, ...]:
        view = page.project(session)
        return t("msg.reloaded", name=view.name, version=view.version), page.after(view, session)

    page.action(reload_btn.click, reload, [page.session], [page.message, page.session])

    def refresh_list() -> list[list[str]]:
        rows, choices = catalogue_rows()
        return rows, gr.Dropdown(choices=choices)

    refresh_btn.click(refresh_list, outputs=[loras_table, lora])

    def test(session: dict[str, Any]) -> str:
        from lbw.services.workbench import check_connection

        name, _ = page.checked(session)
        line = "✓ " + t("msg.connection_ok", detail=check_connection(ctx.store, name, ctx.backend_options()))
        return line, line

    page.action(test_btn.click, test, [page.session], [page.message, test_out])
