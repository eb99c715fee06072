"""Registered builders: every data set a recipe can name, from ``build_dataset(name, root, train, **options)``.

Every builder accepts ``img_size``, ``T``, ``augment`` and ``seed``; an option a data set cannot use
is an error (see :func:`~.registry.build_dataset`). Options and defaults:

- ``cifar10`` / ``cifar100``: img_size (32), augment (True), aa (None), reprob (0.0),
  interpolation ('bicubic'), crop_pct (None = 1.0), mean / std (None = the data set's own).
- ``imagenet``: the same with img_size 224, crop_pct 0.95 and timm's ImageNet mean / std.
- ``cifar10dvs``: img_size (None = 128), T (16), augment (True), dvs_augment (False),
  cifar10dvs_split ('official' | 'first100' | 'random:<seed>'), cache_dir (None =
  ``$SPIKINGRESFORMER_FRAME_CACHE`` or ``~/.cache/spikingresformer``).
- ``dvs128gesture``: img_size (None = 128), T (16), augment (True), dvs_augment (False), cache_dir.
- ``image-folder``: your own ``train/<class>/`` and ``val/<class>/`` images (see :mod:`.image_folder`):
  img_size (32), augment (True), hflip (True), padding (None = img_size // 8), aa (None), reprob (0.0),
  interpolation ('bilinear'), crop_pct (None = 1.0 up to 64 px, else 0.95), in_chans (None = 1 when
  every image is grayscale, else 3), mean / std (None = ImageNet's, or their average for grayscale).
- ``digits``: img_size (16), augment (True: random shift by up to max_shift px), max_shift (1).
- ``event-digits``: img_size (None = sensor_size), T (8), augment (True: random shift by up to
  max_shift px, or the DVS augment instead with dvs_augment=True), dvs_augment (False), data_seed (0),
  sensor_size (16), digit_size (12), max_shift (1), cache_dir.

Options accepted but ignored, and why: ``T`` by the image data sets (the model repeats an image over
the T steps itself); ``seed`` by all of them (random augmentation draws from torch's generator, which
the training loop seeds; the event-digits data depend on ``data_seed`` alone, so that changing the
training seed keeps the data). ``augment`` applies to the training part only.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from .errors import DataOptionError
from .registry import DatasetInfo, register_dataset, register_preprocessing

#: Resize interpolations of the image data sets (the recipe key ``interpolation`` takes these).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")


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
    from .images import build_image_transform

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


def _cifar(kind: str, root: Optional[str], train: bool, img_size: int, augment: bool,
           aa: Optional[str], reprob: float, interpolation: str, crop_pct: Optional[float],
           mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Tuple[Dataset, DatasetInfo]:
    from . import images

    _check_common(kind, img_size, augment, img_size_optional=False)
    if kind == "cifar10":
        cls, n, d_mean, d_std = images.CIFAR10, 10, images.CIFAR10_MEAN, images.CIFAR10_STD
    else:
        cls, n, d_mean, d_std = images.CIFAR100, 100, images.CIFAR100_MEAN, images.CIFAR100_STD
    tf = _image_transform(kind, train, img_size, augment, aa, reprob, interpolation,
                          1.0 if crop_pct is None else crop_pct, mean or d_mean, std or d_std)
    ds = cls(root, train=train, transform=tf)
    return ds, DatasetInfo(kind, n, 3, event=False, mixup_ok=True, split="official")


@register_dataset("cifar10")
def _cifar10(root: Optional[str], train: bool, *, img_size: int = 32, T: Optional[int] = None, augment: bool = True,
             seed: Optional[int] = None, aa: Optional[str] = None, reprob: float = 0.0,
             interpolation: str = "bicubic", crop_pct: Optional[float] = None,
             mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR10 from torchvision's on-disk format with timm transforms."""
    return _cifar("cifar10", root, train, img_size, augment, aa, reprob, interpolation, crop_pct, mean, std)


