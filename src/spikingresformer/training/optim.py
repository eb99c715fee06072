"""How a run learns: optimizer, learning-rate schedule, loss, mixup/cutmix, mixed precision, from a recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

from ..data.registry import DatasetInfo

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["AMP_DTYPES", "SCHEDULERS", "amp_dtype", "build_criterion", "build_mixup", "build_optimizer",
           "build_scaler", "build_scheduler"]

#: timm schedulers that can be stepped once per epoch without a metric.
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant")
#: Values of the recipe key ``amp_dtype``.
AMP_DTYPES = ("auto", "bfloat16", "float16")


def build_optimizer(recipe: "Recipe", model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer ``recipe.opt`` (no weight decay on 1-D parameters)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
                               eps=recipe.opt_eps)


def build_scheduler(recipe: "Recipe", optimizer: torch.optim.Optimizer) -> Any:
    """timm's schedule ``recipe.sched`` with warm-up and cool-down, stepped once per epoch."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=recipe.sched, num_epochs=recipe.epochs, min_lr=recipe.min_lr, warmup_lr=recipe.warmup_lr,
        warmup_epochs=recipe.warmup_epochs, cooldown_epochs=recipe.cooldown_epochs,
    )
    return scheduler


def amp_dtype(recipe: "Recipe", device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None when mixed precision is off (``auto``: bfloat16 where supported)."""
    if not recipe.amp:
        return None
    if recipe.amp_dtype == "bfloat16":
        return torch.bfloat16
    if recipe.amp_dtype == "float16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def build_scaler(dtype: Optional[torch.dtype], device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for float16 autocast on ``device`` (bfloat16 and float32 need none)."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def build_mixup(recipe: "Recipe", info: DatasetInfo, num_classes: int) -> Optional[Callable]:
    """timm's Mixup (mixup, cutmix, smoothed soft targets) when the recipe asks for it on image data, else None."""
    if not (info.mixup_ok and recipe.augment and (recipe.mixup > 0 or recipe.cutmix > 0)):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, label_smoothing=recipe.label_smoothing,
                 num_classes=num_classes)


def build_criterion(recipe: "Recipe", mixup_on: bool) -> Callable:
    """Training loss: soft-target cross entropy under mixup/cutmix, else smoothed cross entropy."""
    from timm.loss import SoftTargetCrossEntropy

    if mixup_on:
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
