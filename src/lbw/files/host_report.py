"""Per host, the modules of a LoRA file that host would not load at all (``lbw.domain.hosts`` rules).

A module a host does not load does nothing there: no strength, no block weight. Forge also skips a whole file
when more than 12 of its keys match nothing (``FORGE_UNMATCHED_LIMIT``): then nothing of the file loads there,
the modules it could load included.

Example:
    >>> with LoraFile.open("flux_diffusers.safetensors") as lora:
    ...     forge = host_loading(lora.modules, lora.architecture, lora.unrecognized_keys)[0]
    >>> forge.host, len(forge.not_loaded), forge.refuses_file
    ('forge', 168, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lbw.domain.hosts import FORGE_UNMATCHED_LIMIT, HOSTS, hosts_for
from lbw.files.modules import Module

_NAMES_SHOWN = 3


@dataclass(frozen=True)
class HostLoading:
    """What one host does with a file: how many modules it checks, which it leaves out, how many tensor keys
    it leaves unmatched, and whether it refuses the whole file (Forge, more than 12 unmatched keys)."""

    host: str
    modules: int
    not_loaded: tuple[str, ...]
    unmatched_keys: int
    refuses_file: bool

    @property
    def label(self) -> str:
        """The host's name as reports show it."""
        return HOSTS[self.host]

    @property
    def loaded(self) -> int:
        """Modules the host loads (0 when it refuses the file)."""
        return 0 if self.refuses_file else self.modules - len(self.not_loaded)

    def summary(self) -> str:
        """One line for the terminal.

        Example:
            >>> HostLoading("comfyui", 10, (), 0, False).summary()
            'loads all 10 modules'
        """
        if not self.not_loaded and not self.refuses_file:
            return f"loads all {self.modules} modules"
        text = f"does not load {len(self.not_loaded)} of {self.modules} modules"
        if self.not_loaded:
            shown = ", ".join(self.not_loaded[:_NAMES_SHOWN])
            more = ", …" if len(self.not_loaded) > _NAMES_SHOWN else ""
            text += f" ({shown}{more})"
        if self.refuses_file:
            text += (f"; {self.unmatched_keys} keys match nothing there, more than {FORGE_UNMATCHED_LIMIT}: "
                     f"{self.label} skips the whole file, so none of it loads")
        return text

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this host."""
        return {"name": self.label, "loads_file": not self.refuses_file, "modules": self.modules,
                "loaded": self.loaded, "not_loaded": list(self.not_loaded), "unmatched_keys": self.unmatched_keys}


def host_loading(modules: Sequence[Module], architecture: str | None,
                 unrecognized_keys: Sequence[str] = ()) -> tuple[HostLoading, ...]:
    """One ``HostLoading`` per host that runs ``architecture`` (none when it is unknown: lbw cannot tell).

    Unmatched keys are the tensor keys of the modules the host does not load plus the keys lbw recognises as no
    adapter at all (``unrecognized_keys``; a host reads none of them either).

    Example:
        >>> [h.host for h in host_loading(lora.modules, "sdxl")]
        ['a1111', 'forge', 'comfyui']
    """
    reports = []
    for host in hosts_for(architecture):
        missing = [m for m in modules if m.naming is not None and m.naming.loaded_by is not None
                   and host not in m.naming.loaded_by]
        unmatched = sum(len(m.keys) for m in missing) + len(unrecognized_keys)
        refuses = host == "forge" and unmatched > FORGE_UNMATCHED_LIMIT
        reports.append(HostLoading(host, len(modules), tuple(m.name for m in missing), unmatched, refuses))
    return tuple(reports)


def loaded_nowhere(modules: Sequence[Module]) -> tuple[Module, ...]:
    """The modules no host of the file's architecture loads (bake and merge keep them untouched).

    Example:
        >>> [m.name for m in loaded_nowhere(lora.modules)][:1]
        ['transformer_blocks.0.attn.to_q']
    """
    return tuple(m for m in modules if m.naming is not None and m.naming.loaded_nowhere)
