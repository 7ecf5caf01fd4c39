"""Apply LoRAs with block weights to a loaded pipeline by swapping weights in place.

Every LoRA module is matched to its pipeline layer once and its ΔW (multiplier 1, α/r included) is computed
once with ``lbw.adapters``. Per cell each touched layer is set to

    W = W0 + Σ_loras  m · ρ_block · ΔW

with m the UNet strength (text-encoder strength for text-encoder modules, whose block is BASE) and ρ = 1 for
modules in no block (LBW leaves them at full strength). Layers whose coefficients did not change since the
last cell are left alone, so an analyzer run only rewrites the layers of the block it varies. DoRA is not
linear in ρ:
its delta is recomputed per distinct ratio (``lbw.adapters.dora``), as A1111 with LBW does.

Example:
    >>> patcher = WeightPatcher(pipe, [LoraFile.open("face.safetensors")])
    >>> patcher.apply([LoraState(1.0, 1.0, {"BASE": 1.0, "IN01": 0.5})])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from lbw.adapters import dora, full, ia3, loha, lokr, lora, norm
from lbw.adapters.kinds import AdapterKind
from lbw.errors import LbwError, RenderError
from lbw.render.backends.module_index import ModuleKey, is_text_component, pipeline_module_index
from lbw.render.weighting import LoraState

_MAX_NAMES = 5


def matched_layers(
    index: Mapping[ModuleKey, torch.nn.Module], lora_file: Any
) -> Iterator[tuple[Any, torch.nn.Module, bool]]:
    """Yield (module, pipeline layer, is a text-encoder module) for every module of ``lora_file`` that has a layer,
    then raise RenderError naming the first few modules that had none (a LoRA for another architecture).

    Example:
        >>> [(m.name, type(layer).__name__) for m, layer, _ in matched_layers(index, lora)][:1]
        [('lora_te_text_model_encoder_layers_0_mlp_fc1', 'Linear')]
    """
    from lbw.domain.keymap import module_path

    missing: list[str] = []
    for module in lora_file.modules:
        canonical = module.naming.canonical if module.naming is not None else None
        path = module_path(canonical, lora_file.architecture) if canonical is not None else None
        layer = index.get((path.component, path.lbw_name)) if path is not None else None
        if layer is None or path is None:
            missing.append(module.name)
            continue
        yield module, layer, is_text_component(path.component)
    if missing:
        shown = ", ".join(missing[:_MAX_NAMES]) + (" ..." if len(missing) > _MAX_NAMES else "")
        raise RenderError(
            f"{len(missing)} of {len(lora_file.modules)} modules have no matching layer in this model "
            f"(is the LoRA for another architecture? file: {lora_file.architecture}): {shown}",
            where=str(lora_file.path),
        )


@contextmanager
def module_errors(lora_file: Any, module: Any) -> Iterator[None]:
    """Turn an LbwError raised while applying ``module`` into a RenderError naming the file and the module."""
    try:
        yield
    except LbwError as error:
        raise RenderError(
            f"module {module.name}: {error.message} (is the LoRA for another model?)", where=str(lora_file.path)
        ) from None


@dataclass
class _Part:
    lora: int
    block: str | None
    text: bool
    delta: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    nonlinear: Callable[[float], torch.Tensor] | None = None
    memo: dict[float, torch.Tensor] = field(default_factory=dict)

    def coefficient(self, states: Sequence[LoraState]) -> tuple[float, float]:
        state = states[self.lora]
        return (state.text if self.text else state.unet, state.ratio(self.block))

    def weight_delta(self, strength: float, ratio: float) -> torch.Tensor | None:
        if self.nonlinear is None:
            return None if self.delta is None else self.delta * (strength * ratio)
        if ratio not in self.memo:
            self.memo[ratio] = self.nonlinear(ratio)
        return self.memo[ratio] * strength


@dataclass
class _Target:
    module: torch.nn.Module
    weight0: torch.Tensor
    bias0: torch.Tensor | None
    parts: list[_Part] = field(default_factory=list)
    state: tuple[tuple[float, float], ...] | None = None


class WeightPatcher:
    """Holds W0 and ΔW of every layer the LoRAs touch; ``apply`` sets the weights for one cell."""

    def __init__(self, pipe: Any, loras: Sequence[Any], *, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._targets: dict[int, _Target] = {}
        index = pipeline_module_index(pipe)
        for number, lora_file in enumerate(loras):
            self._add_lora(number, lora_file, index)
        self.lora_count = len(loras)

    def _add_lora(self, number: int, lora_file: Any, index: Mapping[ModuleKey, torch.nn.Module]) -> None:
        for module, layer, text in matched_layers(index, lora_file):
            target = self._targets.get(id(layer))
            if target is None:
                bias = getattr(layer, "bias", None)
                target = _Target(
                    layer,
                    layer.weight.detach().clone(),
                    bias.detach().clone() if isinstance(bias, torch.nn.Parameter) else None,
                )
                self._targets[id(layer)] = target
            roles = lora_file.module_tensors(module, device=str(self.device))
            with module_errors(lora_file, module):
                target.parts.append(self._part(number, module, roles, target, text))

    def _part(self, number: int, module: Any, roles: dict[str, torch.Tensor], target: _Target, text: bool) -> _Part:
        kind = AdapterKind(module.kind)
        w0 = target.weight0.to(self.device, torch.float32)
        shape = tuple(w0.shape)
        part = _Part(number, module.block, text)
        if kind is AdapterKind.LORA:
            part.delta = lora.delta(roles, shape=shape)
        elif kind is AdapterKind.LOHA:
            part.delta = loha.delta(roles, shape=shape)
        elif kind is AdapterKind.LOKR:
            part.delta = lokr.delta(roles, shape=shape)
        elif kind is AdapterKind.FULL:
            part.delta, part.bias = full.delta(roles, shape=shape), full.bias_delta(roles)
        elif kind is AdapterKind.NORM:
            part.delta, part.bias = norm.delta(roles, shape=shape), norm.bias_delta(roles)
        elif kind is AdapterKind.IA3:
            part.delta = ia3.delta(roles, w0)
        elif kind is AdapterKind.DORA:
            part.nonlinear = lambda ratio: dora.delta(roles, w0, factor=ratio).reshape(shape)
        else:  # pragma: no cover - AdapterKind is closed
            raise RenderError(f"adapter kind {kind} is not supported by the diffusers backend")
        if part.delta is not None:
            part.delta = part.delta.to(self.device, torch.float32).reshape(shape)
        if part.bias is not None:
            if target.bias0 is None:
                raise RenderError("the module has a bias delta but the layer has no bias")
            part.bias = part.bias.to(self.device, torch.float32).reshape(target.bias0.shape)
        return part

    @property
    def layer_count(self) -> int:
        """How many pipeline layers the LoRAs touch."""
        return len(self._targets)

    def apply(self, states: Sequence[LoraState]) -> int:
        """Set every touched layer for ``states`` (one per LoRA); returns how many layers were rewritten."""
        if len(states) != self.lora_count:
            raise RenderError(f"expected {self.lora_count} LoRA states, got {len(states)}")
        changed = 0
        with torch.no_grad():
            for target in self._targets.values():
                state = tuple(part.coefficient(states) for part in target.parts)
                if state == target.state:
                    continue
                self._write(target, state)
                target.state = state
                changed += 1
        return changed

    def restore(self) -> None:
        """Put every touched layer back to W0 (the model without LoRAs)."""
        with torch.no_grad():
            for target in self._targets.values():
                target.module.weight.copy_(target.weight0)
                if target.bias0 is not None:
                    target.module.bias.copy_(target.bias0)
                target.state = None

    def _write(self, target: _Target, state: tuple[tuple[float, float], ...]) -> None:
        weight = target.weight0.to(self.device, torch.float32)
        bias = None if target.bias0 is None else target.bias0.to(self.device, torch.float32)
        for part, (strength, ratio) in zip(target.parts, state, strict=True):
            delta = part.weight_delta(strength, ratio)
            if delta is not None:
                weight = weight + delta
            if part.bias is not None and bias is not None:
                bias = bias + part.bias * (strength * ratio)
        target.module.weight.copy_(weight)
        if bias is not None:
            target.module.bias.copy_(bias)
