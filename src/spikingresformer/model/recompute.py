"""BatchNorm outputs and membranes recomputed in backward instead of kept (identical gradients).

In a GWFFN block the chain ``u = BN_up(c_up) -> spikes -> conv -> c -> BN(c) + u -> spikes`` holds,
under plain autograd, two real-valued tensors per BatchNorm-then-neuron pair: the BatchNorm input
and the neuron's membrane, plus the spike input of the convolution. The BatchNorm inputs ``c_up``
and ``c`` are enough to rebuild everything else with cheap element-wise work, so
:func:`gwffn_middle` keeps only those two (and the per-channel batch statistics) and recomputes the
BatchNorm outputs, the membranes and the spikes in backward. The backward pass then calls the very
kernels that autograd would call (``native_batch_norm_backward``, ``convolution_backward`` and the
neuron's backward operator) on bit-identical recomputed inputs, so gradients, running statistics
and outputs are identical to the plain path; only what is stored between forward and backward
changes (on ``spikingresformer_cifar``: 8 of the 18 channel-widths a GWFFN keeps, see
``docs/performance.md``).

It applies in eager CPU training with a neuron backend that has custom operators (``fused``). Under
``torch.compile`` the compiler's own partitioner decides what to recompute, and FX tracing, export,
evaluation, hooks (energy counting) and other devices take the ordinary module path.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons.backends import neuron_ops
from ..neurons.common import plif_w_grad
from .spike_saving import PackedSpikes, autocast_dtype, fold_batch, folded_matmul_backward, pack_spikes

__all__ = ["can_recompute", "dssa_middle", "gwffn_middle"]


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as mod

    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks
                or mod._global_backward_pre_hooks)


def can_recompute(x: Tensor, modules: Sequence[nn.Module], neurons: Sequence[nn.Module]) -> bool:
    """Whether the recomputing path may replace the module calls of ``modules`` for input ``x``.

    Eager CPU training only, every BatchNorm a plain ``nn.BatchNorm2d`` (not ``SyncBatchNorm``) in
    training mode with running statistics, every neuron
    on a backend with custom operators, and no hooks anywhere (hooks must see the module calls).
    """
    if torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.compiler.is_compiling():
        return False  # (first: under FX, ``x`` is a Proxy that cannot take part in a branch)
    if not (torch.is_grad_enabled() and x.device.type == "cpu") or _global_hooks():
        return False
    for m in modules:
        if _has_hooks(m) or not m.training:
            return False
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (
                type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None):
            return False  # e.g. SyncBatchNorm, whose statistics span processes
    return all(neuron_ops(n.backend, x.device) is not None for n in neurons)


# --------------------------------------------------------------------------------------------------
# BatchNorm and neuron pieces (each mirrors what the module call would run)
# --------------------------------------------------------------------------------------------------


class _Norm:
    """One ``nn.BatchNorm2d`` in training mode: forward with the running-statistics update, recompute, backward."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        self.bn = bn

    def forward(self, x4: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(y, batch mean, batch 1/std)``; updates the running statistics as the module would."""
        bn = self.bn
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        return torch.native_batch_norm(x4, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, factor,
                                       bn.eps)

    def recompute(self, x4: Tensor) -> Tensor:
        """The same ``y`` again (batch statistics recomputed, running statistics untouched)."""
        bn = self.bn
        return torch.native_batch_norm(x4, bn.weight, bn.bias, None, None, True, 0.0, bn.eps)[0]

    def backward(self, grad4: Tensor, x4: Tensor, mean: Tensor, invstd: Tensor) -> Tuple[Tensor, Any, Any]:
        """``(grad x, grad weight, grad bias)`` from autograd's own BatchNorm backward kernel."""
        bn = self.bn
        mask = [True, bn.weight is not None and bn.weight.requires_grad,
                bn.bias is not None and bn.bias.requires_grad]
        return torch.ops.aten.native_batch_norm_backward(
            grad4, x4, bn.weight, bn.running_mean, bn.running_var, mean, invstd, True, bn.eps, mask)


class _Neuron:
    """One neuron layer called through its backend's operators."""

    def __init__(self, neuron: nn.Module, device: torch.device, spike_dtype: Optional[torch.dtype]) -> None:
        self.ops = neuron_ops(neuron.backend, device)
        self.kind, self.tau, self.w, self.vth, self.vr, self.alpha = neuron.call_args()
        self.spike_dtype = spike_dtype

    def _args(self) -> tuple:
        return self.kind, float(self.tau), float(self.vth), float(self.vr), float(self.alpha)

    def forward(self, x: Tensor, store_h: bool) -> Tuple[Tensor, Tensor]:
        """``(spikes in the dtype run_neuron hands on, membrane or an empty tensor)``."""
        kind, tau, vth, vr, alpha = self._args()
        spikes, h = self.ops.forward_op(x, self.w, kind, tau, vth, vr, alpha, store_h)
        if self.spike_dtype is not None and spikes.dtype != self.spike_dtype:
            spikes = spikes.to(self.spike_dtype)
        return spikes, h

    def backward(self, h: Tensor, x: Tensor, grad_spikes: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """``(grad x, grad w or None)`` as the operator's autograd formula computes them."""
        kind, tau, vth, vr, alpha = self._args()
        # grad_spikes.to: what the cast of the spikes to the autocast dtype does in backward
        grad_x, grad_k = self.ops.backward_op(h, x if kind == "plif" else None, grad_spikes.to(h.dtype), self.w,
                                              kind, tau, vth, vr, alpha)
        grad_w = plif_w_grad(grad_k, self.w) if (self.w is not None and self.w.requires_grad) else None
        return grad_x, grad_w


def _merge(x: Tensor) -> Tensor:
    return x.flatten(0, 1)


# --------------------------------------------------------------------------------------------------
# GWFFN: BN_up -> neuron -> conv -> BN + residual -> neuron
# --------------------------------------------------------------------------------------------------


class _GWFFNMiddle(torch.autograd.Function):
    """``c_up`` (the up-projection's BatchNorm input) -> spikes entering the down-projection."""

    @staticmethod
    def forward(ctx, c_up, conv_weight, w_mid, w_out, g_up, b_up, g_mid, b_mid, plan):  # type: ignore[override]
        norm_up, neuron_mid, conv_cfg, norm_mid, neuron_out = plan
        steps = c_up.shape[:2]
        u4, mean_up, invstd_up = norm_up.forward(_merge(c_up))
        u = u4.unflatten(0, steps)
        s_mid, _ = neuron_mid.forward(u, store_h=False)
        c_mid4 = F.conv2d(_merge(s_mid), conv_weight, None, *conv_cfg)
        z4, mean_mid, invstd_mid = norm_mid.forward(c_mid4)
        o = z4.unflatten(0, steps) + u
        s_out, _ = neuron_out.forward(o, store_h=False)
        ctx.plan = plan
        ctx.save_for_backward(c_up, c_mid4, conv_weight, mean_up, invstd_up, mean_mid, invstd_mid)
        return s_out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        norm_up, neuron_mid, conv_cfg, norm_mid, neuron_out = ctx.plan
        c_up, c_mid4, conv_weight, mean_up, invstd_up, mean_mid, invstd_mid = ctx.saved_tensors
        steps = c_up.shape[:2]
        c_up4 = _merge(c_up)
        # The forward again, each piece just before its backward needs it, so that few wide tensors
        # are alive at once.
        with torch.no_grad():
            u = norm_up.recompute(c_up4).unflatten(0, steps)
            o = norm_mid.recompute(c_mid4).unflatten(0, steps) + u
            h_out = neuron_out.forward(o, store_h=True)[1]
            grad_o, grad_w_out = neuron_out.backward(h_out, o, grad_out)
            del h_out, o
            grad_c_mid4, grad_g_mid, grad_b_mid = norm_mid.backward(_merge(grad_o), c_mid4, mean_mid, invstd_mid)
            s_mid, h_mid = neuron_mid.forward(u, store_h=True)
            stride, padding, dilation, groups = conv_cfg
            grad_s_mid4, grad_conv_w, _ = torch.ops.aten.convolution_backward(
                grad_c_mid4, _merge(s_mid), conv_weight, None, list(stride), list(padding), list(dilation), False,
                [0, 0], groups, [True, ctx.needs_input_grad[1], False])
            del grad_c_mid4, s_mid
            grad_u, grad_w_mid = neuron_mid.backward(h_mid, u, grad_s_mid4.unflatten(0, steps))
            del h_mid, u, grad_s_mid4
            grad_u = grad_o + grad_u  # u feeds the middle neuron and the residual sum
            del grad_o
            grad_c_up4, grad_g_up, grad_b_up = norm_up.backward(_merge(grad_u), c_up4, mean_up, invstd_up)
        return (grad_c_up4.unflatten(0, steps), grad_conv_w, grad_w_mid, grad_w_out, grad_g_up, grad_b_up,
                grad_g_mid, grad_b_mid, None)


def gwffn_middle(c_up: Tensor, norm_up: nn.BatchNorm2d, neuron_mid: nn.Module, conv: nn.Conv2d,
                 norm_mid: nn.BatchNorm2d, neuron_out: nn.Module) -> Tensor:
    """``neuron_out(BN_mid(conv(neuron_mid(u))) + u)`` with ``u = BN_up(c_up)``, recomputed in backward.

    ``c_up`` is ``[T, B, C, H, W]``; the result equals the module calls bit for bit, in forward and
    in every gradient (see the module docstring). Call only where :func:`can_recompute` allows.
    """
    low = autocast_dtype(c_up.device.type)
    weight = conv.weight if low is None else conv.weight.to(low)  # what autocast would cast it to
    plan = (_Norm(norm_up), _Neuron(neuron_mid, c_up.device, low), (conv.stride, conv.padding, conv.dilation,
            conv.groups), _Norm(norm_mid), _Neuron(neuron_out, c_up.device, low))
    w_mid, w_out = plan[1].w, plan[4].w
    with torch.autocast(c_up.device.type, enabled=False):
        return _GWFFNMiddle.apply(c_up, weight, w_mid, w_out, norm_up.weight, norm_up.bias, norm_mid.weight,
                                  norm_mid.bias, plan)


# --------------------------------------------------------------------------------------------------
# DSSA: BN -> (y1^T s) * scale1 -> neuron -> (y2 attn) * scale2 -> neuron
# --------------------------------------------------------------------------------------------------


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    a3, b3, batch = fold_batch(a, b)
    return torch.bmm(a3, b3).view(*batch, a3.shape[-2], b3.shape[-1])


def _matmul_backward(grad: Tensor, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Gradients of ``a @ b`` for both operands, with the kernels autograd's ``bmm`` backward calls."""
    a3, b3, batch = fold_batch(a, b)
    return folded_matmul_backward(grad, a3, b3, batch, a.shape, b.shape)


class _DSSAMiddle(torch.autograd.Function):
    """``c`` (the key/value BatchNorm input) and ``s`` (input spikes) -> spikes entering the projection."""

    @staticmethod
    def _attention(y: Tensor, s: Tensor, heads: int, scale1: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        t, b, c = s.shape[:3]
        num_patches = y.shape[-2] * y.shape[-1]
        y = y.reshape(t, b, heads, 2 * c // heads, num_patches)
        y1, y2 = y[:, :, :, : c // heads, :], y[:, :, :, c // heads:, :]
        return y1.transpose(-1, -2), y2, s.reshape(t, b, heads, c // heads, s.shape[-2] * s.shape[-1])

    @staticmethod
    def forward(ctx, c, s, g, b, w_attn, w_out, plan):  # type: ignore[override]
        norm, neuron_attn, neuron_out, heads, scale1, attn_scale, channels_last, pack = plan
        steps = c.shape[:2]
        y4, mean, invstd = norm.forward(_merge(c))
        left1, y2, s_heads = _DSSAMiddle._attention(y4.unflatten(0, steps), s, heads, scale1)
        attn, _ = neuron_attn.forward(_matmul(left1, s_heads) * scale1, store_h=False)
        scale2 = attn_scale(attn)  # updates the firing-rate buffer, as the module path does here
        out = (_matmul(y2, attn) * scale2).reshape(s.shape)
        if channels_last:
            out = out.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        spikes, _ = neuron_out.forward(out, store_h=False)
        ctx.plan = plan
        ctx.spike_layout = None
        if pack is not None:  # the input spikes as bits, as the convolution before keeps them
            packed = pack(s)
            ctx.spike_layout = packed.layout()
            s = packed.bits
        ctx.save_for_backward(c, s, mean, invstd, scale2)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):  # type: ignore[override]
        norm, neuron_attn, neuron_out, heads, scale1, _, channels_last, _ = ctx.plan
        c, s, mean, invstd, scale2 = ctx.saved_tensors
        if ctx.spike_layout is not None:
            s = PackedSpikes(s, *ctx.spike_layout).unpack()
        steps = c.shape[:2]
        c4 = _merge(c)
        with torch.no_grad():
            y = norm.recompute(c4).unflatten(0, steps)
            left1, y2, s_heads = _DSSAMiddle._attention(y, s, heads, scale1)
            prod1 = _matmul(left1, s_heads)
            pre_attn = prod1 * scale1
            attn, h_attn = neuron_attn.forward(pre_attn, store_h=True)
            prod2 = _matmul(y2, attn)
            out = (prod2 * scale2).reshape(s.shape)
            if channels_last:
                out = out.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
            _, h_out = neuron_out.forward(out, store_h=True)
            del _
            grad_out, grad_w_out = neuron_out.backward(h_out, out, grad_spikes)
            del h_out, out
            grad_prod2 = (grad_out.reshape(prod2.shape) * scale2).to(prod2.dtype)
            del grad_out
            grad_y2, grad_attn = _matmul_backward(grad_prod2, y2, attn)
            del grad_prod2, attn
            grad_pre, grad_w_attn = neuron_attn.backward(h_attn, pre_attn, grad_attn)
            del h_attn, pre_attn, grad_attn
            grad_prod1 = (grad_pre * scale1).to(prod1.dtype)
            del grad_pre
            grad_left1, grad_s_heads = _matmul_backward(grad_prod1, left1, s_heads)
            del grad_prod1
            grad_y = torch.cat([grad_left1.transpose(-1, -2), grad_y2], dim=3).reshape(y.shape)
            grad_c4, grad_g, grad_b = norm.backward(_merge(grad_y), c4, mean, invstd)
        return (grad_c4.unflatten(0, steps), grad_s_heads.reshape(s.shape), grad_g, grad_b, grad_w_attn, grad_w_out,
                None)


def dssa_middle(c: Tensor, s: Tensor, norm: nn.BatchNorm2d, neuron_attn: nn.Module, neuron_out: nn.Module,
                heads: int, scale1: Tensor, attn_scale, channels_last: bool, spikes_as_bits: bool) -> Tensor:
    """DSSA from the key/value BatchNorm input ``c`` and input spikes ``s`` to the output neuron's spikes.

    ``attn_scale(attn_spikes) -> scale2`` is called once in forward (it updates the attention
    firing-rate buffer); ``channels_last`` stores the output neuron's input channels-last, as the
    module path does for channels-last input. Results and gradients equal the module calls; the
    attention products, the BatchNorm output and both membranes are recomputed in backward.
    """
    low = autocast_dtype(c.device.type)
    plan = (_Norm(norm), _Neuron(neuron_attn, c.device, low), _Neuron(neuron_out, c.device, low), heads, scale1,
            attn_scale, channels_last, pack_spikes if spikes_as_bits else None)
    with torch.autocast(c.device.type, enabled=False):
        return _DSSAMiddle.apply(c, s, norm.weight, norm.bias, plan[1].w, plan[2].w, plan)
