"""Apply LoRAs to a loaded pipeline without touching its weights, with a block factor per batch element.

Each layer a LoRA adapts gets a thin wrapper for the duration of a render (``BatchedLoras.attached``): its forward
computes

    y_b = W0·x_b + Σ_parts  s_b · ΔW_part(x_b)

where ``s_b`` = strength x block ratio of the part's LoRA in the cell of batch element ``b``, and ``ΔW_part(x)``
is the module's cheap form from ``lora_forms`` (low-rank, Kronecker, gains; a dense ΔW only where a kind has no
cheaper form). Neither a dense ΔW of a low-rank module nor a copy of W0 is held; the model's weights are never
written. DoRA is not linear in the ratio and is applied exactly: per element, c = magnitude / ‖W0 + ρ_b·ΔW‖
(from closed-form norm terms), then with multiplier m

    output axis: y = (1 + m(c − 1))·W0x + m·ρ·c·ΔWx        input axis: y = W0((1 + m(c − 1))·x) + m·ρ·ΔW(c·x)

The UNet's batch may be a multiple of the number of cells (classifier-free guidance concatenates the
unconditional and conditional halves: element ``b`` and ``b + n`` share ``s_b``). Text-encoder parts take one
factor for the whole forward (the prompt is encoded once per text-encoder state). A part whose factors are all
0 in a batch is skipped, so such layers compute exactly W0·x.

Example:
    >>> engine = BatchedLoras(pipe, [LoraFile.open("face.safetensors")])
    >>> engine.set_states([[LoraState(1.0, 1.0, {"IN01": 0.0})], [LoraState(1.0, 1.0, {"IN01": 1.0})]])
    >>> with engine.attached():
    ...     noise = pipe.unet(latents, t, encoder_hidden_states=embeds).sample  # 2 cells in one batch
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from lbw.adapters.kinds import AdapterKind
from lbw.errors import RenderError
from lbw.render.backends.lora_forms import (
    GROUP_NORM,
    NORMS,
    Delta,
    Key,
    Part,
    apply_weight,
    build_part,
    layer_op,
    per_channel,
    rows_for,
)
from lbw.render.backends.lora_patch import matched_layers, module_errors
from lbw.render.backends.module_index import pipeline_module_index
from lbw.render.weighting import LoraState


class _Factors:
    """The factors of one key for the current batch: per element strength m, ratio ρ and s = m·ρ."""

    def __init__(self, strengths: Sequence[float], ratios: Sequence[float]) -> None:
        self.strengths = tuple(strengths)
        self.ratios = tuple(ratios)
        self.products = tuple(m * r for m, r in zip(self.strengths, self.ratios, strict=True))
        self.zero = all(s == 0 for s in self.products)
        self.no_strength = all(m == 0 for m in self.strengths)
        self._tensors: dict[tuple[str, int, torch.dtype, torch.device], torch.Tensor] = {}

    def tensor(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``products``, ``strengths`` or ``ratios`` as an [n] tensor (cached per dtype and device)."""
        key = (name, 0, dtype, device)
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(getattr(self, name), dtype=dtype, device=device)
        return self._tensors[key]

    def expanded(self, name: str, count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``tensor(name)`` for a batch of ``count`` ([1] stays [1]; CFG's 2n repeats the n factors; cached)."""
        key = (name, count, dtype, device)
        if key not in self._tensors:
            self._tensors[key] = rows_for(self.tensor(name, dtype, device), count)
        return self._tensors[key]


class _Layer:
    """The wrapper of one adapted layer: its parts and the forward that applies them per batch element."""

    def __init__(self, engine: BatchedLoras, module: torch.nn.Module) -> None:
        self.engine = engine
        self.module = module
        self.op = layer_op(module)
        self.parts: list[Part] = []
        self._saved: Any = None
        # id(part) -> (the factors it was made for, c(ρ_b) per element); the factors are held, so an id is never
        # reused for other factors while the entry lives
        self._dora_cache: dict[int, tuple[_Factors, torch.Tensor]] = {}

    def install(self) -> None:
        self._saved = self.module.__dict__.get("forward")
        original = self.module.forward

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.forward(original, x, *args, **kwargs)

        self.module.forward = forward  # type: ignore[method-assign]

    def remove(self) -> None:
        if self._saved is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self._saved  # type: ignore[method-assign]
        self._saved = None
        self._dora_cache.clear()

    def forward(self, original: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        active = []
        additive_only = True
        for part in self.parts:
            factors = self.engine.factors(part.key)
            if factors is None or (factors.no_strength if part.dora is not None else factors.zero):
                continue
            active.append((part, factors))
            additive_only = additive_only and part.additive_only
        if not active:
            return original(x, *args, **kwargs)
        weight = self.module.weight
        dtype, device, count = weight.dtype, weight.device, x.shape[0]
        if self.op in NORMS:
            return self._norm_forward(x, active, dtype, device)
        if additive_only:  # the common case: y = W0·x + Σ Δ(s_b·x), the factor applied where the tensor is smallest
            y = original(x, *args, **kwargs)
            for part, factors in active:
                assert part.delta is not None
                part.delta.add_to(y, self.module, self.op, x, factors.expanded("products", count, dtype, device))
            return y
        in_gain: torch.Tensor | None = None  # Σ (g − 1), [n, in]
        out_gain: torch.Tensor | None = None  # Σ (h − 1), [n, out]
        terms: list[tuple[Delta, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        biases: list[tuple[torch.Tensor, torch.Tensor]] = []
        for part, factors in active:
            products = factors.tensor("products", dtype, device)
            if part.dora is not None:
                assert part.delta is not None
                strengths = factors.tensor("strengths", dtype, device)
                scale = self._dora_scale(part, factors, dtype, device)  # [n, C]
                gain = strengths[:, None] * (scale - 1)
                if part.dora.axis == "output":  # (term, per-element factor, input scale, output channel factor)
                    out_gain = gain if out_gain is None else out_gain + gain
                    terms.append((part.delta, products, None, scale))
                else:
                    in_gain = gain if in_gain is None else in_gain + gain
                    terms.append((part.delta, products, scale, None))
                continue
            if part.in_scale is not None:
                gain = products[:, None] * part.in_scale[None]
                in_gain = gain if in_gain is None else in_gain + gain
            if part.out_scale is not None:
                gain = products[:, None] * part.out_scale[None]
                out_gain = gain if out_gain is None else out_gain + gain
            if part.delta is not None:
                terms.append((part.delta, products, None, None))
            if part.bias is not None:
                biases.append((products, part.bias))
        if in_gain is None and out_gain is None:
            y = original(x, *args, **kwargs)
        else:
            y = self._scaled_base(x, in_gain, out_gain)
        for delta, products, in_scale, out_scale in terms:
            source = x if in_scale is None else x * per_channel(in_scale, x, self.op)
            contribution = delta(self.module, self.op, source, rows_for(products, count))
            if out_scale is not None:
                contribution = contribution * per_channel(out_scale, contribution, self.op)
            y = y + contribution
        for products, bias in biases:
            y = y + per_channel(products[:, None] * bias[None], y, self.op)
        return y

    def _scaled_base(self, x: torch.Tensor, in_gain: torch.Tensor | None,
                     out_gain: torch.Tensor | None) -> torch.Tensor:
        """W0((1 + Σg)·x) + Σh·W0x + bias: the IA3 and DoRA gains on W0 (W0 itself is never copied)."""
        weight, op = self.module.weight, self.op
        if in_gain is not None:
            y = apply_weight(self.module, op, x * per_channel(1 + in_gain, x, op), weight)
            if out_gain is not None:
                plain = apply_weight(self.module, op, x, weight)
                y = y + per_channel(out_gain, plain, op) * plain
        else:
            assert out_gain is not None
            plain = apply_weight(self.module, op, x, weight)
            y = plain * per_channel(1 + out_gain, plain, op)
        bias = getattr(self.module, "bias", None)
        if bias is not None:
            y = y + per_channel(bias[None], y, op)
        return y

    def _dora_scale(self, part: Part, factors: _Factors, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """c(ρ_b) per element [n, C] for the current batch (cached until the factors change)."""
        assert part.dora is not None
        cached = self._dora_cache.get(id(part))
        if cached is None or cached[0] is not factors:
            stacked = torch.stack([part.dora.scale(ratio) for ratio in factors.ratios])
            cached = self._dora_cache[id(part)] = (factors, stacked.to(device=device, dtype=dtype))
        return cached[1]

    def _norm_forward(self, x: torch.Tensor, active: list[tuple[Part, _Factors]], dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
        """The normalisation without affine, then per-element weight W0 + Σ s·Δw and bias b0 + Σ s·Δb."""
        module: Any = self.module
        if self.op == GROUP_NORM:
            normed = F.group_norm(x, module.num_groups, None, None, module.eps)
        else:
            normed = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        weight = module.weight[None]
        bias = module.bias[None] if module.bias is not None else torch.zeros_like(weight)
        for part, factors in active:
            assert part.affine is not None
            products = factors.tensor("products", dtype, device)[:, None]
            delta_weight, delta_bias = part.affine
            weight = weight + products * delta_weight[None]
            if delta_bias is not None:
                bias = bias + products * delta_bias[None]
        return normed * per_channel(weight, normed, self.op) + per_channel(bias, normed, self.op)


class BatchedLoras:
    """The LoRAs of a render as per-layer wrappers; ``set_states`` gives each batch element its own factors."""

    def __init__(self, pipe: Any, loras: Sequence[Any]) -> None:
        self._layers: dict[int, _Layer] = {}
        self._factors: dict[Key, _Factors] = {}
        self.lora_count = len(loras)
        index = pipeline_module_index(pipe)
        for number, lora_file in enumerate(loras):
            for module, layer, text in matched_layers(index, lora_file):
                target = self._layers.get(id(layer))
                if target is None:
                    target = self._layers[id(layer)] = _Layer(self, layer)
                weight = layer.weight
                roles = lora_file.module_tensors(module, device=str(weight.device))
                with module_errors(lora_file, module):
                    part = build_part(AdapterKind(module.kind), roles, layer, target.op, (number, module.block, text))
                target.parts.append(part)
        self._installed = False

    @property
    def layer_count(self) -> int:
        """How many pipeline layers the LoRAs touch."""
        return len(self._layers)

    def factor_bytes(self) -> int:
        """Bytes the engine holds for the LoRAs (their factors in the layers' dtype, DoRA norm terms)."""
        seen: dict[int, int] = {}
        for target in self._layers.values():
            for part in target.parts:
                for tensor in part.tensors():
                    seen[id(tensor)] = tensor.numel() * tensor.element_size()
        return sum(seen.values())

    def factors(self, key: Key) -> _Factors | None:
        """The factors of ``key`` in the current batch (None: not set, the part is left out)."""
        return self._factors.get(key)

    def set_states(self, elements: Sequence[Sequence[LoraState]]) -> None:
        """The UNet factors of a batch: ``elements[b]`` = one LoraState per LoRA for batch element b."""
        if not elements:
            raise RenderError("a batch needs at least one element")
        for states in elements:
            self._check(states)
        keys = {key for target in self._layers.values() for part in target.parts for key in [part.key] if not key[2]}
        for key in keys:
            number, block, _ = key
            self._factors[key] = _Factors([states[number].unet for states in elements],
                                          [states[number].ratio(block) for states in elements])

    def set_text_states(self, states: Sequence[LoraState]) -> None:
        """The text-encoder factors (one set for the whole forward: text strength x ratio of the block)."""
        self._check(states)
        keys = {key for target in self._layers.values() for part in target.parts for key in [part.key] if key[2]}
        for key in keys:
            number, block, _ = key
            self._factors[key] = _Factors([states[number].text], [states[number].ratio(block)])

    def _check(self, states: Sequence[LoraState]) -> None:
        if len(states) != self.lora_count:
            raise RenderError(f"expected {self.lora_count} LoRA states, got {len(states)}")

    @contextmanager
    def attached(self) -> Iterator[BatchedLoras]:
        """Install the wrappers on the adapted layers; removed on exit (the weights are never written)."""
        if self._installed:
            raise RenderError("the LoRA layers are already attached")
        installed: list[_Layer] = []
        try:
            for target in self._layers.values():
                target.install()
                installed.append(target)
            self._installed = True
            yield self
        finally:
            for target in installed:
                target.remove()
            self._installed = False


