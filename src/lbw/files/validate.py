"""The one validation of a LoRA's modules: every command that reads a LoRA goes through it (``LoraFile.open``).

Run on the header alone (shapes and dtypes; the alpha scalars are read, nothing else), before any math, so
``inspect``, ``bake``, ``merge``, ``verify``, ``meta`` and the render backends accept and refuse exactly the same
files, and nothing lbw writes is a file lbw itself refuses. For each module (its kind already known from its
roles, ``lbw.adapters.kinds``):

- factors are floats torch computes with (F16, BF16, F32, F64): integer, boolean and sub-byte or exotic float
  dtypes (F4, F6_*, F8_*) are refused; ``on_input`` is a flag (bool, integer or float);
- alpha is one finite number;
- shapes fit the kind: LoRA/LoCon ``lora_up`` [out, r] or [out, r, 1, 1], ``lora_down`` [r, in] or
  [r, in, kh, kw] with the same r, a Tucker ``lora_mid`` [r, r', kh, kw]; a DoRA ``dora_scale`` [1, in, ...] or
  [out] / [out, 1, ...]; LoHa and LoKr factor pairs with matching inner sizes and LoHa terms of one shape; Tucker
  cores that fit their factors; LoKr ``lokr_w1`` 2-D and ``lokr_w2`` 2-D or 4-D; IA3 ``weight`` non-empty.

These are the conditions the adapter math (``lbw.adapters``) relies on, checked up front with a message that
names the file, the tensor key and what was expected.

Example:
    >>> check_modules(LoraFile.open("good.safetensors").modules, header)  # returns None
    >>> LoraFile.open("int-up.safetensors")
    Traceback (most recent call last):
    lbw.errors.LoraFileError: int-up.safetensors: tensor 'lora_unet_..._proj_in.lora_up.weight' (lora_up) is stored
    as I32; lbw computes with float factors only (F16, BF16, F32, F64)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from lbw.adapters.kinds import AdapterKind
from lbw.errors import LoraFileError
from lbw.files.json_text import quoted
from lbw.files.modules import Module
from lbw.files.safetensors_header import Header

# Factor dtypes the adapter math reads (safetensors names).
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# dtypes of the IA3 ``on_input`` flag.
FLAG_DTYPES = FLOAT_DTYPES | {"BOOL", "U8", "I8", "I16", "I32", "I64"}
# Roles that are not factors (their own rules apply).
_NOT_FACTORS = frozenset({"alpha", "on_input"})

Shape = tuple[int, ...]


class _Misfit(Exception):
    """A shape rule broken by ``role``; turned into a LoraFileError naming the tensor key."""

    def __init__(self, role: str, problem: str) -> None:
        super().__init__(problem)
        self.role = role
        self.problem = problem


def check_modules(modules: Iterable[Module], header: Header) -> None:
    """Refuse the first module that breaks a rule (see the module docstring) with one LoraFileError line.

    Example:
        >>> check_modules(lora.modules, lora.header)
    """
    for module in modules:
        check_module(module, header)


def check_module(module: Module, header: Header) -> None:
    """Check one module's dtypes, alpha and shapes; LoraFileError names the file and the tensor key.

    Example:
        >>> check_module(lora.modules[0], lora.header)
    """
    where = str(header.path)
    for role, key in module.keys.items():
        dtype = header.tensors[key].dtype
        allowed = FLAG_DTYPES if role == "on_input" else FLOAT_DTYPES
        if role != "alpha" and dtype not in allowed:
            what = "a flag of bool, integer or float" if role == "on_input" else "float factors only"
            raise LoraFileError(f"tensor {quoted(key)} ({role}) is stored as {dtype}; lbw computes with {what} "
                                f"({', '.join(sorted(allowed))})", where=where)
    _ = module.stored_alpha  # reads the alpha scalar: LoraFileError unless one finite number
    misfit = shape_problem(module.kind, module.shapes)
    if misfit is not None:
        role, problem = misfit
        key = module.keys.get(role, module.name)
        raise LoraFileError(f"tensor {quoted(key)} ({module.kind} module): {problem}", where=where)


def shape_problem(kind: AdapterKind, shapes: Mapping[str, Shape]) -> tuple[str, str] | None:
    """``(role, problem)`` for the first shape rule the roles of a ``kind`` module break, or None when they fit.

    Example:
        >>> shape_problem(AdapterKind.LORA, {"lora_up": (320, 4), "lora_down": (8, 320)})
        ('lora_down', 'rank mismatch: lora_up [320, 4] has 4 columns but lora_down [8, 320] has 8 rows')
    """
    try:
        _SHAPE_RULES[kind](shapes)
    except _Misfit as misfit:
        return misfit.role, misfit.problem
    return None


def _lora(shapes: Mapping[str, Shape]) -> None:
    up, down = shapes["lora_up"], shapes["lora_down"]
    if not (len(up) == 2 or (len(up) == 4 and up[2:] == (1, 1))):
        raise _Misfit("lora_up", f"lora_up must be [out, r] or [out, r, 1, 1], found {list(up)}")
    rank = up[1]
    mid = shapes.get("lora_mid")
    if mid is None:
        if len(down) not in (2, 4):
            raise _Misfit("lora_down", f"lora_down must be [r, in] or [r, in, kh, kw], found {list(down)}")
        if down[0] != rank:
            raise _Misfit("lora_down", f"rank mismatch: lora_up {list(up)} has {rank} columns but lora_down "
                                       f"{list(down)} has {down[0]} rows")
        natural = (up[0], *down[1:])
    else:
        if not (len(down) == 2 or (len(down) == 4 and down[2:] == (1, 1))):
            raise _Misfit("lora_down", f"lora_down of a Tucker module must be [r, in] or [r, in, 1, 1], "
                                       f"found {list(down)}")
        if len(mid) != 4 or mid[0] != rank or mid[1] != down[0]:
            raise _Misfit("lora_mid", f"lora_mid must be [{rank}, {down[0]}, kh, kw] to fit lora_up {list(up)} "
                                      f"and lora_down {list(down)}, found {list(mid)}")
        natural = (up[0], down[1], mid[2], mid[3])
    scale = shapes.get("dora_scale")
    if scale is not None:
        _dora_scale(scale, natural)


def _dora_scale(scale: Shape, natural: Shape) -> None:
    """The magnitude vector: per input column [1, in, 1...] (A1111) or per output row [out] / [out, 1, ...]."""
    out, inp = natural[0], natural[1]
    if len(scale) >= 2 and scale[0] == 1 and scale[1] == inp and all(n == 1 for n in scale[2:]):
        return
    if scale and scale[0] == out and all(n == 1 for n in scale[1:]):
        return
    raise _Misfit("dora_scale", f"dora_scale must be [1, {inp}, ...] or [{out}] / [{out}, 1, ...] for a delta of "
                                f"shape {list(natural)}, found {list(scale)}")


def _pair(shapes: Mapping[str, Shape], a: str, b: str) -> tuple[Shape, Shape]:
    """A factor pair a·b (each flattened after its first dimension): inner sizes must agree."""
    left, right = shapes[a], shapes[b]
    for role, shape in ((a, left), (b, right)):
        if len(shape) < 2:
            raise _Misfit(role, f"{role} must have 2 or more dimensions, found {list(shape)}")
    if math.prod(left[1:]) != right[0]:
        raise _Misfit(b, f"{a} {list(left)} has {math.prod(left[1:])} columns but {b} {list(right)} has "
                         f"{right[0]} rows")
    return left, right


def _core(shapes: Mapping[str, Shape], role: str, rows: int, cols: int) -> Shape:
    core = shapes[role]
    if len(core) != 4 or core[0] != rows or core[1] != cols:
        raise _Misfit(role, f"{role} must be [{rows}, {cols}, kh, kw], found {list(core)}")
    return core


def _loha(shapes: Mapping[str, Shape]) -> None:
    terms = []
    for n in (1, 2):
        a, b = f"hada_w{n}_a", f"hada_w{n}_b"
        if "hada_t1" in shapes:
            left, right = shapes[a], shapes[b]
            for role, shape in ((a, left), (b, right)):
                if len(shape) < 2:
                    raise _Misfit(role, f"{role} must have 2 or more dimensions, found {list(shape)}")
            core = _core(shapes, f"hada_t{n}", left[0], right[0])
            terms.append((core[2] * core[3], math.prod(left[1:]), math.prod(right[1:])))
        else:
            left, right = _pair(shapes, a, b)
            terms.append((1, left[0], math.prod(right[1:])))
    if terms[0] != terms[1]:
        raise _Misfit("hada_w2_a", f"the two LoHa terms differ: hada_w1 gives [out, in] = {list(terms[0][1:])}, "
                                   f"hada_w2 gives {list(terms[1][1:])} (kernel taps {terms[0][0]} vs {terms[1][0]})")


def _lokr(shapes: Mapping[str, Shape]) -> None:
    if "lokr_w1" in shapes:
        if len(shapes["lokr_w1"]) != 2:
            raise _Misfit("lokr_w1", f"lokr_w1 must be 2-D [out_l, in_m], found {list(shapes['lokr_w1'])}")
    else:
        _pair(shapes, "lokr_w1_a", "lokr_w1_b")
    if "lokr_w2" in shapes:
        if len(shapes["lokr_w2"]) not in (2, 4):
            raise _Misfit("lokr_w2", f"lokr_w2 must be 2-D or 4-D, found {list(shapes['lokr_w2'])}")
    elif "lokr_t2" in shapes:
        left, right = shapes["lokr_w2_a"], shapes["lokr_w2_b"]
        for role, shape in (("lokr_w2_a", left), ("lokr_w2_b", right)):
            if len(shape) < 2:
                raise _Misfit(role, f"{role} must have 2 or more dimensions, found {list(shape)}")
        _core(shapes, "lokr_t2", left[0], right[0])
    else:
        _pair(shapes, "lokr_w2_a", "lokr_w2_b")


def _ia3(shapes: Mapping[str, Shape]) -> None:
    if math.prod(shapes["weight"]) == 0:
        raise _Misfit("weight", f"IA3 weight must hold one value per row or column, found shape "
                                f"{list(shapes['weight'])}")


def _any(shapes: Mapping[str, Shape]) -> None:
    """Full and norm deltas take the layer's own shape: any shape."""


_SHAPE_RULES = {
    AdapterKind.LORA: _lora,
    AdapterKind.DORA: _lora,
    AdapterKind.LOHA: _loha,
    AdapterKind.LOKR: _lokr,
    AdapterKind.IA3: _ia3,
    AdapterKind.FULL: _any,
    AdapterKind.NORM: _any,
}

