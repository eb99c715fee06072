"""DVS128 Gesture (Amir et al. 2017): 29 subjects x 3 lighting conditions, AEDAT 3.1, 11 classes, 128x128.

``root`` is the extracted ``DvsGesture`` folder (``trials_to_train.txt``, ``trials_to_test.txt``, the
``*.aedat`` recordings and their ``*_labels.csv`` files). Each labelled row is one sample: the events
with ``startTime_usec <= t < endTime_usec``. Class indices follow the official checkpoints, which
order gesture ids 1..11 by the string order of spikingjelly's folders "0".."10"::

    index:       0  1  2   3  4  5  6  7  8  9  10
    gesture id:  1  2  11  3  4  5  6  7  8  9  10
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from . import aedat
from .errors import DataOptionError, DatasetNotFoundError, EventFileError
from .framing import FrameCache, SizeLike, events_to_frames, frames_to_input, source_stamp

__all__ = ["DVS128Gesture", "GESTURE_CLASSES", "GESTURE_NAMES_BY_ID", "INDEX_TO_GESTURE_ID", "gesture_index",
           "read_gesture_labels", "LABEL_TIME_SLACK_US"]

#: Names of gesture ids 1..11 as the data set's documentation gives them.
GESTURE_NAMES_BY_ID: Dict[int, str] = dict(enumerate((
    "hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise", "right_arm_counter_clockwise",
    "left_arm_clockwise", "left_arm_counter_clockwise", "arm_roll", "air_drums", "air_guitar", "other_gestures",
), start=1))
_FOLDERS = sorted(str(i) for i in range(11))  # "0", "1", "10", "2", ..., "9"
#: Gesture id (1..11) of each output index, in the official checkpoints' order.
INDEX_TO_GESTURE_ID: Tuple[int, ...] = tuple(int(f) + 1 for f in _FOLDERS)
#: Class names by output index.
GESTURE_CLASSES: Tuple[str, ...] = tuple(GESTURE_NAMES_BY_ID[g] for g in INDEX_TO_GESTURE_ID)
#: A labelled segment may start/end up to this much (us) outside the recording's first/last event.
LABEL_TIME_SLACK_US = 1_000_000

DVSGESTURE_URL = "https://research.ibm.com/interactive/dvsgesture/ (DvsGesture.tar.gz; Amir et al., CVPR 2017)"
DVSGESTURE_LAYOUT = """\
<root>/trials_to_train.txt   (names of the training recordings, one per line)
<root>/trials_to_test.txt
<root>/user01_fluorescent.aedat           (AEDAT 3.1)
<root>/user01_fluorescent_labels.csv      (class,startTime_usec,endTime_usec)
...
(<root> is the 'DvsGesture' folder that DvsGesture.tar.gz extracts to)"""
SENSOR = 128


def gesture_index(gesture_id: int) -> int:
    """Output index of gesture id 1..11 in the official checkpoints' class order."""
    if not 1 <= gesture_id <= 11:
        raise ValueError(f"gesture id must be in 1..11, got {gesture_id}")
    return _FOLDERS.index(str(gesture_id - 1))


