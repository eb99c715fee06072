"""Benchmark: read + frame a generated 1,000,000-event AEDAT 2.0 (CIFAR10-DVS) and AEDAT 3.1 (Gesture) file.

Usage: ``python benchmarks/events.py [--events 1000000] [--T 16] [--repeat 3]``. Prints events per
second for reading alone and for reading + framing (split by number into T [2, 128, 128] frames),
and the time to read those frames back from the frame cache (checks included), best of ``--repeat``
runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Tuple

import numpy as np

from spikingresformer.data.aedat import cifar10dvs_address, read_aedat31, read_cifar10dvs, write_aedat2, write_aedat31
from spikingresformer.data.framing import FrameCache, events_to_frames, source_stamp


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_files(folder: Path, n: int, seed: int = 0) -> Tuple[Path, Path]:
    """Write an n-event AEDAT 2.0 and AEDAT 3.1 file with random 128x128 events."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 1_300_000, n)).astype(np.int64)
    x = rng.integers(0, 128, n)
    y = rng.integers(0, 128, n)
    p = rng.integers(0, 2, n)
    a2 = folder / "bench.aedat"
    write_aedat2(a2, cifar10dvs_address(x, y, p), t)
    a3 = folder / "bench31.aedat"
    write_aedat31(a3, t, x, y, p, packet_events=4096)
    return a2, a3


def main() -> None:
    """Generate the files in a temporary folder, time reading and framing, print events/second."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--T", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, T = args.events, args.T
    with tempfile.TemporaryDirectory() as tmp:
        a2, a3 = make_files(Path(tmp), n)
        for label, path, reader in [("AEDAT 2.0 (CIFAR10-DVS)", a2, read_cifar10dvs),
                                    ("AEDAT 3.1 (DVS128 Gesture)", a3, read_aedat31)]:
            ev = reader(path)
            assert len(ev) == n
            t_read = _best(lambda: reader(path), args.repeat)
            t_all = _best(lambda: events_to_frames(reader(path), T), args.repeat)
            print(f"{label}: {n:,} events, {path.stat().st_size / 1e6:.1f} MB")
            print(f"  read            {t_read * 1e3:8.1f} ms  {n / t_read / 1e6:7.1f} M events/s")
            print(f"  read + frame T={T:<2d} {t_all * 1e3:6.1f} ms  {n / t_all / 1e6:7.1f} M events/s")
            cache = FrameCache("bench", tmp, T, cache_dir=str(Path(tmp) / "cache"))
            stamp = source_stamp(path)
            cache.store(path.stem, stamp, events_to_frames(reader(path), T))
            t_hit = _best(lambda: cache.load(path.stem, source_stamp(path), (T, 2, 128, 128)), args.repeat)
            print(f"  frame-cache hit  {t_hit * 1e3:7.1f} ms  (stamp, load and checks)")


if __name__ == "__main__":
    main()
