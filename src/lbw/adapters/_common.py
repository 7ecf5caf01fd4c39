"""Shared helpers for the adapter math: compute dtype, role access, low-rank and Tucker products and norms.

All helpers compute in float32 (float64 inputs stay float64, which the tests use as an oracle) on the
device of the module's tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lbw.errors import AdapterError

Roles = Mapping[str, torch.Tensor]
_CHUNK = 4096


def compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when any input is float64, else float32 (fp16/bf16 are widened)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def fetch(roles: Roles, *names: str) -> list[torch.Tensor]:
    """The named role tensors in the compute dtype, on the device of the first one."""
    tensors = [roles[name] for name in names]
    dtype = compute_dtype(tensors)
    device = tensors[0].device
    return [t.to(device=device, dtype=dtype) for t in tensors]


def optional(roles: Roles, name: str, like: torch.Tensor) -> torch.Tensor | None:
    """An optional role in the dtype and device of ``like``, or None."""
    tensor = roles.get(name)
    return None if tensor is None else tensor.to(device=like.device, dtype=like.dtype)


def alpha_of(roles: Roles) -> float | None:
    """The stored alpha as a float, or None when the module has no alpha."""
    alpha = roles.get("alpha")
    if alpha is None:
        return None
    if alpha.numel() != 1:
        raise AdapterError(f"alpha must be a single number, found shape {list(alpha.shape)}")
    return float(alpha.reshape(()).item())


def shapes_of(roles: Roles) -> dict[str, tuple[int, ...]]:
    """Role name → shape tuple, for the stdlib rules in kinds.py."""
    return {name: tuple(tensor.shape) for name, tensor in roles.items()}


def as_matrix(tensor: torch.Tensor, role: str, rows: int | None = None) -> torch.Tensor:
    """Flatten everything after dim 0; check the row count when given."""
    if tensor.dim() < 2:
        raise AdapterError(f"{role} must have at least 2 dimensions, found shape {list(tensor.shape)}")
    if rows is not None and tensor.shape[0] != rows:
        raise AdapterError(f"{role} has {tensor.shape[0]} rows, expected {rows} (shape {list(tensor.shape)})")
    return tensor.reshape(tensor.shape[0], -1)


def up_matrix(tensor: torch.Tensor, role: str) -> torch.Tensor:
    """An up factor [out, r] or [out, r, 1, 1] as [out, r]."""
    if tensor.dim() not in (2, 4) or (tensor.dim() == 4 and tuple(tensor.shape[2:]) != (1, 1)):
        raise AdapterError(f"{role} must be [out, r] or [out, r, 1, 1], found shape {list(tensor.shape)}")
    return tensor.reshape(tensor.shape[0], tensor.shape[1])


def check_inner(left: torch.Tensor, left_role: str, right: torch.Tensor, right_role: str) -> None:
    """The columns of ``left`` must equal the rows of ``right`` (the shared rank)."""
    if left.shape[1] != right.shape[0]:
        raise AdapterError(
            f"{left_role} has {left.shape[1]} columns but {right_role} has {right.shape[0]} rows "
            f"(shapes {list(left.shape)} and {list(right.shape)})"
        )


def frobenius(tensor: torch.Tensor) -> float:
    """||tensor||_F, accurate for any size: norms of 4096-value chunks on the tensor's device, then their
    squares summed in float64 on the host (a single float32 reduction over millions of values loses ~1e-4)."""
    flat = tensor.reshape(-1)
    whole = flat.numel() // _CHUNK * _CHUNK
    pieces = []
    if whole:
        pieces.append(torch.linalg.vector_norm(flat[:whole].reshape(-1, _CHUNK), dim=1))
    if whole < flat.numel():
        pieces.append(torch.linalg.vector_norm(flat[whole:]).reshape(1))
    if not pieces:
        return 0.0
    return float(torch.cat(pieces).cpu().double().square().sum().sqrt())


def sum_to_float(tensor: torch.Tensor) -> float:
    """The sum of a (small) tensor in float64 on the host."""
    return float(tensor.detach().cpu().double().sum())


def lowrank_norm_sq(up: torch.Tensor, down: torch.Tensor) -> float:
    """||up @ down||_F² from Gram matrices: sum((upᵀup) ⊙ (down downᵀ)), never forming the product."""
    return sum_to_float((up.T @ up) * (down @ down.T))


def tucker_product(up: torch.Tensor, core: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """R[p, q, h, w] = Σ_ab up[p, a] · core[a, b, h, w] · down[b, q]."""
    return torch.einsum("pa,abhw,bq->pqhw", up, core, down)


def tucker_norm_sq(up: torch.Tensor, core: torch.Tensor, down: torch.Tensor) -> float:
    """||tucker_product(up, core, down)||_F² = Σ_hw sum((M_hwᵀ (upᵀup) M_hw) ⊙ (down downᵀ))."""
    slices = core.permute(2, 3, 0, 1).reshape(-1, core.shape[0], core.shape[1])  # [hw, a, b]
    projected = slices.transpose(1, 2) @ (up.T @ up) @ slices  # [hw, b, b]
    return sum_to_float(projected * (down @ down.T))


def check_core(core: torch.Tensor, role: str, rows: int, cols: int) -> None:
    """A Tucker core must be [rows, cols, kh, kw]."""
    if core.dim() != 4 or core.shape[0] != rows or core.shape[1] != cols:
        raise AdapterError(f"{role} must be [{rows}, {cols}, kh, kw], found shape {list(core.shape)}")


def reshaped(delta: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """Reshape ΔW to the caller's target shape (same element count), e.g. to restore a conv kernel."""
    if shape is None:
        return delta
    target = tuple(int(n) for n in shape)
    if delta.numel() != _numel(target):
        raise AdapterError(
            f"ΔW has shape {list(delta.shape)} ({delta.numel()} values), cannot become {list(target)}"
        )
    return delta.reshape(target)


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count
