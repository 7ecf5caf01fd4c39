"""The workbench server: one FastAPI app, the page in each language mounted at ``/en/`` and ``/ja/``, ``/`` sending
the browser to ``--lang`` or to its own language (Accept-Language). Served by uvicorn on 127.0.0.1 unless
``--listen``.

Safety: Gradio's analytics are off (``GRADIO_ANALYTICS_ENABLED=False`` and ``analytics_enabled=False``); files it
may serve are limited to the workspace (``allowed_paths``; the database itself blocked) and its upload folder
inside it; uploads are limited to ``--max-upload-mb``; on 127.0.0.1 only requests naming this machine
(``Host: 127.0.0.1``/``localhost``) are answered, so a web page elsewhere cannot reach the server through DNS
rebinding. Every path a page passes to a service is checked by ``Roots`` (``lbw.services.roots``).

Example:
    >>> app = create_app(WebContext.create(WebOptions(workspace=Path("ws"), demo=True)))
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fastapi import Request  # at module level: FastAPI reads the handler's annotation by name
from fastapi.responses import RedirectResponse

from lbw.interfaces.web.context import WebContext, WebOptions
from lbw.interfaces.web.i18n import LANGUAGES, pick_language

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")

# Before gradio is imported anywhere: no analytics, no telemetry, no update check.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def create_app(ctx: WebContext) -> Any:
    """The ASGI app: ``/`` redirects, ``/en/`` and ``/ja/`` are the pages."""
    import gradio as gr
    from fastapi import FastAPI
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from lbw.interfaces.web.page import CSS, Page

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    if ctx.options.host in ("127.0.0.1", "localhost", "::1"):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOCAL_HOSTS))

    @app.get("/")
    def root(request: Request) -> RedirectResponse:
        lang = pick_language(request.headers.get("accept-language"), ctx.options.lang)
        query = request.url.query
        return RedirectResponse(f"/{lang}/" + (f"?{query}" if query else ""), status_code=307)

    workspace = ctx.roots.workspace
    blocked = [str(workspace / name) for name in ("lbw.sqlite", "lbw.sqlite-wal", "lbw.sqlite-shm")]
    for lang in LANGUAGES:
        blocks = Page(ctx, lang).build()
        blocks.queue(default_concurrency_limit=4, max_size=64)
        app = gr.mount_gradio_app(
            app, blocks, path=f"/{lang}", allowed_paths=[str(workspace)], blocked_paths=blocked,
            max_file_size=ctx.options.max_upload_bytes, ssr_mode=False, footer_links=[], show_error=True,
            css=CSS, mcp_server=False,
        )
    return app


def serve(options: WebOptions) -> None:
    """Open the workspace, print the address, serve until Ctrl-C."""
    import uvicorn

    from lbw.render.fonts import cjk_font_message

    ctx = WebContext.create(options)
    app = create_app(ctx)
    shown_host = "127.0.0.1" if options.host == "0.0.0.0" else options.host
    project = f", project {ctx.first_project}" if ctx.first_project else ""
    print(f"lbw web: http://{shown_host}:{options.port}/  (workspace {ctx.roots.workspace}{project}; Ctrl-C stops)",
          flush=True)
    print(f"lbw web: {cjk_font_message()}", flush=True)
    if options.host == "0.0.0.0":
        print("lbw web: WARNING: --listen: listening on every network interface; anyone who reaches this port can "
              "render, change projects and write files in the workspace (no login)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")
