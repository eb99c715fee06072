"""Multi-step wrappers of stateless layers.

Stateless layers act on ``[T, B, ...]`` tensors by folding time into the batch (``[T*B, ...]``)
and unfolding the result, so BatchNorm statistics are taken over T and B together
(``docs/numerics.md``). The wrappers keep the official module and parameter names (``*.weight``
for convolutions and the classifier, ``*.bn.*`` for BatchNorm) so official checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx
from torch import nn

__all__ = ["SeqConv2d", "SeqBatchNorm2d", "SeqMaxPool2d", "SeqLinear", "SpikingMatmul", "fold_time",
           "merge_time", "split_time"]


def merge_time(x: torch.Tensor, name: str = "layer") -> torch.Tensor:
    """``[T, B, C, H, W]`` -> ``[T*B, C, H, W]`` (a view); a 4-d ``[N, C, H, W]`` passes unchanged."""
    if x.dim() == 4:
        return x
    if x.dim() != 5:
        raise ValueError(f"{name} expects [T, B, C, H, W] (or [N, C, H, W]), got shape {tuple(x.shape)}")
    return x.flatten(0, 1)


def split_time(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo :func:`merge_time`: ``[T*B, ...]`` -> ``[T, B, ...]`` when ``like`` had a time axis."""
    return y if like.dim() == 4 else y.unflatten(0, like.shape[:2])


# rank-dependent branches: FX records each as one call (torch.compile traces through them)
for _fn in ("merge_time", "split_time"):
    torch.fx.wrap(_fn)


def fold_time(layer: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``forward`` (an image layer's forward) to ``x`` of shape ``[T, B, C, H, W]`` or ``[N, C, H, W]``.

    The 4-d form serves a batch that has no time axis (static images, whose stem runs once for all
    steps).
    """
    return split_time(forward(merge_time(x, type(layer).__name__)), x)


class SeqConv2d(nn.Conv2d):
    """``nn.Conv2d`` over ``[T, B, C, H, W]``; time is folded into the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return fold_time(self, x, super().forward)


class SeqMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` over ``[T, B, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return fold_time(self, x, super().forward)


class SeqBatchNorm2d(nn.Module):
    """BatchNorm2d over ``[T, B, C, H, W]`` with statistics over T and B; the layer lives in ``.bn``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold_time(self, x, self.bn)


class SeqLinear(nn.Linear):
    """``nn.Linear`` applied to the last axis of ``[T, B, features]`` (no reshaping needed)."""


class SpikingMatmul(nn.Module):
    """``left @ right`` as a named module, so hooks (energy accounting) can see the DSSA matmuls.

    ``spike_operand`` names which operand carries spikes (``"right"`` in DSSA).
    """

    def __init__(self, spike_operand: str = "right") -> None:
        super().__init__()
        if spike_operand not in ("left", "right"):
            raise ValueError(f"spike_operand must be 'left' or 'right', got {spike_operand!r}")
        self.spike_operand = spike_operand

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.matmul(left, right)

    def extra_repr(self) -> str:
        return f"spike_operand={self.spike_operand}"
