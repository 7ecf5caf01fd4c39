"""Generation backends: ``diffusers`` (built in), ``a1111`` (web UI / Forge API), ``comfyui`` (Inspire pack).

Backends import torch/diffusers only inside the ``diffusers`` backend module; the HTTP ones use the standard
library.
"""

from __future__ import annotations

BACKEND_NAMES = ("diffusers", "a1111", "comfyui")
