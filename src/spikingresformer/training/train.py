"""The ``train`` command, in the order a run happens (folder layout, write order, repairs: docs/training.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
import yaml
from torch import nn

from .. import load_checkpoint, read_state_dict
from ..checkpoint import CheckpointError
from ..fileio import remove_orphans
from .builders import build_data, build_model, eval_loader, train_loader
from .distributed import DistInfo, cleanup_distributed, join_process_group, process_info
from .engine import Progress, Run, StopFlag, evaluate, stop_agreed, train_one_epoch
from .errors import DivergedError, RecipeError, RunError, RunInterrupted
from .evaluate import energy_summary
from .optim import amp_dtype, build_criterion, build_mixup, build_optimizer, build_scaler, build_scheduler
from .recipe import Recipe
from .run_state import (Logger, RunFolder, epoch_of, load_training_checkpoint, output_folder, rate_flags,
                        set_rate_flags, write_file)

__all__ = ["run_training"]


@dataclass
class _State:
    """Where the loop starts: the first epoch to run, the best so far, progress inside a stopped epoch."""

    epoch: int = 0
    best_acc1: float = -1.0
    best_epoch: int = -1
    partial: Optional[Progress] = None


def run_training(recipe: Recipe) -> Dict[str, Any]:
    """Train and evaluate as ``recipe`` says; return the final metrics (on every rank).

    Raises one of ``errors.EXPECTED_ERRORS``, or :class:`RunInterrupted` after a SIGTERM.
    """
    # 1. the processes: refuse what cannot run here before joining a process group
    dist = process_info(recipe.device)
    _split_batch(recipe, dist)
    join_process_group(dist)
    folder = RunFolder(output_folder(recipe.output, recipe.model, recipe.dataset))
    log = Logger(dist)
    started = False
    try:
        # 2. the run folder (locked) and what the run starts from; nothing is written before step 7
        if dist.is_main:
            folder.lock()
            for p in remove_orphans(folder.path):
                log(f"removed {p.name}, a temporary file left by an interrupted write")
        resume = folder.resume_source(recipe.resume, recipe.overwrite)
        resumed = load_training_checkpoint(resume) if resume else None
        transfer = read_state_dict(recipe.transfer) if recipe.transfer else None

        # 3. data
        torch.manual_seed(recipe.seed + dist.rank)  # the model's initial weights
        train_ds, info = build_data(recipe, train=True)
        eval_ds, _ = build_data(recipe, train=False)
        train_batches, eval_batches = train_loader(recipe, dist, train_ds), eval_loader(recipe, dist, eval_ds)

        # 4. model
        model = build_model(recipe, info, dist)
        if transfer is not None:
            res = load_checkpoint(model, transfer, exclude_classifier=True)
            log(f"transfer: loaded {len(transfer) - len(res.skipped_keys)} tensors from {recipe.transfer} "
                f"(classifier left out: {res.skipped_keys})")

        # 5. optimizer, schedule, loss, mixed precision: the run's context
        optimizer = build_optimizer(recipe, model)
        mixup = build_mixup(recipe, info, model.num_classes)
        dtype = amp_dtype(recipe, dist.device)
        run = Run(recipe=recipe, dist=dist, model=model, net=_wrap_model(model, recipe, dist), optimizer=optimizer,
                  scheduler=build_scheduler(recipe, optimizer), criterion=build_criterion(recipe, mixup is not None),
                  mixup=mixup, amp_dtype=dtype, scaler=build_scaler(dtype, dist.device), train_loader=train_batches,
                  eval_loader=eval_batches, folder=folder, log=log)

        # 6. the resumed state
        state = _restore(run, resumed, resume) if resumed is not None and resume is not None else _State()

        # 7. set-up succeeded: from here on the folder is written
        if dist.is_main:
            if recipe.overwrite and folder.run_files():
                log(f"overwrite: deleting the previous run in {folder.path} ({folder.describe()})")
                folder.clear()
            if resumed is not None and resume is not None and resume.parent.resolve() == folder.path.resolve():
                folder.repair(resumed, log)
            write_file(folder.path / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode())
            log.attach(folder.path / "log.txt")
        started = True

        # 8. the loop, 9. the final report
        log(f"training {recipe.model} ({_n_params(model) / 1e6:.3f} M parameters) on {recipe.dataset}: "
            f"{len(train_ds)} train / {len(eval_ds)} eval samples, {dist.world_size} process(es) on "
            f"{dist.device.type}, T={recipe.T}, {recipe.img_size} px, batch {recipe.batch_size}/process, "
            f"amp={str(dtype).replace('torch.', '') if dtype else 'off'}; outputs in {folder.path.resolve()}")
        began = time.perf_counter()
        with _sigterm_stops(run.stop):
            final = _fit(run, state, info.split)
        return _report(run, state, final, eval_ds, time.perf_counter() - began)
    finally:
        if dist.is_main:
            folder.release(remove_if_new=not started)
        cleanup_distributed()


def _split_batch(recipe: Recipe, dist: DistInfo) -> None:
    """``batch_size`` from ``global_batch_size`` when it is set (it must divide across the processes)."""
    if recipe.global_batch_size is None:
        return
    if recipe.global_batch_size % dist.world_size:
        raise RecipeError(
            f"global_batch_size {recipe.global_batch_size} does not divide across {dist.world_size} "
            f"processes; use a multiple of {dist.world_size}"
        )
    recipe.batch_size = recipe.global_batch_size // dist.world_size


def _wrap_model(model: nn.Module, recipe: Recipe, dist: DistInfo) -> nn.Module:
    """The model as the loop calls it: under DDP with several processes, compiled when the recipe says."""
    net: nn.Module = model
    if dist.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    # One graph for the whole model (the neurons are custom operators: no graph breaks). Under DDP the
    # compiler splits the graph at gradient-bucket boundaries itself, so fullgraph applies to one
    # process only. Static shapes: every training batch has the same size (drop_last).
    if recipe.compile:
        net = torch.compile(net, dynamic=False, fullgraph=not dist.distributed)  # type: ignore[assignment]
    return net


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _restore(run: Run, ckpt: Dict[str, Any], path: Path) -> _State:
    """Put the training state of ``ckpt`` back into the model, optimizer, schedule and scaler."""
    recipe = run.recipe
    try:
        load_checkpoint(run.model, ckpt)
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (CheckpointError, ValueError, KeyError) as e:  # an optimizer state of another model: a ValueError
        raise CheckpointError(f"cannot resume from {path}: it does not fit this recipe's model: {e}") from None
    if ckpt.get("recipe", {}).get("epochs", recipe.epochs) == recipe.epochs:
        run.scheduler.load_state_dict(ckpt["lr_scheduler"])
    else:
        run.log(f"resume: epochs changed from {ckpt['recipe']['epochs']} to {recipe.epochs}; "
                f"the learning-rate schedule follows the new count")
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rate_flags(run.model, ckpt.get("rate_flags", {}))
    state = _State(epoch=int(ckpt["epoch"]) + 1, best_acc1=float(ckpt["max_acc1"]),
                   best_epoch=int(ckpt.get("best_epoch", -1)))
    partial = ckpt.get("partial")
    if partial is not None:
        state.partial = Progress(step=int(partial["step"]), loss_sum=float(partial["loss_sum"]),
                                 samples=int(partial["samples"]))
        run.log(f"resumed from {path} in epoch {state.epoch} after step {state.partial.step}")
    else:
        run.log(f"resumed from {path} at epoch {state.epoch}")
    return state


def _fit(run: Run, state: _State, split: Optional[str]) -> Dict[str, Any]:
    """The epochs from ``state.epoch`` on: train, check, evaluate, save; return the last epoch's metrics."""
    recipe, dist, folder = run.recipe, run.dist, run.folder
    assert folder is not None and run.net is not None
    writer = None
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(folder.path / "tensorboard"))
    final: Dict[str, Any] = {}
    run_start = time.perf_counter()
    run.scheduler.step(state.epoch)
    if state.epoch >= recipe.epochs:
        run.log(f"the run in {folder.path} is complete ({recipe.epochs} epochs); nothing to train")
    try:
        for epoch in range(state.epoch, recipe.epochs):
            start = state.partial if epoch == state.epoch else None
            run.train_loader.sampler.start_epoch(epoch, start.step if start else 0)  # type: ignore[attr-defined]
            lr = run.optimizer.param_groups[0]["lr"]
            metrics, stopped = train_one_epoch(run, epoch, start)
            if stopped is not None:
                _save_stop(run, state, epoch, stopped)
            if not _finite_weights(run.model):
                raise DivergedError(
                    f"training diverged in epoch {epoch}: the weights became non-finite in its last step "
                    f"(the loss was finite at every step); nothing from this epoch was saved. Lower lr or set clip_grad"
                )
            run.scheduler.step(epoch + 1)
            if (epoch + 1) % recipe.eval_interval == 0 or epoch + 1 == recipe.epochs:
                metrics.update(evaluate(run.net, run.eval_loader, dist, run.amp_dtype, recipe.progress))
                if not np.isfinite(metrics["eval_loss"]):
                    raise DivergedError(
                        f"the evaluation loss after epoch {epoch} is {metrics['eval_loss']}: the model diverged; "
                        f"this epoch was not saved and cannot become best. Lower lr or set clip_grad"
                    )
            is_best = "top1" in metrics and metrics["top1"] > state.best_acc1
            if is_best:
                state.best_acc1, state.best_epoch = metrics["top1"], epoch
            metrics.update(epoch=epoch, lr=lr, best_top1=state.best_acc1, split=split,
                           wall_time_s=time.perf_counter() - run_start)
            ckpt = _checkpoint(run, state, epoch)
            if dist.is_main:
                assert writer is not None
                folder.append_metrics(metrics)
                folder.save_epoch(ckpt, last=recipe.save_last, best=is_best,
                                  best_meta={"epoch": str(epoch), "top1": repr(metrics.get("top1"))})
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            run.log(_epoch_line(metrics))
            final = metrics
            if stop_agreed(run) and epoch + 1 < recipe.epochs:  # after the last epoch the run is simply done
                _stopped(run, epoch + 1, 0)
    finally:
        if writer is not None:
            writer.close()
    return final


