"""Spike inputs kept for backward at one bit per element.

A convolution or matrix product whose input is a spike tensor (exactly 0 or 1) needs that input
again in backward, for the gradient of its weight (or other operand). Autograd would keep it in the
input's dtype, 16 or 32 bits per spike. The functions here run the same forward operator, keep the
spike operand packed eight to a byte (in its memory order, so the unpacked copy has the original
strides) and unpack it in backward, where the same backward kernels as autograd's run on it. The
gradients are therefore identical to the unpacked version; only the spike operand's storage changes.

Packing and unpacking are one pass each. On CPU they run a small C kernel (compiled into the fused
neurons' library, see :mod:`spikingresformer.neurons.fused`) behind two custom operators,
``spikingresformer::pack_spikes_bits`` and ``spikingresformer::unpack_spikes_bits``, which
``torch.compile`` traces as one node each; on other devices, or under ``fused.use_impl("torch")``,
a few PyTorch ops do the same.

Only call them with a spike operand: packing keeps ``x != 0``, so any other value would come back as
1. The model uses them exactly where a neuron's output feeds a layer.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..neurons import fused

__all__ = ["pack_spikes", "unpack_spikes", "PackedSpikes", "spike_conv2d", "spike_matmul", "pack_spikes_bits",
           "unpack_spikes_bits"]

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


class PackedSpikes:
    """A spike tensor stored as bits: shape, strides and dtype are restored by :meth:`unpack`."""

    def __init__(self, bits: torch.Tensor, shape: torch.Size, order: List[int], dtype: torch.dtype) -> None:
        self.bits, self.shape, self.order, self.dtype = bits, shape, order, dtype

    def layout(self) -> Tuple[torch.Size, List[int], torch.dtype]:
        """Everything but the bits: ``PackedSpikes(bits, *layout)`` rebuilds the object."""
        return self.shape, self.order, self.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held (one bit per element, rounded up to a byte)."""
        return self.bits.numel()

    def unpack(self) -> torch.Tensor:
        """The spike tensor again, with the original shape, dtype and memory order."""
        return unpack_spikes(self)


def _memory_order(t: torch.Tensor) -> List[int]:
    """Dimensions from outermost to innermost in memory (a permutation that makes ``t`` contiguous)."""
    # A stable sort by (-stride, -size), written as an insertion sort: with comparisons instead of
    # sort keys, torch.compile can trace it for symbolic strides too.
    order: List[int] = []
    for d in range(t.dim()):
        i = len(order)
        while i > 0 and _outer(t, d, order[i - 1]):
            i -= 1
        order.insert(i, d)
    return order


def _outer(t: torch.Tensor, a: int, b: int) -> bool:
    """Whether dimension ``a`` of ``t`` sorts before ``b`` (larger stride, then larger size)."""
    sa, sb = t.stride(a), t.stride(b)
    return sa > sb or (sa == sb and t.shape[a] > t.shape[b])


