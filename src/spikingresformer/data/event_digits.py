"""'event-digits': scikit-learn's digits turned into DVS recordings by simulated saccades, offline.

Each digit of the fixed ``digits`` split is upsampled to ``digit_size`` px, centred on a
``sensor_size`` px sensor, converted to events (:func:`~.saccades.images_to_events`) and framed
like the DVS data sets. Everything is a deterministic function of ``seed``, which fixes the
simulated camera; the train and test parts built with the same seed share the camera.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .aedat import Events
from .digits import load_digits_split
from .errors import DataOptionError
from .framing import FrameCache, SizeLike, events_to_frames, frames_to_input
from .saccades import SaccadeDVSConfig, images_to_events

__all__ = ["EventDigits"]

_STAMP = "v2"  # what the cached split is made of; v1 stored int16 counts


class EventDigits(Dataset):
    """Digits as simulated DVS recordings: ``(frames float32 [T, 3, H, W], label)``.

    ``img_size`` None keeps ``sensor_size``; ``cfg`` holds the camera and motion constants. ``cache_dir``
    None caches the framed split under ``$SPIKINGRESFORMER_FRAME_CACHE`` or ``~/.cache/spikingresformer``,
    False not at all (building it from scratch takes a few seconds).
    """

    num_classes = 10
    in_chans = 3

    def __init__(self, train: bool, T: int = 8, img_size: SizeLike = None, sensor_size: int = 16, digit_size: int = 12,
                 seed: int = 0, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 cfg: SaccadeDVSConfig = SaccadeDVSConfig(), cache_dir: Union[str, None, bool] = None) -> None:
        for name, value, low in (("T", T, 1), ("sensor_size", sensor_size, 1), ("digit_size", digit_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DataOptionError(f"event-digits: {name} must be an integer of at least {low}, got {value!r}")
        if digit_size > sensor_size:
            raise DataOptionError(f"event-digits: digit_size {digit_size} does not fit on the {sensor_size} px sensor")
        images, labels = load_digits_split(train)
        x = torch.from_numpy(images).unsqueeze(1)
        if digit_size != images.shape[-1]:
            x = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
        digits = x[:, 0].clamp(0, 1).numpy()
        self.train = train
        self.T = T
        self.img_size = img_size
        self.sensor_size = sensor_size
        self.seed = seed
        self.cfg = cfg
        self.transform = transform
        self.split_name = "event-digits: digits' fixed stratified 80/20 split (seed 0)"
        self._digits = digits
        self.labels = torch.from_numpy(labels)
        self.targets = labels.tolist()
        key = (
            f"{'train' if train else 'test'}-S{sensor_size}-D{digit_size}-seed{seed}-"
            + hashlib.sha1(repr(cfg).encode()).hexdigest()[:10]
        )
        shape = (len(labels), T, 2, sensor_size, sensor_size)
        cache = FrameCache("event-digits", "sklearn-digits", T, cache_dir) if cache_dir is not False else None
        counts = cache.load(key, _STAMP, shape) if cache is not None else None
        if counts is None:
            evs = images_to_events(digits, sensor_size, cfg, seed=seed)
            counts = np.stack([events_to_frames(ev, T, sensor_size, sensor_size) for ev in evs])
            del evs
            if cache is not None:
                cache.store(key, _STAMP, counts)
        self._counts = counts  # [N, T, 2, S, S] per-polarity counts of the whole split

    def __len__(self) -> int:
        return len(self.labels)

    def frames(self, i: int) -> np.ndarray:
        """``[T, 2, S, S]`` per-polarity counts of sample ``i`` (S = ``sensor_size``)."""
        return self._counts[i]

    def events(self, i: int) -> Events:
        """The simulated event stream of sample ``i`` (simulated again on demand)."""
        return images_to_events(self._digits[i : i + 1], self.sensor_size, self.cfg, seed=self.seed)[0]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return frames_to_input(self.frames(i), self.img_size, self.transform), int(self.labels[i])

    def __repr__(self) -> str:
        return (
            f"EventDigits(train={self.train}, T={self.T}, img_size={self.img_size}, sensor_size={self.sensor_size}, "
            f"seed={self.seed}, samples={len(self)})"
        )
