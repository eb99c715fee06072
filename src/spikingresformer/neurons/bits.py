"""Spike tensors at one bit per element: packing, and saved-tensor hooks that keep spikes as bits for backward.

:func:`pack_bits` / :func:`unpack_bits` are custom operators: element ``i`` of a 1-d tensor at bit
``i % 8`` of byte ``i // 8``, zero-padded; one C pass on CPU (``kernels.c``), PyTorch ops elsewhere
or under ``fused.use_impl("torch")``. :class:`SpikeBits` is a ``saved_tensors_hooks`` context:
every tensor that autograd saves from the storage of a spike tensor announced with
:func:`mark_spikes` (the neurons announce their outputs) is kept as bits and unpacked with its shape
and strides when backward needs it, bit-identical since spikes are exactly 0 or 1; other saved
tensors pass untouched.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import fused

__all__ = ["pack_bits", "unpack_bits", "SpikeBits", "mark_spikes"]

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def _torch_pack(flat: torch.Tensor) -> torch.Tensor:
    nonzero = flat.ne(0)
    pad = (-nonzero.numel()) % 8
    if pad:
        nonzero = F.pad(nonzero, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (nonzero.view(-1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def _torch_unpack(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return bits.unsqueeze(-1).bitwise_and(weights).ne(0).reshape(-1)[:numel].to(dtype)


@torch.library.custom_op("spikingresformer::pack_bits", mutates_args=())
def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Bits ``x != 0`` of a 1-d tensor as ``ceil(numel / 8)`` bytes (uint8)."""
    if x.dim() != 1:
        raise ValueError(f"pack_bits takes a 1-d tensor, got shape {tuple(x.shape)}")
    kernel = fused.c_function("pack", x, x.dtype)
    if kernel is None:
        return _torch_pack(x)
    bits = torch.empty(((x.numel() + 7) // 8,), dtype=torch.uint8)
    if x.numel():
        kernel(x.data_ptr(), bits.data_ptr(), x.numel(), torch.get_num_threads())
    return bits


@pack_bits.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)


@torch.library.custom_op("spikingresformer::unpack_bits", mutates_args=())
def unpack_bits(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` elements, 1.0 or 0.0, as a 1-d ``dtype`` tensor."""
    if bits.dtype != torch.uint8 or bits.dim() != 1 or numel < 0 or bits.numel() < (numel + 7) // 8:
        raise ValueError(f"unpack_bits needs a 1-d uint8 tensor of at least {(numel + 7) // 8} bytes, got "
                         f"{bits.dtype} of shape {tuple(bits.shape)}")
    kernel = fused.c_function("unpack", bits, dtype)
    if kernel is None:
        return _torch_unpack(bits, numel, dtype)
    out = torch.empty((numel,), dtype=dtype)
    if numel:
        kernel(bits.data_ptr(), out.data_ptr(), numel, torch.get_num_threads())
    return out


@unpack_bits.register_fake
def _(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return bits.new_empty((numel,), dtype=dtype)


_active: contextvars.ContextVar[Optional["SpikeBits"]] = contextvars.ContextVar("spike_bits", default=None)


def mark_spikes(spikes: torch.Tensor) -> None:
    """Announce ``spikes`` (values exactly 0 or 1) to the active :class:`SpikeBits` context, if any."""
    ctx = _active.get()
    if ctx is not None:
        ptr = spikes.untyped_storage().data_ptr()
        ctx._spikes[ptr] = weakref.ref(spikes)
        ctx._packed.pop(ptr, None)  # memory of earlier spikes, freed and now reused


class SpikeBits(torch.autograd.graph.saved_tensors_hooks):
    """Keep saved spike tensors as bits for backward (see the module docstring); one context per forward."""

    def __init__(self) -> None:
        self._spikes: Dict[int, "weakref.ref[torch.Tensor]"] = {}
        self._packed: Dict[int, Tuple[torch.Tensor, int]] = {}  # one packing per storage
        super().__init__(self._pack, self._unpack)

    def __enter__(self) -> "SpikeBits":
        self._token = _active.set(self)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _active.reset(self._token)
        self._spikes.clear()
        self._packed.clear()

    def _pack(self, t: torch.Tensor) -> Any:
        ptr = t.untyped_storage().data_ptr()
        ref = self._spikes.get(ptr)
        spikes = ref() if ref is not None else None  # alive, so its storage was not reused
        if spikes is None or spikes.dtype != t.dtype or t.untyped_storage().nbytes() != spikes.untyped_storage().nbytes():
            return t
        if ptr not in self._packed:
            numel = t.untyped_storage().nbytes() // t.element_size()
            with torch.no_grad():
                flat = t.new_empty(0).set_(t.untyped_storage(), 0, (numel,), (1,))
                self._packed[ptr] = (pack_bits(flat), numel)
        bits, numel = self._packed[ptr]
        return (bits, numel, t.shape, t.stride(), t.storage_offset(), t.dtype)

    @staticmethod
    def _unpack(saved: Any) -> torch.Tensor:
        if isinstance(saved, torch.Tensor):
            return saved
        bits, numel, shape, stride, offset, dtype = saved
        return unpack_bits(bits, numel, dtype).as_strided(shape, stride, offset)
