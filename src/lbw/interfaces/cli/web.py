"""``lbw web``: the workbench in the browser, served by lbw itself (Gradio), on 127.0.0.1 unless ``--listen``.

Example:
    $ lbw web --demo
    lbw web: http://127.0.0.1:7870/  (workspace lbw-workspace, project demo; Ctrl-C stops)
"""

from __future__ import annotations

from pathlib import Path

import typer

DEFAULT_PORT = 7870


def register(app: typer.Typer) -> None:
    """Add ``lbw web`` to ``app``."""
    app.command("web")(web_command)


def web_command(
    workspace: Path = typer.Option(Path("lbw-workspace"), "--workspace", envvar="LBW_WORKSPACE",
                                   help="Workspace folder of the projects (or LBW_WORKSPACE; created)."),
    loras: list[Path] = typer.Option([], "--loras", help="A folder of LoRA files the page may use (repeatable)."),
    models: list[Path] = typer.Option([], "--models", help="A folder of models the page may use (repeatable)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535, help="TCP port."),
    listen: bool = typer.Option(False, "--listen", help="Listen on every network interface (0.0.0.0), not only "
                                "this machine: anyone who reaches the port can render and write files."),
    lang: str | None = typer.Option(None, "--lang", help="Page language: ja or en (default: the browser's)."),
    demo: bool = typer.Option(False, "--demo", help="Open the built-in demo project (tiny model and LoRA, built "
                              "in the workspace if missing)."),
    project: str | None = typer.Option(None, "--project", help="The project to open first."),
    device: str = typer.Option("auto", "--device", help="Device for the diffusers backend: auto, cpu, cuda, ..."),
    max_upload_mb: float = typer.Option(16.0, "--max-upload-mb", min=0.01, help="Largest upload accepted."),
) -> None:
    """Serve the workbench: project, analyzer, Plot Helper sheet, clickable grids, history, bake & share."""
    from lbw.errors import LbwError
    from lbw.interfaces.web.server import WebOptions, serve

    if lang is not None and lang not in ("ja", "en"):
        raise LbwError(f"--lang expects ja or en, got {lang!r}")
    options = WebOptions(
        workspace=workspace,
        loras=tuple(loras),
        models=tuple(models),
        host="0.0.0.0" if listen else "127.0.0.1",
        port=port,
        lang=lang,
        demo=demo,
        project=project,
        device=device,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
    )
    serve(options)