def _report(run: Run, state: _State, final: Dict[str, Any], eval_ds: Any, took: float) -> Dict[str, Any]:
    """Check that ``best.pth`` holds the best epoch, log the summary and the energy report; the final metrics."""
    folder, dist = run.folder, run.dist
    assert folder is not None
    if dist.is_main and state.best_epoch >= 0:
        held = epoch_of(folder.path / "best.pth")
        if held != state.best_epoch:
            raise RunError(f"{folder.path / 'best.pth'} holds epoch {held}, not the best epoch {state.best_epoch}; "
                           f"run again with --resume auto to repair it")
        run.log(f"training took {took:.1f} s; best top-1 {state.best_acc1:.2f}% at epoch {state.best_epoch}; "
                f"weights in {folder.path / 'best.safetensors'}, checkpoints in {folder.path}")
    if run.recipe.energy and dist.is_main and final:
        energy_summary(run.model, eval_ds, dist.device, folder.path, run.log)
    return dict(final, params=_n_params(run.model), output=str(folder.path))


def _finite_weights(model: nn.Module) -> bool:
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True


def _checkpoint(run: Run, state: _State, epoch: int, partial: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The full training state after ``epoch`` (plus progress into the next one, when stopped there)."""
    model = run.model
    ckpt = {
        "model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else None,
        "epoch": epoch, "max_acc1": state.best_acc1, "best_epoch": state.best_epoch,
        "rate_flags": rate_flags(model), "recipe": run.recipe.to_dict(),
    }
    if partial is not None:
        ckpt["partial"] = partial
    return ckpt


def _save_stop(run: Run, state: _State, epoch: int, progress: Progress) -> None:
    """Save the place inside ``epoch`` where a SIGTERM stopped the run, then raise RunInterrupted."""
    assert run.folder is not None
    ckpt = _checkpoint(run, state, epoch - 1, dict(dataclasses.asdict(progress), epoch=epoch))
    if run.dist.is_main:
        run.folder.save_epoch(ckpt, last=True, best=False, best_meta={})
    _stopped(run, epoch, progress.step)


def _stopped(run: Run, epoch: int, step: int) -> None:
    assert run.folder is not None
    where = f"epoch {epoch}, step {step}" if step else f"the start of epoch {epoch}"
    msg = (f"stopped by SIGTERM; {run.folder.path / 'last.pth'} holds the state at {where}; continue with "
           f"--resume auto (same --output)")
    run.log(msg)
    raise RunInterrupted(msg)


def _epoch_line(m: Dict[str, Any]) -> str:
    parts = [f"epoch {m['epoch']}", f"lr {m['lr']:.3g}", f"train loss {m['train_loss']:.4f}",
             f"{m['train_images_per_s']:.1f} img/s"]
    if "top1" in m:
        parts += [f"eval loss {m['eval_loss']:.4f}", f"top-1 {m['top1']:.2f}%", f"top-5 {m['top5']:.2f}%",
                  f"best {m['best_top1']:.2f}%"]
    return " | ".join(parts)


@contextlib.contextmanager
def _sigterm_stops(stop: StopFlag) -> Iterator[None]:
    """While active, SIGTERM asks the run to stop after the current step (a second SIGTERM ends it at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.requested:  # asked twice: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        stop.requested = True
        print("SIGTERM received: finishing the current step, then saving last.pth", flush=True)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
