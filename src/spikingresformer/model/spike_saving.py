"""Spike inputs kept for backward at one bit per element.

A convolution or matrix product whose input is a spike tensor (exactly 0 or 1) needs that input
again in backward, for the gradient of its weight (or other operand). Autograd would keep it in the
input's dtype, 16 or 32 bits per spike. The functions here run the same forward operator, keep the
spike operand packed eight to a byte (in its memory order, so the unpacked copy has the original
strides) and unpack it in backward, where the same backward kernels as autograd's run on it. The
gradients are therefore identical to the unpacked version; only the spike operand's storage changes.

Only call them with a spike operand: packing keeps ``x != 0``, so any other value would come back as
1. The model uses them exactly where a neuron's output feeds a layer.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["pack_spikes", "unpack_spikes", "PackedSpikes", "spike_conv2d", "spike_matmul"]

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
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))


def pack_spikes(s: torch.Tensor) -> PackedSpikes:
    """Pack a 0/1 tensor into ``ceil(numel / 8)`` bytes, in its memory order."""
    order = _memory_order(s)
    flat = s.permute(order).reshape(-1).ne(0)  # a view when ``s`` is dense, as spike tensors are
    pad = (-flat.numel()) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=s.device)
    bits = (flat.view(-1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)
    return PackedSpikes(bits, s.shape, order, s.dtype)


def unpack_spikes(packed: PackedSpikes) -> torch.Tensor:
    """Inverse of :func:`pack_spikes`."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.bits.device)
    flat = packed.bits.unsqueeze(-1).bitwise_and(weights).ne(0).reshape(-1)
    numel = 1
    for n in packed.shape:
        numel *= n
    permuted_shape = [packed.shape[d] for d in packed.order]
    dense = flat[:numel].to(packed.dtype).reshape(permuted_shape)
    inverse = [0] * len(packed.order)
    for i, d in enumerate(packed.order):
        inverse[d] = i
    return dense.permute(inverse)


def _autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


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
    low = _autocast_dtype(s)
    if low is not None:  # what autocast would do: both operands in the low dtype (the weight cast on record)
        s, weight = s.to(low), weight.to(low)
        with torch.autocast(s.device.type, enabled=False):
            return _SpikeConv2d.apply(s, weight, tuple(stride), tuple(padding), tuple(dilation), groups)
    return _SpikeConv2d.apply(s, weight, tuple(stride), tuple(padding), tuple(dilation), groups)


def _fold_batch(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Size]:
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return a3, b3, batch


class _SpikeMatmulRight(torch.autograd.Function):
    """``left @ right`` where ``right`` is a spike tensor, saved as bits (batched as ``torch.matmul`` does)."""

    @staticmethod
    def forward(ctx, left, right):  # type: ignore[override]
        a3, b3, batch = _fold_batch(left, right)
        ctx.batch, ctx.left_shape, ctx.right_shape = batch, left.shape, right.shape
        packed = pack_spikes(b3)
        ctx.layout = packed.layout()
        ctx.save_for_backward(a3, packed.bits)
        return torch.bmm(a3, b3).view(*batch, a3.shape[-2], b3.shape[-1])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a3, bits = ctx.saved_tensors
        b3 = PackedSpikes(bits, *ctx.layout).unpack()
        g3 = grad.reshape(-1, *grad.shape[-2:])
        grad_left = grad_right = None
        if ctx.needs_input_grad[0]:
            grad_left = torch.bmm(g3, b3.transpose(1, 2)).reshape(*ctx.batch, *ctx.left_shape[-2:])
            grad_left = grad_left.sum_to_size(ctx.left_shape)
        if ctx.needs_input_grad[1]:
            grad_right = torch.bmm(a3.transpose(1, 2), g3).reshape(*ctx.batch, *ctx.right_shape[-2:])
            grad_right = grad_right.sum_to_size(ctx.right_shape)
        return grad_left, grad_right


def spike_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` (both at least 3-d) for a spike tensor ``right``, kept as bits when autograd needs it."""
    if not (torch.is_grad_enabled() and (left.requires_grad or right.requires_grad)) or left.dim() < 3:
        return torch.matmul(left, right)
    low = _autocast_dtype(left)
    if low is not None:
        left, right = left.to(low), right.to(low)
        with torch.autocast(left.device.type, enabled=False):
            return _SpikeMatmulRight.apply(left, right)
    return _SpikeMatmulRight.apply(left, right)

