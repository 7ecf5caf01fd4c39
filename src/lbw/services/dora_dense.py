"""The DoRA path of ``lbw bake``: a DoRA module stored as the exact delta it applies, a dense full diff.

DoRA is not linear in the block weight ((W0 + ρ·ΔW)·m/||W0 + ρ·ΔW||), so no factor scaling is exact: a bake
refuses DoRA modules unless ``dora="dense"``, which stores ``diff`` of the layer's full shape (out·in·kh·kw
values instead of r·(out+in)), computed in float32 from the base weights W0 (``--model``).

Example:
    >>> base = open_dora_base(lora, BakeOptions(dora="dense", model=Path("sd15.safetensors")))
    >>> roles = dora_dense(module, plan, BakeOptions(dora="dense"), base, lambda: lora.module_tensors(module))
    >>> sorted(roles), roles["diff"].dtype
    (['diff'], torch.float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind
from lbw.errors import AdapterError
from lbw.files.lora_file import LoraFile
from lbw.files.modules import Module

if TYPE_CHECKING:
    import torch

    from lbw.services.bake import BakeOptions
    from lbw.services.base_weights import BaseWeights
    from lbw.services.resolve import FactorPlan


def dora_dense(
    module: Module,
    plan: FactorPlan,
    options: BakeOptions,
    base: BaseWeights | None,
    roles: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor] | None:
    """The baked roles of a DoRA module: its applied delta m·(W' − W0) as a dense float32 ``diff``, or None when
    it is removed (multiplier 0 without ``keep_zero``). ``roles`` reads the module's tensors (only when needed);
    ``base`` comes from ``open_dora_base``. Refused unless ``options.dora`` is ``dense``.

    Example:
        >>> dora_dense(module, plan, BakeOptions(), None, read)
        Traceback (most recent call last):
        lbw.errors.AdapterError: lora_unet_...: DoRA module: its effect ... use --dora dense --model CKPT ...
    """
    from lbw.adapters.dora import dora_to_full

    if options.dora != "dense":
        raise AdapterError(
            "DoRA module: its effect (W0 + ρ·ΔW)·m/||W0 + ρ·ΔW|| is not linear in the block weight, so "
            "no factor scaling is exact; use --dora dense --model CKPT to store it as an exact full diff",
            where=module.name)
    multiplier = plan.multiplier(module)
    if multiplier == 0 and not options.keep_zero:
        return None  # the applied delta is m·(W' − W0): zero at m = 0 only
    assert base is not None
    weight = base.weight(module, plan.architecture)
    return dora_to_full(roles(), weight, plan.ratio(module), strength=multiplier)


def open_dora_base(lora: LoraFile, options: BakeOptions) -> BaseWeights | None:
    """The base weights a dense DoRA bake needs (``options.model``), None when the file has no DoRA module or
    DoRA is not baked dense; the caller closes them.

    Example:
        >>> open_dora_base(lora, BakeOptions(dora="dense"))
        Traceback (most recent call last):
        lbw.errors.AdapterError: dora.safetensors: --dora dense needs the base model weights: pass --model CKPT ...
    """
    if not any(m.kind is AdapterKind.DORA for m in lora.modules) or options.dora != "dense":
        return None
    if options.model is None:
        raise AdapterError("--dora dense needs the base model weights: pass --model CKPT (a .safetensors "
                           "checkpoint or state dict)", where=str(lora.path))
    from lbw.services.base_weights import BaseWeights

    return BaseWeights.open(options.model)
