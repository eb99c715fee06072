"""One training epoch and one evaluation pass: the plain loops a newcomer can read top to bottom."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_reduce_sum
from .errors import DivergedError

__all__ = ["tet_loss", "autocast_context", "train_one_epoch", "evaluate", "progress_bar"]


def tet_loss(
    steps: torch.Tensor, target: torch.Tensor, criterion: Callable, lam: float = 0.0, phi: float = 1.0
) -> torch.Tensor:
    """TET loss: mean over steps of ``criterion(out_t, target)`` plus ``lam * MSE(out, phi)``."""
    loss = torch.stack([criterion(steps[t], target) for t in range(steps.shape[0])]).mean()
    if lam:
        loss = loss + lam * F.mse_loss(steps, torch.full_like(steps, phi))
    return loss


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the device, or a no-op when mixed precision is off."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on the main process (sparse updates when output is not a terminal)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5 if tty else 30.0)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    num_batches: int,
    optimizer: torch.optim.Optimizer,
    criterion: Callable,
    dist: DistInfo,
    *,
    epoch: int,
    mixup_fn: Optional[Callable] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    tet: bool = False,
    tet_lambda: float = 0.0,
    tet_phi: float = 1.0,
    clip_grad: Optional[float] = None,
    progress: bool = True,
    log_interval: int = 50,
    log: Callable[[str], None] = print,
    carry: Optional[Dict[str, Any]] = None,
    on_start: Optional[Callable[[], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Train for one pass over ``loader``; return the mean loss and throughput over all ranks.

    ``carry`` continues an epoch that was stopped part-way (its ``step``, ``loss_sum`` and
    ``samples``; the loader then skips those steps); ``on_start`` runs once the loader's iterator
    exists (where a resumed run restores its random state). When ``should_stop()`` turns true on
    any rank, the epoch ends after the current step and the result holds ``stopped_at`` and the
    progress to carry.
    """
    model.train()
    first = int(carry["step"]) if carry else 0
    loss_sum = torch.tensor(float(carry["loss_sum"]) if carry else 0.0, dtype=torch.float64, device=dist.device)
    samples = int(carry["samples"]) if carry else 0
    start = time.perf_counter()
    batches = iter(loader)
    if on_start is not None:
        on_start()
    bar = progress_bar(batches, num_batches, f"epoch {epoch}", progress and dist.is_main)
    for step, (images, target) in enumerate(bar, start=first):
        images = images.to(dist.device, non_blocking=True)
        target = target.to(dist.device, non_blocking=True)
        if mixup_fn is not None:
            images, target = mixup_fn(images, target)

        with autocast_context(dist.device, amp, amp_dtype):
            if tet:
                steps = model(images, return_steps=True)  # a call argument: passes through DDP and compile
                loss = tet_loss(steps.float(), target, criterion, tet_lambda, tet_phi)
            else:
                loss = criterion(model(images).float(), target)
        if not math.isfinite(loss.item()):
            raise DivergedError(
                f"training diverged at epoch {epoch}, step {step}: the loss is {loss.item()} (lr "
                f"{optimizer.param_groups[0]['lr']:.3g}); nothing from this epoch was saved. Lower lr or set clip_grad"
            )

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()

        n = images.shape[0]
        loss_sum += loss.detach().double() * n
        samples += n
        elapsed = time.perf_counter() - start
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{samples / max(elapsed, 1e-9):.1f}", refresh=False)
        elif dist.is_main and log_interval and (step + 1) % log_interval == 0:
            log(f"epoch {epoch} step {step + 1}/{num_batches} loss {loss.item():.4f} "
                f"{samples / max(elapsed, 1e-9):.1f} img/s")
        if should_stop is not None and _any_rank(should_stop(), dist) and step + 1 < first + num_batches:
            return {"stopped_at": step, "step": step + 1, "loss_sum": loss_sum.item(), "samples": samples}
    elapsed = time.perf_counter() - start
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(samples), dtype=torch.float64, device=dist.device)]))
    total_samples = totals[1].item()
    return {
        "train_loss": totals[0].item() / max(total_samples, 1),
        "train_samples": total_samples,
        "train_images_per_s": total_samples / max(elapsed, 1e-9),
        "train_time_s": elapsed,
    }


def _any_rank(flag: bool, dist: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop at the same step)."""
    if not dist.distributed:
        return flag
    return bool(all_reduce_sum(torch.tensor(float(flag), device=dist.device)).item() > 0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_batches: int,
    dist: DistInfo,
    *,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    progress: bool = True,
) -> Dict[str, Any]:
    """Top-1/top-5 accuracy and mean cross-entropy over the whole loader, summed exactly over ranks."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=dist.device)  # loss, top1, top5, count
    start = time.perf_counter()
    for images, target in progress_bar(loader, num_batches, "eval", progress and dist.is_main):
        images = images.to(dist.device, non_blocking=True)
        target = target.to(dist.device, non_blocking=True)
        with autocast_context(dist.device, amp, amp_dtype):
            logits = model(images).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top.eq(target[:, None])
        sums += torch.stack([
            F.cross_entropy(logits, target, reduction="sum").double(),
            hit[:, 0].sum().double(),
            hit.any(dim=-1).sum().double(),
            torch.tensor(float(target.numel()), dtype=torch.float64, device=dist.device),
        ])
    elapsed = time.perf_counter() - start
    sums = all_reduce_sum(sums)
    count = sums[3].item()
    return {
        "eval_loss": sums[0].item() / max(count, 1),
        "top1": 100.0 * sums[1].item() / max(count, 1),
        "top5": 100.0 * sums[2].item() / max(count, 1),
        "eval_samples": int(count),
        "eval_images_per_s": count / max(elapsed, 1e-9),
    }
