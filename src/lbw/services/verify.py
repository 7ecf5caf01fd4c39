"""``lbw verify``: check that a file's ΔW equals the weighted sum of its sources' ΔW, block by block.

For every module: expected E = Σ_i c_i·ΔW_i over the sources holding it (c_i = block ratio × multiplier, as
LBW applies it; DoRA: the applied delta at that ratio and multiplier), actual A = ΔW of the checked file, and
the relative error ||A − E||_F / ||E||_F (the bias deltas of full/norm modules included). A block's error is the
largest over its modules. A module the sources expect (E ≠ 0) but the file lacks counts as error 1; a module
the file has but no source explains counts as infinite.

The check fails above a tolerance chosen by the checked file's lowest precision (fp32 1e-5, fp16 2e-3,
bf16 1.6e-2) unless one is given. IA3 modules are compared on their vector w (ΔW = W0 ⊙ w is linear in w)
unless base weights are given; DoRA modules need the base weights.

Example:
    >>> sources = [open_source(parse_spec("in.safetensors"), Defaults(weights="OUTALL"))]
    >>> report = verify("baked.safetensors", sources)
    >>> report.passed, report.tolerance
    (True, 0.002)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbw.adapters.kinds import AdapterKind
from lbw.domain.layouts import FLUX61, SD26
from lbw.errors import AdapterError, LoraFileError
from lbw.files.lora_file import LoraFile
from lbw.files.modules import Module, natural_key
from lbw.services.resolve import FactorPlan
from lbw.services.sources import OpenSource

if TYPE_CHECKING:
    import torch

    from lbw.services.base_weights import BaseWeights

# Default tolerance by the stored dtype of the checked file's factors (the loosest present applies).
TOLERANCES: dict[str, float] = {"F64": 1e-5, "F32": 1e-5, "F16": 2e-3, "BF16": 1.6e-2}
UNMAPPED = "unmapped"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModuleCheck:
    """One module: its block, relative error, expected norm and status (ok, fail, missing, extra)."""

    name: str
    block: str
    error: float
    expected_norm: float
    status: str


@dataclass(frozen=True)
class BlockCheck:
    """One block: module count, largest relative error and the module that has it."""

    block: str
    modules: int
    max_error: float
    worst: str


@dataclass(frozen=True)
class VerifyReport:
    """The verification of one file against its sources."""

    path: Path
    tolerance: float
    blocks: tuple[BlockCheck, ...]
    modules: tuple[ModuleCheck, ...]

    @property
    def max_error(self) -> float:
        """The largest relative error over all modules (0 for no modules)."""
        return max((check.error for check in self.modules), default=0.0)

    @property
    def passed(self) -> bool:
        """True when every module is within the tolerance."""
        return self.max_error <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: file, tolerance, passed, max_error, blocks, failing modules."""
        return {
            "file": str(self.path),
            "tolerance": self.tolerance,
            "passed": self.passed,
            "max_error": _json_number(self.max_error),
            "blocks": {b.block: {"modules": b.modules, "max_error": _json_number(b.max_error), "worst": b.worst}
                       for b in self.blocks},
            "failures": [{"module": m.name, "block": m.block, "error": _json_number(m.error), "status": m.status}
                         for m in self.modules if m.error > self.tolerance],
        }