@register_dataset("cifar100")
def _cifar100(root: Optional[str], train: bool, *, img_size: int = 32, T: Optional[int] = None, augment: bool = True,
              seed: Optional[int] = None, aa: Optional[str] = None, reprob: float = 0.0,
              interpolation: str = "bicubic", crop_pct: Optional[float] = None,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR100 from torchvision's on-disk format with timm transforms."""
    return _cifar("cifar100", root, train, img_size, augment, aa, reprob, interpolation, crop_pct, mean, std)


@register_dataset("imagenet")
def _imagenet(root: Optional[str], train: bool, *, img_size: int = 224, T: Optional[int] = None, augment: bool = True,
              seed: Optional[int] = None, aa: Optional[str] = None, reprob: float = 0.0,
              interpolation: str = "bicubic", crop_pct: Optional[float] = None,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Tuple[Dataset, DatasetInfo]:
    """ImageNet ``train/`` and ``val/`` class folders with timm transforms."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .images import imagenet_folder

    _check_common("imagenet", img_size, augment, img_size_optional=False)
    tf = _image_transform("imagenet", train, img_size, augment, aa, reprob, interpolation,
                          0.95 if crop_pct is None else crop_pct, mean or IMAGENET_DEFAULT_MEAN,
                          std or IMAGENET_DEFAULT_STD)
    ds = imagenet_folder(root, train, tf)
    return ds, DatasetInfo("imagenet", len(ds.classes), 3, event=False, mixup_ok=True, split="official")


def _dvs_transform(dataset: str, train: bool, augment: bool, dvs_augment: bool):
    from .augment import DVSAugment

    _flag(dataset, "dvs_augment", dvs_augment)
    return DVSAugment() if train and augment and dvs_augment else None


@register_dataset("cifar10dvs")
def _cifar10dvs(root: Optional[str], train: bool, *, img_size: Optional[int] = None, T: int = 16,
                augment: bool = True, seed: Optional[int] = None, dvs_augment: bool = False,
                cifar10dvs_split: str = "official", cache_dir: Optional[str] = None) -> Tuple[Dataset, DatasetInfo]:
    """CIFAR10-DVS frames ``[T, 3, img_size, img_size]``; DVS augment when training with dvs_augment."""
    from .cifar10dvs import CIFAR10DVS

    _check_common("cifar10dvs", img_size, augment, img_size_optional=True)
    tf = _dvs_transform("cifar10dvs", train, augment, dvs_augment)
    ds = CIFAR10DVS(root, train, T, split=cifar10dvs_split, img_size=img_size, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("cifar10dvs", 10, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("dvs128gesture")
def _dvs128gesture(root: Optional[str], train: bool, *, img_size: Optional[int] = None, T: int = 16,
                   augment: bool = True, seed: Optional[int] = None, dvs_augment: bool = False,
                   cache_dir: Optional[str] = None) -> Tuple[Dataset, DatasetInfo]:
    """DVS128 Gesture frames ``[T, 3, img_size, img_size]``; DVS augment when training with dvs_augment."""
    from .dvs128gesture import DVS128Gesture

    _check_common("dvs128gesture", img_size, augment, img_size_optional=True)
    tf = _dvs_transform("dvs128gesture", train, augment, dvs_augment)
    ds = DVS128Gesture(root, train, T, img_size=img_size, transform=tf, cache_dir=cache_dir)
    return ds, DatasetInfo("dvs128gesture", 11, 3, event=True, mixup_ok=False, split=ds.split_name)


@register_dataset("digits")
def _digits(root: Optional[str], train: bool, *, img_size: int = 16, T: Optional[int] = None, augment: bool = True,
            seed: Optional[int] = None, max_shift: int = 1) -> Tuple[Dataset, DatasetInfo]:
    """scikit-learn's digits as 1-channel images (offline; ``root`` is not used)."""
    from .digits import Digits

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
    from .augment import DVSAugment, RandomShift
    from .event_digits import EventDigits

    _check_common("event-digits", img_size, augment, img_size_optional=True)
    _flag("event-digits", "dvs_augment", dvs_augment)
    _int("event-digits", "max_shift", max_shift, 0)
    _int("event-digits", "data_seed", data_seed, 0)
    tf = None
    if train and augment:
        if dvs_augment:
            tf = DVSAugment()
        elif max_shift > 0:
            tf = RandomShift(max_shift)
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
    from .image_folder import ImageFolderData, detect_in_chans, image_transform

    name = "image-folder"
    _check_common(name, img_size, augment, img_size_optional=False)
    _flag(name, "hflip", hflip)
    _int(name, "padding", padding, 0, optional=True)
    if in_chans not in (None, 1, 3):
        _fail(name, "in_chans", in_chans, "1, 3 or null (follow the data)")
    _check_augment(name, aa, reprob, interpolation)
    chans = len(mean) if mean is not None else (in_chans or detect_in_chans(_checked_root(root)))
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


def _checked_root(root: Optional[str]) -> str:
    from .image_folder import _check_layout

    return str(_check_layout(root))


@register_preprocessing("image-folder")
def _image_folder_preprocessing(root: Optional[str], options: dict, in_chans: Optional[int]) -> dict:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .image_folder import GRAY_MEAN, GRAY_STD, SMALL_IMAGE_MAX, folder_classes

    gray = in_chans == 1
    img_size = options.get("img_size", 32)
    crop = options.get("crop_pct")
    names = None
    if root is not None and (Path(root) / "train").is_dir():
        names = folder_classes(root)
    return {
        "mean": tuple(options.get("mean") or (GRAY_MEAN if gray else IMAGENET_DEFAULT_MEAN)),
        "std": tuple(options.get("std") or (GRAY_STD if gray else IMAGENET_DEFAULT_STD)),
        "interpolation": options.get("interpolation", "bilinear"),
        "crop_pct": crop if crop is not None else (1.0 if img_size <= SMALL_IMAGE_MAX else 0.95),
        "input_kind": "images",
        "class_names": names,
    }


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _image_preprocessing(mean: Sequence[float], std: Sequence[float], crop_pct: float, names: Optional[Sequence[str]],
                         options: dict, interpolation: str = "bicubic") -> dict:
    return {"mean": tuple(options.get("mean") or mean), "std": tuple(options.get("std") or std),
            "interpolation": options.get("interpolation", interpolation),
            "crop_pct": options.get("crop_pct") or crop_pct, "input_kind": "images",
            "class_names": list(names) if names is not None else None}


@register_preprocessing("cifar10")
def _cifar10_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    from .images import CIFAR10_MEAN, CIFAR10_STD

    return _image_preprocessing(CIFAR10_MEAN, CIFAR10_STD, 1.0, CIFAR10_CLASSES, options)


@register_preprocessing("cifar100")
def _cifar100_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    from .images import CIFAR100_MEAN, CIFAR100_STD

    names = None
    meta = Path(root or "") / "cifar-100-python" / "meta"
    if root is not None and meta.is_file():
        import pickle

        with open(meta, "rb") as f:
            names = pickle.load(f, encoding="latin1").get("fine_label_names")
    return _image_preprocessing(CIFAR100_MEAN, CIFAR100_STD, 1.0, names, options)


@register_preprocessing("imagenet")
def _imagenet_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .image_folder import folder_classes

    names = folder_classes(root) if root is not None and (Path(root) / "train").is_dir() else None
    return _image_preprocessing(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.95, names, options)


@register_preprocessing("digits")
def _digits_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    from .digits import DIGITS_MEAN, DIGITS_STD

    return {"mean": (DIGITS_MEAN,), "std": (DIGITS_STD,), "interpolation": "bilinear", "crop_pct": 1.0,
            "input_kind": "images", "class_names": [str(i) for i in range(10)]}


def _event_preprocessing(names: Sequence[str]) -> dict:
    return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear", "crop_pct": 1.0,
            "input_kind": "events", "class_names": list(names)}


@register_preprocessing("cifar10dvs")
def _cifar10dvs_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    from .cifar10dvs import CIFAR10DVS_CLASSES

    return _event_preprocessing(CIFAR10DVS_CLASSES)


@register_preprocessing("dvs128gesture")
def _dvs128gesture_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    from .dvs128gesture import GESTURE_CLASSES

    return _event_preprocessing(GESTURE_CLASSES)


@register_preprocessing("event-digits")
def _event_digits_preprocessing(root: Optional[str], options: dict, in_chans: int) -> dict:
    return _event_preprocessing([str(i) for i in range(10)])
