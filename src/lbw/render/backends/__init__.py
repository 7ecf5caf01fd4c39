"""Generation backends: ``diffusers`` (built in), ``a1111`` (web UI / Forge API), ``comfyui`` (Inspire pack).

Backends import torch/diffusers only inside the ``diffusers`` backend module; the HTTP ones use the standard
library (and ``websocket-client`` for ComfyUI's progress). Several servers of one HTTP backend form a pool
(``lbw.render.pool``).
"""

from __future__ import annotations

BACKEND_NAMES = ("diffusers", "a1111", "comfyui")
