"""The cheap forms of ΔW·x per adapter kind, for the batched engine (``lora_layers``); ``lbw.adapters`` math.

- LoRA / LoCon (linear, conv 1x1 and kxk; a Tucker ``lora_mid`` is folded into the down kernel): up·(down·x);
- LoHa: the face-splitting identity (A1·B1) ⊙ (A2·B2) = (A1 • A2)(B1 ∗ B2) makes it a rank r1·r2 product
  (Tucker LoHa: a 1x1 down then a kxk up kernel per tap);
- LoKr: (W1 ⊗ W2)·x = W1·X·W2ᵀ with x reshaped to X (conv: W2, dense or low-rank, convolved over groups of input
  channels);
- IA3: a gain per output row or input column of W0;
- DoRA: the LoRA path plus the terms of its norm, ‖W0 + ρ·ΔW‖² = a + 2ρ·b + ρ²·q per row or column, from W0 and
  the factors;
- full: the stored ``diff`` (the module's own tensor) as a weight, ``diff_b`` as a bias delta;
- norm (``w_norm``/``b_norm``, or full on a norm layer): affine deltas.

A factored form is used where the layer allows it and it costs less than the dense ΔW; otherwise (and for layers
other than Linear/Conv: Embedding) the dense ΔW of the module is built once. Every tensor is a copy in the layer's
dtype on the layer's device.

Example:
    >>> part = build_part(AdapterKind.LORA, roles, pipe.unet.conv_in, "conv", (0, "IN00", False))
    >>> part.delta(pipe.unet.conv_in, "conv", x).shape == pipe.unet.conv_in(x).shape
    True
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lbw.adapters import dora, full, ia3, loha, lokr, lora, norm
from lbw.adapters._common import alpha_of, shapes_of
from lbw.adapters.kinds import AdapterKind, alpha_scale
from lbw.errors import AdapterError, RenderError

# (LoRA number, block ID or None, text-encoder part): parts with the same key share their factors.
Key = tuple[int, str | None, bool]

_LINEAR, _CONV, _EMBEDDING, GROUP_NORM, _LAYER_NORM = "linear", "conv", "embedding", "group_norm", "layer_norm"
NORMS = (GROUP_NORM, _LAYER_NORM)


def layer_op(layer: torch.nn.Module) -> str:
    """How a layer uses its weight: linear, conv, embedding, group_norm or layer_norm; RenderError otherwise.

    Example:
        >>> layer_op(torch.nn.Conv2d(4, 4, 3))
        'conv'
    """
    if isinstance(layer, torch.nn.Linear):
        return _LINEAR
    if isinstance(layer, torch.nn.modules.conv._ConvNd) and not getattr(layer, "transposed", False):
        return _CONV
    if isinstance(layer, torch.nn.Embedding):
        return _EMBEDDING
    if isinstance(layer, torch.nn.GroupNorm):
        return GROUP_NORM
    if isinstance(layer, torch.nn.LayerNorm) and len(layer.normalized_shape) == 1:
        return _LAYER_NORM
    raise RenderError(f"a LoRA adapts a {type(layer).__name__} layer, which the batched engine does not support; "
                      "use --lora-mode merge")


def apply_weight(layer: Any, op: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's operation with another weight and no bias (``weight`` may have other channel counts)."""
    if op == _LINEAR:
        return F.linear(x, weight)
    if op == _CONV:
        return layer._conv_forward(x, weight, None)
    return F.embedding(x, weight, layer.padding_idx, layer.max_norm, layer.norm_type, layer.scale_grad_by_freq,
                       layer.sparse)


