"""The ``triton`` neuron backend: fused forward and backward kernels for CUDA, written in Triton.

Each program owns ``BLOCK`` neurons and walks over time with the membrane in registers, so the
forward reads ``x`` once and writes the spikes and the pre-reset membrane ``h`` once; backward reads
``h`` and the incoming gradient once and writes ``grad_x`` once (PLIF also reads ``x`` and reduces
the gradient of ``w`` to one partial sum per program). Only ``h`` is stored for backward, in the
input's dtype; the spike is recomputed as ``h >= v_threshold``.

Arithmetic matches the reference loop: IEEE division (``div_rn``), no fused multiply-add
(``enable_fp_fusion=False``), and for bfloat16/float16 inputs every intermediate is rounded to the
input dtype where PyTorch's element-wise kernels round, so spikes are bit-identical. Scalars
(``tau``, thresholds) are passed as float32, as PyTorch does for float32 and 16-bit tensors.

On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
this module is imported), which is how the test-suite checks them without a GPU.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
from torch.autograd.function import once_differentiable

from .common import KIND_CODES, needs_autograd, plif_w_grad, unpack_decay
import triton.language as tl

__all__ = ["triton_multistep", "INTERPRET"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_RND = {torch.float32: 0, torch.float64: 0, torch.bfloat16: 1, torch.float16: 2}
_BLOCK = 1024


@triton.jit
def _rnd(v, RND: tl.constexpr):
    """Round ``v`` to the storage dtype and back (1: bfloat16, 2: float16), as PyTorch's ops do."""
    if RND == 1:
        # Round-to-nearest-even on the bit pattern: exact on GPUs and in the interpreter (whose
        # float32 -> bfloat16 cast truncates).
        u = v.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.to(tl.float32, bitcast=True)
    elif RND == 2:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v


