"""Join LoRA/LoCon modules along the rank so that ΔW = Σ c_i·ΔW_i exactly (no cross-terms).

U = [c_1·s_1·U_1 | c_2·s_2·U_2 | …], D = [D_1; D_2; …] and alpha = total rank, so the output's scale α/r is 1.
Conv modules stack up along dim 1 and down along dim 0. When every input is Tucker (``lora_mid``), the mid
cores go on the diagonal of a block-diagonal core. When Tucker and plain inputs meet, each Tucker input is
first folded into plain conv form (``lora.fold_mid``: down' = mid·down, exact), so the output is a plain LoCon
module. LoHa, LoKr, DoRA, IA3, full and norm modules cannot be summed in factor space and are refused.

Example:
    >>> a = {"lora_up": torch.ones(2, 1), "lora_down": torch.ones(1, 3)}
    >>> b = {"lora_up": torch.ones(2, 2), "lora_down": torch.ones(2, 3), "alpha": torch.tensor(1.0)}
    >>> joined = concat_rank([(a, 1.0), (b, -1.0)])
    >>> joined["lora_up"].shape, float(joined["alpha"])
    (torch.Size([2, 3]), 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lbw.adapters import _common as c
from lbw.adapters import lora
from lbw.adapters.kinds import AdapterKind, kind_of_roles
from lbw.adapters.scale import scale_tensor
from lbw.errors import AdapterError


def concat_rank(
    items: Sequence[tuple[c.Roles, float]], *, out_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """One LoRA module whose ΔW is Σ c_i·ΔW_i; rank = Σ r_i, alpha = rank (scale 1), in the compute dtype, or
    computed in float32 and rounded once to ``out_dtype`` (plain modules whose up factor is already in that
    dtype are scaled in place of a float32 copy, with the same result; see ``scale.scale_tensor``).

    Example:
        >>> one = {"lora_up": torch.ones(1, 1), "lora_down": torch.ones(1, 1)}
        >>> lora.delta(concat_rank([(one, 2.0), (one, 0.5)])).item()
        2.5
        >>> concat_rank([(one, 2.0), (one, 0.5)], out_dtype=torch.float16)["lora_down"].dtype
        torch.float16
    """
    if not items:
        raise AdapterError("concat_rank needs at least one module")
    stored = _check_inputs(items)
    tucker = ["lora_mid" in roles for roles, _ in items]
    if all(tucker):
        joined = _concat_tucker(items)
        return joined if out_dtype is None else {role: t.to(out_dtype) for role, t in joined.items()}
    plain = [(lora.fold_mid(roles) if is_tucker else roles, factor)
             for (roles, factor), is_tucker in zip(items, tucker, strict=True)]
    parts = [lora.parts(roles, compute=False) if is_tucker else part
             for (roles, _), part, is_tucker in zip(plain, stored, tucker, strict=True)]
    return _concat_plain(plain, parts, out_dtype)


def _check_inputs(items: Sequence[tuple[c.Roles, float]]) -> list[lora.LoraParts]:
    """Validate the items; their factors as stored (``lora.parts(compute=False)``)."""
    parts = []
    for index, (roles, factor) in enumerate(items):
        kind = kind_of_roles(roles)
        if kind is not AdapterKind.LORA:
            dora = kind is AdapterKind.DORA
            reason = "DoRA is not linear in its factors" if dora else "it has no rank to join"
            raise AdapterError(
                f"module {index} is {kind}: only LoRA/LoCon modules can be joined along the rank ({reason}); "
                "keep it in a separate file, bake it alone, or compress the dense sum with SVD"
            )
        if not math.isfinite(factor):
            raise AdapterError(f"module {index} has a non-finite factor {factor}")
        parts.append(lora.parts(roles, compute=False))
    for index, part in enumerate(parts):
        if part.shape != parts[0].shape:
            raise AdapterError(f"module {index} has ΔW shape {list(part.shape)}, module 0 has {list(parts[0].shape)}")
    return parts


def _concat_plain(
    items: Sequence[tuple[c.Roles, float]], parts: Sequence[lora.LoraParts], out_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    dtype = c.compute_dtype([t for roles, _ in items for t in roles.values()])
    target = out_dtype or dtype
    device = items[0][0]["lora_up"].device
    conv_up = any(roles["lora_up"].dim() == 4 or roles["lora_down"].dim() == 4 for roles, _ in items)
    up = torch.empty(parts[0].up.shape[0], sum(p.up.shape[1] for p in parts), dtype=target, device=device)
    column = 0
    for (_, factor), p in zip(items, parts, strict=True):  # each scaled block goes straight into its columns
        rank = p.up.shape[1]
        scale_tensor(p.up.to(device=device), factor * p.scale, target, compute=dtype, out=up[:, column:column + rank])
        column += rank
    # exact: the compute dtype is wider than every input
    down = torch.cat([roles["lora_down"].to(device=device, dtype=target) for roles, _ in items], dim=0)
    if conv_up:
        up = up.reshape(*up.shape, 1, 1)
    alpha = torch.tensor(float(down.shape[0]), dtype=target, device=device)
    return {"lora_up": up, "lora_down": down, "alpha": alpha}


def _concat_tucker(items: Sequence[tuple[c.Roles, float]]) -> dict[str, torch.Tensor]:
    ups, downs, mids = [], [], []
    dtype = c.compute_dtype([t for roles, _ in items for t in roles.values()])
    device = items[0][0]["lora_up"].device
    for roles, factor in items:
        p = lora.parts(roles)
        assert p.mid is not None
        ups.append((factor * p.scale) * p.up.to(device=device, dtype=dtype))
        downs.append(p.down.to(device=device, dtype=dtype))
        mids.append(p.mid.to(device=device, dtype=dtype))
    up = torch.cat(ups, dim=1)
    down = torch.cat(downs, dim=0)
    mid = up.new_zeros(up.shape[1], down.shape[0], *mids[0].shape[2:])
    row = col = 0
    for core in mids:
        mid[row : row + core.shape[0], col : col + core.shape[1]] = core
        row, col = row + core.shape[0], col + core.shape[1]
    return {
        "lora_up": up.reshape(*up.shape, 1, 1),
        "lora_mid": mid,
        "lora_down": down.reshape(*down.shape, 1, 1),
        "alpha": torch.tensor(float(down.shape[0]), dtype=dtype, device=device),
    }
