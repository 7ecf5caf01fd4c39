"""Group the tensors of a header into adapter modules (no tensor data is read, except alpha scalars on demand).

A module is one adapted layer: its tensors keyed by role (``lora_up``, ``hada_w1_a``, ...), its adapter kind,
its LBW block and Inspire bucket, rank, shapes and dtype. ``alpha`` is read lazily from the file (a scalar per
module, read straight from the data region); PEFT modules, which have no alpha tensor, take it from the
``lora_adapter_metadata`` config (``lbw.files.peft_config``); otherwise a missing alpha means alpha = rank.

Example:
    >>> groups = collect_roles(read_header("style.safetensors"))
    >>> modules, unsupported = build_modules(groups, "sd1", AlphaReader(header))
    >>> modules[0].name, modules[0].kind, modules[0].block, modules[0].rank
    ('lora_te_text_model_encoder_layers_0_mlp_fc1', <AdapterKind.LORA: 'lora'>, 'BASE', 8)
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from lbw.adapters.kinds import AdapterKind, kind_of_roles, rank_of
from lbw.errors import AdapterError, LoraFileError
from lbw.files.families import ModuleNaming, describe
from lbw.files.json_text import quoted
from lbw.files.naming import split_key
from lbw.files.peft_config import AdapterConfig, config_alpha
from lbw.files.safetensors_header import Header, TensorInfo

# struct formats of the scalar dtypes an alpha can be stored in (BF16 is widened by hand).
_SCALAR_FORMATS = {"F16": "<e", "F32": "<f", "F64": "<d", "I8": "<b", "U8": "<B", "I16": "<h", "U16": "<H",
                   "I32": "<i", "U32": "<I", "I64": "<q", "U64": "<Q"}


@dataclass(frozen=True)
class RoleGroup:
    """The tensors of one module before classification: role -> TensorInfo, and the key family."""

    name: str
    tensors: dict[str, TensorInfo]
    family: str


@dataclass(frozen=True)
class Groups:
    """Every module found in a header, in natural name order, plus the keys no naming scheme explains."""

    modules: tuple[RoleGroup, ...]
    unrecognized_keys: tuple[str, ...]


@dataclass(frozen=True)
class UnsupportedModule:
    """A module whose roles form no adapter kind lbw computes (OFT, GLoRA, incomplete sets)."""

    name: str
    roles: tuple[str, ...]
    reason: str


class AlphaReader:
    """Reads alpha scalars straight from the data region, all of them in one pass on first use.

    Example:
        >>> AlphaReader(header).alpha("lora_unet_mid_block_attentions_0_proj_in.alpha")
        4.0
    """

    def __init__(self, header: Header) -> None:
        self._header = header
        self._values: dict[str, float | LoraFileError] | None = None

    def alpha(self, key: str) -> float:
        """The value of the alpha tensor ``key``; LoraFileError when it is not a finite scalar."""
        if self._values is None:
            self._values = self._read_all()
        value = self._values[key]
        if isinstance(value, LoraFileError):
            raise value
        return value

    def _read_all(self) -> dict[str, float | LoraFileError]:
        header = self._header
        keys = [name for name in header.tensors if name.endswith(".alpha")]
        values: dict[str, float | LoraFileError] = {}
        try:
            with open(header.path, "rb") as stream:
                fd = stream.fileno()
                for key in keys:
                    info = header.tensors[key]
                    raw = os.pread(fd, info.nbytes, header.data_start + info.begin)
                    try:
                        values[key] = _decode_scalar(info, raw, str(header.path))
                    except LoraFileError as error:  # raised when this alpha is asked for
                        values[key] = error
        except OSError as error:
            raise LoraFileError(f"cannot read alpha values: {error.strerror}", where=str(header.path)) from None
        return values


@dataclass(frozen=True, eq=False)
class Module:
    """One adapted layer of a LoRA file.

    ``keys`` maps role -> tensor key in the file; ``shapes`` maps role -> shape. ``block`` is the LBW block ID
    (None: unmapped, LBW keeps strength 1); ``inspire`` the ComfyUI Inspire bucket (None: "others" = BASE).
    ``naming`` is the normalised name (``lbw.files.families``): family, canonical layer name, loading hosts.
    """

    name: str
    keys: Mapping[str, str]
    kind: AdapterKind
    block: str | None
    inspire: tuple[str, int] | None
    rank: int | None
    shapes: Mapping[str, tuple[int, ...]]
    dtype: str
    family: str
    params: int
    _alphas: AlphaReader = field(repr=False)
    config_alpha: float | None = None
    naming: ModuleNaming | None = None

    @cached_property
    def stored_alpha(self) -> float | None:
        """The alpha stored in the file: its ``alpha`` tensor, else the PEFT adapter config's (``config_alpha``),
        else None."""
        key = self.keys.get("alpha")
        return self.config_alpha if key is None else self._alphas.alpha(key)

    @property
    def alpha(self) -> float | None:
        """alpha as LBW uses it: the stored value, or the rank when missing (None for kinds without rank)."""
        stored = self.stored_alpha
        return float(self.rank) if stored is None and self.rank is not None else stored

    @property
    def roles(self) -> tuple[str, ...]:
        """The role names of this module."""
        return tuple(self.keys)


def collect_roles(header: Header) -> Groups:
    """Split every tensor key of ``header`` into module and role; keys that fit no scheme are listed apart.

    Raises LoraFileError when two keys give the same module and role (e.g. ``lora_A.weight`` and
    ``lora_A.default.weight``).

    Example:
        >>> collect_roles(header).modules[0].tensors["lora_down"].shape
        (8, 768)
    """
    grouped: dict[str, dict[str, TensorInfo]] = {}
    families: dict[str, str] = {}
    unrecognized: list[str] = []
    for key, info in header.tensors.items():
        parts = split_key(key)
        if parts is None:
            unrecognized.append(key)
            continue
        roles = grouped.setdefault(parts.module, {})
        if parts.role in roles:
            raise LoraFileError(f"keys {quoted(roles[parts.role].name)} and {quoted(key)} both give role "
                                f"{parts.role!r} of module {quoted(parts.module)}", where=str(header.path))
        roles[parts.role] = info
        # A module is "lycoris" when any of its keys is; otherwise the first key decides.
        if families.get(parts.module) != "lycoris":
            families[parts.module] = parts.family
    names = sorted(grouped, key=natural_key)
    modules = tuple(RoleGroup(name, grouped[name], families[name]) for name in names)
    return Groups(modules, tuple(sorted(unrecognized)))


def build_modules(
    groups: Groups,
    architecture: str | None,
    alphas: AlphaReader,
    configs: Mapping[str, AdapterConfig] | None = None,
) -> tuple[list[Module], list[UnsupportedModule]]:
    """Classify each role group (kind, rank, block); groups that form no known kind are returned apart.

    ``configs`` (from ``adapter_configs``) gives the alpha of PEFT modules that have no alpha tensor.

    Example:
        >>> modules, unsupported = build_modules(collect_roles(header), "sdxl", AlphaReader(header))
    """
    modules: list[Module] = []
    unsupported: list[UnsupportedModule] = []
    for group in groups.modules:
        shapes = {role: info.shape for role, info in group.tensors.items()}
        try:
            kind = kind_of_roles(shapes)
            rank = rank_of(shapes)
        except AdapterError as error:
            unsupported.append(UnsupportedModule(group.name, tuple(sorted(shapes)), error.message))
            continue
        keys = {role: info.name for role, info in group.tensors.items()}
        naming = describe(group.name, architecture, kind.value, (key[len(group.name):] for key in keys.values()))
        modules.append(Module(
            name=group.name,
            keys=keys,
            kind=kind,
            block=naming.block,
            inspire=naming.inspire,
            rank=rank,
            shapes=shapes,
            dtype=_module_dtype(group.tensors),
            family=group.family,
            params=sum(info.numel for info in group.tensors.values()),
            _alphas=alphas,
            config_alpha=_config_alpha(group, rank, configs),
            naming=naming,
        ))
    return modules, unsupported


def _config_alpha(group: RoleGroup, rank: int | None, configs: Mapping[str, AdapterConfig] | None) -> float | None:
    """The alpha a PEFT adapter config gives this module (only PEFT modules without an alpha tensor)."""
    if not configs or group.family != "peft" or "alpha" in group.tensors or rank is None:
        return None
    return config_alpha(configs, group.name, rank)


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders embedded numbers numerically (``blocks_2`` before ``blocks_10``).

    Example:
        >>> sorted(["b_10", "b_2"], key=natural_key)
        ['b_2', 'b_10']
    """
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _module_dtype(tensors: Mapping[str, TensorInfo]) -> str:
    """The dtype of the module's factors (alpha excluded), ``F16+F32`` style when they differ."""
    dtypes = sorted({info.dtype for role, info in tensors.items() if role != "alpha"})
    if not dtypes:
        dtypes = sorted({info.dtype for info in tensors.values()})
    return "+".join(dtypes)


def _decode_scalar(info: TensorInfo, raw: bytes, where: str) -> float:
    if info.numel != 1:
        raise LoraFileError(f"tensor {quoted(info.name)}: alpha must be a single number, found shape "
                            f"{list(info.shape)}", where=where)
    if len(raw) != info.nbytes:
        raise LoraFileError(f"tensor {quoted(info.name)}: read {len(raw)} of {info.nbytes} bytes; file truncated?",
                            where=where)
    if info.dtype == "BF16":
        value = struct.unpack("<f", b"\x00\x00" + raw)[0]
    elif info.dtype in _SCALAR_FORMATS:
        value = struct.unpack(_SCALAR_FORMATS[info.dtype], raw)[0]
    else:
        raise LoraFileError(f"tensor {quoted(info.name)}: alpha stored as {info.dtype}, expected a float or "
                            "integer dtype", where=where)
    if not math.isfinite(value):
        raise LoraFileError(f"tensor {quoted(info.name)}: alpha is {value}, expected a finite number", where=where)
    return float(value)
