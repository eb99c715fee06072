"""What a CPU training step's peak RSS is made of: shared libraries, live heap, and freed memory glibc keeps.

Runs a few AdamW steps of one variant in this process (Linux with glibc only) and prints, after
``import torch``, after building the model and for every step: the resident set (RSS), the bytes
live in ``malloc`` (``mallinfo2``: in-use heap chunks plus mmapped chunks) and, from a sampling
thread, the peaks of both. RSS minus live memory is what the process maps without holding in
``malloc``: the file-backed pages of torch's shared libraries (constant once imported) and the freed
heap memory that glibc keeps resident. ``--trim-at-blocks`` is an experiment, not a recommendation:
it calls ``malloc_trim(0)`` before every block's forward (also the lean mode's recomputation), to show
how much of the peak is memory glibc holds free.

    PYTHONPATH=src python benchmarks/memory_breakdown.py --model spikingresformer_cifar --lean
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time
from typing import Dict, List, Optional

from step import current_rss_mb as rss_mb  # benchmarks/step.py, beside this script


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        raise SystemExit("this needs glibc 2.33 or newer (mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    return libc


LIBC = _libc()


def live_mb() -> float:
    """Bytes held in malloc: in-use heap chunks of every arena plus mmapped chunks, in MiB."""
    info = LIBC.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


class Peaks:
    """Samples RSS and live malloc memory every half millisecond in a background thread."""

    def __init__(self) -> None:
        self.rss = self.live = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop:
            self.rss, self.live = max(self.rss, rss_mb()), max(self.live, live_mb())
            time.sleep(0.0005)

    def reset(self) -> None:
        self.rss = self.live = 0.0

    def __enter__(self) -> "Peaks":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


def main(argv: Optional[List[str]] = None) -> int:
    """Print the memory of a few training steps, split into shared libraries, live heap and kept free memory."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="spikingresformer_cifar")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--lean", action="store_true", help="model.set_grad_checkpointing(True)")
    p.add_argument("--trim-at-blocks", action="store_true", help="experiment: malloc_trim(0) before every block")
    args = p.parse_args(argv)

    print(f"start: RSS {rss_mb():.0f} MB, live {live_mb():.0f} MB")
    import torch
    import torch.nn.functional as F

    after_torch = (rss_mb(), live_mb())
    print(f"import torch: RSS {after_torch[0]:.0f} MB, live {after_torch[1]:.0f} MB")
    import spikingresformer as sr

    torch.manual_seed(0)
    model = sr.create_model(args.model, img_size=args.img_size)
    model.set_grad_checkpointing(args.lean)
    trims: Dict[str, float] = {"s": 0.0}
    if args.trim_at_blocks:
        def trim(*_: object) -> None:
            t0 = time.perf_counter()
            LIBC.malloc_trim(0)
            trims["s"] += time.perf_counter() - t0

        for stage in model.layers:
            for block in stage:
                block.register_forward_pre_hook(trim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.randn(args.batch_size, model.in_chans, args.img_size, args.img_size)
    y = torch.randint(0, max(model.num_classes, 1), (args.batch_size,))
    built = (rss_mb(), live_mb())
    print(f"model built: RSS {built[0]:.0f} MB, live {built[1]:.0f} MB; "
          f"not in malloc (shared libraries, stacks): {built[0] - built[1]:.0f} MB")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    with Peaks() as peaks:
        for step in range(args.steps):
            peaks.reset()
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            del loss
            kept = peaks.rss - (built[0] - built[1]) - peaks.live
            print(f"step {step}: {time.perf_counter() - t0:.2f} s; peak RSS {peaks.rss:.0f} MB = "
                  f"{built[0] - built[1]:.0f} not in malloc + {peaks.live:.0f} peak live + ~{max(kept, 0):.0f} "
                  f"freed but resident; after the step: RSS {rss_mb():.0f} MB, live {live_mb():.0f} MB"
                  + (f"; malloc_trim took {trims['s']:.2f} s so far" if args.trim_at_blocks else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
