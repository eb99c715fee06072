"""The reference neuron backend: a plain PyTorch loop over time that mirrors the official release.

Every step is an ordinary autograd operation, so this backend is slow and keeps T copies of every
intermediate for backward, but it is the ground truth the fused backends are tested against. It is
also what exported ONNX graphs contain (plain element-wise operators, the loop unrolled over T).
The equations are written out in ``docs/numerics.md``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .common import check_kind, needs_autograd
from .surrogate import spike_atan

__all__ = ["reference_multistep"]


def reference_multistep(
    x: torch.Tensor,
    kind: str,
    tau: float = 2.0,
    w: Optional[torch.Tensor] = None,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Run a multi-step neuron over ``x`` of shape ``[T, ...]`` and return the spikes.

    ``kind`` is ``"lif"`` (the charge divides by ``tau``, as the official code does), ``"plif"``
    (the charge multiplies by ``sigmoid(w)``, ``w`` learnable) or ``"if"`` (no leak). The membrane
    starts at ``v_reset``; the reset is hard and detached from the graph.
    """
    check_kind(kind, w)
    differentiable = needs_autograd(x, w)
    v: torch.Tensor | float = v_reset
    k = w.sigmoid() if kind == "plif" else None  # type: ignore[union-attr]
    spikes = []
    for t in range(x.shape[0]):
        if kind == "if":
            h = v + x[t]
        elif kind == "lif":
            h = v + (x[t] - (v - v_reset)) / tau
        else:
            h = v + (x[t] - (v - v_reset)) * k
        # without autograd, plain operators (what torch.export / ONNX see); the same values
        s = spike_atan(h - v_threshold, alpha) if differentiable else (h - v_threshold >= 0).to(h.dtype)
        sd = s.detach()
        v = h * (1.0 - sd) + v_reset * sd
        spikes.append(s)
    return torch.stack(spikes)
