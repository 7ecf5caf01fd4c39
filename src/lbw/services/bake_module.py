"""One module of ``lbw bake``: its roles with the block weight applied exactly, or None when it is removed.

ΔW_out = factor · ΔW_in, factor = ρ(block) × (te or unet multiplier). One factor is scaled in float32 (the one
LBW scales: ``lora_up``, ``hada_w1_a``, ``lokr_w1``, IA3 ``weight``, ``diff``, ``w_norm``; plus the bias delta of
full/norm modules), or with ``balanced`` the magnitude is split √|c| over ``lora_up``/``lora_down`` (LoRA/LoCon
only). A module no host loads is kept as it is; a module at factor 0 is removed unless ``keep_zero``; a DoRA
module goes the dense path (``dora_dense``).

Example:
    >>> roles = bake_module(lora, lora.modules[0], plan, BakeOptions(), None)
    >>> sorted(roles), roles["lora_up"].dtype
    (['alpha', 'lora_down', 'lora_up'], torch.float16)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind
from lbw.files.lora_file import LoraFile
from lbw.files.modules import Module
from lbw.services.dora_dense import dora_dense
from lbw.services.outputs import torch_dtype
from lbw.services.tensor_output import check_scaled

if TYPE_CHECKING:
    import torch

    from lbw.services.bake import BakeOptions
    from lbw.services.base_weights import BaseWeights
    from lbw.services.resolve import FactorPlan


def bake_module(
    lora: LoraFile,
    module: Module,
    plan: FactorPlan,
    options: BakeOptions,
    base: BaseWeights | None,
    *,
    read: Callable[[Mapping[str, str]], dict[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor] | None:
    """The baked roles of one module, or None when it is removed. Scaled roles come back computed in float32
    and rounded once to the output dtype (``--dtype``, else each tensor's stored dtype); a DoRA module's dense
    diff in float32. ``read`` (module keys -> role tensors) defaults to ``lora.module_tensors``.

    Example:
        >>> bake_module(lora, lora.modules[0], plan, BakeOptions(), None)["lora_up"].dtype
        torch.float16
    """
    from lbw.adapters.registry import scale_module
    from lbw.adapters.scale import scale_balanced
    from lbw.files.lora_file import with_config_alpha

    def roles_of() -> dict[str, torch.Tensor]:
        return lora.module_tensors(module) if read is None else with_config_alpha(module, read(module.keys))

    if plan.untouched(module):
        return roles_of()  # no host loads it: no weight ever reaches it, kept as it is
    factor = plan.factor(module)
    if module.kind is AdapterKind.DORA:
        return dora_dense(module, plan, options, base, roles_of)
    if factor == 0 and not options.keep_zero:
        return None
    roles = roles_of()
    if factor == 1.0:
        return roles
    target = torch_dtype(options.dtype) or "input"
    if options.balanced and module.kind is AdapterKind.LORA:
        scaled = scale_balanced(roles, factor, out_dtype=target)
    else:
        scaled = scale_module(module.kind, roles, factor, out_dtype=target, where=module.name)
    check_scaled(scaled, roles, factor, module)
    return scaled
