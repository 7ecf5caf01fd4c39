"""``lbw bake``: apply block weights to a LoRA file exactly, so that at multiplier 1 it does what the weights did.

For every module, ΔW_out = factor · ΔW_in with factor = ρ(block) × (te or unet multiplier) (see ``resolve``).
One factor is scaled in float32 (the one LBW scales: ``lora_up``, ``hada_w1_a``, ``lokr_w1``, IA3 ``weight``,
``diff``, ``w_norm``; plus the bias delta of full/norm modules), or with ``balanced`` the magnitude is split
√|c| over ``lora_up``/``lora_down`` (LoRA/LoCon only; the sign stays on ``lora_up``). Alpha and rank are kept.
Each tensor is cast once to the output dtype. Modules of blocks at factor 0 are removed unless ``keep_zero``.

DoRA is not linear in the factor: refused unless ``dora="dense"``, which stores the exact applied delta as a
full-diff module (``diff`` of the layer's full shape, out·in·kh·kw values instead of r·(out+in)), computed from
the base weights (``model``).

The file is written atomically by ``lbw.files.writer.save_lora`` (hashes from the bytes as written): a crash or
Ctrl-C leaves no output. The output's lock is held for the whole bake, and the final step never replaces a file
unless ``force``: two runs writing one new output never both succeed. The input is only read.

Example:
    >>> weights = load_weights("Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1").weights
    >>> report = bake("face.safetensors", "face-baked.safetensors", weights, te=1, unet=1)
    >>> report.modules_out, report.written.model_hash == addnet_hash("face-baked.safetensors")
    (204, True)
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lbw.adapters.kinds import AdapterKind
from lbw.domain.numbers import format_number
from lbw.domain.weights import BlockWeights
from lbw.errors import AdapterError, LoraFileError, OutputError
from lbw.files.lora_file import LoraFile
from lbw.files.metadata import BAKED_WEIGHTS_KEY
from lbw.files.modules import Module
from lbw.services.resolve import FactorPlan, resolve_for_file

if TYPE_CHECKING:
    import torch

    from lbw.files.writer import WrittenFile
    from lbw.services.base_weights import BaseWeights

DoraMode = Literal["refuse", "dense"]
OUTPUT_DTYPES = ("fp16", "bf16", "fp32")
# A hook called after each module: (modules done, modules in total).
Progress = Callable[[int, int], None]

# Metadata keys lbw writes.
BAKED_LAYOUT_KEY = "lbw_baked_layout"
BAKED_TE_KEY = "lbw_baked_te"
BAKED_UNET_KEY = "lbw_baked_unet"
BAKED_FROM_KEY = "lbw_baked_from"
BAKED_FROM_HASH_KEY = "lbw_baked_from_sshs_model_hash"
MERGED_FROM_KEY = "modelspec.merged_from"
# Keys that describe weights to apply at inference: meaningless once the weights are baked in.
INFERENCE_WEIGHT_KEYS = ("lbw_block_weights", "lbw_block_layout")
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")


@dataclass(frozen=True)
class BakeOptions:
    """How to bake: keep zero blocks, balanced split, DoRA handling, base model, output dtype, overwrite."""

    keep_zero: bool = False
    balanced: bool = False
    dora: DoraMode = "refuse"
    model: Path | None = None
    dtype: str | None = None
    force: bool = False


@dataclass(frozen=True)
class BakeReport:
    """What a bake did: the plan, module counts, removed modules, DoRA conversions, sizes and hashes."""

    source: Path
    plan: FactorPlan
    modules_in: int
    modules_out: int
    removed: tuple[str, ...]
    dora_dense: tuple[str, ...]
    source_size: int
    source_hash: str
    written: WrittenFile
    metadata: dict[str, str] = field(repr=False)


def bake(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    weights: BlockWeights,
    *,
    te: float = 1.0,
    unet: float = 1.0,
    options: BakeOptions | None = None,
    progress: Progress | None = None,
) -> BakeReport:
    """Resolve ``weights`` for ``source`` and bake them into ``dest`` (see ``bake_file``).

    Example:
        >>> bake("a.safetensors", "b.safetensors", parse_weights("1," * 16 + "0"), unet=0.8).modules_out
        252
    """
    with LoraFile.open(source) as lora:
        plan = resolve_for_file(weights, lora.modules, lora.architecture, te=te, unet=unet, where=str(source))
        return bake_file(lora, plan, dest, options=options, progress=progress)


def bake_file(
    lora: LoraFile,
    plan: FactorPlan,
    dest: str | os.PathLike[str],
    *,
    options: BakeOptions | None = None,
    progress: Progress | None = None,
) -> BakeReport:
    """Bake a resolved plan into ``dest``: module by module, scaled in float32, cast once, written atomically.

    Example:
        >>> with LoraFile.open("a.safetensors") as lora:
        ...     plan = resolve_for_file(weights, lora.modules, lora.architecture)
        ...     bake_file(lora, plan, "b.safetensors").removed[:1]
        ('lora_unet_down_blocks_0_attentions_0_proj_in',)
    """
    options = options or BakeOptions()
    dest = Path(dest)
    check_destination(dest, [lora.path], force=options.force)
    with output_lock(dest, force=options.force):
        return _bake_locked(lora, plan, dest, options, progress)


def _bake_locked(
    lora: LoraFile, plan: FactorPlan, dest: Path, options: BakeOptions, progress: Progress | None
) -> BakeReport:
    from lbw.files.mapped import MappedTensors
    from lbw.files.writer import save_lora

    check_destination(dest, [lora.path], force=options.force)  # again: another run may have written it meanwhile
    refuse_unsupported(lora)
    out_dtype = torch_dtype(options.dtype)
    tensors: dict[str, torch.Tensor] = {}
    removed: list[str] = []
    dora_dense: list[str] = []
    base = _open_base(lora, plan, options)
    mapped = MappedTensors(lora.header)  # zero-copy reads: unchanged tensors are written from the page cache
    # The map is closed last: after the pool, whose exit waits for the hashing job (which may not even have
    # started when the modules are done).
    with mapped, ThreadPoolExecutor(max_workers=1) as pool, bulk_mode():
        source_hash_job = pool.submit(mapped.data_sha256)  # hashlib releases the GIL: runs alongside
        try:
            total = len(lora.modules)
            for done, module in enumerate(lora.modules, start=1):
                baked = bake_module(lora, module, plan, options, base, read=mapped.tensors)
                if baked is None:
                    removed.append(module.name)
                else:
                    if module.kind is AdapterKind.DORA:
                        dora_dense.append(module.name)
                    tensors.update(output_tensors(lora, module, baked, out_dtype))
                if progress is not None:
                    progress(done, total)
        finally:
            if base is not None:
                base.close()
        if not tensors:
            raise OutputError("every module is at weight 0; nothing to write (use --keep-zero to keep them)",
                              where=str(dest))
        gone = set(removed)
        kept = [m for m in lora.modules if m.name not in gone]

        def metadata_with(source_hash: str) -> dict[str, str]:
            return baked_metadata(lora, plan, dest, source_hash, kept, dora_dense)

        # The source hash may still be running: the header is written with a placeholder of its length and
        # completed once the data are out.
        written = save_lora(tensors, metadata_with("0" * 64), dest, force=options.force,
                            final_metadata=lambda: metadata_with(source_hash_job.result()))
        source_hash = source_hash_job.result()
    return BakeReport(lora.path, plan, len(lora.modules), len(kept), tuple(removed), tuple(dora_dense),
                      lora.header.file_size, source_hash, written, metadata_with(source_hash))


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
    from lbw.adapters.dora import dora_to_full
    from lbw.adapters.registry import scale_module
    from lbw.adapters.scale import scale_balanced
    from lbw.files.lora_file import with_config_alpha

    def roles_of() -> dict[str, torch.Tensor]:
        return lora.module_tensors(module) if read is None else with_config_alpha(module, read(module.keys))

    factor = plan.factor(module)
    if module.kind is AdapterKind.DORA:
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
        return dora_to_full(roles_of(), weight, plan.ratio(module), strength=multiplier)
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


@contextlib.contextmanager
def bulk_mode(*, single_thread: bool = True) -> Iterator[None]:
    """For a while (both restored after): torch single-threaded (unless ``single_thread`` is False), and Python's
    cyclic garbage collector paused.

    Bake and merge do thousands of small, memory-bound tensor ops while hashing threads keep the other cores
    busy: torch's intra-op threads then wait on each other (seconds lost on a busy 2-core machine). They also
    create tens of thousands of objects that live until the file is written, which trigger full collections
    over every object of the process (about 0.1 s per merge) and free nothing; cyclic garbage made meanwhile is
    collected once the collector is back on. Elementwise results do not depend on either; SVD and QR results do
    depend on the thread count (LAPACK blocking), so compression keeps the caller's threads.

    Example:
        >>> with bulk_mode():
        ...     torch.get_num_threads(), gc.isenabled()
        (1, False)
    """
    import gc

    import torch

    threads = torch.get_num_threads()
    collecting = gc.isenabled()
    if single_thread:
        torch.set_num_threads(1)
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
        torch.set_num_threads(threads)


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


_PEFT_KEYS = {"lora_up": "lora_B.weight", "lora_down": "lora_A.weight"}


def baked_metadata(
    lora: LoraFile,
    plan: FactorPlan,
    dest: Path,
    source_hash: str,
    kept: Iterable[Module],
    dora_dense: Iterable[str],
) -> dict[str, str]:
    """The input's metadata with the bake recorded (hash keys are set by the writer).

    Sets ``ss_output_name`` (and ``modelspec.title`` when present) to the output stem, ``modelspec.merged_from``
    to ``title(short hash)`` of the source, ``lbw_baked_*`` to the weights, layout, multipliers and the source's
    file name and SHA-256 (its addnet hash, computed); updates ``ss_network_dim``/``ss_network_alpha`` when the
    input has them; drops keys holding weights meant for inference (now applied).

    Example:
        >>> baked_metadata(lora, plan, Path("out.safetensors"), "ab" * 32, lora.modules, ())["ss_output_name"]
        'out'
    """
    metadata = {k: v for k, v in lora.metadata.items() if k not in HASH_KEYS and k not in INFERENCE_WEIGHT_KEYS}
    stem = output_stem(dest)
    metadata["ss_output_name"] = stem
    if "modelspec.title" in metadata:
        metadata["modelspec.title"] = stem
    metadata[MERGED_FROM_KEY] = f"{source_title(lora)}({source_hash[:12]})"
    metadata[BAKED_WEIGHTS_KEY] = plan.applied_text()
    metadata[BAKED_LAYOUT_KEY] = plan.weights.layout.name
    metadata[BAKED_TE_KEY] = format_number(plan.te)
    metadata[BAKED_UNET_KEY] = format_number(plan.unet)
    metadata[BAKED_FROM_KEY] = lora.path.name
    metadata[BAKED_FROM_HASH_KEY] = source_hash
    dim, alpha = network_dim_alpha(kept)
    if dora_dense:
        metadata["lbw_dora_dense_modules"] = str(len(list(dora_dense)))
    if "ss_network_dim" in metadata and dim is not None:
        metadata["ss_network_dim"] = dim
    if "ss_network_alpha" in metadata and alpha is not None:
        metadata["ss_network_alpha"] = alpha
    return metadata


def network_dim_alpha(modules: Iterable[Module]) -> tuple[str | None, str | None]:
    """``ss_network_dim``/``ss_network_alpha`` for these modules: the common rank and alpha, ``Dynamic`` when they
    differ, None when no module has a rank. DoRA modules baked dense have none and are left out by the caller.

    Example:
        >>> network_dim_alpha(lora.modules)
        ('8', '4')
    """
    ranks = set()
    alphas = set()
    for module in modules:
        if module.rank is None or module.kind is AdapterKind.DORA:
            continue
        ranks.add(module.rank)
        alphas.add(module.alpha)
    return dim_alpha_text(ranks, alphas)


def dim_alpha_text(ranks: set[int], alphas: set[float | None]) -> tuple[str | None, str | None]:
    """Text of the rank and alpha sets: the one value, ``Dynamic`` for several, None for none.

    Example:
        >>> dim_alpha_text({8}, {4.0}), dim_alpha_text({8, 16}, {8.0, 16.0})
        (('8', '4'), ('Dynamic', 'Dynamic'))
    """
    if not ranks:
        return None, None
    dim = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    single = len(alphas) == 1 and None not in alphas
    alpha = format_number(float(next(iter(alphas)))) if single else "Dynamic"  # type: ignore[arg-type]
    return dim, alpha


def source_title(lora: LoraFile) -> str:
    """The name a source goes by: ``modelspec.title``, else ``ss_output_name``, else the file stem."""
    metadata = lora.metadata
    return metadata.get("modelspec.title") or metadata.get("ss_output_name") or output_stem(lora.path)


def output_stem(path: Path) -> str:
    """The file name without ``.safetensors`` (what sd-scripts stores as ``ss_output_name``).

    Example:
        >>> output_stem(Path("dir/face.v2.safetensors"))
        'face.v2'
    """
    name = path.name
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else path.stem


def check_destination(dest: Path, sources: Iterable[Path], *, force: bool) -> None:
    """Refuse an output that is one of the inputs (also through links, even with force) or exists without force.

    Example:
        >>> check_destination(Path("a.safetensors"), [Path("./a.safetensors")], force=True)
        Traceback (most recent call last):
        lbw.errors.OutputError: a.safetensors: is an input file; lbw never overwrites its input
    """
    for source in sources:
        if _same_file(source, dest):
            raise OutputError("is an input file; lbw never overwrites its input, choose another output",
                              where=str(dest))
    if dest.is_dir():
        raise OutputError("is a folder, expected a file path", where=str(dest))
    if dest.exists() and not force:
        raise OutputError("already exists; use --force to overwrite it", where=str(dest))
    if not dest.name.lower().endswith(".safetensors"):
        raise OutputError("the output must be a .safetensors file", where=str(dest))


def output_lock(dest: Path, *, force: bool) -> contextlib.AbstractContextManager[Path]:
    """The lock of ``dest``, held for a whole bake or merge: another lbw writing ``dest`` is an OutputError at
    once, or, with ``force`` (an overwrite was asked for anyway), awaited for up to ``LOCK_WAIT_S`` seconds.

    Example:
        >>> with output_lock(Path("out.safetensors"), force=False):
        ...     pass
    """
    from lbw.files.locks import LOCK_WAIT_S, target_lock

    return target_lock(dest, wait=LOCK_WAIT_S if force else 0.0)


def refuse_unsupported(lora: LoraFile) -> None:
    """Refuse files with modules or keys lbw cannot transform exactly (OFT, GLoRA, unknown keys)."""
    if lora.unsupported:
        module = lora.unsupported[0]
        more = f" (and {len(lora.unsupported) - 1} more)" if len(lora.unsupported) > 1 else ""
        raise LoraFileError(f"module {module.name}{more} cannot be transformed exactly: {module.reason}",
                            where=str(lora.path))
    if lora.unrecognized_keys:
        raise LoraFileError(f"tensor key {lora.unrecognized_keys[0]!r} belongs to no known adapter module; "
                            "lbw will not drop or copy it blindly", where=str(lora.path))


def torch_dtype(name: str | None) -> torch.dtype | None:
    """``fp16``/``bf16``/``fp32`` → torch dtype (None keeps each tensor's stored dtype).

    Example:
        >>> torch_dtype("bf16")
        torch.bfloat16
    """
    if name is None:
        return None
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    key = name.lower()
    if key not in table:
        raise OutputError(f"unknown output dtype {name!r}; expected {', '.join(OUTPUT_DTYPES)}")
    return table[key]


def _open_base(lora: LoraFile, plan: FactorPlan, options: BakeOptions) -> BaseWeights | None:
    if not any(m.kind is AdapterKind.DORA for m in lora.modules) or options.dora != "dense":
        return None
    if options.model is None:
        raise AdapterError("--dora dense needs the base model weights: pass --model CKPT (a .safetensors "
                           "checkpoint or state dict)", where=str(lora.path))
    from lbw.services.base_weights import BaseWeights

    return BaseWeights.open(options.model)


_STORED = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def stored_dtype(lora: LoraFile, module: Module, role: str) -> torch.dtype:
    """The dtype ``role`` has in the file; a new role (a DoRA ``diff``) takes the dtype of ``lora_up``."""
    import torch

    key = module.keys.get(role) or module.keys.get("lora_up") or next(iter(module.keys.values()))
    return getattr(torch, _STORED.get(lora.header.tensors[key].dtype, "float32"))


def _short(dtype: torch.dtype) -> str:
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False

