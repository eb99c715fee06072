"""Registered builders: every data set a recipe can name, from ``build_dataset(name, root, train, **options)``.

Every builder accepts ``img_size``, ``T``, ``augment`` and ``seed``; an option a data set cannot use
is an error (see :func:`~.registry.build_dataset`). ``docs/data.md`` lists each data set's options,
their defaults, and why some are accepted but ignored.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ..constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .augment import DVSAugment, RandomShift
from .cifar10dvs import CIFAR10DVS
from .digits import DIGITS_MEAN, DIGITS_STD, Digits
from .dvs128gesture import GESTURE_CLASSES, DVS128Gesture
from .errors import DataOptionError
from .event_digits import EventDigits
from .image_folder import (GRAY_MEAN, GRAY_STD, SMALL_IMAGE_MAX, ImageFolderData, _check_layout, detect_in_chans,
                           folder_classes, image_transform)
from .images import CIFAR10, CIFAR100, build_image_transform, imagenet_folder
from .registry import DatasetInfo, register_dataset, register_preprocessing

#: Resize interpolations of the image data sets (the recipe key ``interpolation`` takes these).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")
DIGIT_NAMES = tuple(str(i) for i in range(10))


def _fail(dataset: str, option: str, value: Any, allowed: str) -> NoReturn:
    raise DataOptionError(f"{dataset}: option {option} = {value!r} is not allowed; expected {allowed}")


def _int(dataset: str, option: str, value: Any, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(dataset, option, value, f"an integer of at least {low}" + (" or null" if optional else ""))


def _flag(dataset: str, option: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(dataset, option, value, "true or false")


def _check_common(dataset: str, img_size: Any, augment: Any, img_size_optional: bool) -> None:
    # T is checked by the event data sets themselves (and ignored by the image ones)
    _int(dataset, "img_size", img_size, 1, optional=img_size_optional)
    _flag(dataset, "augment", augment)


def _check_augment(dataset: str, aa: Optional[str], reprob: float, interpolation: str) -> None:
    """The augmentation options that every image data set takes: RandAugment, random erasing, interpolation."""
    if aa is not None and not isinstance(aa, str):
        _fail(dataset, "aa", aa, "a timm RandAugment string such as 'rand-m9-n1-mstd0.4-inc1', or null")
    if isinstance(reprob, bool) or not isinstance(reprob, Real) or not 0.0 <= reprob <= 1.0:
        _fail(dataset, "reprob", reprob, "a probability in [0, 1]")
    if interpolation not in INTERPOLATIONS:
        _fail(dataset, "interpolation", interpolation, f"one of {', '.join(INTERPOLATIONS)}")


def _image_transform(dataset: str, train: bool, img_size: int, augment: bool, aa: Optional[str], reprob: float,
                     interpolation: str, crop_pct: float, mean: Sequence[float], std: Sequence[float]):
    _check_augment(dataset, aa, reprob, interpolation)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, Real) or not 0.0 < crop_pct <= 1.0:
        _fail(dataset, "crop_pct", crop_pct, "a fraction in (0, 1]")
    for option, values, positive in (("mean", mean, False), ("std", std, True)):
        if len(values) != 3 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values) or (
            positive and min(values) <= 0
        ):
            _fail(dataset, option, values, "three " + ("positive " if positive else "") + "numbers, one per channel")
    return build_image_transform(
        img_size, is_training=bool(train and augment), mean=mean, std=std, aa=aa, interpolation=interpolation,
        crop_pct=crop_pct, reprob=reprob,
    )


def _image_dataset(kind: str, size: int, crop: float, d_mean: Sequence[float], d_std: Sequence[float],
                   make: Callable[..., Dataset], names_at: Callable[[Optional[str]], Optional[Sequence[str]]]) -> None:
    """Register ``kind``, RGB images with timm transforms (``make(root, train, transform)``), and its preprocessing."""

    @register_dataset(kind)
    def build(root: Optional[str], train: bool, *, img_size: int = size, T: Optional[int] = None,
              augment: bool = True, seed: Optional[int] = None, aa: Optional[str] = None, reprob: float = 0.0,
              interpolation: str = "bicubic", crop_pct: Optional[float] = None,
              mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None) -> Tuple[Dataset, DatasetInfo]:
        _check_common(kind, img_size, augment, img_size_optional=False)
        tf = _image_transform(kind, train, img_size, augment, aa, reprob, interpolation,
                              crop if crop_pct is None else crop_pct, mean or d_mean, std or d_std)
        ds = make(root, train, tf)
        return ds, DatasetInfo(kind, len(ds.classes), 3, event=False, mixup_ok=True, split="official")

    @register_preprocessing(kind)
    def describe(root: Optional[str], options: dict, in_chans: int) -> dict:
        names = names_at(root)
        return {"mean": tuple(options.get("mean") or d_mean), "std": tuple(options.get("std") or d_std),
                "interpolation": options.get("interpolation", "bicubic"),
                "crop_pct": options.get("crop_pct") or crop, "input_kind": "images",
                "class_names": list(names) if names is not None else None}


def _train_folder_names(root: Optional[str]) -> Optional[Sequence[str]]:
    return folder_classes(root) if root is not None and (Path(root) / "train").is_dir() else None


_image_dataset("cifar10", 32, 1.0, CIFAR10_MEAN, CIFAR10_STD, CIFAR10, lambda root: CIFAR10_CLASSES)
_image_dataset("cifar100", 32, 1.0, CIFAR100_MEAN, CIFAR100_STD, CIFAR100, CIFAR100.class_names)
_image_dataset("imagenet", 224, 0.95, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, imagenet_folder, _train_folder_names)


def _dvs_transform(dataset: str, train: bool, augment: bool, dvs_augment: bool):
    _flag(dataset, "dvs_augment", dvs_augment)
    return DVSAugment() if train and augment and dvs_augment else None


@register_dataset("cifar10dvs")
def _cifar10dvs(root: Optional[str], train: bool, *, img_size: Optional[int] = None, T: int = 16,
                augment: bool = True, seed: Optional[int] = None, dvs_augment: bool = False,
                cifar10dvs_split: str = "official", cache_dir: Optional[str] = None) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR10-DVS frames ``[T, 3, img_size, img_size]``; DVS augment when training with dvs_augment."""
    _check_common("cifar10dvs", img_size, augment, img_size_optional=True)
    tf = _dvs_transform("cifar10dvs", train, augment, dvs_augment)
    ds = CIFAR10DVS(root, train, T, split=cifar10dvs_split, img_size=img_size, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("cifar10dvs", 10, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("dvs128gesture")
def _dvs128gesture(root: Optional[str], train: bool, *, img_size: Optional[int] = None, T: int = 16,
                   augment: bool = True, seed: Optional[int] = None, dvs_augment: bool = False,
                   cache_dir: Optional[str] = None) -> Tuple[Dataset, DatasetInfo]:
    """DVS128 Gesture frames ``[T, 3, img_size, img_size]``; DVS augment when training with dvs_augment."""
    _check_common("dvs128gesture", img_size, augment, img_size_optional=True)
    tf = _dvs_transform("dvs128gesture", train, augment, dvs_augment)
    ds = DVS128Gesture(root, train, T, img_size=img_size, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("dvs128gesture", 11, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("digits")
def _digits(root: Optional[str], train: bool, *, img_size: int = 16, T: Optional[int] = None, augment: bool = True,
            seed: Optional[int] = None, max_shift: int = 1) -> Tuple[Dataset, DatasetInfo]:
    """scikit-learn's digits as 1-channel images (offline; ``root`` is not used)."""
    _check_common("digits", img_size, augment, img_size_optional=False)
    _int("digits", "max_shift", max_shift, 0)
    ds = Digits(train=train, img_size=img_size, augment=augment and train, max_shift=max_shift)
    return ds, DatasetInfo("digits", Digits.num_classes, Digits.in_chans, event=False, mixup_ok=True,
                           split="digits: fixed stratified 80/20 split (seed 0)")


@register_dataset("event-digits")
def _event_digits(root: Optional[str], train: bool, *, img_size: Optional[int] = None, T: int = 8,
                  augment: bool = True, seed: Optional[int] = None, dvs_augment: bool = False, data_seed: int = 0,
                  sensor_size: int = 16, digit_size: int = 12, max_shift: int = 1,
                  cache_dir: Optional[str] = None) -> Tuple[Dataset, DatasetInfo]:
    """Digits converted to events by simulated saccades, framed like the DVS data sets (offline)."""
    _check_common("event-digits", img_size, augment, img_size_optional=True)
    _flag("event-digits", "dvs_augment", dvs_augment)
    _int("event-digits", "max_shift", max_shift, 0)
    _int("event-digits", "data_seed", data_seed, 0)
    tf = None
    if train and augment:
        tf = DVSAugment() if dvs_augment else RandomShift(max_shift) if max_shift > 0 else None
    ds = EventDigits(train, T=T, img_size=img_size, sensor_size=sensor_size, digit_size=digit_size,
                     seed=data_seed, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("event-digits", 10, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("image-folder")
def _image_folder(root: Optional[str], train: bool, *, img_size: int = 32, T: Optional[int] = None,
                  augment: bool = True, seed: Optional[int] = None, hflip: bool = True, padding: Optional[int] = None,
                  aa: Optional[str] = None, reprob: float = 0.0, interpolation: str = "bilinear",
                  crop_pct: Optional[float] = None, in_chans: Optional[int] = None,
                  mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None) -> Tuple[Dataset, DatasetInfo]:
    """Class folders of your own images; augmentation by image size (CIFAR practice up to 64 px, else ImageNet's)."""
    name = "image-folder"
    _check_common(name, img_size, augment, img_size_optional=False)
    _flag(name, "hflip", hflip)
    _int(name, "padding", padding, 0, optional=True)
    if in_chans not in (None, 1, 3):
        _fail(name, "in_chans", in_chans, "1, 3 or null (follow the data)")
    _check_augment(name, aa, reprob, interpolation)
    chans = len(mean) if mean is not None else (in_chans or detect_in_chans(str(_check_layout(root))))
    prep = _image_folder_preprocessing(root, dict(img_size=img_size, interpolation=interpolation, crop_pct=crop_pct,
                                                  mean=mean, std=std), chans)
    for option in ("mean", "std"):
        values = prep[option]
        if len(values) != chans or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
            _fail(name, option, values, f"{chans} numbers, one per channel")
    if not 0.0 < prep["crop_pct"] <= 1.0:
        _fail(name, "crop_pct", crop_pct, "a fraction in (0, 1]")
    tf = image_transform(img_size, bool(train and augment), in_chans=chans, mean=prep["mean"], std=prep["std"],
                         hflip=hflip, aa=aa, reprob=reprob, interpolation=interpolation,
                         crop_pct=prep["crop_pct"], padding=padding)
    ds = ImageFolderData(root, train, chans, transform=tf)  # type: ignore[arg-type]
    return ds, DatasetInfo(name, len(ds.classes), chans, event=False, mixup_ok=True, split="train/ and val/ folders",
                           class_names=tuple(ds.classes))


@register_preprocessing("image-folder")
def _image_folder_preprocessing(root: Optional[str], options: dict, in_chans: Optional[int]) -> dict:
    gray = in_chans == 1
    crop = options.get("crop_pct")
    return {
        "mean": tuple(options.get("mean") or (GRAY_MEAN if gray else IMAGENET_DEFAULT_MEAN)),
        "std": tuple(options.get("std") or (GRAY_STD if gray else IMAGENET_DEFAULT_STD)),
        "interpolation": options.get("interpolation", "bilinear"),
        "crop_pct": crop if crop is not None else (1.0 if options.get("img_size", 32) <= SMALL_IMAGE_MAX else 0.95),
        "input_kind": "images",
        "class_names": _train_folder_names(root),
    }


@register_preprocessing("digits")
def _digits_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    return {"mean": (DIGITS_MEAN,), "std": (DIGITS_STD,), "interpolation": "bilinear", "crop_pct": 1.0,
            "input_kind": "images", "class_names": list(DIGIT_NAMES)}


def _event_preprocessing(kind: str, names: Sequence[str]) -> None:
    """Register the preprocessing of event data set ``kind``: frames as they are, classes ``names``."""

    @register_preprocessing(kind)
    def describe(root: Optional[str], options: dict, in_chans: int) -> dict:
        return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear", "crop_pct": 1.0,
                "input_kind": "events", "class_names": list(names)}


_event_preprocessing("cifar10dvs", CIFAR10_CLASSES)
_event_preprocessing("dvs128gesture", GESTURE_CLASSES)
_event_preprocessing("event-digits", DIGIT_NAMES)
