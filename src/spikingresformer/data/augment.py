"""Sample augmentations: the DVS augment of the event data sets and the small random shift of the digits.

:class:`DVSAugment` mirrors the official code's (flip, then one of roll 1/3, rotate 30, cutout 1/3;
``docs/data.md`` gives the details). Randomness comes from torch's generator, so DataLoader workers
get different draws.
"""

from __future__ import annotations

from typing import Optional

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

__all__ = ["DVSAugment", "RandomShift"]


class DVSAugment:
    """Flip p=0.5, then one of roll (1/3), rotation (30 degrees) or cutout (1/3) on [T, C, H, W]."""

    def __init__(self, flip_p: float = 0.5, roll: float = 1 / 3, degrees: float = 30.0, cutout: float = 1 / 3,
                 generator: Optional[torch.Generator] = None) -> None:
        self.flip_p = flip_p
        self.roll = roll
        self.degrees = degrees
        self.cutout = cutout
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _randint(self, low: int, high_inclusive: int) -> int:
        return int(torch.randint(low, high_inclusive + 1, (), generator=self.generator))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment one sample ``[T, C, H, W]`` (all frames transformed identically)."""
        if x.dim() != 4:
            raise ValueError(f"DVSAugment expects [T, C, H, W], got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if self._rand() < self.flip_p:
            x = torch.flip(x, dims=(-1,))
        op = self._randint(0, 2)
        if op == 0:
            ly, lx = int(H * self.roll), int(W * self.roll)
            dy, dx = self._randint(-ly, ly), self._randint(-lx, lx)
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        elif op == 1:
            angle = (2 * self._rand() - 1) * self.degrees
            x = TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
        else:
            lh, lw = int(H * self.cutout), int(W * self.cutout)
            cy, cx = self._randint(0, H - 1), self._randint(0, W - 1)
            y1, y2 = max(cy - lh // 2, 0), min(cy + lh // 2, H)
            x1, x2 = max(cx - lw // 2, 0), min(cx + lw // 2, W)
            x = x.clone()
            x[..., y1:y2, x1:x2] = 0
        return x

    def __repr__(self) -> str:
        return (f"DVSAugment(flip_p={self.flip_p}, roll={self.roll:.3g}, degrees={self.degrees}, "
                f"cutout={self.cutout:.3g})")


class RandomShift:
    """Shift the last two axes by up to ``max_shift`` px in y and x at random, filling the gap with ``fill``.

    One offset pair ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``, is drawn from torch's
    generator per call and applied to every leading index (all T frames, all channels) alike: pixel
    ``(y, x)`` of the result is pixel ``(y - dy, x - dx)`` of the input, or ``fill`` where that lies
    outside. Used by ``digits`` (fill = the normalised background) and ``event-digits`` (fill 0).
    """

    def __init__(self, max_shift: int = 1, fill: float = 0.0) -> None:
        if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
            raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
        self.max_shift = max_shift
        self.fill = float(fill)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Shift one sample (any shape ``[..., H, W]``)."""
        m = self.max_shift
        if m == 0:
            return x
        dy, dx = torch.randint(-m, m + 1, (2,)).tolist()
        H, W = x.shape[-2:]
        out = torch.full_like(x, self.fill)
        if abs(dy) >= H or abs(dx) >= W:  # shifted out entirely
            return out
        src_y, dst_y = slice(max(0, -dy), H - max(0, dy)), slice(max(0, dy), H - max(0, -dy))
        src_x, dst_x = slice(max(0, -dx), W - max(0, dx)), slice(max(0, dx), W - max(0, -dx))
        out[..., dst_y, dst_x] = x[..., src_y, src_x]
        return out

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift}, fill={self.fill:g})"
