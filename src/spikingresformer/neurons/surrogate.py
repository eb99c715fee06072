"""Heaviside spike function with the ATan surrogate gradient."""

from __future__ import annotations

import math

import torch

__all__ = ["atan_surrogate_grad", "SpikeATan", "spike_atan"]


def atan_surrogate_grad(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Derivative of the ATan surrogate, ``(alpha/2) / (1 + (pi/2 * alpha * u)^2)``, at ``u = h - v_th``."""
    return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * u).square())


class SpikeATan(torch.autograd.Function):
    """Forward: ``(u >= 0)`` as the dtype of ``u``. Backward: the ATan surrogate gradient."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad_spike * atan_surrogate_grad(u, ctx.alpha), None


def spike_atan(u: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Spike where ``u >= 0``; gradients use the ATan surrogate with width ``alpha``."""
    return SpikeATan.apply(u, alpha)
