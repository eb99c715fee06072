"""Time packing a spike tensor into bits and unpacking it: the PyTorch ops against the C kernel.

The tensor is ``[T, B, C, H, W]`` stored channels-last (``[T, B, H, W, C]`` in memory), as the
model's spikes are. Each entry is the median of ``--reps`` calls, after one warm-up call; the two
implementations are checked to give the same bits. The glibc allocator is tuned as in the other
benchmarks (``SPIKINGRESFORMER_MALLOC=system`` opts out).

Example::

    PYTHONPATH=src python benchmarks/spike_bits.py --shape 4x16x256x32x32 --reps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch

from spikingresformer import runtime
from spikingresformer.model.spike_saving import pack_spikes
from spikingresformer.neurons import fused

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4x16x256x32x32", help="TxBxCxHxW")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma list from " + ",".join(DTYPES))
    p.add_argument("--density", type=float, default=0.2, help="fraction of ones")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    return p


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    times: List[float] = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    """Print pack, unpack and total times per dtype and implementation."""
    args = build_parser().parse_args()
    runtime.apply_defaults()
    if args.threads:
        torch.set_num_threads(args.threads)
    t, b, c, h, w = (int(v) for v in args.shape.split("x"))
    print(f"shape [{t},{b},{c},{h},{w}] channels-last, {torch.get_num_threads()} threads, "
          f"{runtime.malloc_settings()}, C kernel available: {fused.c_kernel_available()}")
    for name in args.dtypes.split(","):
        g = torch.Generator().manual_seed(0)
        s = (torch.rand((t, b, h, w, c), generator=g) < args.density).to(DTYPES[name]).permute(0, 1, 4, 2, 3)
        bits = {}
        for impl in ("torch", "c"):
            with fused.use_impl(impl):
                packed = pack_spikes(s)
                bits[impl] = packed.bits
                pack = median_ms(lambda: pack_spikes(s), args.reps)
                unpack = median_ms(packed.unpack, args.reps)
            print(f"{name:5s} {impl:5s} pack {pack:8.2f} ms  unpack {unpack:8.2f} ms  total {pack + unpack:8.2f} ms")
        assert torch.equal(bits["torch"], bits["c"]), "the two implementations disagree"


if __name__ == "__main__":
    main()
