"""The two passes of ``lbw merge`` that let the merged file be written with only a few modules in memory.

The file's header, which comes first, needs every tensor's name, dtype and shape, and its data are ordered by
dtype then name, not by module. So:

- pass 1 (``plan``) goes through every module name in the merge's order and records what the module writes:
  key → (dtype, shape). For the common exact cases (a LoRA carried over or plain LoRAs joined, where nothing
  can make the merge fail) this is known from the headers (``merge_specs``); any other module is merged here,
  exactly as a one-pass merge would (so every refusal happens in pass 1, before anything is written), and its
  tensors are dropped, except those of a module compressed by SVD (costly to compute again, and small: their
  rank is limited);
- pass 2 (``lazy``, given to ``lbw.files.writer.save_lora``): the writer asks for the tensors in the file's data
  order; a module is merged (again) when its first tensor is asked for (the same code on the same memory-mapped
  inputs: the same bytes; its keys, dtypes and shapes are checked against pass 1), and its other tensors wait
  until their turn, which comes next for tensors of the same dtype. A tensor of another dtype (a later part of
  the file) is dropped unless small, and its module merged again when it is reached.

Example:
    >>> stream = MergeStream(sources, MergeOptions(), None, read, None)
    >>> [stream.plan(name)[0] for name in names]
    ['joined', 'carried', 'joined']
    >>> save_lora(stream.lazy(), metadata, "ab.safetensors").size
    25312768
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lbw.errors import OutputError
from lbw.services.merge_compress import Tally
from lbw.services.merge_join import Reader, merge_module, terms_of
from lbw.services.merge_specs import Spec, predict
from lbw.services.sources import OpenSource
from lbw.services.tensor_output import merged_tensors

if TYPE_CHECKING:
    import torch

    from lbw.files.writer import LazyTensors
    from lbw.services.base_weights import BaseWeights
    from lbw.services.merge import MergeOptions

# A tensor of another dtype than the one being written waits for its turn when it is at most this large.
_SMALL = 1 << 20


class MergeStream:
    """Pass 1 (``plan``) and pass 2 (``lazy``) of a merge; see the module docstring.

    Example:
        >>> stream = MergeStream(sources, MergeOptions(), None, read, None)
        >>> stream.plan("lora_unet_mid_block_attentions_0_proj_in"), len(stream.specs)
        (('joined', 24, 24.0), 3)
    """

    def __init__(
        self,
        sources: Sequence[OpenSource],
        options: MergeOptions,
        base: BaseWeights | None,
        read: Reader,
        out_dtype: torch.dtype | None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.sources = sources
        self.options = options
        self.base = base
        self.read = read
        self.out_dtype = out_dtype
        self.tally = Tally()
        self.specs: dict[str, Spec] = {}
        self._progress = progress
        self._module_of: dict[str, str] = {}  # key -> module name
        self._keys_of: dict[str, dict[str, Spec]] = {}  # module name -> its keys' specs
        self._kept: dict[str, dict[str, torch.Tensor]] = {}  # module name -> tensors kept from pass 1
        self._waiting: dict[str, torch.Tensor] = {}  # key -> tensor produced, not written yet
        self._given: set[str] = set()  # keys given to the writer
        self._reached: set[str] = set()

    def plan(self, name: str) -> tuple[str, int | None, float | None] | None:
        """Pass 1 for module ``name``: (how, rank, alpha) of the merged module (rank and alpha None without
        ``lora_down``), or None when no source holds it at a factor other than 0. The tensors it writes are
        recorded in ``specs``: predicted where ``merge_specs`` can, else from the module merged here.

        Example:
            >>> stream.plan("lora_te_text_model_encoder_layers_0_mlp_fc1")
            ('carried', 8, 4.0)
        """
        terms = terms_of(self.sources, name)
        if not terms:
            return None
        predicted = predict(terms, self.out_dtype) if self.options.rank is None else None
        if predicted is not None:
            self._record(name, predicted.specs)
            return predicted.how, predicted.rank, predicted.alpha
        compressed = sum(self.tally.compressed.values())
        how, roles, first = merge_module(terms, self.options, self.base, self.tally, self.read)
        tensors = merged_tensors(first, roles, self.out_dtype)
        self._record(name, {key: (tensor.dtype, tuple(tensor.shape)) for key, tensor in tensors.items()})
        if sum(self.tally.compressed.values()) > compressed:
            self._kept[name] = tensors
        if "lora_down" not in roles:
            return how, None, None
        rank = int(roles["lora_down"].shape[0])
        return how, rank, float(roles["alpha"]) if "alpha" in roles else float(rank)

    def _record(self, name: str, specs: dict[str, Spec]) -> None:
        for key in specs:
            if key in self._module_of:  # two module names that write one key (e.g. two naming families)
                raise OutputError(f"two modules write the tensor {key!r} ({self._module_of[key]} and {name})")
            self._module_of[key] = name
        self.specs.update(specs)
        self._keys_of[name] = specs

    def lazy(self) -> LazyTensors:
        """Pass 2: the tensors of ``specs`` for ``save_lora``, each module merged when first asked for.

        Example:
            >>> sorted(stream.lazy().specs) == sorted(stream.specs)
            True
        """
        from lbw.files.writer import LazyTensors

        return LazyTensors(self.specs, self._produce)

    def _produce(self, key: str) -> torch.Tensor:
        self._given.add(key)
        tensor = self._waiting.pop(key, None)
        if tensor is not None:
            return tensor
        name = self._module_of[key]
        kept = self._kept.pop(name, None)
        tensors = kept if kept is not None else self._merged(name)
        dtype = self.specs[key][0]
        for other, value in tensors.items():
            # kept tensors all wait (merging them again would redo an SVD); others only when written soon
            if other not in self._given and (kept is not None or value.dtype == dtype or value.nbytes <= _SMALL):
                self._waiting[other] = value
        if name not in self._reached:
            self._reached.add(name)
            if self._progress is not None:
                self._progress(len(self._reached))
        return tensors[key]

    def _merged(self, name: str) -> dict[str, torch.Tensor]:
        """Module ``name`` merged as pass 1 did or would have (compression errors tallied apart: pass 1 counted
        them), checked against what pass 1 recorded."""
        _, roles, first = merge_module(terms_of(self.sources, name), self.options, self.base, Tally(), self.read)
        tensors = merged_tensors(first, roles, self.out_dtype)
        found = {key: (tensor.dtype, tuple(tensor.shape)) for key, tensor in tensors.items()}
        if found != self._keys_of[name]:
            raise OutputError(f"internal error: module {name} merged gave other tensors ({found}) than pass 1 "
                              f"recorded ({self._keys_of[name]})")
        return tensors
