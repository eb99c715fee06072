"""The reference neuron backend: a plain PyTorch loop over time that mirrors the official release.

Every step is an ordinary autograd operation, so this backend is slow and keeps T copies of every
intermediate for backward, but it is the ground truth the fused backends are tested against.
"""

from __future__ import annotations

from typing import Optional

import torch

from .surrogate import spike_atan

__all__ = ["reference_multistep"]


def reference_multistep(
    x: torch.Tensor,
    kind: str,
    decay: Optional[torch.Tensor | float],
    v_threshold: float,
    v_reset: float,
    alpha: float,
) -> torch.Tensor:
    """Run a multi-step neuron over ``x`` of shape ``[T, ...]`` and return the spikes.

    ``kind`` is ``"lif"`` (``decay`` = tau as a float; the charge divides by it, as the official code
    does), ``"plif"`` (``decay`` = the raw learnable weight ``w``; the charge multiplies by
    ``sigmoid(w)``) or ``"if"`` (``decay`` unused). The membrane starts
    at ``v_reset``; reset is hard and detached from the graph (SPEC section 2).
    """
    v: torch.Tensor | float = v_reset
    k = decay.sigmoid() if kind == "plif" else None  # type: ignore[union-attr]
    spikes = []
    for t in range(x.shape[0]):
        if kind == "if":
            h = v + x[t]
        elif kind == "lif":
            h = v + (x[t] - (v - v_reset)) / decay  # type: ignore[operator]
        else:
            h = v + (x[t] - (v - v_reset)) * k  # type: ignore[operator]
        s = spike_atan(h - v_threshold, alpha)
        sd = s.detach()
        v = h * (1.0 - sd) + v_reset * sd
        spikes.append(s)
    return torch.stack(spikes)
