"""Events to frames ("split by number"), the 3-channel model input, and the on-disk frame cache.

``docs/data.md`` specifies the framing protocol and the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_open
from .aedat import Events
from .errors import FrameCacheWarning

__all__ = ["FRAME_CACHE_ENV", "COUNT_DTYPES", "events_to_frames", "frames_to_input", "FrameCache",
           "default_cache_root", "source_stamp"]

SizeLike = Union[int, Tuple[int, int], None]

#: Environment variable that moves the frame cache (default ``~/.cache/spikingresformer``).
FRAME_CACHE_ENV = "SPIKINGRESFORMER_FRAME_CACHE"
_OLD_FRAME_CACHE_ENV = "SPIKINGRESFORMER_CACHE"
#: The dtypes :func:`events_to_frames` produces, the only ones a cache entry may hold.
COUNT_DTYPES: Tuple[np.dtype, ...] = (np.dtype(np.uint16), np.dtype(np.uint32))


def events_to_frames(events: Events, T: int, height: int = 128, width: int = 128) -> np.ndarray:
    """Integrate events into ``[T, 2, H, W]`` per-polarity counts by event number (one bincount)."""
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    n = len(events)
    di = n // T
    frame = np.minimum(np.arange(n, dtype=np.int64) // di, T - 1) if di else np.full(n, T - 1, dtype=np.int64)
    x = events.x.astype(np.int64, copy=False)
    y = events.y.astype(np.int64, copy=False)
    p = (events.p != 0).astype(np.int64)
    if n and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        raise ValueError(f"events lie outside the {width}x{height} sensor")
    flat = ((frame * 2 + p) * height + y) * width + x
    counts = np.bincount(flat, minlength=T * 2 * height * width).reshape(T, 2, height, width)
    dtype = np.uint16 if (counts.size == 0 or counts.max() <= np.iinfo(np.uint16).max) else np.uint32
    return counts.astype(dtype)


def frames_to_input(
    frames: Union[np.ndarray, torch.Tensor], img_size: SizeLike = None, transform: Optional[Any] = None
) -> torch.Tensor:
    """``[T, 2, H, W]`` counts -> float32 ``[T, 3, h, w]``: OFF, ON, their sum; bilinear antialiased resize.

    ``transform`` (a data set's sample transform, e.g. the DVS augment) is applied last.
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames).to(torch.float32)
    x = torch.cat([x, x.sum(dim=1, keepdim=True)], dim=1)
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        if tuple(x.shape[-2:]) != (int(h), int(w)):
            x = F.interpolate(x, size=(int(h), int(w)), mode="bilinear", align_corners=False, antialias=True)
    x = x.contiguous()
    return transform(x) if transform is not None else x


def default_cache_root() -> Path:
    """``$SPIKINGRESFORMER_FRAME_CACHE`` or ``~/.cache/spikingresformer``: where event frames are cached."""
    env = os.environ.get(FRAME_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if os.environ.get(_OLD_FRAME_CACHE_ENV):
        warnings.warn(
            f"{_OLD_FRAME_CACHE_ENV} is no longer read; set {FRAME_CACHE_ENV} to move the event-frame cache",
            FutureWarning, stacklevel=2,
        )
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "spikingresformer"


def source_stamp(*paths: Union[str, os.PathLike]) -> str:
    """Stamp of the source files (name, size and modification time in ns) stored with cached frames."""
    stats = ((os.path.basename(os.fspath(p)), os.stat(p)) for p in paths)
    return ";".join(f"{name}:{st.st_size}:{st.st_mtime_ns}" for name, st in stats)


class FrameCache:
    """On-disk cache of framed samples, one ``.npz`` per sample and T, checked on every read (see ``docs/data.md``).

    Layout: ``<cache root>/<dataset>-<hash of the data root>/T<T>/<key>.npz``; writes are atomic.
    """

    def __init__(self, dataset: str, data_root: Union[str, os.PathLike], T: int, cache_dir: Optional[str] = None):
        root_id = hashlib.sha1(os.path.realpath(os.fspath(data_root)).encode()).hexdigest()[:10]
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
        self.dir = base / f"{dataset}-{root_id}" / f"T{T}"
        self.T = T

    def path(self, key: str) -> Path:
        """File that holds sample ``key``."""
        return self.dir / f"{key}.npz"

    def load(self, key: str, source: str, shape: Sequence[int]) -> Optional[np.ndarray]:
        """Cached frames of ``key`` if present, made from the same ``source`` stamp and of ``shape``; else None."""
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                stamp, T = str(z["source"]), int(z["T"])
                if stamp != source:
                    return None  # the source changed since: frame it again
                frames = z["frames"]
        except FileNotFoundError:  # not cached yet (or just removed by another process)
            return None
        except Exception as e:  # any unreadable entry (truncated zip, bad CRC, missing array, a folder, ...)
            return self._reject(path, f"cannot be read ({type(e).__name__}: {e})")
        problem = _entry_problem(frames, T, self.T, tuple(shape))
        if problem is not None:
            return self._reject(path, problem)
        return frames

    def store(self, key: str, source: str, frames: np.ndarray) -> None:
        """Write ``frames`` for ``key`` atomically."""
        with atomic_open(self.path(key)) as f:
            np.savez_compressed(f, frames=frames, source=np.array(source), T=np.array(self.T))

    @staticmethod
    def _reject(path: Path, problem: str) -> None:
        """Warn that the entry at ``path`` is unusable, and delete it so that it is framed again."""
        warnings.warn(f"frame cache entry {path} {problem}; framing its source again", FrameCacheWarning,
                      stacklevel=3)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _entry_problem(frames: np.ndarray, stored_T: int, T: int, shape: Tuple[int, ...]) -> Optional[str]:
    """Why a decoded cache entry cannot be used, or None if it can."""
    if stored_T != T:
        return f"was made for T={stored_T}, expected T={T}"
    if frames.dtype not in COUNT_DTYPES:
        bad = " with NaN or infinite values" if frames.dtype.kind in "fc" and not np.isfinite(frames).all() else ""
        return f"holds {frames.dtype} frames{bad}, expected event counts ({' or '.join(map(str, COUNT_DTYPES))})"
    if tuple(frames.shape) != shape:
        return f"holds frames of shape {tuple(frames.shape)}, expected {shape}"
    return None
