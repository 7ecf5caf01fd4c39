"""A lazy view of one LoRA file: header first, modules and blocks from names and shapes, tensors on demand.

Opening reads the header and the alpha scalars, and validates every module (``lbw.files.validate``: dtypes,
alpha, shapes) so that every command accepts and refuses the same files. Tensors are read per module through
safetensors' memory-mapped ``safe_open``. Nothing is unpickled; ``.ckpt``/``.pt``/``.bin`` are refused.

Example:
    >>> with LoraFile.open("style.safetensors") as lora:
    ...     lora.architecture, lora.naming, lora.layout.name, len(lora.modules)
    ('sdxl', 'kohya', 'XL12', 986)
    ...     up_down = lora.module_tensors(lora.modules[0])   # {"lora_up": Tensor, "lora_down": Tensor, ...}
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbw.adapters.kinds import AdapterKind
from lbw.domain.layouts import FLUX61, FULL_OF_SHORT, SD17, SD26, XL12, XL20, Layout
from lbw.errors import LoraFileError
from lbw.files.architecture import ArchitectureReport, detect_architecture
from lbw.files.modules import AlphaReader, Module, UnsupportedModule, build_modules, collect_roles
from lbw.files.naming import file_family
from lbw.files.peft_config import ADAPTER_METADATA_KEY, adapter_configs
from lbw.files.safetensors_header import Header, read_header
from lbw.files.validate import check_modules

if TYPE_CHECKING:
    import torch

    from lbw.domain.inspire import InspireElement, InspireVector, LbwFromInspire
    from lbw.domain.weights import BlockWeights

# safetensors dtype -> torch dtype name, for direct reads of float tensors.
_TORCH_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_INSPIRE_ORDER = {"input": 0, "middle": 1, "output": 2, "double": 3, "single": 4}


class LoraFile:
    """One LoRA file, read lazily. Build it with ``LoraFile.open(path)``; close it (or use ``with``)."""

    def __init__(self, header: Header) -> None:
        self.header = header
        groups = collect_roles(header)
        shapes = {group.name: {role: info.shape for role, info in group.tensors.items()}
                  for group in groups.modules}
        self.architecture_report: ArchitectureReport = detect_architecture(shapes, header.metadata)
        self._alphas = AlphaReader(header)
        self.adapter_configs = adapter_configs(header.metadata, str(header.path))
        modules, unsupported = build_modules(groups, self.architecture_report.name, self._alphas,
                                             self.adapter_configs)
        check_modules(modules, header)  # the one validation every command goes through
        self.modules: tuple[Module, ...] = tuple(modules)
        self.unsupported: tuple[UnsupportedModule, ...] = tuple(unsupported)
        self.unrecognized_keys: tuple[str, ...] = groups.unrecognized_keys
        self.naming: str = file_family((group.family for group in groups.modules),
                                       header.metadata.get("ss_network_module"))
        self._by_name = {module.name: module for module in self.modules}
        self._handle: Any = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LoraFile:
        """Read the header of ``path``, group its modules and validate them (``lbw.files.validate``); of the
        tensor data only the alpha scalars are read.

        Example:
            >>> LoraFile.open("style.safetensors").adapter_types
            ('lora',)
        """
        return cls(read_header(path))

    # --- facts from the header ----------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The file's path."""
        return self.header.path

    @property
    def metadata(self) -> Mapping[str, str]:
        """The ``__metadata__`` strings."""
        return self.header.metadata

    @property
    def architecture(self) -> str:
        """``sd1``, ``sd2``, ``sdxl``, ``flux`` or ``unknown``."""
        return self.architecture_report.name

    @property
    def warnings(self) -> tuple[str, ...]:
        """Everything a user should know: architecture conflicts, unsupported modules, unrecognised keys."""
        notes = list(self.architecture_report.warnings)
        for module in self.unsupported:
            notes.append(f"module {module.name} ({', '.join(module.roles)}) is not supported: {module.reason}")
        if self.unrecognized_keys:
            shown = ", ".join(self.unrecognized_keys[:3])
            more = f" and {len(self.unrecognized_keys) - 3} more" if len(self.unrecognized_keys) > 3 else ""
            notes.append(f"{len(self.unrecognized_keys)} tensor keys match no LoRA naming scheme: {shown}{more}")
        notes.extend(self._layout_notes)
        notes.extend(self._config_alpha_notes())
        return tuple(notes)

    @property
    def tensor_count(self) -> int:
        """Number of tensors in the file."""
        return len(self.header.tensors)

    @property
    def parameter_count(self) -> int:
        """Number of stored values over all tensors."""
        return sum(info.numel for info in self.header.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        """dtype -> number of tensors with it."""
        return dict(Counter(info.dtype for info in self.header.tensors.values()).most_common())

    @property
    def adapter_types(self) -> tuple[str, ...]:
        """The adapter kinds present, in ``AdapterKind`` order."""
        present = {module.kind for module in self.modules}
        return tuple(kind.value for kind in AdapterKind if kind in present)

    @property
    def unmapped(self) -> tuple[Module, ...]:
        """Modules that map to no block: LBW keeps them at strength 1."""
        return tuple(module for module in self.modules if module.block is None)

    @property
    def blocks(self) -> tuple[str, ...]:
        """The block IDs that hold at least one module, in layout order."""
        present = {module.block for module in self.modules if module.block is not None}
        return tuple(block for block in self.layout.ids if block in present)

    @cached_property
    def layout(self) -> Layout:
        """The layout a weight vector for this file should use (SD17/SD26, XL12/XL20, FLUX61).

        The short layout unless a module lives in a block only the full layout has (IN00, IN03, OUT00, ...).
        """
        return self._choose_layout()[0]

    @property
    def _layout_notes(self) -> tuple[str, ...]:
        return self._choose_layout()[1]

    @cached_property
    def inspire_blocks(self) -> tuple[tuple[str, int], ...]:
        """The blocks present in ComfyUI Inspire order: ``(bucket, number)`` over input, middle, output, double,
        single, each sorted by number (vector slot 0 is BASE, then one slot per entry)."""
        present = {module.inspire for module in self.modules if module.inspire is not None}
        return tuple(sorted(present, key=lambda item: (_INSPIRE_ORDER[item[0]], item[1])))

    @property
    def full_layout(self) -> Layout:
        """The full layout of this file's architecture (SD26, XL20 or FLUX61): LBW's internal form."""
        return FULL_OF_SHORT.get(self.layout.name, self.layout)

    @property
    def inspire_length(self) -> int:
        """How many values an Inspire vector for this file has: BASE plus one per Inspire slot."""
        from lbw.domain.inspire import inspire_slots

        return 1 + len(inspire_slots(self.inspire_blocks, self.full_layout))

    def to_inspire(self, weights: BlockWeights) -> InspireVector:
        """The ComfyUI Inspire vector doing what the LBW ``weights`` do on this file (notes say what differs).

        Example:
            >>> lora.to_inspire(parse_weights("1,1,1,1,1,1,1,0.5,0,0,0,0,0,0,0,0,0")).text()
            '1,1,1,1,1,1,1,0.5,0,0,0,0,0,0,0,0,0'
        """
        from lbw.domain.inspire import lbw_to_inspire

        return lbw_to_inspire(weights, self.inspire_blocks)

    def from_inspire(self, vector: Sequence[InspireElement], name: str | None = None) -> LbwFromInspire:
        """The LBW weights (full layout) equal to an Inspire ``vector`` on this file.

        Example:
            >>> lora.from_inspire([1, 0.5]).weights.layout.name
            'SD26'
        """
        from lbw.domain.inspire import inspire_to_lbw

        return inspire_to_lbw(vector, self.inspire_blocks, self.full_layout, name)

    def module(self, name: str) -> Module:
        """The module called ``name``; LoraFileError otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LoraFileError(f"no module named {name!r}", where=str(self.path)) from None

    def _config_alpha_notes(self) -> list[str]:
        scaled = [m for m in self.modules if m.config_alpha is not None and m.config_alpha != m.rank]
        if not scaled:
            return []
        scales = sorted({m.config_alpha / m.rank for m in scaled if m.rank})
        shown = ", ".join(f"{scale:.4g}" for scale in scales[:3]) + (", …" if len(scales) > 3 else "")
        return [f"{len(scaled)} PEFT modules take alpha from metadata {ADAPTER_METADATA_KEY} (scale alpha/r = "
                f"{shown}), as diffusers does; A1111 and ComfyUI read no alpha for PEFT keys and apply scale 1"]

    # --- tensor data --------------------------------------------------------------------------------------

    def module_tensors(
        self, module: Module, device: str | None = None, roles: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """The module's tensors by role (all, or the given ``roles``), as stored (dtype kept), memory-mapped.

        A PEFT module whose alpha comes from the ``lora_adapter_metadata`` config gets it as an ``alpha`` role
        (``with_config_alpha``), so every adapter formula sees the same alpha/rank scale as diffusers.

        Example:
            >>> lora.module_tensors(lora.modules[0])["lora_down"].shape
            torch.Size([8, 768])
        """
        handle = self._open_handle()
        wanted = module.roles if roles is None else roles
        try:
            tensors = {role: handle.get_tensor(module.keys[role]) for role in wanted
                       if role != "alpha" or role in module.keys}
        except Exception as error:  # safetensors raises its own error types
            raise LoraFileError(f"cannot read tensors of module {module.name}: {error}",
                                where=str(self.path)) from None
        if roles is None or "alpha" in roles:
            tensors = with_config_alpha(module, tensors)
        if device is not None and device != "cpu":
            tensors = {role: tensor.to(device) for role, tensor in tensors.items()}
        return tensors

    def stacked(self, modules: Sequence[Module], role: str) -> torch.Tensor:
        """One role of several same-shaped modules as a float32 tensor [len(modules), *shape].

        Reads the bytes straight from the (already validated) data region with one ``readinto`` per tensor and
        converts them in one pass: the fast path for batched norms, cheaper than touching memory-mapped pages.

        Example:
            >>> lora.stacked(lora.modules[:2], "lora_down").shape
            torch.Size([2, 8, 768])
        """
        import torch

        infos = [self.header.tensors[module.keys[role]] for module in modules]
        first = infos[0]
        if any(info.shape != first.shape or info.dtype != first.dtype for info in infos):
            raise LoraFileError(f"{role} tensors of the batched modules differ in shape or dtype",
                                where=str(self.path))
        name = _TORCH_DTYPE_NAMES.get(first.dtype)
        dtype = getattr(torch, name) if name else None
        if dtype is None or sys.byteorder != "little":
            return torch.stack([self.module_tensors(m, roles=(role,))[role] for m in modules]).float()
        buffer = bytearray(first.nbytes * len(infos))
        view = memoryview(buffer)
        with open(self.path, "rb") as stream:
            for index, info in enumerate(infos):
                stream.seek(self.header.data_start + info.begin)
                if stream.readinto(view[index * info.nbytes:(index + 1) * info.nbytes]) != info.nbytes:
                    raise LoraFileError(f"tensor {info.name!r}: file shorter than its header says; truncated?",
                                        where=str(self.path))
        raw = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
        return raw.reshape(len(infos), *first.shape).to(torch.float32)

    def close(self) -> None:
        """Release the memory map (tensors already returned stay valid)."""
        self._handle = None

    def __enter__(self) -> LoraFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_handle(self) -> Any:
        if self._handle is None:
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as error:
                raise LoraFileError(f"cannot open tensors: {error}", where=str(self.path)) from None
        return self._handle

    def _choose_layout(self) -> tuple[Layout, tuple[str, ...]]:
        present = {module.block for module in self.modules if module.block is not None}
        if self.architecture == "flux":
            return FLUX61, ()
        short, full = (XL12, XL20) if self.architecture == "sdxl" else (SD17, SD26)
        outside = sorted(present - set(full.ids))
        notes: tuple[str, ...] = ()
        if outside:
            notes = (f"blocks {', '.join(outside)} do not exist in {self.architecture} ({full.name}); "
                     "LBW cannot address them",)
        layout = full if present - set(short.ids) else short
        return layout, notes


def read_lora_header(path: str | os.PathLike[str]) -> Header:
    """The header of the LoRA at ``path`` after every check ``LoraFile.open`` makes (modules validated), for
    commands that need only the header (``lbw meta``) but must refuse what every other command refuses.

    Example:
        >>> read_lora_header("style.safetensors").metadata["ss_network_dim"]
        '8'
    """
    with LoraFile.open(path) as lora:
        return lora.header


def with_config_alpha(module: Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` plus an ``alpha`` scalar (float32) when the module's alpha comes from the PEFT adapter config
    in the metadata rather than from a tensor, so the adapter math applies the right alpha/rank scale.

    Writers must not save this ``alpha`` as a tensor of a PEFT file: the metadata already holds it.

    Example:
        >>> float(with_config_alpha(peft_module, {"lora_up": up, "lora_down": down})["alpha"])
        4.0
    """
    if module.config_alpha is None or "alpha" in module.keys or "alpha" in tensors:
        return tensors
    import torch

    return {**tensors, "alpha": torch.tensor(module.config_alpha, dtype=torch.float32)}
