"""One module name of ``lbw merge``: its terms (c_i, ΔW_i) from the sources, merged exactly where a factor form
exists, else compressed (``merge_compress``) or refused.

- one source holds it: carried over with one factor scaled (as ``bake`` does; alpha and rank kept); a module no
  host loads is carried as it is and never compressed;
- several LoRA/LoCon sources: joined along the rank (each c_i·α_i/r_i folded into its up factor, alpha = total
  rank, scale 1), different ranks and alphas fine;
- several full-diff, norm or IA3 sources (same ``on_input``): their linear parameters summed, exact;
- anything else: the dense sum compressed by SVD with ``--rank``, else an AdapterError.

Example:
    >>> terms = terms_of(sources, "lora_unet_down_blocks_1_attentions_0_proj_in")
    >>> how, roles, reference = merge_module(terms, MergeOptions(), None, Tally(), read)
    >>> how, roles["lora_down"].shape[0]  # rank 8 + rank 16
    ('joined', 24)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from lbw.adapters.kinds import AdapterKind
from lbw.errors import AdapterError, LoraFileError
from lbw.files.modules import Module
from lbw.services.merge_compress import Tally, compress_dense, compress_to_limit, rank_limit
from lbw.services.outputs import torch_dtype
from lbw.services.sources import OpenSource
from lbw.services.tensor_output import check_finite, check_scaled, reference_dtype

if TYPE_CHECKING:
    import torch

    from lbw.services.base_weights import BaseWeights
    from lbw.services.merge import MergeOptions

# Reads a module's role tensors from its source.
Reader = Callable[[OpenSource, Module], "dict[str, torch.Tensor]"]


def terms_of(sources: Sequence[OpenSource], name: str) -> list[tuple[OpenSource, Module]]:
    """(source, module) for each source that holds module ``name`` at a factor (multiplier for DoRA) other than 0.

    Example:
        >>> [source.spec.path.name for source, _ in terms_of(sources, "lora_te_text_model_encoder_layers_0_mlp_fc1")]
        ['a.safetensors', 'b.safetensors']
    """
    terms = []
    for source in sources:
        try:
            module = source.lora.module(name)
        except LoraFileError:  # not in this file
            continue
        zero = source.plan.multiplier(module) == 0 if module.kind is AdapterKind.DORA else \
            source.plan.factor(module) == 0
        if not zero:
            terms.append((source, module))
    return terms


def merge_module(
    terms: list[tuple[OpenSource, Module]],
    options: MergeOptions,
    base: BaseWeights | None,
    tally: Tally,
    read: Reader,
) -> tuple[str, dict[str, torch.Tensor], Module]:
    """(how, roles, reference module) for one module name. Scaled and joined factors come back computed in
    float32 and rounded once to the output dtype; the other roles as read.

    Example:
        >>> merge_module(terms_of(sources, name), MergeOptions(), None, Tally(), read)[0]
        'carried'
    """
    from lbw.adapters.concat import concat_rank
    from lbw.adapters.registry import scale_module

    first = terms[0][1]
    kinds = {module.kind for _, module in terms}
    block = first.block or "unmapped"
    limit = rank_limit(first, options)
    out_dtype = torch_dtype(options.dtype)
    if len(terms) == 1 and (first.kind is not AdapterKind.DORA or _is_identity(terms[0])):
        source = terms[0][0]
        roles = read(source, first)
        factor = source.plan.factor(first)
        roles, factor = _fold_config_alpha(first, roles, factor, out_dtype)
        if factor != 1.0 and first.kind is not AdapterKind.DORA:
            scaled = scale_module(first.kind, roles, factor, out_dtype=out_dtype or "input", where=first.name)
            check_scaled(scaled, roles, factor, first)
            roles = scaled
        if first.kind is AdapterKind.LORA and not source.plan.untouched(first):  # no host loads it: kept as is
            roles = compress_to_limit(roles, limit, block, tally)
        return "carried", roles, first
    if kinds == {AdapterKind.LORA}:
        items = [(read(s, m), s.plan.factor(m)) for s, m in terms]
        if limit is not None and not _all_plain_in(items, out_dtype):
            joined = concat_rank(items)  # compressed from the float32 sum (see _all_plain_in)
        else:
            target = out_dtype or reference_dtype(first, "lora_up")
            joined = concat_rank(items, out_dtype=target)
            _check_joined(joined, items, target, first)
        return "joined", compress_to_limit(joined, limit, block, tally), first
    if len(kinds) == 1 and first.kind in (AdapterKind.FULL, AdapterKind.NORM, AdapterKind.IA3) \
            and (options.rank is None or first.kind is not AdapterKind.FULL or _has_bias(terms)):
        return "summed", _sum_linear(terms, read), first
    if options.rank is None:
        shown = ", ".join(sorted(k.value for k in kinds))
        raise AdapterError(
            f"cannot merge {shown} modules exactly: only LoRA/LoCon modules join along the rank (and full, norm "
            "or IA3 modules of one kind sum); bake each file alone, or pass --rank N to compress the exact sum "
            "by SVD with the error reported", where=first.name)
    roles = compress_dense(terms, limit or options.rank, base, read, block, tally)
    return "joined" if len(terms) > 1 else "carried", roles, first


def _fold_config_alpha(
    module: Module, roles: dict[str, torch.Tensor], factor: float, out_dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], float]:
    """(roles, factor) with an alpha that comes from a PEFT adapter config folded into the factor, so the module
    needs no alpha (scale 1): the merged file has no adapter config (joined modules have other ranks), and a
    PEFT file holds no alpha tensors. A DoRA module (never scaled by a factor) gets its up factor scaled here."""
    from lbw.adapters.kinds import alpha_scale
    from lbw.adapters.scale import scale_tensor

    if "alpha" in module.keys or "alpha" not in roles:
        return roles, factor
    scale = alpha_scale({role: tuple(t.shape) for role, t in roles.items()}, float(roles["alpha"]))
    plain = {role: tensor for role, tensor in roles.items() if role != "alpha"}
    if module.kind is not AdapterKind.DORA:
        return plain, factor * scale
    up = scale_tensor(plain["lora_up"], scale, out_dtype or "input")
    check_scaled({"lora_up": up}, plain, scale, module)
    return {**plain, "lora_up": up}, factor


def _all_plain_in(items: Sequence[tuple[Mapping[str, torch.Tensor], float]], out_dtype: torch.dtype | None) -> bool:
    """Whether every joined module is plain (no ``lora_mid``), like-shaped, with its factors stored in the output
    dtype. Only then does ``--rank`` compress the joined factors as rounded to the output dtype; otherwise it
    compresses the float32 sum (the behaviour of lbw's first merge implementation, kept bit for bit)."""
    first_up, first_down = items[0][0]["lora_up"], items[0][0]["lora_down"]
    dtype = first_up.dtype
    if (out_dtype or dtype) != dtype or not dtype.is_floating_point:
        return False
    for roles, _ in items:
        up, down = roles["lora_up"], roles["lora_down"]
        if "lora_mid" in roles or up.dtype != dtype or down.dtype != dtype or down.dim() != first_down.dim():
            return False
        if up.dim() != first_up.dim() or up.shape[0] != first_up.shape[0] or down.shape[1:] != first_down.shape[1:]:
            return False
    return True


def _check_joined(
    joined: Mapping[str, torch.Tensor],
    items: Sequence[tuple[Mapping[str, torch.Tensor], float]],
    target: torch.dtype,
    module: Module,
) -> None:
    """Refuse joined factors that overflowed the output dtype: only possible for a factor above 1 (up) or a
    cast to a narrower dtype."""
    import torch

    limit = torch.finfo(target).max
    for role in ("lora_up", "lora_down"):
        narrowed = any(roles[role].is_floating_point() and torch.finfo(roles[role].dtype).max > limit
                       for roles, _ in items)
        scaled = role == "lora_up" and any(abs(factor) > 1 for _, factor in items)
        if narrowed or scaled:
            check_finite(joined[role], role, module)


def _sum_linear(terms: list[tuple[OpenSource, Module]], read: Reader) -> dict[str, torch.Tensor]:
    """Σ c_i·(linear parameters) for full, norm or IA3 modules of one kind (exact)."""
    from lbw.adapters import scale_module

    flags = set()
    total: dict[str, torch.Tensor] = {}
    for source, module in terms:
        scaled = scale_module(module.kind, read(source, module), source.plan.factor(module), where=module.name)
        if "on_input" in scaled:
            flags.add(float(scaled["on_input"]))
        for role, tensor in scaled.items():
            if role == "on_input":
                total[role] = tensor
            elif role in total:
                if total[role].shape != tensor.shape:
                    raise AdapterError(f"{role} shapes differ between inputs ({list(total[role].shape)} vs "
                                       f"{list(tensor.shape)})", where=module.name)
                total[role] = total[role] + tensor.float()
            else:
                total[role] = tensor.float()
    if len(flags) > 1:
        raise AdapterError("IA3 modules scale different axes (on_input differs); they cannot be summed",
                           where=terms[0][1].name)
    return total


def _is_identity(term: tuple[OpenSource, Module]) -> bool:
    source, module = term
    return source.plan.ratio(module) == 1.0 and source.plan.multiplier(module) == 1.0


def _has_bias(terms: list[tuple[OpenSource, Module]]) -> bool:
    return any("diff_b" in module.shapes for _, module in terms)
