"""Events to frames ("split by number", SPEC section 8), the 3-channel model input, and the frame cache.

With N events and T frames, frame ``i`` holds events ``[i * (N // T), (i + 1) * (N // T))`` and the
last frame also takes the remainder (so with ``N < T`` every event lands in the last frame). Each
frame is ``[2, H, W]`` per-polarity counts: channel 0 counts OFF events (``p == 0``), channel 1 ON
events (``p == 1``), as spikingjelly's ``integrate_events_segment_to_frame`` does. The model input is
those two channels plus their sum, resized bilinearly with antialiasing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .aedat import Events

__all__ = [
    "split_by_number_bounds",
    "events_to_frames",
    "frames_to_input",
    "FrameCache",
    "default_cache_root",
]

SizeLike = Union[int, Tuple[int, int], None]


def split_by_number_bounds(n: int, T: int) -> Tuple[np.ndarray, np.ndarray]:
    """Start and end event index of each of the T frames for N events (split by number)."""
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    di = n // T
    starts = np.arange(T, dtype=np.int64) * di
    ends = starts + di
    ends[-1] = n
    return starts, ends


def events_to_frames(events: Events, T: int, height: int = 128, width: int = 128) -> np.ndarray:
    """Integrate events into ``[T, 2, H, W]`` per-polarity counts by event number (one bincount)."""
    n = len(events)
    di = n // T
    if di > 0:
        frame = np.minimum(np.arange(n, dtype=np.int64) // di, T - 1)
    else:
        frame = np.full(n, T - 1, dtype=np.int64)
    x = events.x.astype(np.int64, copy=False)
    y = events.y.astype(np.int64, copy=False)
    p = (events.p != 0).astype(np.int64)
    if n and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        raise ValueError(f"events lie outside the {width}x{height} sensor")
    flat = ((frame * 2 + p) * height + y) * width + x
    counts = np.bincount(flat, minlength=T * 2 * height * width)
    counts = counts.reshape(T, 2, height, width)
    dtype = np.uint16 if (counts.size == 0 or counts.max() <= np.iinfo(np.uint16).max) else np.uint32
    return counts.astype(dtype)


def _size_tuple(size: SizeLike) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def frames_to_input(
    frames: Union[np.ndarray, torch.Tensor], size: SizeLike = None, transform: Optional[Any] = None
) -> torch.Tensor:
    """``[T, 2, H, W]`` counts -> float32 ``[T, 3, h, w]``: OFF, ON, their sum; bilinear antialiased resize.

    ``transform`` (a data set's sample transform, e.g. the DVS augment) is applied last.
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    x = x.to(torch.float32)
    x = torch.cat([x, x.sum(dim=1, keepdim=True)], dim=1)
    hw = _size_tuple(size)
    if hw is not None and tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    x = x.contiguous()
    return transform(x) if transform is not None else x


def default_cache_root() -> Path:
    """``$SPIKINGRESFORMER_CACHE`` or ``~/.cache/spikingresformer``: where event frames are cached."""
    env = os.environ.get("SPIKINGRESFORMER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "spikingresformer"


class FrameCache:
    """On-disk cache of framed samples, one ``.npz`` per sample and T, written atomically.

    Layout: ``<cache root>/<dataset>-<hash of the data root>/T<T>/<key>.npz``. Each file stores the
    frames and a ``source`` stamp (the source file's size); a stamp mismatch means the source changed
    and the entry is ignored. A write goes to a temporary file in the same folder that is renamed into
    place with ``os.replace`` only once complete, so an interrupted or failed conversion never leaves a
    file that a later run would trust.
    """

    def __init__(self, dataset: str, data_root: Union[str, os.PathLike], T: int, cache_dir: Optional[str] = None):
        root_id = hashlib.sha1(os.path.realpath(os.fspath(data_root)).encode()).hexdigest()[:10]
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
        self.dir = base / f"{dataset}-{root_id}" / f"T{T}"
        self.T = T
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """File that holds sample ``key``."""
        return self.dir / f"{key}.npz"

    def load(self, key: str, source: str) -> Optional[np.ndarray]:
        """Cached frames of ``key`` if present and made from the same ``source`` stamp, else None."""
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["source"]) != source or int(z["T"]) != self.T:
                    self.misses += 1
                    return None
                frames = z["frames"]
        except (FileNotFoundError, OSError, KeyError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return frames

    def store(self, key: str, source: str, frames: np.ndarray) -> None:
        """Write ``frames`` for ``key`` atomically (temporary file, then ``os.replace``)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, frames=frames, source=np.array(source), T=np.array(self.T))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def info(self) -> Dict[str, Any]:
        """Where the cache lives and how it has been used so far in this process."""
        return {"dir": str(self.dir), "hits": self.hits, "misses": self.misses}


def source_stamp(*paths: Union[str, os.PathLike]) -> str:
    """A cheap stamp of the source files (their sizes) stored next to cached frames."""
    return ";".join(f"{os.path.basename(os.fspath(p))}:{os.path.getsize(p)}" for p in paths)