def _torch_pack_flat(flat: torch.Tensor) -> torch.Tensor:
    """Bits of a 1-d tensor with PyTorch ops (any device, dtype and strides): the fallback of the C kernel."""
    nonzero = flat.ne(0)
    pad = (-nonzero.numel()) % 8
    if pad:
        nonzero = F.pad(nonzero, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (nonzero.view(-1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def _torch_unpack_flat(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The first ``numel`` elements held by ``bits`` as a 1-d tensor of ``dtype``, with PyTorch ops."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    flat = bits.unsqueeze(-1).bitwise_and(weights).ne(0).reshape(-1)
    return flat[:numel].to(dtype)


def _c_kernel(kind: str, t: torch.Tensor, dtype: torch.dtype) -> Optional[Any]:
    """The C function ``srf_{kind}_<dtype>`` for CPU tensor ``t``, or ``None`` where PyTorch ops must do."""
    if t.device.type != "cpu" or dtype not in fused._DTYPE_NAMES or not t.is_contiguous():
        return None
    lib = fused.bits_lib()
    return None if lib is None else getattr(lib, f"srf_{kind}_{fused._DTYPE_NAMES[dtype]}")


@torch.library.custom_op("spikingresformer::pack_spikes_bits", mutates_args=())
def pack_spikes_bits(s: torch.Tensor) -> torch.Tensor:
    """Bits of a 1-d tensor (``x != 0``), element ``i`` at bit ``i % 8`` of byte ``i // 8``, zero-padded."""
    if s.dim() != 1:
        raise ValueError(f"pack_spikes_bits takes a 1-d tensor, got {s.dim()} dimensions")
    kernel = _c_kernel("pack", s, s.dtype)
    if kernel is None:
        return _torch_pack_flat(s)
    bits = torch.empty(((s.numel() + 7) // 8,), dtype=torch.uint8)
    if s.numel():
        kernel(s.data_ptr(), bits.data_ptr(), s.numel(), torch.get_num_threads())
    return bits


@pack_spikes_bits.register_fake
def _(s: torch.Tensor) -> torch.Tensor:
    return s.new_empty(((s.numel() + 7) // 8,), dtype=torch.uint8)


@torch.library.custom_op("spikingresformer::unpack_spikes_bits", mutates_args=())
def unpack_spikes_bits(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``pack_spikes_bits``: the first ``numel`` elements, 1.0 or 0.0, as a 1-d ``dtype`` tensor."""
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() < (numel + 7) // 8 or numel < 0:
        raise ValueError(f"unpack_spikes_bits needs a 1-d uint8 tensor of at least {(numel + 7) // 8} bytes")
    kernel = _c_kernel("unpack", bits, dtype)
    if kernel is None:
        return _torch_unpack_flat(bits, numel, dtype)
    out = torch.empty((numel,), dtype=dtype)
    if numel:
        kernel(bits.data_ptr(), out.data_ptr(), numel, torch.get_num_threads())
    return out


@unpack_spikes_bits.register_fake
def _(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    return bits.new_empty((numel,), dtype=dtype)


def _c_candidate(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the custom operators (and so possibly the C kernel) should handle this device and dtype."""
    return device.type == "cpu" and dtype in fused._DTYPE_NAMES


def pack_spikes(s: torch.Tensor) -> PackedSpikes:
    """Pack a 0/1 tensor into ``ceil(numel / 8)`` bytes, in its memory order."""
    order = _memory_order(s)
    dense = s.permute(order)  # contiguous when ``s`` covers its memory without gaps, as spike tensors do
    if _c_candidate(s.device, s.dtype) and dense.is_contiguous():
        bits = torch.ops.spikingresformer.pack_spikes_bits(dense.view(-1))
    else:
        bits = _torch_pack_flat(dense.reshape(-1))
    return PackedSpikes(bits, s.shape, order, s.dtype)


def unpack_spikes(packed: PackedSpikes) -> torch.Tensor:
    """Inverse of :func:`pack_spikes`."""
    numel = 1
    for n in packed.shape:
        numel *= n
    permuted_shape = [packed.shape[d] for d in packed.order]
    if _c_candidate(packed.bits.device, packed.dtype):
        flat = torch.ops.spikingresformer.unpack_spikes_bits(packed.bits, numel, packed.dtype)
    else:
        flat = _torch_unpack_flat(packed.bits, numel, packed.dtype)
    dense = flat.view(permuted_shape)
    inverse = [0] * len(packed.order)
    for i, d in enumerate(packed.order):
        inverse[d] = i
    return dense.permute(inverse)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype on ``device_type``, or ``None`` when autocast is off there."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class _SpikeConv2d(torch.autograd.Function):
    """``conv2d(spikes, weight)`` without bias, the spikes saved as bits."""

    @staticmethod
    def forward(ctx, s, weight, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.conf = (stride, padding, dilation, groups)
        packed = pack_spikes(s)
        ctx.layout = packed.layout()  # the bits go through save_for_backward (saved-tensor hooks see them)
        ctx.save_for_backward(packed.bits, weight)
        return F.conv2d(s, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        bits, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        s = PackedSpikes(bits, *ctx.layout).unpack()
        grad_s, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, s, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )
        return grad_s, grad_w, None, None, None, None


def spike_conv2d(s: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], groups: int) -> torch.Tensor:
    """``F.conv2d(s, weight)`` (no bias) for a spike input ``s``; keeps ``s`` as bits when autograd needs it."""
    if not (torch.is_grad_enabled() and (s.requires_grad or weight.requires_grad)):
        return F.conv2d(s, weight, None, stride, padding, dilation, groups)
    low = autocast_dtype(s.device.type)
    if low is not None:  # what autocast would do: both operands in the low dtype (the weight cast on record)
        s, weight = s.to(low), weight.to(low)
        with torch.autocast(s.device.type, enabled=False):
            return _SpikeConv2d.apply(s, weight, tuple(stride), tuple(padding), tuple(dilation), groups)
    return _SpikeConv2d.apply(s, weight, tuple(stride), tuple(padding), tuple(dilation), groups)


def fold_batch(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """Both operands as 3-d batches for ``bmm``, the way ``torch.matmul`` folds them."""
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return a3, b3, batch


def folded_matmul_backward(grad: torch.Tensor, a3: torch.Tensor, b3: torch.Tensor, batch: torch.Size,
                           a_shape: torch.Size, b_shape: torch.Size, need_a: bool = True,
                           need_b: bool = True) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``a @ b`` from its folded operands (:func:`fold_batch`), with autograd's ``bmm`` kernels."""
    g3 = grad.reshape(-1, *grad.shape[-2:])
    grad_a = grad_b = None
    if need_a:
        grad_a = torch.bmm(g3, b3.transpose(1, 2)).reshape(*batch, *a_shape[-2:]).sum_to_size(a_shape)
    if need_b:
        grad_b = torch.bmm(a3.transpose(1, 2), g3).reshape(*batch, *b_shape[-2:]).sum_to_size(b_shape)
    return grad_a, grad_b


class _SpikeMatmulRight(torch.autograd.Function):
    """``left @ right`` where ``right`` is a spike tensor, saved as bits (batched as ``torch.matmul`` does)."""

    @staticmethod
    def forward(ctx, left, right):  # type: ignore[override]
        a3, b3, batch = fold_batch(left, right)
        ctx.batch, ctx.left_shape, ctx.right_shape = batch, left.shape, right.shape
        packed = pack_spikes(b3)
        ctx.layout = packed.layout()
        ctx.save_for_backward(a3, packed.bits)
        return torch.bmm(a3, b3).view(*batch, a3.shape[-2], b3.shape[-1])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a3, bits = ctx.saved_tensors
        b3 = PackedSpikes(bits, *ctx.layout).unpack()
        return folded_matmul_backward(grad, a3, b3, ctx.batch, ctx.left_shape, ctx.right_shape,
                                      ctx.needs_input_grad[0], ctx.needs_input_grad[1])


def spike_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` (both at least 3-d) for a spike tensor ``right``, kept as bits when autograd needs it."""
    if not (torch.is_grad_enabled() and (left.requires_grad or right.requires_grad)) or left.dim() < 3:
        return torch.matmul(left, right)
    low = autocast_dtype(left.device.type)
    if low is not None:
        left, right = left.to(low), right.to(low)
        with torch.autocast(left.device.type, enabled=False):
            return _SpikeMatmulRight.apply(left, right)
    return _SpikeMatmulRight.apply(left, right)

