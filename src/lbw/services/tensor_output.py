"""Baked or merged roles as the tensors written: keys in the module's naming family, one cast each to the output
dtype, overflow to inf refused.

- ``output_tensors`` (bake) and ``merged_tensors`` (merge): role → key, each floating tensor cast once (to
  ``--dtype`` or the dtype the file stores); a narrowing cast that overflows is an AdapterError naming the module.
- ``check_scaled`` and ``check_finite``: the overflow checks, run only where an overflow is possible (a factor
  above 1 or a narrowing cast; one fast min/max pass each then).
- ``key_for_role``: the input's key, or a new key in the module's naming family.

Example:
    >>> tensors = output_tensors(lora, module, {"lora_up": up, "lora_down": down}, torch.float16)
    >>> list(tensors), {t.dtype for t in tensors.values()}
    (['lora_unet_..._proj_in.lora_up.weight', 'lora_unet_..._proj_in.lora_down.weight'], {torch.float16})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lbw.errors import AdapterError
from lbw.files.lora_file import LoraFile
from lbw.files.modules import Module

if TYPE_CHECKING:
    import torch

_PEFT_KEYS = {"lora_up": "lora_B.weight", "lora_down": "lora_A.weight"}
_STORED = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def output_tensors(
    lora: LoraFile,
    module: Module,
    roles: Mapping[str, torch.Tensor],
    out_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Key → tensor for one baked module: each floating tensor cast once (to ``out_dtype`` or the dtype it has
    in the file); a cast to a narrower dtype that overflows to inf is an AdapterError naming the module. An
    ``alpha`` the file holds in its PEFT adapter config, not as a tensor, stays there (the output keeps the
    metadata), so it is not written as a tensor.

    Example:
        >>> list(output_tensors(lora, module, {"lora_up": up, "lora_down": down}, None))
        ['lora_unet_..._proj_in.lora_up.weight', 'lora_unet_..._proj_in.lora_down.weight']
    """
    import torch

    result = {}
    for role, tensor in roles.items():
        if role == "alpha" and "alpha" not in module.keys and module.config_alpha is not None:
            continue
        target = out_dtype or stored_dtype(lora, module, role)
        if tensor.is_floating_point() and tensor.dtype != target:
            narrower = torch.finfo(target).max < torch.finfo(tensor.dtype).max
            tensor = tensor.to(target)
            if narrower:
                check_finite(tensor, role, module)
        result[key_for_role(module, role)] = tensor.contiguous()
    return result


def merged_tensors(
    reference: Module, roles: dict[str, torch.Tensor], out_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Key → tensor for one merged module, in the reference module's naming; a PEFT module with alpha = rank
    drops alpha (PEFT has none). Each floating tensor is cast once to the output dtype (else the reference's
    stored dtype); a cast to a narrower dtype that overflows is refused.

    Example:
        >>> list(merged_tensors(peft_module, {"lora_up": up, "lora_down": down, "alpha": torch.tensor(8.0)}, None))
        ['base_model.model.unet...to_q.lora_B.weight', 'base_model.model.unet...to_q.lora_A.weight']
    """
    import torch

    result = {}
    peft = reference.family == "peft"
    for role, tensor in roles.items():
        if role == "alpha" and peft and "lora_down" in roles and float(tensor) == roles["lora_down"].shape[0]:
            continue
        target = out_dtype or reference_dtype(reference, role)
        value = tensor
        if tensor.is_floating_point() and tensor.dtype != target:
            value = tensor.to(target)
            if torch.finfo(target).max < torch.finfo(tensor.dtype).max:
                check_finite(value, role, reference)
        result[key_for_role(reference, role)] = value.contiguous()
    return result


def check_scaled(
    scaled: Mapping[str, torch.Tensor], roles: Mapping[str, torch.Tensor], factor: float, module: Module
) -> None:
    """Refuse scaled roles that overflowed their dtype (only possible for a factor above 1 or a narrowing cast;
    one fast min/max pass each then).

    Example:
        >>> check_scaled({"lora_up": torch.tensor([7e4]).half()}, {"lora_up": torch.ones(1).half()}, 7e4, module)
        Traceback (most recent call last):
        lbw.errors.AdapterError: lora_unet_...: lora_up overflows fp16 after scaling; bake with --dtype fp32 ...
    """
    import torch

    for role, tensor in scaled.items():
        source = roles.get(role)
        if source is None or tensor is source or not tensor.is_floating_point():
            continue
        narrower = source.is_floating_point() and torch.finfo(tensor.dtype).max < torch.finfo(source.dtype).max
        if abs(factor) > 1 or narrower:
            check_finite(tensor, role, module)


def check_finite(tensor: torch.Tensor, role: str, module: Module) -> None:
    """Refuse a tensor that overflowed to inf when scaled or cast (one fast min/max pass).

    Example:
        >>> check_finite(torch.tensor([1.0, float("inf")]).half(), "lora_up", module)
        Traceback (most recent call last):
        lbw.errors.AdapterError: lora_unet_...: lora_up overflows fp16 after scaling; bake with --dtype fp32 ...
    """
    import torch

    if tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor.reshape(-1))
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise AdapterError(f"{role} overflows {_short(tensor.dtype)} after scaling; bake with --dtype fp32 "
                           "or --balanced", where=module.name)


def key_for_role(module: Module, role: str) -> str:
    """The tensor key of ``role`` in the output: the input's key when the module had that role, else a new key
    in the module's naming family (kohya/LyCORIS ``M.diff``, ``M.lora_up.weight``; PEFT ``M.lora_B.weight``).

    Example:
        >>> key_for_role(module, "diff")
        'lora_te_text_model_encoder_layers_0_self_attn_q_proj.diff'
    """
    if role in module.keys:
        return module.keys[role]
    if module.family == "peft" and role in _PEFT_KEYS:
        return f"{module.name}.{_PEFT_KEYS[role]}"
    suffix = f"{role}.weight" if role in ("lora_up", "lora_down", "lora_mid") else role
    return f"{module.name}.{suffix}"


def stored_dtype(lora: LoraFile, module: Module, role: str) -> torch.dtype:
    """The dtype ``role`` has in the file; a new role (a DoRA ``diff``) takes the dtype of ``lora_up``.

    Example:
        >>> stored_dtype(lora, module, "diff")
        torch.float16
    """
    import torch

    key = module.keys.get(role) or module.keys.get("lora_up") or next(iter(module.keys.values()))
    return getattr(torch, _STORED.get(lora.header.tensors[key].dtype, "float32"))


def reference_dtype(reference: Module, role: str) -> torch.dtype:
    """The dtype a merged module is written in without ``--dtype``: the first of the reference module's factor
    dtypes (``F16`` of ``F16+F32``), float32 for any other.

    Example:
        >>> reference_dtype(module, "lora_up")  # module.dtype == "F16"
        torch.float16
    """
    import torch

    first = reference.dtype.split("+")[0]
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(first, torch.float32)


def _short(dtype: torch.dtype) -> str:
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))
