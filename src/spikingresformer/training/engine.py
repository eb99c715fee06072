"""One training epoch and one evaluation pass: the plain loops a newcomer can read top to bottom."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_reduce_sum
from .errors import DivergedError

if TYPE_CHECKING:
    from .recipe import Recipe
    from .run_state import RunFolder

__all__ = ["Progress", "Run", "StopFlag", "evaluate", "progress_bar", "seed_streams", "tet_loss",
           "train_one_epoch"]

#: Steps between device synchronisations when ``log_interval`` is 0 (no step log lines).
SYNC_INTERVAL = 50


class StopFlag:
    """Set ``requested`` to ask a running epoch to stop after its current step."""

    requested: bool = False


@dataclass
class Run:
    """What the loops of one run work with; ``run_training`` builds it once, in the order of its steps."""

    recipe: "Recipe"
    dist: DistInfo
    model: nn.Module  # the plain model (what is saved)
    optimizer: torch.optim.Optimizer
    criterion: Callable
    train_loader: Iterable
    eval_loader: Optional[Iterable] = None
    scheduler: Any = None
    scaler: Optional[torch.amp.GradScaler] = None
    mixup: Optional[Callable] = None
    amp_dtype: Optional[torch.dtype] = None  # None: mixed precision off
    folder: Optional["RunFolder"] = None
    log: Callable[[str], None] = print
    stop: StopFlag = field(default_factory=StopFlag)
    net: Optional[nn.Module] = None  # the model as a step calls it (DDP, torch.compile); None: ``model``

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model


@dataclass
class Progress:
    """How far an epoch got: the next step, and the loss sum and sample count of the steps before it."""

    step: int = 0
    loss_sum: float = 0.0
    samples: int = 0


def seed_streams(seed: int, rank: int, epoch: int, *step: int) -> None:
    """Seed Python's, NumPy's and torch's generators from (seed, rank, epoch[, step]) (docs/training.md)."""
    state = np.random.SeedSequence([seed, rank, epoch, *step]).generate_state(2)
    value = int(state[0]) << 32 | int(state[1])
    random.seed(value)
    np.random.seed(int(state[0]))
    if step:  # per step: the CPU generator that data augmentation draws from (about 1 us, not 130)
        torch.default_generator.manual_seed(value)
    else:
        torch.manual_seed(value)  # every device's generator


def tet_loss(
    steps: torch.Tensor, target: torch.Tensor, criterion: Callable, lam: float = 0.0, phi: float = 1.0
) -> torch.Tensor:
    """TET loss: mean over steps of ``criterion(out_t, target)`` plus ``lam * MSE(out, phi)``."""
    loss = torch.stack([criterion(steps[t], target) for t in range(steps.shape[0])]).mean()
    if lam:
        loss = loss + lam * F.mse_loss(steps, torch.full_like(steps, phi))
    return loss


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on the main process (sparse updates when output is not a terminal)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5 if tty else 30.0)


