"""The ``train`` command: build everything a recipe names, run the epochs, keep every result.

Read it top to bottom: checks that need no data, the run folder (locked; a fresh start where a
run exists is refused), set-up (data, model, optimizer, resume), and only then the first write;
then one loop over epochs that trains, evaluates and saves. Only rank 0 writes files. The folder
layout, the write order and what a resumed run repairs are described in ``docs/training.md``.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import yaml
from torch import nn

from .. import load_checkpoint, read_state_dict
from ..checkpoint import CheckpointError
from ..fileio import atomic_write_bytes
from .builders import (Logger, build_criterion, build_data, build_model, check_model_settings, default_output,
                       energy_summary, eval_loader, resolve_amp_dtype, train_loader)
from .distributed import DistInfo, cleanup_distributed, convert_sync_batchnorm, init_distributed, unwrap
from .engine import evaluate, train_one_epoch
from .errors import DivergedError, RunError, RunInterrupted
from .recipe import Recipe, RecipeError
from .run_state import RunFolder, load_training_checkpoint, rate_flags, rng_state, set_rate_flags, set_rng_state

__all__ = ["run_training"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _State:
    epoch: int = 0  # first epoch to run
    best_acc1: float = -1.0
    best_epoch: int = -1
    partial: Optional[Dict[str, Any]] = None  # progress inside ``epoch`` (a run stopped mid-epoch)


class _StopRequest:
    """While active, SIGTERM asks the run to stop after the current step (a second SIGTERM ends it at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._active = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # asked twice: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = True
        print("SIGTERM received: finishing the current step, then saving last.pth", flush=True)

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._active:
            signal.signal(signal.SIGTERM, self._previous)
            self._active = False


def _check_before_start(recipe: Recipe) -> None:
    """Everything that can be refused without reading data: batch split, device, model settings."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if recipe.global_batch_size is not None:
        if recipe.global_batch_size % world_size:
            raise RecipeError(
                f"global_batch_size {recipe.global_batch_size} does not divide across {world_size} "
                f"processes; use a multiple of {world_size}"
            )
        recipe.batch_size = recipe.global_batch_size // world_size
    if recipe.device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(
            f"recipe key 'device' is {recipe.device!r}, but this PyTorch sees no CUDA device "
            f"(built with CUDA {torch.version.cuda}); use --device cpu or --device auto"
        )
    check_model_settings(recipe)


def _resume_source(recipe: Recipe, folder: RunFolder) -> Optional[Path]:
    """The checkpoint to continue from, or None for a fresh start; refuses to start over a run."""
    last = folder.path / "last.pth"
    present = folder.run_files()
    if recipe.resume == "auto":
        if last.is_file():
            return last
        if present and not recipe.overwrite:
            raise RunError(
                f"--resume auto: {folder.path} holds a run without last.pth ({', '.join(present)}), so there is "
                f"nothing to continue; start over there with --overwrite true, or choose another --output"
            )
        return None
    if recipe.resume:
        path = Path(recipe.resume)
        if present and path.resolve() != last.resolve():
            raise RunError(
                f"{folder.path} already holds {folder.describe()}; resuming {path} there would mix two runs. "
                f"Choose another --output (or --overwrite true to delete that run first)"
            )
        return path
    if present and not recipe.overwrite:
        raise RunError(
            f"{folder.path} already holds {folder.describe()}. Continue it with --resume auto, or start over "
            f"with --overwrite true (this deletes its checkpoints and metrics), or choose another --output"
        )
    return None


def run_training(recipe: Recipe) -> Dict[str, Any]:
    """Train and evaluate as ``recipe`` says; return the final metrics (on every rank).

    Raises :class:`RecipeError`, :class:`CheckpointError` or :class:`RunError` for what the user
    can fix, :class:`DivergedError` when the loss or the weights become non-finite, and
    :class:`RunInterrupted` after a SIGTERM (``last.pth`` then holds the exact place to continue).
    """
    _check_before_start(recipe)
    dist = init_distributed(recipe.device)
    folder = RunFolder(default_output(recipe))
    log = Logger(dist)
    started = False
    try:
        if dist.is_main:
            folder.lock()
            for p in folder.remove_orphans():
                log(f"removed {p.name}, a temporary file left by an interrupted write")
        resume = _resume_source(recipe, folder)
        resumed = load_training_checkpoint(resume) if resume else None
        transfer = read_state_dict(recipe.transfer) if recipe.transfer else None
        amp_dtype = resolve_amp_dtype(recipe, dist.device)

        # ---- set-up: data, model, optimizer (nothing is written before it has all succeeded) -------
        from timm.data import Mixup
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        _seed_everything(recipe.seed + dist.rank)
        train_ds, info = build_data(recipe, train=True)
        eval_ds, _ = build_data(recipe, train=False)
        if len(train_ds) < recipe.batch_size * dist.world_size:
            raise RecipeError(
                f"the training set has {len(train_ds)} samples, fewer than one global batch "
                f"({recipe.batch_size} x {dist.world_size} processes)"
            )
        model = build_model(recipe, info)
        if transfer is not None:
            res = load_checkpoint(model, transfer, exclude_classifier=True)
            log(f"transfer: loaded {len(transfer) - len(res.skipped_keys)} tensors from {recipe.transfer} "
                f"(classifier left out: {res.skipped_keys})")
        if recipe.sync_bn and dist.distributed:
            model = convert_sync_batchnorm(model, dist.device)
        if recipe.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(dist.device)
        n_params = sum(p.numel() for p in model.parameters())
        optimizer = create_optimizer_v2(
            model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay, eps=recipe.opt_eps
        )
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=recipe.sched, num_epochs=recipe.epochs, min_lr=recipe.min_lr,
            warmup_lr=recipe.warmup_lr, warmup_epochs=recipe.warmup_epochs, cooldown_epochs=recipe.cooldown_epochs,
        )
        scaler = torch.amp.GradScaler("cuda") if (recipe.amp and amp_dtype == torch.float16) else None
        mixup_on = info.mixup_ok and recipe.augment and (recipe.mixup > 0 or recipe.cutmix > 0)
        mixup_fn = (
            Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                  switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.label_smoothing,
                  num_classes=unwrap(model).num_classes)
            if mixup_on else None
        )
        criterion = build_criterion(recipe, mixup_on)

        state = _State()
        if resumed is not None:
            state = _restore(resumed, resume, recipe, model, optimizer, scheduler, scaler, dist, log)

        # ---- set-up succeeded: from here on the folder is written ------------------------------------
        if dist.is_main:
            if recipe.overwrite and folder.run_files():
                log(f"overwrite: deleting the previous run in {folder.path} ({folder.describe()})")
                folder.clear()
            if resumed is not None and resume is not None and resume.parent.resolve() == folder.path.resolve():
                folder.repair(resumed, log)
            atomic_write_bytes(folder.path / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode())
            log.attach(folder.path / "log.txt")
        started = True
        with _StopRequest() as stop:
            return _run_epochs(recipe, dist, folder, log, state, model, optimizer, scheduler, scaler, mixup_fn,
                               criterion, amp_dtype, train_ds, eval_ds, info, n_params, stop)
    finally:
        if dist.is_main:
            folder.release(remove_if_new=not started)
        cleanup_distributed()


def _restore(ckpt: Dict[str, Any], path: Path, recipe: Recipe, model: nn.Module, optimizer: Any, scheduler: Any,
             scaler: Any, dist: DistInfo, log: Callable[[str], None]) -> _State:
    """Put the training state of ``ckpt`` back into the model, optimizer, schedule and random streams."""
    try:
        load_checkpoint(model, ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
    except (CheckpointError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit this recipe's model: {e}") from None
    if ckpt.get("recipe", {}).get("epochs", recipe.epochs) == recipe.epochs:
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    else:
        log(f"resume: epochs changed from {ckpt['recipe']['epochs']} to {recipe.epochs}; "
            f"the learning-rate schedule follows the new count")
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rate_flags(model, ckpt.get("rate_flags", {}))
    partial = ckpt.get("partial")
    state = _State(epoch=int(ckpt["epoch"]) + 1, best_acc1=float(ckpt["max_acc1"]),
                   best_epoch=int(ckpt.get("best_epoch", -1)), partial=partial)
    rng = ckpt.get("rng", {}).get(dist.rank)
    if partial is not None:
        partial = dict(partial, rng=rng)  # restored when the partial epoch's loader has started
        state.partial = partial
        log(f"resumed from {path} in epoch {state.epoch} after step {partial['step']}")
    else:
        if rng is not None:
            set_rng_state(rng)
        log(f"resumed from {path} at epoch {state.epoch}")
    return state


def _finite_weights(model: nn.Module) -> bool:
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(flags).all().item()) if flags else True


def _run_epochs(recipe: Recipe, dist: DistInfo, folder: RunFolder, log: Callable[[str], None], state: _State,
                model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, mixup_fn: Any, criterion: Callable,
                amp_dtype: torch.dtype, train_ds: Any, eval_ds: Any, info: Any, n_params: int,
                stop: _StopRequest) -> Dict[str, Any]:
    output = folder.path
    ddp_model: nn.Module = model
    if dist.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    # One graph for the whole model (the neurons are custom operators: no graph breaks). Under DDP the
    # compiler splits the graph at gradient-bucket boundaries itself, so fullgraph applies to one
    # process only. Static shapes: every training batch has the same size (drop_last).
    run_model = (torch.compile(ddp_model, dynamic=False, fullgraph=not dist.distributed) if recipe.compile
                 else ddp_model)

    start_step = int(state.partial["step"]) if state.partial else 0
    train_sampler, loader = train_loader(recipe, dist, train_ds, start_step=start_step)
    ev_loader = eval_loader(recipe, dist, eval_ds)
    log(f"training {recipe.model} ({n_params / 1e6:.3f} M parameters) on {recipe.dataset}: "
        f"{len(train_ds)} train / {len(eval_ds)} eval samples, {dist.world_size} process(es) on "
        f"{dist.device.type}, T={recipe.T}, {recipe.img_size} px, batch {recipe.batch_size}/process, "
        f"amp={'off' if not recipe.amp else str(amp_dtype).replace('torch.', '')}; outputs in {output.resolve()}")

    writer = None
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(output / "tensorboard"))
    final: Dict[str, Any] = {}
    run_start = time.perf_counter()
    scheduler.step(state.epoch)
    if state.epoch >= recipe.epochs:
        log(f"the run in {output} is complete ({recipe.epochs} epochs); nothing to train")
    try:
        for epoch in range(state.epoch, recipe.epochs):
            train_sampler.set_epoch(epoch)
            partial = state.partial if epoch == state.epoch else None
            lr = optimizer.param_groups[0]["lr"]
            metrics = train_one_epoch(
                run_model, loader, len(loader), optimizer, criterion, dist, epoch=epoch,
                mixup_fn=mixup_fn, scaler=scaler, amp=recipe.amp, amp_dtype=amp_dtype, tet=recipe.tet,
                tet_lambda=recipe.tet_lambda, tet_phi=recipe.tet_phi, clip_grad=recipe.clip_grad,
                progress=recipe.progress, log_interval=recipe.log_interval, log=log,
                carry=partial, on_start=(lambda p=partial: set_rng_state(p["rng"])) if partial and partial.get("rng")
                else None, should_stop=lambda: stop.requested,
            )
            if "stopped_at" in metrics:
                _save_stop(recipe, dist, folder, log, state, model, optimizer, scheduler, scaler, epoch, metrics)
            if not _finite_weights(model):
                raise DivergedError(
                    f"training diverged in epoch {epoch}: the weights became non-finite in its last step "
                    f"(the loss was finite at every step); nothing from this epoch was saved. Lower lr or set clip_grad"
                )
            scheduler.step(epoch + 1)
            if (epoch + 1) % recipe.eval_interval == 0 or epoch + 1 == recipe.epochs:
                metrics.update(evaluate(run_model, ev_loader, len(ev_loader), dist, amp=recipe.amp,
                                        amp_dtype=amp_dtype, progress=recipe.progress))
                if not np.isfinite(metrics["eval_loss"]):
                    raise DivergedError(
                        f"the evaluation loss after epoch {epoch} is {metrics['eval_loss']}: the model diverged; "
                        f"this epoch was not saved and cannot become best. Lower lr or set clip_grad"
                    )
            is_best = "top1" in metrics and metrics["top1"] > state.best_acc1
            if is_best:
                state.best_acc1, state.best_epoch = metrics["top1"], epoch
            metrics.update(epoch=epoch, lr=lr, best_top1=state.best_acc1, split=info.split,
                           wall_time_s=time.perf_counter() - run_start)
            ckpt = _checkpoint(recipe, dist, state, model, optimizer, scheduler, scaler, epoch)
            if dist.is_main:
                folder.append_metrics(metrics)
                folder.save_epoch(ckpt, last=recipe.save_last, best=is_best,
                                  best_meta={"epoch": str(epoch), "top1": repr(metrics.get("top1"))})
                assert writer is not None
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            log(_epoch_line(metrics))
            final = metrics
            if stop.requested and epoch + 1 < recipe.epochs:  # after the last epoch the run is simply done
                _stopped(recipe, log, output, epoch + 1, 0)
    finally:
        if writer is not None:
            writer.close()

    if dist.is_main and state.best_epoch >= 0:
        _check_best(folder, state)
        log(f"training took {time.perf_counter() - run_start:.1f} s; "
            f"best top-1 {state.best_acc1:.2f}% at epoch {state.best_epoch}; weights in "
            f"{output / 'best.safetensors'}, checkpoints in {output}")
    if recipe.energy and dist.is_main and final:
        energy_summary(unwrap(model), eval_ds, dist.device, output, log)
    final["params"] = n_params
    final["output"] = str(output)
    return final


def _checkpoint(recipe: Recipe, dist: DistInfo, state: _State, model: nn.Module, optimizer: Any, scheduler: Any,
                scaler: Any, epoch: int, partial: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The full training state after ``epoch`` (plus progress into the next one, when stopped there)."""
    rngs = _gather_rng(dist)
    ckpt = {
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch, "max_acc1": state.best_acc1, "best_epoch": state.best_epoch,
        "rng": rngs, "rate_flags": rate_flags(unwrap(model)), "recipe": recipe.to_dict(),
    }
    if partial is not None:
        ckpt["partial"] = partial
    return ckpt


def _save_stop(recipe: Recipe, dist: DistInfo, folder: RunFolder, log: Callable[[str], None], state: _State,
               model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, epoch: int,
               metrics: Dict[str, Any]) -> None:
    """Save the exact place inside ``epoch`` where a SIGTERM stopped the run, then raise RunInterrupted."""
    partial = {k: metrics[k] for k in ("step", "loss_sum", "samples")}
    partial["epoch"] = epoch
    ckpt = _checkpoint(recipe, dist, state, model, optimizer, scheduler, scaler, epoch - 1, partial)
    if dist.is_main:
        folder.save_epoch(ckpt, last=True, best=False, best_meta={})
    _stopped(recipe, log, folder.path, epoch, int(partial["step"]))


def _stopped(recipe: Recipe, log: Callable[[str], None], output: Path, epoch: int, step: int) -> None:
    where = f"epoch {epoch}, step {step}" if step else f"the start of epoch {epoch}"
    msg = (f"stopped by SIGTERM; {output / 'last.pth'} holds the state at {where}; continue with "
           f"--resume auto (same --output)")
    log(msg)
    raise RunInterrupted(msg)


def _check_best(folder: RunFolder, state: _State) -> None:
    """Refuse to report a best epoch that ``best.pth`` does not hold."""
    from .run_state import _epoch_of

    held = _epoch_of(folder.path / "best.pth")
    if held != state.best_epoch:
        raise RunError(f"{folder.path / 'best.pth'} holds epoch {held}, not the best epoch {state.best_epoch}; "
                       f"run again with --resume auto to repair it")


def _gather_rng(dist: DistInfo) -> Dict[int, Any]:
    """Every rank's random state, collected on rank 0 (so a resumed run continues each stream)."""
    state = rng_state()
    if not dist.distributed:
        return {0: state}
    import torch.distributed as tdist

    gathered: list = [None] * dist.world_size
    tdist.all_gather_object(gathered, state)
    return dict(enumerate(gathered))


def _epoch_line(m: Dict[str, Any]) -> str:
    parts = [f"epoch {m['epoch']}", f"lr {m['lr']:.3g}", f"train loss {m['train_loss']:.4f}",
             f"{m['train_images_per_s']:.1f} img/s"]
    if "top1" in m:
        parts += [f"eval loss {m['eval_loss']:.4f}", f"top-1 {m['top1']:.2f}%", f"top-5 {m['top5']:.2f}%",
                  f"best {m['best_top1']:.2f}%"]
    return " | ".join(parts)
