"""What every page of one server shares: options, the project store, the folders it may touch, the job queue.

Example:
    >>> ctx = WebContext.create(WebOptions(workspace=Path("lbw-workspace"), demo=True))
    >>> ctx.first_project
    'demo'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbw.services.jobs import JobQueue
from lbw.services.roots import Roots

UPLOADS = ".uploads"  # Gradio's upload folder, inside the workspace
DEMO_ASSETS = "demo-assets"


@dataclass(frozen=True)
class WebOptions:
    """How ``lbw web`` was started."""

    workspace: Path = Path("lbw-workspace")
    loras: tuple[Path, ...] = ()
    models: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 7870
    lang: str | None = None
    demo: bool = False
    project: str | None = None
    device: str = "auto"
    max_upload_bytes: int = 16 * 1024 * 1024


@dataclass
class WebContext:
    """The server's shared state (the store is opened per transaction, so threads may share it)."""

    options: WebOptions
    store: Any
    roots: Roots
    queue: JobQueue = field(default_factory=JobQueue)
    first_project: str | None = None
    assets: Path | None = None

    @classmethod
    def create(cls, options: WebOptions) -> WebContext:
        """Open the workspace (created), build the demo project when asked, fix the folders the page may use."""
        from lbw.services.projects import get_project, open_workspace
        from lbw.services.workbench import open_demo_project
        from lbw.world.assets import shipped, weights_folder

        store = open_workspace(options.workspace)
        workspace = Path(store.workspace)
        uploads = workspace / UPLOADS
        uploads.mkdir(exist_ok=True)
        os.environ["GRADIO_TEMP_DIR"] = str(uploads)
        loras, models = list(options.loras), list(options.models)
        assets = None
        first = options.project
        if options.demo:
            assets = workspace / DEMO_ASSETS
            first = first or open_demo_project(store, assets).name
            loras.append(assets)
            models.append(assets)
            if shipped():  # the built-in world's model and LoRAs are read where they are installed
                loras.append(weights_folder() / "loras")
                models.append(weights_folder() / "model")
        if first is not None:
            get_project(store, first)  # an unknown --project is an error before the server starts
        roots = Roots(workspace=workspace, loras=tuple(loras), models=tuple(models), extra=(uploads,))
        return cls(options, store, roots, JobQueue(), first, assets)

    def backend_options(self) -> dict[str, Any]:
        """Machine options for renders (the device for diffusers)."""
        return {"device": self.options.device}