@triton.jit
def _fwd_kernel(x_ptr, s_ptr, h_ptr, k_ptr, T, N, tau, vth, vr,
                KIND: tl.constexpr, RND: tl.constexpr, F64: tl.constexpr, STORE_H: tl.constexpr,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if F64:
        zero = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        zero = tl.zeros([BLOCK], dtype=tl.float32)
    v = zero + vr
    vr_st = _rnd(zero + vr, RND)
    if KIND == 2:
        k = tl.load(k_ptr).to(zero.dtype)
    n64 = N.to(tl.int64)
    for t in range(T):
        base = t * n64
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(zero.dtype)
        if KIND == 0:
            h = _rnd(v + x, RND)
        elif KIND == 1:
            d = _rnd(x - _rnd(v - vr, RND), RND)
            if F64:
                c = d / tau  # IEEE double division (div.rn.f64)
            else:
                c = tl.math.div_rn(d, zero + tau)
            h = _rnd(v + _rnd(c, RND), RND)
        else:
            d = _rnd(x - _rnd(v - vr, RND), RND)
            h = _rnd(v + _rnd(d * k, RND), RND)
        s = h >= vth
        tl.store(s_ptr + base + offs, tl.where(s, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if STORE_H:
            tl.store(h_ptr + base + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
        v = tl.where(s, vr_st, h)


@triton.jit
def _bwd_kernel(h_ptr, x_ptr, g_ptr, gx_ptr, k_ptr, part_ptr, T, N, tau, vth, vr, c1, c2,
                KIND: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if F64:
        zero = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        zero = tl.zeros([BLOCK], dtype=tl.float32)
    gv = zero
    acc = zero
    if KIND == 2:
        k = tl.load(k_ptr).to(zero.dtype)
    n64 = N.to(tl.int64)
    for i in range(T):
        t = T - 1 - i
        base = t * n64
        h = tl.load(h_ptr + base + offs, mask=mask, other=0.0).to(zero.dtype)
        q = c2 * (h - vth)
        sg = c1 / (1.0 + q * q)
        g = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(zero.dtype) * sg
        g = g + tl.where(h >= vth, zero, gv)
        if KIND == 0:
            gx = g
            gv = g
        elif KIND == 1:
            if F64:
                gx = g / tau
            else:
                gx = tl.math.div_rn(g, zero + tau)
            gv = g - gx
        else:
            gx = g * k
            gv = g - gx
            hp = tl.load(h_ptr + base - n64 + offs, mask=mask & (t > 0), other=0.0).to(zero.dtype)
            vp = tl.where(hp >= vth, zero + vr, hp)
            vp = tl.where(t > 0, vp, zero + vr)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(zero.dtype)
            acc += tl.where(mask, g * (x - (vp - vr)), zero)
        tl.store(gx_ptr + base + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if KIND == 2:
        tl.store(part_ptr + pid, tl.sum(acc, axis=0))


def _launch_opts() -> dict:
    return {} if INTERPRET else {"enable_fp_fusion": False, "num_warps": 4}


def _forward(x: torch.Tensor, kind: str, k: Optional[torch.Tensor], tau: float, vth: float, vr: float,
             store_h: bool):
    steps = x.shape[0]
    n = x.numel() // steps
    spikes = torch.empty_like(x)
    h = torch.empty_like(x) if store_h else spikes  # dummy pointer when not stored
    kp = k if k is not None else spikes
    grid = (triton.cdiv(n, _BLOCK),)
    _fwd_kernel[grid](
        x, spikes, h, kp, steps, n, tau, vth, vr,
        KIND=KIND_CODES[kind], RND=_RND[x.dtype], F64=x.dtype == torch.float64, STORE_H=store_h, BLOCK=_BLOCK,
        **_launch_opts(),
    )
    return spikes, (h if store_h else None)


class TritonNeuronFunction(torch.autograd.Function):
    """Multi-step neuron with Triton forward/backward kernels; ``w`` is PLIF's raw weight or ``None``."""

    @staticmethod
    def forward(ctx, x, w, kind, tau, vth, vr, alpha):  # type: ignore[override]
        xc = x.contiguous()
        k = torch.sigmoid(w.detach()).to(xc.device) if kind == "plif" else None
        spikes, h = _forward(xc, kind, k, tau, vth, vr, True)
        ctx.kind, ctx.tau, ctx.vth, ctx.vr, ctx.alpha = kind, tau, vth, vr, alpha
        if kind == "plif":
            ctx.save_for_backward(h, xc, k)
        else:
            ctx.save_for_backward(h)
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        saved = ctx.saved_tensors
        h = saved[0]
        kind = ctx.kind
        x = saved[1] if kind == "plif" else h
        k = saved[2] if kind == "plif" else h
        grad = grad.contiguous()
        steps = h.shape[0]
        n = h.numel() // steps
        grid = (triton.cdiv(n, _BLOCK),)
        grad_x = torch.empty_like(h)
        acc_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        part = torch.empty(grid[0] if kind == "plif" else 1, dtype=acc_dtype, device=h.device)
        _bwd_kernel[grid](
            h, x, grad, grad_x, k, part, steps, n, ctx.tau, ctx.vth, ctx.vr,
            ctx.alpha / 2.0, math.pi / 2.0 * ctx.alpha,
            KIND=KIND_CODES[kind], F64=h.dtype == torch.float64, BLOCK=_BLOCK, **_launch_opts(),
        )
        grad_w = None
        if kind == "plif" and ctx.needs_input_grad[1]:
            grad_w = plif_w_grad(part.double().sum(), k)
        return grad_x, grad_w, None, None, None, None, None


def triton_multistep(
    x: torch.Tensor,
    kind: str,
    decay: Optional[torch.Tensor | float],
    v_threshold: float,
    v_reset: float,
    alpha: float,
) -> torch.Tensor:
    """Triton multi-step neuron; same signature and results as ``reference_multistep``."""
    w, tau = unpack_decay(kind, decay)
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "the 'triton' neuron backend needs CUDA tensors (or TRITON_INTERPRET=1 set before import); "
            f"got a tensor on {x.device}. Use backend='fused' on this device."
        )
    if x.dtype not in _RND:
        raise TypeError(f"the 'triton' neuron backend does not support dtype {x.dtype}")
    vth, vr, alpha = float(v_threshold), float(v_reset), float(alpha)
    if x.numel() == 0:
        return torch.empty_like(x)
    if needs_autograd(x, w):
        return TritonNeuronFunction.apply(x, w, kind, tau, vth, vr, alpha)
    k = torch.sigmoid(w).to(x.device) if w is not None else None
    return _forward(x.contiguous(), kind, k, tau, vth, vr, False)[0]
