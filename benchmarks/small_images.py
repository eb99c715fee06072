"""Where a CPU training step of a small model on small images spends its time: data loading vs model, by operator.

    PYTHONPATH=src python benchmarks/small_images.py DIGITS_FOLDER [--img-size 28] [--T 2] [--batch-size 32]

Measures, on an ``image-folder`` tree (``benchmarks/digits_folder.py`` writes one): loading batches
alone (workers 0 and 2, the CIFAR-practice augmentation), then training steps of the digits demo's
model (planes 32/64/128) in float32 and under bfloat16 autocast, with the top operators of one
profiled step. Images per second are for whole steps (forward, backward, AdamW).
"""

from __future__ import annotations

import argparse
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


def _step_rate(model, x, y, amp: bool, steps: int, profile: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (first-use kernels, firing-rate buffers)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * x.shape[0] / (time.perf_counter() - t0)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            step()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return rate


def main(argv: Optional[List[str]] = None) -> int:
    """Print loader and training-step images per second, and one profiled step per precision."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="image-folder tree (train/<class>/, val/<class>/)")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="print the top operators of one step per precision")
    args = p.parse_args(argv)
    ds, info = build_dataset("image-folder", args.root, True, img_size=args.img_size, hflip=False)
    for workers in (0, 2):
        print(f"loading alone, workers={workers}: {_loader_rate(ds, args.batch_size, workers, 10):.0f} img/s")
    x, y = next(iter(DataLoader(ds, batch_size=args.batch_size, shuffle=True)))
    for amp in (False, True):
        torch.manual_seed(0)
        model = sr.create_model("spikingresformer_cifar", planes=[32, 64, 128], num_heads=[1, 2, 4], group_size=32,
                                num_classes=info.num_classes, in_chans=info.in_chans, T=args.T,
                                img_size=args.img_size).train()
        rate = _step_rate(model, x, y, amp, args.steps, args.profile)
        print(f"training step ({'bf16 autocast' if amp else 'float32'}), T={args.T}, {args.img_size} px, "
              f"batch {args.batch_size}: {rate:.1f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