def verify(
    path: str | os.PathLike[str],
    sources: Sequence[OpenSource],
    *,
    tolerance: float | None = None,
    model: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare ``path`` with Σ c_i·ΔW_i of ``sources``, module by module (see the module docstring).

    Example:
        >>> verify("merged.safetensors", [open_source(s, Defaults()) for s in split_specs(["a:0.5", "b:1"])]).passed
        True
    """
    base = None
    if model is not None:
        from lbw.services.base_weights import BaseWeights

        base = BaseWeights.open(model)
    with LoraFile.open(path) as lora:
        limit = tolerance if tolerance is not None else default_tolerance(lora)
        names = sorted({m.name for m in lora.modules} | {m.name for s in sources for m in s.lora.modules},
                       key=natural_key)
        checks = []
        for done, name in enumerate(names, start=1):
            checks.append(check_module(name, lora, sources, base, limit))
            if progress is not None:
                progress(done, len(names))
    if base is not None:
        base.close()
    return VerifyReport(Path(path), limit, _blocks(checks), tuple(checks))


def default_tolerance(lora: LoraFile) -> float:
    """The tolerance for a file: that of the lowest-precision float dtype among its factor tensors.

    Example:
        >>> default_tolerance(LoraFile.open("fp16.safetensors"))
        0.002
    """
    dtypes = {part for module in lora.modules for part in module.dtype.split("+")}
    known = [TOLERANCES[d] for d in dtypes if d in TOLERANCES]
    return max(known, default=TOLERANCES["F32"])


def check_module(
    name: str, lora: LoraFile, sources: Sequence[OpenSource], base: BaseWeights | None, tolerance: float
) -> ModuleCheck:
    """Relative error of one module of ``lora`` against the weighted sum of the sources' same-named modules.

    LoRA/LoCon modules are compared in factor form (float64 Gram matrices of the stacked factors, no ΔW built);
    every other kind densely.
    """
    actual_module = _find(lora, name)
    terms = [(source, module) for source in sources if (module := _find(source.lora, name)) is not None]
    block = actual_module.block if actual_module is not None and actual_module.block else None
    block = block or next((module.block for _, module in terms if module.block), None) or UNMAPPED
    involved = [m for _, m in terms] + ([actual_module] if actual_module is not None else [])
    if all(m.kind is AdapterKind.LORA for m in involved):
        difference, expected_norm = _lowrank_errors(lora, actual_module, terms)
    else:
        difference, expected_norm = _dense_errors(lora, actual_module, terms, base, name)
    if actual_module is None:
        error = 0.0 if expected_norm == 0 else 1.0
        return ModuleCheck(name, block, error, expected_norm, "ok" if error == 0 else "missing")
    if not terms:
        return ModuleCheck(name, block, math.inf, 0.0, "extra")
    exact_zero = 0.0 if difference == 0 else math.inf
    error = exact_zero if expected_norm == 0 else difference / expected_norm
    return ModuleCheck(name, block, error, expected_norm, "ok" if error <= tolerance else "fail")


def _dense_errors(
    lora: LoraFile,
    actual_module: Module | None,
    terms: Sequence[tuple[OpenSource, Module]],
    base: BaseWeights | None,
    name: str,
) -> tuple[float, float]:
    """(||A − E||_F, ||E||_F) with ΔW built densely."""
    expected = None
    for source, module in terms:
        term = applied_delta(source.lora, module, source.plan, base)
        expected = term if expected is None else _add(expected, term, name)
    expected_norm = 0.0 if expected is None else _norm(expected)
    if actual_module is None or expected is None:
        return 0.0, expected_norm
    actual = module_delta(lora, actual_module, base, architecture=lora.architecture)
    if actual.numel() != expected.numel():
        return math.inf, expected_norm
    return _norm(actual - expected), expected_norm


def _lowrank_errors(
    lora: LoraFile, actual_module: Module | None, terms: Sequence[tuple[OpenSource, Module]]
) -> tuple[float, float]:
    """(||A − E||_F, ||E||_F) for LoRA/LoCon modules from their factors: ||U·D||² = Σ (UᵀU) ⊙ (D·Dᵀ), float64."""
    expected = [_factors(source.lora, module, source.plan.factor(module)) for source, module in terms]
    expected_norm = _stacked_norm(expected)
    if actual_module is None or not expected:
        return 0.0, expected_norm
    actual = _factors(lora, actual_module, 1.0)
    if any(up.shape[0] != actual[0].shape[0] or down.shape[1] != actual[1].shape[1] for up, down in expected):
        return math.inf, expected_norm
    return _stacked_norm([actual, *[(-up, down) for up, down in expected]]), expected_norm


def _factors(lora: LoraFile, module: Module, coefficient: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficient·s·U, D) of a LoRA/LoCon module as float64 matrices (Tucker folded into D)."""
    import torch

    from lbw.adapters import lora as lora_math

    roles = {role: t.to(torch.float64) for role, t in lora.module_tensors(module).items()}
    parts = lora_math.parts(lora_math.fold_mid(roles) if "lora_mid" in roles else roles)
    return (coefficient * parts.scale) * parts.up, parts.down


def _stacked_norm(factors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    import torch

    if not factors:
        return 0.0
    up = torch.cat([u for u, _ in factors], dim=1)
    down = torch.cat([d for _, d in factors], dim=0)
    square = float(((up.T @ up) * (down @ down.T)).sum())
    return math.sqrt(max(square, 0.0))


def applied_delta(lora: LoraFile, module: Module, plan: FactorPlan, base: BaseWeights | None) -> torch.Tensor:
    """What LBW applies for this module at the plan's ratio and multiplier, flattened (weight then bias).

    Example:
        >>> applied_delta(lora, lora.modules[0], plan, None).shape
        torch.Size([589824])
    """
    if module.kind is AdapterKind.DORA:
        from lbw.adapters import dora_to_full

        weight = _base_weight(module, base, lora.architecture)
        roles = lora.module_tensors(module)
        diff = dora_to_full(roles, weight, plan.ratio(module), strength=plan.multiplier(module))["diff"]
        return diff.reshape(-1).float()
    return plan.factor(module) * module_delta(lora, module, base, architecture=lora.architecture)


def module_delta(
    lora: LoraFile, module: Module, base: BaseWeights | None, *, architecture: str | None = None
) -> torch.Tensor:
    """ΔW of a module at multiplier 1, flattened in float32, with the bias delta appended (full/norm).

    IA3 without base weights gives its vector w (ΔW = W0 ⊙ w is linear in w); DoRA needs base weights.
    """
    import torch

    from lbw.adapters import bias_delta, delta
    from lbw.adapters.ia3 import parameter

    roles = lora.module_tensors(module)
    if module.kind is AdapterKind.IA3 and base is None:
        return parameter(roles).float()
    weight = None
    if module.kind in (AdapterKind.IA3, AdapterKind.DORA):
        weight = _base_weight(module, base, architecture)
    change = delta(module.kind, roles, base_weight=weight, where=module.name).reshape(-1).float()
    bias = bias_delta(module.kind, roles)
    return change if bias is None else torch.cat([change, bias.reshape(-1).float()])


def _base_weight(module: Module, base: BaseWeights | None, architecture: str | None) -> torch.Tensor:
    if base is None:
        raise AdapterError(f"{module.kind} ΔW depends on the base weight W0: pass --model CKPT", where=module.name)
    return base.weight(module, architecture)


def _find(lora: LoraFile, name: str) -> Module | None:
    try:
        return lora.module(name)
    except LoraFileError:  # not in this file
        return None


def _add(total: torch.Tensor, term: torch.Tensor, name: str) -> torch.Tensor:
    if total.numel() != term.numel():
        raise AdapterError(f"sources disagree on the size of ΔW ({total.numel()} vs {term.numel()} values)",
                           where=name)
    return total + term


def _norm(tensor: torch.Tensor) -> float:
    import torch

    return float(torch.linalg.vector_norm(tensor, dtype=torch.float64))


def _blocks(checks: Sequence[ModuleCheck]) -> tuple[BlockCheck, ...]:
    grouped: dict[str, list[ModuleCheck]] = {}
    for check in checks:
        grouped.setdefault(check.block, []).append(check)
    position = {block: index for index, block in enumerate((*SD26.ids, *FLUX61.ids))}
    order = sorted(grouped, key=lambda b: position.get(b, len(position)))
    result = []
    for block in order:
        worst = max(grouped[block], key=lambda c: c.error)
        result.append(BlockCheck(block, len(grouped[block]), worst.error, worst.name))
    return tuple(result)


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"