def train_one_epoch(run: Run, epoch: int,
                    start: Optional[Progress] = None) -> Tuple[Dict[str, Any], Optional[Progress]]:
    """Train one pass over ``run.train_loader`` (from ``start`` in a stopped epoch); return metrics over all ranks.

    The second result says how far the epoch got when ``run.stop.requested`` ended it early, else None.
    """
    recipe, dist, net = run.recipe, run.dist, run.net
    assert net is not None
    net.train()
    start = start or Progress()
    num_batches = len(run.train_loader)  # type: ignore[arg-type]
    end = start.step + num_batches
    sync_every = recipe.log_interval or SYNC_INTERVAL
    loss_sum = torch.tensor(start.loss_sum, dtype=torch.float64, device=dist.device)
    samples = start.samples
    first_bad = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=dist.device)  # step, loss
    t0 = time.perf_counter()
    seed_streams(recipe.seed, dist.rank, epoch)  # the data-loading workers' seeds, drawn as the loader starts
    bar = progress_bar(run.train_loader, num_batches, f"epoch {epoch}", recipe.progress and dist.is_main)
    batches = iter(bar)
    for step in range(start.step, end):
        seed_streams(recipe.seed, dist.rank, epoch, step)  # this step's augmentation (workers: 0) and mixup
        images, target = next(batches)
        images = images.to(dist.device, non_blocking=True)
        target = target.to(dist.device, non_blocking=True)
        if run.mixup is not None:
            images, target = run.mixup(images, target)

        with torch.autocast(dist.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            if recipe.tet:
                steps = net(images, return_steps=True)  # a call argument: passes through DDP and compile
                loss = tet_loss(steps.float(), target, run.criterion, recipe.tet_lambda, recipe.tet_phi)
            else:
                loss = run.criterion(net(images).float(), target)

        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            if recipe.clip_grad is not None:
                run.scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            loss.backward()
            if recipe.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
            run.optimizer.step()

        # bookkeeping on the device: no wait for the step to finish
        loss = loss.detach().double()
        n = images.shape[0]
        loss_sum += loss * n
        samples += n
        new_bad = (first_bad[0] < 0) & ~torch.isfinite(loss)
        first_bad = torch.where(new_bad, torch.stack([torch.full_like(loss, step), loss]), first_bad)

        stop_here = run.stop.requested and not dist.distributed  # one process: no need to agree first
        if stop_here or (step + 1) % sync_every == 0:
            current, stop_anywhere = _synchronise(run, epoch, loss, first_bad)
            if recipe.log_interval and (step + 1) % recipe.log_interval == 0:
                speed = samples / max(time.perf_counter() - t0, 1e-9)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{current:.4f}", img_s=f"{speed:.1f}", refresh=False)
                elif dist.is_main:
                    run.log(f"epoch {epoch} step {step + 1}/{num_batches} loss {current:.4f} {speed:.1f} img/s")
            if stop_anywhere and step + 1 < end:
                return {}, Progress(step=step + 1, loss_sum=loss_sum.item(), samples=samples)
    if num_batches and end % sync_every:  # (else the last step has just synchronised)
        _synchronise(run, epoch, loss, first_bad)
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(samples), dtype=torch.float64,
                                                                 device=dist.device)])).tolist()
    elapsed = time.perf_counter() - t0
    return {
        "train_loss": totals[0] / max(totals[1], 1),
        "train_samples": totals[1],
        "train_images_per_s": totals[1] / max(elapsed, 1e-9),
        "train_time_s": elapsed,
    }, None


def stop_agreed(run: Run) -> bool:
    """Whether any rank was asked to stop: one answer on every rank, so that all stop at the same place."""
    flag = torch.tensor([float(run.stop.requested)], dtype=torch.float64, device=run.dist.device)
    return bool(all_reduce_sum(flag).item() > 0)


def _synchronise(run: Run, epoch: int, loss: torch.Tensor, first_bad: torch.Tensor) -> Tuple[float, bool]:
    """Wait for the device: raise DivergedError if a loss was non-finite on any rank; else return the
    current step's loss and whether any rank was asked to stop."""
    dev = run.dist.device
    local = torch.stack([loss, first_bad[0], first_bad[1]]).tolist()
    flags = torch.tensor([float(local[1] >= 0), float(run.stop.requested)], dtype=torch.float64, device=dev)
    anywhere = all_reduce_sum(flags).tolist() if run.dist.distributed else flags.tolist()
    if anywhere[0] > 0:
        where = f"step {int(local[1])}: the loss is {local[2]}" if local[1] >= 0 else "another process's step"
        raise DivergedError(
            f"training diverged at epoch {epoch}, {where} (lr {run.optimizer.param_groups[0]['lr']:.3g}); "
            f"nothing from this epoch was saved. Lower lr or set clip_grad"
        )
    return local[0], anywhere[1] > 0


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, dist: DistInfo, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 accuracy and mean cross-entropy over the whole loader, summed exactly over ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)  # loss, top-1 hits, top-5 hits
    count = 0
    start = time.perf_counter()
    batches = progress_bar(loader, len(loader), "eval", progress and dist.is_main)  # type: ignore[arg-type]
    for images, target in batches:
        images = images.to(dist.device, non_blocking=True)
        target = target.to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top.eq(target[:, None])
        sums += torch.stack([
            F.cross_entropy(logits, target, reduction="sum").double(),
            hit[:, 0].sum().double(),
            hit.any(dim=-1).sum().double(),
        ])
        count += target.shape[0]
    totals = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=dist.device)])
    loss, top1, top5, count = all_reduce_sum(totals).tolist()
    elapsed = time.perf_counter() - start
    return {
        "eval_loss": loss / max(count, 1),
        "top1": 100.0 * top1 / max(count, 1),
        "top5": 100.0 * top5 / max(count, 1),
        "eval_samples": int(count),
        "eval_images_per_s": count / max(elapsed, 1e-9),
    }
