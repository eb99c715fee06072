"""Argument handling shared by the fused backends (C/PyTorch and Triton)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["KIND_CODES", "unpack_decay", "needs_autograd", "plif_w_grad"]

#: Neuron kinds as the kernels number them.
KIND_CODES = {"if": 0, "lif": 1, "plif": 2}


def unpack_decay(kind: str, decay: Optional[torch.Tensor | float]) -> Tuple[Optional[torch.Tensor], float]:
    """``(w, tau)`` from a backend's ``decay`` argument: PLIF's raw weight, or LIF's tau (1.0 otherwise)."""
    if kind not in KIND_CODES:
        raise ValueError(f"unknown neuron kind {kind!r}; expected one of {sorted(KIND_CODES)}")
    if kind == "plif":
        w = decay if isinstance(decay, torch.Tensor) else torch.tensor(float(decay))  # type: ignore[arg-type]
        return w, 1.0
    if kind == "lif":
        return None, float(decay)  # type: ignore[arg-type]
    return None, 1.0


def needs_autograd(x: torch.Tensor, w: Optional[torch.Tensor]) -> bool:
    """Whether a call must build an autograd node (otherwise nothing is stored for backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or (w is not None and w.requires_grad))


def plif_w_grad(grad_k: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Gradient of PLIF's raw ``w`` from the summed gradient of ``k = sigmoid(w)``, in float64."""
    kd = k.double()
    return (grad_k.double() * kd * (1.0 - kd)).to(k.dtype)
