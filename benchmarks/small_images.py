"""Where a CPU training step of a small model on small images spends its time: data loading vs model, by operator.

    PYTHONPATH=src python benchmarks/small_images.py DIGITS_FOLDER [--img-size 28] [--T 2] [--batch-sizes 32,64]

Measures, on an ``image-folder`` tree (``benchmarks/digits_folder.py`` writes one): loading batches
alone (workers 0 and 2, the CIFAR-practice augmentation), then training steps of the digits demo's
model (planes 32/64/128) in float32 and under bfloat16 autocast at each batch size, the
configurations alternating over ``--rounds`` (medians reported: a shared machine is noisy), and with
``--profile`` the top operators of one step each. Images per second are for whole steps (forward,
backward, AdamW).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import List, Optional

import torch
from torch.utils.data import DataLoader

import spikingresformer as sr
from spikingresformer.data import build_dataset


def _loader_rate(ds, batch: int, workers: int, batches: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def _steps(model, opt, x, y, amp: bool, steps: int) -> float:
    """Images per second over ``steps`` training steps (forward, backward, AdamW)."""
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main(argv: Optional[List[str]] = None) -> int:
    """Print loader rates, then training-step rates per (precision, batch), interleaved over rounds (median)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="image-folder tree (train/<class>/, val/<class>/)")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--batch-sizes", default="32,64", help="comma-separated")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; configurations alternate within each")
    p.add_argument("--profile", action="store_true", help="print the top operators of one step per configuration")
    args = p.parse_args(argv)
    ds, info = build_dataset("image-folder", args.root, True, img_size=args.img_size, hflip=False)
    for workers in (0, 2):
        print(f"loading alone (decode, crop, normalise), workers={workers}: "
              f"{_loader_rate(ds, 32, workers, 10):.0f} img/s")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    data = list(DataLoader(ds, batch_size=max(sizes), shuffle=True))[0]
    runs = {}
    for amp in (False, True):
        for bs in sizes:
            torch.manual_seed(0)
            model = sr.create_model("spikingresformer_cifar", planes=[32, 64, 128], num_heads=[1, 2, 4],
                                    group_size=32, num_classes=info.num_classes, in_chans=info.in_chans, T=args.T,
                                    img_size=args.img_size).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x, y = data[0][:bs], data[1][:bs]
            _steps(model, opt, x, y, amp, 1)  # warm-up
            runs[("bf16" if amp else "fp32", bs)] = (model, opt, x, y, amp, [])
    for _ in range(args.rounds):
        for model, opt, x, y, amp, rates in runs.values():
            rates.append(_steps(model, opt, x, y, amp, args.steps))
    for (prec, bs), (model, opt, x, y, amp, rates) in runs.items():
        print(f"training step {prec}, T={args.T}, {args.img_size} px, batch {bs}: median "
              f"{statistics.median(rates):.1f} img/s (rounds: {', '.join(f'{r:.1f}' for r in rates)})")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                _steps(model, opt, x, y, amp, 1)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
