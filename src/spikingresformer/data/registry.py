"""One entry point that builds any supported data set by name, as recipes name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from torch.utils.data import Dataset

__all__ = ["DatasetInfo", "build_dataset", "register_dataset", "dataset_names"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the training loop need to know about a data set."""

    name: str
    num_classes: int
    in_chans: int
    event: bool  # samples are [T, C, H, W] event frames rather than [C, H, W] images
    mixup_ok: bool = True  # whether the recipe's mixup/cutmix applies (image data only)
    split: Optional[str] = None  # which train/test split the samples come from (recorded with results)


Builder = Callable[..., Tuple[Dataset, DatasetInfo]]
_DATASETS: Dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn(root, train, **options) -> (dataset, info)`` buildable as ``name``."""

    def wrap(fn: Builder) -> Builder:
        _DATASETS[name] = fn
        return fn

    return wrap


def dataset_names() -> list[str]:
    """Names accepted by :func:`build_dataset` (and by the ``dataset:`` key of a recipe)."""
    return sorted(_DATASETS)


def build_dataset(name: str, root: Optional[str], train: bool, **options: Any) -> Tuple[Dataset, DatasetInfo]:
    """Build data set ``name`` (training or evaluation part) from ``root``.

    ``options`` carry the recipe's data settings (``img_size``, ``T``, augmentation, ...); each
    builder takes what it needs and ignores the rest.
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {dataset_names()}")
    return _DATASETS[name](root, train, **options)


@register_dataset("digits")
def _digits(root: Optional[str], train: bool, *, img_size: int = 16, augment: bool = True, **_: Any):
    from .digits import Digits

    ds = Digits(train=train, img_size=img_size, augment=augment and train)
    return ds, DatasetInfo("digits", Digits.num_classes, Digits.in_chans, event=False, mixup_ok=True)
