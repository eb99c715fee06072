"""Registered builders: every data set a recipe can name, from ``build_dataset(name, root, train, **options)``.

Options each builder reads (all others are ignored):

- ``cifar10`` / ``cifar100``: img_size (32), augment (True), aa, interpolation ('bicubic'),
  crop_pct (1.0), mean/std (CIFAR's), reprob (0.0), plus optional timm ``create_transform``
  keywords scale, ratio, hflip, color_jitter.
- ``imagenet``: the same with img_size 224, crop_pct 0.95, timm's ImageNet mean/std.
- ``cifar10dvs``: T (16), img_size (None = 128), augment (True), dvs_augment (None = follow
  ``augment``; DVS augment is applied when training and ``augment and dvs_augment``),
  cifar10dvs_split ('official' | 'first100' | 'random:<seed>'), cache_dir (None =
  ``$SPIKINGRESFORMER_CACHE`` or ``~/.cache/spikingresformer``).
- ``dvs128gesture``: T (16), img_size (None = 128), augment (True), dvs_augment (None), cache_dir.
- ``event-digits``: T (8), img_size (None = sensor_size), augment (True: random shift by up to
  max_shift px when training; with dvs_augment=True the full DVS augment instead), data_seed (0),
  sensor_size (16), digit_size (12), max_shift (1), cache_dir. The training seed ``seed`` is
  deliberately not used: the data depend on data_seed only.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from .registry import DatasetInfo, register_dataset

_TIMM_EXTRA = ("scale", "ratio", "hflip", "vflip", "color_jitter", "train_crop_mode")


def _dvs_aug(train: bool, augment: bool, dvs_augment: Optional[bool]) -> bool:
    return bool(train and augment and (True if dvs_augment is None else dvs_augment))


def _timm_extra(options: dict) -> dict:
    return {k: options[k] for k in _TIMM_EXTRA if options.get(k) is not None}


def _image_transform(train: bool, img_size: int, augment: bool, mean: Sequence[float], std: Sequence[float],
                     aa: Optional[str], interpolation: str, crop_pct: float, reprob: float, options: dict):
    from .images import build_image_transform

    return build_image_transform(
        img_size, is_training=bool(train and augment), mean=mean, std=std, aa=aa, interpolation=interpolation,
        crop_pct=crop_pct, reprob=reprob, **(_timm_extra(options) if train and augment else {}),
    )


def _cifar(kind: str, root: Optional[str], train: bool, img_size: int, augment: bool, aa: Optional[str],
           interpolation: str, crop_pct: Optional[float], mean, std, reprob: float, options: dict):
    from . import images

    if kind == "cifar10":
        cls, n, d_mean, d_std = images.CIFAR10, 10, images.CIFAR_MEAN, images.CIFAR_STD
    else:
        cls, n, d_mean, d_std = images.CIFAR100, 100, images.CIFAR100_MEAN, images.CIFAR100_STD
    tf = _image_transform(train, img_size, augment, mean or d_mean, std or d_std, aa, interpolation,
                          1.0 if crop_pct is None else crop_pct, reprob, options)
    ds = cls(root, train=train, transform=tf)
    return ds, DatasetInfo(kind, n, 3, event=False, mixup_ok=True, split="official")


@register_dataset("cifar10")
def _cifar10(root: Optional[str], train: bool, *, img_size: int = 32, augment: bool = True, aa: Optional[str] = None,
             interpolation: str = "bicubic", crop_pct: Optional[float] = None, mean=None, std=None,
             reprob: float = 0.0, **options: Any) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR10 from torchvision's on-disk format with timm transforms."""
    return _cifar("cifar10", root, train, img_size, augment, aa, interpolation, crop_pct, mean, std, reprob, options)


@register_dataset("cifar100")
def _cifar100(root: Optional[str], train: bool, *, img_size: int = 32, augment: bool = True, aa: Optional[str] = None,
              interpolation: str = "bicubic", crop_pct: Optional[float] = None, mean=None, std=None,
              reprob: float = 0.0, **options: Any) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR100 from torchvision's on-disk format with timm transforms."""
    return _cifar("cifar100", root, train, img_size, augment, aa, interpolation, crop_pct, mean, std, reprob, options)


@register_dataset("imagenet")
def _imagenet(root: Optional[str], train: bool, *, img_size: int = 224, augment: bool = True,
              aa: Optional[str] = None, interpolation: str = "bicubic", crop_pct: Optional[float] = None,
              mean=None, std=None, reprob: float = 0.0, **options: Any) -> Tuple[Dataset, DatasetInfo]:
    """ImageNet ``train/`` and ``val/`` class folders with timm transforms."""
    from .images import imagenet_folder, imagenet_mean_std

    d_mean, d_std = imagenet_mean_std()
    tf = _image_transform(train, img_size, augment, mean or d_mean, std or d_std, aa, interpolation,
                          0.95 if crop_pct is None else crop_pct, reprob, options)
    ds = imagenet_folder(root, train, tf)
    return ds, DatasetInfo("imagenet", len(ds.classes), 3, event=False, mixup_ok=True, split="official")


@register_dataset("cifar10dvs")
def _cifar10dvs(root: Optional[str], train: bool, *, T: int = 16, img_size: Optional[int] = None,
                augment: bool = True, dvs_augment: Optional[bool] = None, cifar10dvs_split: str = "official",
                cache_dir: Optional[str] = None, **_: Any) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR10-DVS frames ``[T, 3, img_size, img_size]``; DVS augment when training."""
    from .augment import DVSAugment
    from .cifar10dvs import CIFAR10DVS

    ds = CIFAR10DVS(root, train, T, split=cifar10dvs_split, size=img_size,
                    transform=DVSAugment() if _dvs_aug(train, augment, dvs_augment) else None, cache_dir=cache_dir)
    return ds, DatasetInfo("cifar10dvs", 10, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("dvs128gesture")
def _dvs128gesture(root: Optional[str], train: bool, *, T: int = 16, img_size: Optional[int] = None,
                   augment: bool = True, dvs_augment: Optional[bool] = None, cache_dir: Optional[str] = None,
                   **_: Any) -> Tuple[Dataset, DatasetInfo]:
    """DVS128 Gesture frames ``[T, 3, img_size, img_size]``; DVS augment when training."""
    from .augment import DVSAugment
    from .dvs128gesture import DVS128Gesture

    tf = DVSAugment() if _dvs_aug(train, augment, dvs_augment) else None
    ds = DVS128Gesture(root, train, T, size=img_size, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("dvs128gesture", 11, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("event-digits")
def _event_digits(root: Optional[str], train: bool, *, T: int = 8, img_size: Optional[int] = None,
                  augment: bool = True, dvs_augment: Optional[bool] = None, data_seed: int = 0,
                  sensor_size: int = 16, digit_size: int = 12, max_shift: int = 1, cache_dir: Optional[str] = None,
                  **_: Any) -> Tuple[Dataset, DatasetInfo]:
    """Digits converted to events by simulated saccades, framed like the DVS data sets (offline)."""
    from .augment import DVSAugment
    from .event_digits import EventDigits, RandomShift

    tf = None
    if train and augment:
        if dvs_augment:
            tf = DVSAugment()
        elif max_shift > 0:
            tf = RandomShift(max_shift)
    ds = EventDigits(train, T=T, img_size=img_size, sensor_size=sensor_size, digit_size=digit_size,
                     seed=data_seed, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("event-digits", 10, 3, event=True, mixup_ok=False, split=ds.split_name)