def read_gesture_labels(path: Union[str, os.PathLike]) -> np.ndarray:
    """Rows ``(class id 1..11, start us, end us)`` of a ``*_labels.csv`` file, validated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise EventFileError(path, "label file is missing") from None
    rows = []
    lines = text.splitlines()
    if not lines or not lines[0].strip().lower().startswith("class"):
        raise EventFileError(path, "label file does not start with the header 'class,startTime_usec,endTime_usec'")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            cls, start, end = (int(s) for s in line.split(","))
        except ValueError:  # not three integers
            raise EventFileError(
                path, f"line {lineno}: expected 'class,startTime_usec,endTime_usec' integers, got {line!r}"
            ) from None
        if not 1 <= cls <= 11:
            raise EventFileError(path, f"line {lineno}: class id {cls} outside 1..11")
        if end <= start:
            raise EventFileError(path, f"line {lineno}: end time {end} is not after start time {start}")
        rows.append((cls, start, end))
    if not rows:
        raise EventFileError(path, "label file has no labelled segments")
    return np.asarray(rows, dtype=np.int64)


def _not_found(root: Union[str, os.PathLike, None], problem: str) -> DatasetNotFoundError:
    return DatasetNotFoundError("DVS128 Gesture", root, problem, DVSGESTURE_LAYOUT, DVSGESTURE_URL)


def _read_trials(path: Path, root: Union[str, os.PathLike]) -> List[str]:
    if not path.is_file():
        raise _not_found(root, f"{path.name} is missing from {str(path.parent)!r}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [name if name.endswith(".aedat") else name + ".aedat" for name in names]


class DVS128Gesture(Dataset):
    """DVS128 Gesture as ``(frames float32 [T, 3, H, W], label)``; one sample per labelled segment.

    ``train`` picks the recordings of ``trials_to_train.txt`` or ``trials_to_test.txt``; ``img_size``
    None keeps 128x128. Framing one segment reads its whole recording, so all its segments are
    framed and cached together.
    """

    classes = GESTURE_CLASSES
    num_classes = 11
    in_chans = 3

    def __init__(self, root: Union[str, os.PathLike], train: bool, T: int, img_size: SizeLike = None,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 cache_dir: Optional[str] = None) -> None:
        if T < 1:
            raise DataOptionError(f"T must be at least 1, got {T}")
        if root is None:
            raise _not_found(root, "no data root given")
        self.root = Path(root)
        if not self.root.is_dir():
            raise _not_found(root, f"data folder {str(self.root)!r} does not exist")
        self.train = train
        self.T = T
        self.img_size = img_size
        self.transform = transform
        self.split = "official"
        self.split_name = "dvs128gesture:official (trials_to_train.txt / trials_to_test.txt)"
        trials = _read_trials(self.root / ("trials_to_train.txt" if train else "trials_to_test.txt"), root)
        if not trials:
            raise _not_found(root, "the trials list names no recordings")
        missing = [n for n in trials if not (self.root / n).is_file() or not self._labels_path(n).is_file()]
        if missing:
            raise _not_found(root, f"{len(missing)} recording(s) or label file(s) listed in the trials file are "
                                   f"missing, e.g. {missing[0]!r}")
        self.recordings = trials
        # one sample per labelled row: (recording, row index, label index, start, end)
        self.samples: List[Tuple[str, int, int, int, int]] = []
        self._labels: Dict[str, np.ndarray] = {}
        for name in trials:
            self._labels[name] = rows = read_gesture_labels(self._labels_path(name))
            for j, (cls, start, end) in enumerate(rows.tolist()):
                self.samples.append((name, j, gesture_index(cls), start, end))
        self.targets = [s[2] for s in self.samples]
        self.cache = FrameCache("dvs128gesture", self.root, T, cache_dir)

    def _labels_path(self, recording: str) -> Path:
        return self.root / (recording[: -len(".aedat")] + "_labels.csv")

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _key(recording: str, row: int) -> str:
        return f"{recording[: -len('.aedat')]}_{row}"

    def segment_events(self, recording: str) -> List[aedat.Events]:
        """Events of every labelled segment of one recording, in label-file order (validated)."""
        path = self.root / recording
        events = aedat.read_aedat31(path, (SENSOR, SENSOR))
        labels_path = self._labels_path(recording)
        if len(events) == 0:
            raise EventFileError(path, "recording holds no polarity events")
        t0, t1 = int(events.t.min()), int(events.t.max())
        out = []
        for j, (cls, start, end) in enumerate(self._labels[recording].tolist()):
            if start < t0 - LABEL_TIME_SLACK_US or end > t1 + LABEL_TIME_SLACK_US:
                raise EventFileError(labels_path, f"row {j + 1} (class {cls}) spans [{start}, {end}) us, outside "
                                                  f"the recording {recording}, whose events span [{t0}, {t1}] us")
            mask = (events.t >= start) & (events.t < end)
            if not mask.any():
                raise EventFileError(labels_path, f"row {j + 1} (class {cls}) spans [{start}, {end}) us but "
                                                  f"{recording} has no events there")
            out.append(events.select(mask))
        return out

    def events(self, i: int) -> aedat.Events:
        """Decoded events of sample ``i`` (one labelled segment)."""
        recording, row = self.samples[i][:2]
        return self.segment_events(recording)[row]

    def frames(self, i: int) -> np.ndarray:
        """``[T, 2, 128, 128]`` per-polarity counts of sample ``i`` (from the cache when possible)."""
        recording, row = self.samples[i][:2]
        stamp = source_stamp(self.root / recording, self._labels_path(recording))
        frames = self.cache.load(self._key(recording, row), stamp, (self.T, 2, SENSOR, SENSOR))
        if frames is not None:
            return frames
        for j, ev in enumerate(self.segment_events(recording)):
            f = events_to_frames(ev, self.T, SENSOR, SENSOR)
            self.cache.store(self._key(recording, j), stamp, f)
            if j == row:
                frames = f
        return frames

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return frames_to_input(self.frames(i), self.img_size, self.transform), self.samples[i][2]

    def __repr__(self) -> str:
        return f"DVS128Gesture(train={self.train}, T={self.T}, img_size={self.img_size}, samples={len(self)})"