def rows_for(values: torch.Tensor, count: int) -> torch.Tensor:
    """Per-element values [n, ...] for a batch of ``count`` (n == 1 broadcasts; count = k·n repeats, as CFG)."""
    n = values.shape[0]
    if n == 1 or n == count:
        return values
    if count % n:
        raise RenderError(f"a layer got a batch of {count} for {n} cells; the pipeline batches in a way the "
                          "batched engine does not know (use --lora-mode merge)")
    return values.repeat(count // n, *([1] * (values.dim() - 1)))


def scaled(tensor: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
    """``tensor`` [N, ...] times a per-element ``factor`` ([N] or [1]; None: unchanged)."""
    if factor is None:
        return tensor
    return tensor * factor.reshape(-1, *([1] * (tensor.dim() - 1)))


def per_channel(values: torch.Tensor, like: torch.Tensor, op: str) -> torch.Tensor:
    """[n, C] per-element channel vectors shaped for ``like``: channels last (linear, LayerNorm) or at dim 1."""
    rows = rows_for(values, like.shape[0])
    if op in (_LINEAR, _LAYER_NORM):
        return rows.reshape(rows.shape[0], *([1] * (like.dim() - 2)), rows.shape[1])
    return rows.reshape(rows.shape[0], rows.shape[1], *([1] * (like.dim() - 2)))


# --- the cheap ΔW·x of each adapter form --------------------------------------------------------------------


class Delta(abc.ABC):
    """ΔW·(f_b·x_b) for a per-element factor f ([N] or [1]; None: 1), α/r included, without bias. ΔW is linear,
    so each form applies f where its tensor is smallest (the rank-r hidden of a low-rank form)."""

    @abc.abstractmethod
    def __call__(self, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW·(f·x) of this form."""

    def add_to(self, y: torch.Tensor, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None) -> None:
        """y += ΔW·(f·x), in place (``y``: the layer's fresh output)."""
        y.add_(self(layer, op, x, factor))

    @abc.abstractmethod
    def tensors(self) -> list[torch.Tensor]:
        """The form's tensors (to move them to a device or count their bytes)."""


@dataclass
class _Dense(Delta):
    """A dense ΔW (the ``diff`` of a full module, or a kind whose factored form is not cheaper)."""

    weight: torch.Tensor

    def __call__(self, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return scaled(apply_weight(layer, op, x, self.weight), factor)

    def tensors(self) -> list[torch.Tensor]:
        return [self.weight]


@dataclass
class _LowRank(Delta):
    """up @ down: ``down`` [r, in·kh·kw] as the layer's kind of op (same stride and padding), then ``up`` [out, r]
    pointwise."""

    down: torch.Tensor  # linear [r, in]; conv [r, in, kh, kw]
    up: torch.Tensor  # [out, r] (scale folded in)

    def __call__(self, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        hidden = scaled(apply_weight(layer, op, x, self.down), factor)
        if op == _LINEAR:
            return F.linear(hidden, self.up)
        return F.conv2d(hidden, self.up[:, :, None, None])

    def add_to(self, y: torch.Tensor, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None) -> None:
        """The up product fused with the addition (one ``addmm_``/``baddbmm_`` instead of a product and a sum)."""
        hidden = scaled(apply_weight(layer, op, x, self.down), factor)
        out, rank = self.up.shape
        if not (y.is_contiguous() and hidden.is_contiguous()) or (op != _LINEAR and y.dim() != 4):
            y.add_(F.linear(hidden, self.up) if op == _LINEAR else F.conv2d(hidden, self.up[:, :, None, None]))
        elif op == _LINEAR:
            y.view(-1, out).addmm_(hidden.view(-1, rank), self.up.T)
        else:
            count = y.shape[0]
            y.view(count, out, -1).baddbmm_(self.up.expand(count, out, rank), hidden.view(count, rank, -1))

    def tensors(self) -> list[torch.Tensor]:
        return [self.down, self.up]


@dataclass
class _PointwiseThenKernel(Delta):
    """A 1x1 ``down`` [K, in] then a kxk ``kernel`` [out, K, kh, kw] with the layer's stride and padding
    (Tucker LoHa per tap)."""

    down: torch.Tensor
    kernel: torch.Tensor

    def __call__(self, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        hidden = scaled(F.conv2d(x, self.down[:, :, None, None]), factor)
        return layer._conv_forward(hidden, self.kernel, None)

    def tensors(self) -> list[torch.Tensor]:
        return [self.down, self.kernel]


@dataclass
class _Kron(Delta):
    """(W1 ⊗ W2)·x: input channels split into ``b`` groups of ``d``; W2 (dense [c, d(, kh, kw)] or low-rank) on
    each group with the layer's op, then W1 [a, b] (scale folded in) mixes the groups."""

    w1: torch.Tensor
    w2: Delta
    c: int
    d: int

    def __call__(self, layer: Any, op: str, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.w1.shape
        x = scaled(x, factor)
        if op == _LINEAR:
            z = self.w2(layer, op, x.reshape(*x.shape[:-1], b, self.d))  # [..., b, c]
            return torch.matmul(self.w1, z).reshape(*x.shape[:-1], a * self.c)
        count = x.shape[0]
        z = self.w2(layer, op, x.reshape(count * b, self.d, *x.shape[2:]))  # [N·b, c, H', W']
        spatial = z.shape[2:]
        y = torch.matmul(self.w1, z.reshape(count, b, -1))  # [N, a, c·H'·W']
        return y.reshape(count, a * self.c, *spatial)

    def tensors(self) -> list[torch.Tensor]:
        return [self.w1, *self.w2.tensors()]


# --- parts: one LoRA module on one layer --------------------------------------------------------------------


@dataclass
class _Dora:
    """DoRA's norm terms per row (output axis) or column (input axis): ‖W0+ρΔ‖² = a + 2ρ·b + ρ²·q (float64)."""

    axis: str
    magnitude: torch.Tensor  # [C] float64
    a: torch.Tensor
    b: torch.Tensor
    q: torch.Tensor
    memo: dict[float, torch.Tensor] = field(default_factory=dict)

    def scale(self, ratio: float) -> torch.Tensor:
        """c(ρ) = magnitude / ‖W0 + ρ·ΔW‖ per channel (float64, memoised)."""
        if ratio not in self.memo:
            norms = (self.a + 2 * ratio * self.b + ratio * ratio * self.q).clamp_min(0).sqrt()
            if bool((norms == 0).any()):
                raise RenderError(f"DoRA weight has a zero {self.axis} norm at ratio {ratio}; the decomposition "
                                  "divides by it")
            self.memo[ratio] = self.magnitude / norms
        return self.memo[ratio]


@dataclass
class Part:
    """What one LoRA module adds to its layer; exactly one of the forms is set (plus an optional bias)."""

    key: Key
    delta: Delta | None = None  # additive ΔW·x
    bias: torch.Tensor | None = None  # [out] bias delta (full)
    in_scale: torch.Tensor | None = None  # IA3 on input columns: [in]
    out_scale: torch.Tensor | None = None  # IA3 on output rows: [out]
    affine: tuple[torch.Tensor, torch.Tensor | None] | None = None  # norm layers: (Δweight [C], Δbias [C])
    dora: _Dora | None = None  # with ``delta`` = the LoRA path

    @property
    def additive_only(self) -> bool:
        """True when the part only adds Δ(x) (no gains, no bias delta, no norm terms)."""
        return self.delta is not None and self.dora is None and self.bias is None and self.in_scale is None \
            and self.out_scale is None and self.affine is None

    def tensors(self) -> list[torch.Tensor]:
        found = [] if self.delta is None else self.delta.tensors()
        found += [t for t in (self.bias, self.in_scale, self.out_scale) if t is not None]
        if self.affine is not None:
            found += [t for t in self.affine if t is not None]
        if self.dora is not None:
            found += [self.dora.magnitude, self.dora.a, self.dora.b, self.dora.q]
        return found


# --- building parts -----------------------------------------------------------------------------------------


def build_part(kind: AdapterKind, roles: Mapping[str, torch.Tensor], layer: Any, op: str, key: Key) -> Part:
    """The part of one module on ``layer`` (op from ``layer_op``), its tensors in the layer's dtype and device.

    Example:
        >>> part = build_part(AdapterKind.LORA, roles, pipe.unet.conv_in, "conv", (0, "IN00", False))
    """
    weight = layer.weight
    shape = tuple(weight.shape)
    part = Part(key)
    if op in NORMS:
        if kind not in (AdapterKind.NORM, AdapterKind.FULL):
            raise AdapterError(f"a {kind} module on a {type(layer).__name__} layer is not supported")
        math_of = norm if kind is AdapterKind.NORM else full
        part.affine = (_cast(math_of.delta(roles, shape=shape), weight),
                       _cast_optional(math_of.bias_delta(roles), weight))
        _check_bias(part.affine[1], layer)
        return part
    if kind is AdapterKind.NORM:
        raise AdapterError(f"a norm module (w_norm) on a {type(layer).__name__} layer")
    if op == _EMBEDDING and kind in (AdapterKind.IA3, AdapterKind.DORA):
        raise AdapterError(f"a {kind} module on an Embedding layer is not supported")
    if kind is AdapterKind.LORA:
        part.delta = _lora_delta(roles, layer, op, shape)
    elif kind is AdapterKind.DORA:
        part.delta, part.dora = _dora_part(roles, layer, op, shape)
    elif kind is AdapterKind.LOHA:
        part.delta = _loha_delta(roles, layer, op, shape)
    elif kind is AdapterKind.LOKR:
        part.delta = _lokr_delta(roles, layer, op, shape)
    elif kind is AdapterKind.FULL:
        part.delta = _Dense(_cast(full.delta(roles, shape=shape), weight))
        part.bias = _cast_optional(full.bias_delta(roles), weight)
        _check_bias(part.bias, layer)
    elif kind is AdapterKind.IA3:
        vector = _cast(ia3.parameter(roles), weight)
        on_input = ia3.on_input(roles)
        expected = shape[1] if on_input else shape[0]
        if vector.numel() != expected:
            axis = "input columns (on_input)" if on_input else "output rows"
            raise AdapterError(f"IA3 weight has {vector.numel()} values but the base weight {list(shape)} has "
                               f"{expected} {axis}")
        if on_input:
            part.in_scale = vector
        else:
            part.out_scale = vector
    else:  # pragma: no cover - AdapterKind is closed
        raise AdapterError(f"adapter kind {kind} is not supported")
    if part.bias is not None:
        part.bias = part.bias.reshape(-1)
    return part


def _cast(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A contiguous copy in the dtype and on the device of ``like`` (never a view of a memory-mapped file)."""
    return tensor.detach().to(device=like.device, dtype=like.dtype, copy=True).contiguous()


def _cast_optional(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else _cast(tensor.reshape(-1), like)


def _check_bias(bias: torch.Tensor | None, layer: Any) -> None:
    if bias is None:
        return
    own = getattr(layer, "bias", None)
    if own is None:
        raise AdapterError("the module has a bias delta but the layer has no bias")
    if bias.numel() != own.numel():
        raise AdapterError(f"bias delta has {bias.numel()} values, the layer's bias {own.numel()}")


def _plain_lowrank(layer: Any, op: str, shape: tuple[int, ...], up: torch.Tensor, down: torch.Tensor,
                   dense: Callable[[], torch.Tensor]) -> Delta:
    """up [out, r] @ down [r, in·kh·kw] as a factored op when the layer allows it and it is cheaper, else dense."""
    weight = layer.weight
    out, rank = up.shape
    columns = math.prod(shape[1:])
    if down.shape != (rank, columns) or out != shape[0]:
        raise AdapterError(f"ΔW factors [{out}, {rank}] x {list(down.shape)} do not fit the layer {list(shape)}")
    factored = op == _LINEAR or (op == _CONV and layer.groups == 1 and len(shape) == 4)
    if not factored or rank * (out + columns) >= out * columns:
        return _Dense(_cast(dense().reshape(shape), weight))
    kernel = down.reshape(rank, *shape[1:]) if op == _CONV else down
    return _LowRank(_cast(kernel, weight), _cast(up, weight))


def _lora_delta(roles: Mapping[str, torch.Tensor], layer: Any, op: str, shape: tuple[int, ...]) -> Delta:
    p = lora.parts(roles)
    down = p.down if p.mid is None else torch.einsum("abhw,bi->aihw", p.mid, p.down).reshape(p.mid.shape[0], -1)
    return _plain_lowrank(layer, op, shape, p.scale * p.up, down, lambda: lora.delta(roles, shape=shape))


def _loha_delta(roles: Mapping[str, torch.Tensor], layer: Any, op: str, shape: tuple[int, ...]) -> Delta:
    p = loha.parts(roles)
    (u1, u2), (d1, d2) = p.ups, p.downs
    taps, out, r1 = u1.shape
    r2 = u2.shape[2]
    up = (u1.unsqueeze(3) * u2.unsqueeze(2)).reshape(taps, out, r1 * r2) * p.scale  # A1 • A2 per tap
    down = (d1.unsqueeze(1) * d2.unsqueeze(0)).reshape(r1 * r2, -1)  # B1 ∗ B2

    def dense() -> torch.Tensor:
        return loha.delta(roles, shape=shape)

    if taps == 1:
        return _plain_lowrank(layer, op, shape, up[0], down, dense)
    rank = r1 * r2
    kernel_fits = op == _CONV and layer.groups == 1 and tuple(p.shape) == shape
    if not kernel_fits or rank * (down.shape[1] + out * taps) >= math.prod(shape):
        return _Dense(_cast(dense(), layer.weight))
    kernel = up.permute(1, 2, 0).reshape(out, rank, *shape[2:])
    return _PointwiseThenKernel(_cast(down, layer.weight), _cast(kernel, layer.weight))


def _lokr_delta(roles: Mapping[str, torch.Tensor], layer: Any, op: str, shape: tuple[int, ...]) -> Delta:
    w1 = lokr.w1_matrix(roles) * alpha_scale(shapes_of(roles), alpha_of(roles))
    low_rank = "lokr_w2_a" in roles and "lokr_t2" not in roles
    if low_rank:
        up, down = (t.float() for t in (roles["lokr_w2_a"], roles["lokr_w2_b"]))
        up, down = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
        c, d = up.shape[0], shape[1] // max(w1.shape[1], 1)
        w2_shape: tuple[int, ...] = (c, d, *shape[2:])
    else:
        w2 = lokr.w2_tensor(roles)
        if op == _CONV and w2.dim() == 2 and shape[2:] == (1, 1):
            w2 = w2.reshape(*w2.shape, 1, 1)
        w2_shape = tuple(w2.shape)
        c, d = w2_shape[:2]
    (a, b) = w1.shape
    fits = a * c == shape[0] and b * d == shape[1] and (
        (op == _LINEAR and len(w2_shape) == 2)
        or (op == _CONV and layer.groups == 1 and len(shape) == 4 and w2_shape[2:] == shape[2:])
    )
    if not fits or (low_rank and down.shape[1] != math.prod(w2_shape[1:])):
        return _Dense(_cast(lokr.delta(roles, shape=shape), layer.weight))
    if low_rank:
        inner = _plain_lowrank(layer, op, w2_shape, up, down, lambda: (up @ down).reshape(w2_shape))
    else:
        inner = _Dense(_cast(w2, layer.weight))
    return _Kron(_cast(w1, layer.weight), inner, c, d)


def _dora_part(roles: Mapping[str, torch.Tensor], layer: Any, op: str,
               shape: tuple[int, ...]) -> tuple[Delta, _Dora]:
    """The LoRA path of a DoRA module and its norm terms from W0 and the factors (float64, no dense ΔW)."""
    if "dora_scale" not in roles:
        raise AdapterError("DoRA module is missing role dora_scale")
    lora_roles = {name: t for name, t in roles.items() if name != "dora_scale"}
    p = lora.parts(lora_roles)
    down = p.down if p.mid is None else torch.einsum("abhw,bi->aihw", p.mid, p.down).reshape(p.mid.shape[0], -1)
    up = p.scale * p.up
    delta = _plain_lowrank(layer, op, shape, up, down, lambda: lora.delta(lora_roles, shape=shape))
    magnitude = roles["dora_scale"]
    axis = dora.norm_axis_of(tuple(magnitude.shape), shape)
    w0 = layer.weight.detach().to(torch.float64)
    u, dn = up.to(device=w0.device, dtype=torch.float64), down.to(device=w0.device, dtype=torch.float64)
    out, rank = u.shape
    if axis == "output":
        flat = w0.reshape(out, -1)
        a = flat.square().sum(1)
        b = ((flat @ dn.T) * u).sum(1)
        q = ((u @ (dn @ dn.T)) * u).sum(1)
    else:
        channels = shape[1]
        w3 = w0.reshape(out, channels, -1)  # [out, in, taps]
        d3 = dn.reshape(rank, channels, -1)  # [r, in, taps]
        a = w3.square().sum(dim=(0, 2))
        b = (torch.einsum("ok,oit->kit", u, w3) * d3).sum(dim=(0, 2))
        q = torch.einsum("kit,kl,lit->i", d3, u.T @ u, d3)
    size = a.numel()
    magnitude = magnitude.detach().to(device=w0.device, dtype=torch.float64).reshape(-1)
    if magnitude.numel() != size:
        raise AdapterError(f"dora_scale has {magnitude.numel()} values but the {axis} axis of {list(shape)} has {size}")
    return delta, _Dora(axis, magnitude, a, b, q)
