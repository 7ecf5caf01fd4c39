"""Random adapter modules of every kind and shape, each with an independent dense ΔW oracle.

The oracles are written straight from the formulas in lora-files.md §3 (einsum/kron in float64), not from the
code under test. Parametrized fixtures: ``variant`` (every case), ``lora_variant`` (plain/conv/Tucker LoRA),
``scalable_variant`` (everything but DoRA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

OUT, IN = 16, 12  # out = 4·4 and in = 3·4 also factor for LoKr


@dataclass
class Case:
    name: str
    kind: str
    roles: dict[str, torch.Tensor]
    base: torch.Tensor | None
    oracle: torch.Tensor  # float64 ΔW at multiplier 1, in the shape delta() returns without ``shape``


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """float64 values that fp16 holds exactly, so a cast case keeps the same float64 oracle."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(torch.float16).to(torch.float64)


def _alpha(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _lora(gen: torch.Generator, conv: tuple[int, int] | None, r: int, alpha: float | None) -> Case:
    up = _rand(gen, OUT, r)
    if conv is None:
        down = _rand(gen, r, IN)
        oracle = up @ down
        roles = {"lora_up": up, "lora_down": down}
    else:
        down = _rand(gen, r, IN, *conv)
        oracle = torch.einsum("ok,kihw->oihw", up, down)
        roles = {"lora_up": up.reshape(OUT, r, 1, 1), "lora_down": down}
    if alpha is not None:
        roles["alpha"] = _alpha(alpha)
        oracle = oracle * (alpha / r)
    return Case("", "lora", roles, None, oracle)


def _lora_tucker(gen: torch.Generator, r: int = 4, r2: int = 3, alpha: float = 3.0) -> Case:
    up, mid, down = _rand(gen, OUT, r), _rand(gen, r, r2, 3, 3), _rand(gen, r2, IN)
    oracle = (alpha / r2) * torch.einsum("oa,abhw,bi->oihw", up, mid, down)
    roles = {"lora_up": up.reshape(OUT, r, 1, 1), "lora_mid": mid, "lora_down": down.reshape(r2, IN, 1, 1),
             "alpha": _alpha(alpha)}
    return Case("", "lora", roles, None, oracle)


def _loha(gen: torch.Generator, conv: bool, alpha: float | None) -> Case:
    r1, r2 = 3, 2
    cols = IN * 9 if conv else IN
    w1a, w1b, w2a, w2b = _rand(gen, OUT, r1), _rand(gen, r1, cols), _rand(gen, OUT, r2), _rand(gen, r2, cols)
    oracle = (w1a @ w1b) * (w2a @ w2b)
    roles = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
    if alpha is not None:
        roles["alpha"] = _alpha(alpha)
        oracle = oracle * (alpha / r1)
    return Case("", "loha", roles, None, oracle)


def _loha_tucker(gen: torch.Generator) -> Case:
    r = 3
    t1, t2 = _rand(gen, r, r, 3, 3), _rand(gen, r, r, 3, 3)
    w1a, w1b, w2a, w2b = _rand(gen, r, OUT), _rand(gen, r, IN), _rand(gen, r, OUT), _rand(gen, r, IN)
    term1 = torch.einsum("abhw,ap,bq->pqhw", t1, w1a, w1b)
    term2 = torch.einsum("abhw,ap,bq->pqhw", t2, w2a, w2b)
    roles = {"hada_t1": t1, "hada_t2": t2, "hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a,
             "hada_w2_b": w2b, "alpha": _alpha(1.5)}
    return Case("", "loha", roles, None, (1.5 / r) * term1 * term2)


def _lokr(gen: torch.Generator, form: str) -> Case:
    roles: dict[str, torch.Tensor] = {}
    r = 2
    if form in ("full", "conv_full"):
        w1 = _rand(gen, 4, 3)
        roles["lokr_w1"] = w1
    else:
        a, b = _rand(gen, 4, r), _rand(gen, r, 3)
        roles.update(lokr_w1_a=a, lokr_w1_b=b)
        w1 = a @ b
    if form == "full":
        w2 = _rand(gen, 4, 4)
        roles["lokr_w2"] = w2
    elif form == "conv_full":
        w2 = _rand(gen, 4, 4, 3, 3)
        roles["lokr_w2"] = w2
    elif form == "decomposed":
        a, b = _rand(gen, 4, r), _rand(gen, r, 4)
        roles.update(lokr_w2_a=a, lokr_w2_b=b)
        w2 = a @ b
    elif form == "conv_decomposed":
        a, b = _rand(gen, 4, r), _rand(gen, r, 4 * 9)
        roles.update(lokr_w2_a=a, lokr_w2_b=b)
        w2 = (a @ b).reshape(4, 4, 3, 3)
    else:  # tucker
        t, a, b = _rand(gen, r, r, 3, 3), _rand(gen, r, 4), _rand(gen, r, 4)
        roles.update(lokr_t2=t, lokr_w2_a=a, lokr_w2_b=b)
        w2 = torch.einsum("abhw,ap,bq->pqhw", t, a, b)
    roles["alpha"] = _alpha(5.0)
    scale = 1.0 if form in ("full", "conv_full") else 5.0 / r
    w1, w2 = w1.contiguous(), w2.contiguous()
    oracle = torch.kron(w1[:, :, None, None], w2) if w2.dim() == 4 else torch.kron(w1, w2)
    if form == "conv_decomposed":
        oracle = oracle.reshape(OUT, IN * 9)  # kernel stored flat: natural shape is [out, in·kh·kw]
    return Case("", "lokr", roles, None, scale * oracle)


def _ia3(gen: torch.Generator, columns: bool, conv: bool) -> Case:
    base = _rand(gen, OUT, IN, 3, 3) if conv else _rand(gen, OUT, IN)
    w = _rand(gen, IN if columns else OUT)
    roles = {"weight": w}
    if columns:
        roles["on_input"] = torch.tensor(1)
        view = w.reshape(1, IN, *([1] * (base.dim() - 2)))
    else:
        view = w.reshape(OUT, 1, *([1] * (base.dim() - 2)))
    return Case("", "ia3", roles, base, base * view)


def _dora(gen: torch.Generator, axis: str) -> Case:
    base = _rand(gen, OUT, IN)
    lora = _lora(gen, None, 4, 2.0)
    merged = base + lora.oracle
    if axis == "input":  # A1111 apply_weight_decompose, transcribed
        scale = _rand(gen, 1, IN).abs() + 0.5
        norm = merged.transpose(0, 1).reshape(IN, -1).norm(dim=1, keepdim=True).reshape(IN, 1).transpose(0, 1)
    else:  # PEFT magnitude vector, one norm per output row
        scale = _rand(gen, OUT).abs() + 0.5
        norm = merged.norm(dim=1, keepdim=True)
        scale_view = scale.reshape(OUT, 1)
        roles = {**lora.roles, "dora_scale": scale}
        return Case("", "dora", roles, base, merged * (scale_view / norm) - base)
    roles = {**lora.roles, "dora_scale": scale}
    return Case("", "dora", roles, base, merged * (scale / norm) - base)


BUILDERS: dict[str, Callable[[torch.Generator], Case]] = {
    "lora_linear": lambda g: _lora(g, None, 4, 2.0),
    "lora_linear_no_alpha": lambda g: _lora(g, None, 5, None),
    "lora_conv1x1": lambda g: _lora(g, (1, 1), 4, 1.0),
    "lora_conv3x3": lambda g: _lora(g, (3, 3), 4, 8.0),
    "lora_tucker": _lora_tucker,
    "loha_linear": lambda g: _loha(g, False, 2.0),
    "loha_conv_flat": lambda g: _loha(g, True, None),
    "loha_tucker": _loha_tucker,
    "lokr_full": lambda g: _lokr(g, "full"),
    "lokr_decomposed": lambda g: _lokr(g, "decomposed"),
    "lokr_conv_full": lambda g: _lokr(g, "conv_full"),
    "lokr_conv_decomposed": lambda g: _lokr(g, "conv_decomposed"),
    "lokr_tucker": lambda g: _lokr(g, "tucker"),
    "ia3_rows": lambda g: _ia3(g, False, False),
    "ia3_columns": lambda g: _ia3(g, True, False),
    "ia3_conv": lambda g: _ia3(g, False, True),
    "full": lambda g: Case("", "full", {"diff": (d := _rand(g, OUT, IN)), "diff_b": _rand(g, OUT)}, None, d),
    "norm": lambda g: Case("", "norm", {"w_norm": (w := _rand(g, OUT)), "b_norm": _rand(g, OUT)}, None, w),
    "dora_input_axis": lambda g: _dora(g, "input"),
    "dora_output_axis": lambda g: _dora(g, "output"),
}
LORA_VARIANTS = ["lora_linear", "lora_linear_no_alpha", "lora_conv1x1", "lora_conv3x3", "lora_tucker"]
SCALABLE = [name for name in BUILDERS if not name.startswith("dora")]


def build(name: str, seed: int = 0) -> Case:
    """A fresh float64 case; ``seed`` changes the random factors."""
    gen = torch.Generator().manual_seed(seed)
    case = BUILDERS[name](gen)
    case.name = name
    return case


def cast(case: Case, dtype: torch.dtype) -> Case:
    """The same module with every role and the base weight cast to ``dtype`` (lossless down to fp16)."""
    roles = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in case.roles.items()}
    base = None if case.base is None else case.base.to(dtype)
    return Case(case.name, case.kind, roles, base, case.oracle)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.to(torch.float64)
    denom = float(torch.linalg.vector_norm(expected))
    diff = float(torch.linalg.vector_norm(actual.to(torch.float64).reshape(expected.shape) - expected))
    return diff / denom if denom else diff


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", list(BUILDERS))
    if "lora_variant" in metafunc.fixturenames:
        metafunc.parametrize("lora_variant", LORA_VARIANTS)
    if "scalable_variant" in metafunc.fixturenames:
        metafunc.parametrize("scalable_variant", SCALABLE)


@pytest.fixture
def make() -> Callable[..., Case]:
    """``make(name, seed=0) -> Case``."""
    return build


@pytest.fixture
def cast_case() -> Callable[[Case, torch.dtype], Case]:
    return cast


@pytest.fixture
def relative_error() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """``relative_error(actual, expected)`` = ||actual − expected|| / ||expected|| in float64."""
    return rel_err
