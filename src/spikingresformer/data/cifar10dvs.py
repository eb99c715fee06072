"""CIFAR10-DVS (Li et al. 2017): 10 x 1,000 jAER AEDAT 2.0 recordings of CIFAR-10 images, 128x128.

``root`` holds the ten class folders as the published archives extract
(``root/airplane/cifar10_airplane_0.aedat`` ...); labels follow CIFAR-10's alphabetical class order.
The data set has no official split: ``"official"`` (the official code's string-sorted 90/10 split),
``"first100"`` (ids 0-99 test) and ``"random:<seed>"`` are provided, as ``docs/data.md`` describes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import CIFAR10_CLASSES
from . import aedat
from .errors import DataOptionError, DatasetNotFoundError, EventFileError
from .framing import FrameCache, SizeLike, events_to_frames, frames_to_input, source_stamp

__all__ = ["CIFAR10DVS", "CIFAR10DVS_CLASSES", "CIFAR10DVS_URL", "parse_split"]

CIFAR10DVS_CLASSES = CIFAR10_CLASSES
CIFAR10DVS_URL = "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 (Li et al., Front. Neurosci. 2017)"
CIFAR10DVS_LAYOUT = """\
<root>/airplane/cifar10_airplane_0.aedat ... cifar10_airplane_999.aedat
<root>/automobile/cifar10_automobile_0.aedat ...
... one folder per class: airplane automobile bird cat deer dog frog horse ship truck
(jAER AEDAT 2.0 files; the published per-class zip archives extract to these folders)"""
_ID_RE = re.compile(r"(\d+)\.aedat$")
SENSOR = 128


def parse_split(split: str) -> Tuple[str, Optional[int]]:
    """Validate a CIFAR10-DVS split name: ``('official'|'first100', None)`` or ``('random', seed)``."""
    if split in ("official", "first100"):
        return split, None
    if split.startswith("random:"):
        try:
            return "random", int(split.split(":", 1)[1])
        except ValueError:
            pass
    raise DataOptionError(f"unknown CIFAR10-DVS split {split!r}; expected 'official', 'first100' or 'random:<seed>'")


def _file_id(name: str) -> int:
    m = _ID_RE.search(name)
    if m is None:
        raise DataOptionError(f"cannot read the sample id from file name {name!r} (expected ..._<id>.aedat)")
    return int(m.group(1))


def split_files(files: List[str], split: str, train: bool) -> List[str]:
    """The members of one class's split; ``files`` are that class's file names."""
    kind, seed = parse_split(split)
    ordered = sorted(files)  # string order, as the official code
    n_train = len(ordered) * 9 // 10
    if kind == "official":
        return ordered[:n_train] if train else ordered[n_train:]
    if kind == "first100":
        return [f for f in ordered if (_file_id(f) >= 100) == train]
    perm = np.random.default_rng(seed).permutation(len(ordered))
    chosen = perm[:n_train] if train else perm[n_train:]
    return [ordered[i] for i in sorted(chosen)]


def _not_found(root: Union[str, os.PathLike, None], problem: str) -> DatasetNotFoundError:
    return DatasetNotFoundError("CIFAR10-DVS", root, problem, CIFAR10DVS_LAYOUT, CIFAR10DVS_URL)


class CIFAR10DVS(Dataset):
    """CIFAR10-DVS as ``(frames float32 [T, 3, H, W], label)``; frames cached on disk per T.

    ``train`` picks the training or test part of ``split``; ``img_size`` None keeps 128x128.
    """

    classes = CIFAR10DVS_CLASSES
    num_classes = 10
    in_chans = 3

    def __init__(self, root: Union[str, os.PathLike], train: bool, T: int, split: str = "official",
                 img_size: SizeLike = None, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 cache_dir: Optional[str] = None) -> None:
        parse_split(split)
        if T < 1:
            raise DataOptionError(f"T must be at least 1, got {T}")
        if root is None:
            raise _not_found(root, "no data root given")
        self.root = Path(root)
        self.train = train
        self.T = T
        self.split = split
        self.split_name = f"cifar10dvs:{split}"
        self.img_size = img_size
        self.transform = transform
        self.samples: List[Tuple[str, int]] = []  # (relative path, label)
        if not self.root.is_dir():
            raise _not_found(root, f"data folder {str(self.root)!r} does not exist")
        missing = [c for c in self.classes if not (self.root / c).is_dir()]
        if missing:
            raise _not_found(root, f"class folder(s) missing: {', '.join(missing)}")
        for label, cls in enumerate(self.classes):
            files = [f for f in os.listdir(self.root / cls) if f.endswith(".aedat")]
            if not files:
                raise _not_found(root, f"class folder {cls!r} holds no .aedat files")
            self.samples.extend((f"{cls}/{f}", label) for f in split_files(files, split, train))
        if not self.samples:
            raise DataOptionError(
                f"CIFAR10-DVS split {split!r} leaves no samples for the {'training' if train else 'test'} part "
                f"of {str(self.root)!r}"
            )
        self.targets = [label for _, label in self.samples]
        self.cache = FrameCache("cifar10dvs", self.root, T, cache_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, i: int) -> Path:
        """Source file of sample ``i``."""
        return self.root / self.samples[i][0]

    def events(self, i: int) -> aedat.Events:
        """Decoded events of sample ``i`` (x, y, p in spikingjelly's convention); an empty recording is an error."""
        events = aedat.read_cifar10dvs(self.path(i))
        if len(events) == 0:
            raise EventFileError(self.path(i), "recording holds no events")
        return events

    def frames(self, i: int) -> np.ndarray:
        """``[T, 2, 128, 128]`` per-polarity counts of sample ``i`` (from the cache when possible)."""
        key = self.samples[i][0][: -len(".aedat")]
        stamp = source_stamp(self.path(i))
        frames = self.cache.load(key, stamp, (self.T, 2, SENSOR, SENSOR))
        if frames is None:
            frames = events_to_frames(self.events(i), self.T, SENSOR, SENSOR)
            self.cache.store(key, stamp, frames)
        return frames

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return frames_to_input(self.frames(i), self.img_size, self.transform), self.samples[i][1]

    def __repr__(self) -> str:
        return (f"CIFAR10DVS(split={self.split!r}, train={self.train}, T={self.T}, img_size={self.img_size}, "
                f"samples={len(self)})")
