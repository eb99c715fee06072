"""Time packing a spike tensor into bits and unpacking it: the PyTorch ops against the C kernel.

The tensor has ``T*B*C*H*W`` elements, packed in memory order as the saved-tensor hooks of
:class:`spikingresformer.neurons.bits.SpikeBits` pack a spike tensor's storage. Each entry is the
median of ``--reps`` calls, after one warm-up call; the two implementations are checked to give the
same bits.

Example::

    PYTHONPATH=src python benchmarks/spike_bits.py --shape 4x16x256x32x32 --reps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch

from spikingresformer.neurons import fused
from spikingresformer.neurons.bits import pack_bits, unpack_bits

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
    if args.threads:
        torch.set_num_threads(args.threads)
    t, b, c, h, w = (int(v) for v in args.shape.split("x"))
    print(f"shape [{t},{b},{c},{h},{w}], {torch.get_num_threads()} threads, "
          f"C kernel available: {fused.c_kernel_available()}")
    for name in args.dtypes.split(","):
        g = torch.Generator().manual_seed(0)
        s = (torch.rand(t * b * c * h * w, generator=g) < args.density).to(DTYPES[name])
        bits = {}
        for impl in ("torch", "c"):
            with fused.use_impl(impl):
                packed = bits[impl] = pack_bits(s)
                pack = median_ms(lambda: pack_bits(s), args.reps)
                unpack = median_ms(lambda: unpack_bits(packed, s.numel(), s.dtype), args.reps)
            print(f"{name:5s} {impl:5s} pack {pack:8.2f} ms  unpack {unpack:8.2f} ms  total {pack + unpack:8.2f} ms")
        assert torch.equal(bits["torch"], bits["c"]), "the two implementations disagree"


if __name__ == "__main__":
    main()
