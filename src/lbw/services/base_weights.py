"""Base-model weights W0 for the modules that need them (DoRA baked dense, IA3 and DoRA in verify).

``--model CKPT`` names a safetensors file holding the base weights: a single-file checkpoint (CompVis names such
as ``model.diffusion_model.input_blocks.1.1.proj_in.weight``), a diffusers state dict (``down_blocks.0...``),
or any file whose keys end with the layer path. Only the tensors asked for are read (memory-mapped).

Matching rule: a LoRA module matches the checkpoint key whose name without ``.weight``, with ``.`` → ``_``,
equals or ends with ``_`` + one of the module's layer paths: the layer path after its family's prefix
(``lbw.files.families``: ``lora_unet_``, ``lora_te*_``, ``unet.``, ``transformer.``, ``lycoris_`` ...), or the
CompVis name LBW sees (``diffusion_model_input_blocks_1_1_...``; not for Flux diffusers q/k/v/mlp layers, which
are slices of a fused BFL weight). No match, or several (e.g. both SDXL text encoders in one file), is
an error naming the module: lbw never guesses a base weight.

Example:
    >>> with BaseWeights.open("v1-5-pruned.safetensors") as base:
    ...     base.weight(lora.module("lora_unet_down_blocks_0_attentions_0_proj_in")).shape
    torch.Size([320, 320, 1, 1])
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbw.domain.keymap import module_path
from lbw.errors import LoraFileError
from lbw.files.families import normalise
from lbw.files.modules import Module
from lbw.files.safetensors_header import read_header

if TYPE_CHECKING:
    import torch


class BaseWeights:
    """A lazily read base checkpoint; ``weight(module)`` returns W0 for a LoRA module."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.path = path
        self._by_tail: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            if key.endswith(".weight"):
                flat = key.removesuffix(".weight").replace(".", "_")
                parts = flat.split("_")
                for start in range(len(parts)):  # every "_"-aligned tail of the name
                    self._by_tail["_".join(parts[start:])].append(key)
        self._handle: Any = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BaseWeights:
        """Read the checkpoint's header (no tensor data).

        Example:
            >>> BaseWeights.open("v1-5-pruned.safetensors").path.name
            'v1-5-pruned.safetensors'
        """
        header = read_header(path)
        return cls(Path(path), list(header.tensors))

    def key_for(self, module: Module, architecture: str | None = None) -> str:
        """The checkpoint key holding W0 of ``module``; LoraFileError when none or several match.

        Example:
            >>> base.key_for(lora.module("lora_te_text_model_encoder_layers_0_mlp_fc1"))
            'cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight'
        """
        tails = _module_tails(module, architecture)
        ambiguous: list[str] = []
        for tail in tails:
            found = sorted(set(self._by_tail.get(tail, ())))
            if len(found) == 1:
                return found[0]
            ambiguous.extend(found)
        if ambiguous:
            shown = ", ".join(ambiguous[:3])
            raise LoraFileError(f"module {module.name} matches several base weights ({shown}); "
                                "give a checkpoint holding one model part", where=str(self.path))
        raise LoraFileError(f"no base weight for module {module.name} (looked for a key ending in "
                            f"{' or '.join(t + '.weight' for t in tails)}, '.' read as '_')", where=str(self.path))

    def weight(self, module: Module, architecture: str | None = None) -> torch.Tensor:
        """W0 of ``module`` as stored (dtype kept), memory-mapped from the checkpoint."""
        key = self.key_for(module, architecture)
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
        return self._handle.get_tensor(key)

    def close(self) -> None:
        """Release the memory map."""
        self._handle = None

    def __enter__(self) -> BaseWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _module_tails(module: Module, architecture: str | None) -> list[str]:
    name = module.naming.name if module.naming is not None else normalise(module.name)
    tails = [name.form.path]
    if name.canonical is not None and name.form.namespace != "flux_diffusers":
        path = module_path(name.canonical, architecture)
        if path is not None and path.component == "unet":
            tails.append(path.lbw_name)
    return [t for i, t in enumerate(tails) if t and t not in tails[:i]]
