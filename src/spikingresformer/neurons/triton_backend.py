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
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import KIND_CODES, register_neuron_ops

__all__ = ["TRITON_OPS", "triton_multistep", "INTERPRET"]

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


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "the 'triton' neuron backend needs CUDA tensors (or TRITON_INTERPRET=1 set before import); "
            f"got a tensor on {x.device}. Use backend='fused' on this device."
        )
    if x.dtype not in _RND:
        raise TypeError(f"the 'triton' neuron backend does not support dtype {x.dtype}")


def _forward_impl(x: torch.Tensor, w: Optional[torch.Tensor], kind: str, tau: float, vth: float, vr: float,
                  store_h: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel of ``spikingresformer::triton_neuron_forward``."""
    _check_device(x)
    xc = x.contiguous()
    spikes = torch.empty_like(xc)
    h = torch.empty_like(xc) if store_h else xc.new_empty(0)
    steps = x.shape[0]
    n = x.numel() // max(steps, 1)
    if n and steps:
        k = torch.sigmoid(w.detach()).to(xc.device) if kind == "plif" else spikes  # type: ignore[union-attr]
        _fwd_kernel[(triton.cdiv(n, _BLOCK),)](
            xc, spikes, h if store_h else spikes, k, steps, n, tau, vth, vr,
            KIND=KIND_CODES[kind], RND=_RND[x.dtype], F64=x.dtype == torch.float64, STORE_H=store_h,
            BLOCK=_BLOCK, **_launch_opts(),
        )
    if spikes.stride() != x.stride():  # the strides the fake implementation promises
        spikes = torch.empty_like(x).copy_(spikes)
        h = torch.empty_like(x).copy_(h) if store_h else h
    return spikes, h


def _backward_impl(h: torch.Tensor, x: Optional[torch.Tensor], grad: torch.Tensor, w: Optional[torch.Tensor],
                   kind: str, tau: float, vth: float, vr: float, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel of ``spikingresformer::triton_neuron_backward``."""
    _check_device(h)
    hc, gc = h.contiguous(), grad.contiguous()
    xc = x.contiguous() if x is not None else hc
    k = torch.sigmoid(w.detach()).to(hc.device) if kind == "plif" else hc  # type: ignore[union-attr]
    steps = h.shape[0]
    n = h.numel() // max(steps, 1)
    grad_x = torch.empty_like(hc)
    if not (n and steps):
        return torch.empty_like(h), torch.zeros((), dtype=torch.float64, device=h.device)
    grid = (triton.cdiv(n, _BLOCK),)
    acc_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    part = torch.empty(grid[0] if kind == "plif" else 1, dtype=acc_dtype, device=h.device)
    _bwd_kernel[grid](
        hc, xc, gc, grad_x, k, part, steps, n, tau, vth, vr, alpha / 2.0, math.pi / 2.0 * alpha,
        KIND=KIND_CODES[kind], F64=h.dtype == torch.float64, BLOCK=_BLOCK, **_launch_opts(),
    )
    gk = part.double().sum() if kind == "plif" else torch.zeros((), dtype=torch.float64, device=h.device)
    if grad_x.stride() != h.stride():
        grad_x = torch.empty_like(h).copy_(grad_x)
    return grad_x, gk


#: The registered operators (``torch.ops.spikingresformer.triton_neuron_forward`` / ``_backward``).
TRITON_OPS = register_neuron_ops("triton_neuron", _forward_impl, _backward_impl)


def triton_multistep(
    x: torch.Tensor,
    kind: str,
    tau: float = 2.0,
    w: Optional[torch.Tensor] = None,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Triton multi-step neuron; same arguments and results as ``reference_multistep``."""
    return TRITON_OPS(x, kind, tau, w, v_threshold, v_reset, alpha)
