"""The ``train`` command: build everything a recipe names, run the epochs, keep every result.

Read it top to bottom: set-up (processes, data, model, optimizer), optional resume, then one loop
over epochs that trains, evaluates, writes checkpoints and metrics. Only rank 0 writes files.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
import yaml
from torch import nn

from .. import load_checkpoint, save_weights
from ..checkpoint import CheckpointError
from .builders import (Logger, build_criterion, build_data, build_model, default_output, energy_summary, eval_loader,
                       resolve_amp_dtype, train_loader)
from .run_state import atomic_save, load_training_checkpoint, rate_flags, rng_state, set_rate_flags, set_rng_state
from .distributed import DistInfo, cleanup_distributed, convert_sync_batchnorm, init_distributed, unwrap
from .engine import evaluate, train_one_epoch
from .recipe import Recipe, RecipeError

__all__ = ["run_training"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _State:
    epoch: int = 0
    best_acc1: float = -1.0
    best_epoch: int = -1


def run_training(recipe: Recipe) -> Dict[str, Any]:
    """Train and evaluate as ``recipe`` says; return the final metrics (on every rank)."""
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    # ---- checks that must fail before any long work ---------------------------------------------
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if recipe.global_batch_size is not None:
        if recipe.global_batch_size % world_size:
            raise RecipeError(
                f"global_batch_size {recipe.global_batch_size} does not divide across {world_size} "
                f"processes; use a multiple of {world_size}"
            )
        recipe.batch_size = recipe.global_batch_size // world_size
    if recipe.resume and recipe.resume != "auto" and not Path(recipe.resume).is_file():
        raise FileNotFoundError(f"resume checkpoint {recipe.resume} does not exist")
    if recipe.transfer and not Path(recipe.transfer).is_file():
        raise FileNotFoundError(f"transfer checkpoint {recipe.transfer} does not exist")
    dist = init_distributed(recipe.device)
    try:
        output = default_output(recipe)
        if dist.is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        log = Logger(dist, output / "log.txt" if dist.is_main else None)
        amp_dtype = resolve_amp_dtype(recipe, dist.device)

        _seed_everything(recipe.seed + dist.rank)
        train_ds, info = build_data(recipe, train=True)
        eval_ds, _ = build_data(recipe, train=False)
        if len(train_ds) < recipe.batch_size * dist.world_size:
            raise RecipeError(
                f"the training set has {len(train_ds)} samples, fewer than one global batch "
                f"({recipe.batch_size} x {dist.world_size} processes)"
            )
        model = build_model(recipe, info)
        if recipe.transfer:
            res = load_checkpoint(model, recipe.transfer, exclude_classifier=True)
            log(f"transfer: loaded {recipe.transfer} (classifier left out: {res.skipped_keys})")

        # ---- model, optimizer, schedule ----------------------------------------------------
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

        # ---- resume --------------------------------------------------------------------------
        state = _State()
        resume = recipe.resume
        if resume == "auto":
            resume = str(output / "last.pth") if (output / "last.pth").is_file() else None
        if resume:
            ckpt = load_training_checkpoint(Path(resume))
            try:
                load_checkpoint(model, ckpt)
            except CheckpointError as e:
                raise CheckpointError(f"cannot resume from {resume}: {e}") from None
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("recipe", {}).get("epochs", recipe.epochs) == recipe.epochs:
                scheduler.load_state_dict(ckpt["lr_scheduler"])
            else:
                log(f"resume: epochs changed from {ckpt['recipe']['epochs']} to {recipe.epochs}; "
                    f"the learning-rate schedule follows the new count")
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            set_rate_flags(model, ckpt.get("rate_flags", {}))
            state = _State(epoch=int(ckpt["epoch"]) + 1, best_acc1=float(ckpt["max_acc1"]),
                           best_epoch=int(ckpt.get("best_epoch", -1)))
            rng = ckpt.get("rng", {}).get(dist.rank)
            if rng is not None:
                set_rng_state(rng)
            log(f"resumed from {resume} at epoch {state.epoch}")
        elif dist.is_main and (output / "metrics.jsonl").exists():
            log(f"starting a new run in {output}: the previous run's metrics.jsonl is kept as metrics.jsonl.prev")
            os.replace(output / "metrics.jsonl", output / "metrics.jsonl.prev")

        ddp_model: nn.Module = model
        if dist.distributed:
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
            )
        # static shapes: every batch has the same size (drop_last), and dynamic-shape tracing of the
        # attention reshapes fails in inductor
        run_model = torch.compile(ddp_model, dynamic=False) if recipe.compile else ddp_model

        train_sampler, loader = train_loader(recipe, dist, train_ds)
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
        for epoch in range(state.epoch, recipe.epochs):
            train_sampler.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            metrics = train_one_epoch(
                run_model, loader, len(loader), optimizer, criterion, dist, epoch=epoch,
                mixup_fn=mixup_fn, scaler=scaler, amp=recipe.amp, amp_dtype=amp_dtype, tet=recipe.tet,
                tet_lambda=recipe.tet_lambda, tet_phi=recipe.tet_phi, clip_grad=recipe.clip_grad,
                progress=recipe.progress, log_interval=recipe.log_interval,
                log=log,
            )
            scheduler.step(epoch + 1)
            if (epoch + 1) % recipe.eval_interval == 0 or epoch + 1 == recipe.epochs:
                metrics.update(evaluate(run_model, ev_loader, len(ev_loader), dist, amp=recipe.amp,
                                        amp_dtype=amp_dtype, progress=recipe.progress))
            is_best = "top1" in metrics and metrics["top1"] > state.best_acc1
            if is_best:
                state.best_acc1, state.best_epoch = metrics["top1"], epoch
            metrics.update(epoch=epoch, lr=lr, best_top1=state.best_acc1, split=info.split,
                           wall_time_s=time.perf_counter() - run_start)

            rngs = _gather_rng(dist)
            if dist.is_main:
                ckpt = {
                    "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "epoch": epoch, "max_acc1": state.best_acc1, "best_epoch": state.best_epoch,
                    "rng": rngs, "rate_flags": rate_flags(unwrap(model)), "recipe": recipe.to_dict(),
                }
                if recipe.save_last:
                    atomic_save(ckpt, output / "last.pth")
                if is_best:
                    atomic_save(ckpt, output / "best.pth")
                with open(output / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                assert writer is not None
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            log(_epoch_line(metrics))
            final = metrics

        if dist.is_main and (output / "best.pth").is_file():
            save_weights(load_training_checkpoint(output / "best.pth")["model"], output / "best.safetensors")
            log(f"training took {time.perf_counter() - run_start:.1f} s; "
                f"best top-1 {state.best_acc1:.2f}% at epoch {state.best_epoch}; weights in "
                f"{output / 'best.safetensors'}, checkpoints in {output}")
        if recipe.energy and dist.is_main and final:
            energy_summary(unwrap(model), eval_ds, dist.device, output, log)
        if writer is not None:
            writer.close()
        final["params"] = n_params
        final["output"] = str(output)
        return final
    finally:
        cleanup_distributed()


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
