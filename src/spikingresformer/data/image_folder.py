"""Anyone's images as a data set: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (``image-folder``).

Channels follow the data (1 when every image is grayscale, else 3) and augmentation follows the
image size (CIFAR practice up to :data:`SMALL_IMAGE_MAX` px, ImageNet's above); see ``docs/data.md``.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from PIL import Image
from torchvision import datasets, transforms

from .errors import DataOptionError, DatasetNotFoundError, ImageFileError

__all__ = ["GRAY_MEAN", "GRAY_STD", "IMAGE_EXTENSIONS", "ImageFolderData", "SMALL_IMAGE_MAX", "folder_classes",
           "detect_in_chans", "image_transform", "open_image"]

#: Images up to this side (after resizing to ``img_size``) get the CIFAR practice, larger ones ImageNet's.
SMALL_IMAGE_MAX = 64
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

LAYOUT = """<root>/train/<class>/<image>   (one folder per class; png, jpg, bmp, ...)
<root>/val/<class>/<image>     (the same class folders)"""

PathLike = Union[str, os.PathLike]


def open_image(path: PathLike, in_chans: int) -> Image.Image:
    """Read ``path`` as a grayscale (``in_chans=1``) or RGB image; a clear ``ImageFileError`` when it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L") and in_chans == 1:
                img = img.point(lambda v: v / 256).convert("L")  # 16-bit grey down to 8 bit
            return img.convert("L" if in_chans == 1 else "RGB")
    except FileNotFoundError:
        raise ImageFileError(f"image {path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageFileError(f"cannot read image {path}: {e} (expected a png, jpg, bmp, ... file)") from None


def _check_layout(root: Optional[PathLike]) -> Path:
    if root is None:
        raise DatasetNotFoundError("image-folder", root, "no data root given (--data-root DIR)", LAYOUT)
    base = Path(root)
    for part in ("train", "val"):
        if not (base / part).is_dir():
            raise DatasetNotFoundError("image-folder", root, f"folder {str(base / part)!r} does not exist", LAYOUT)
    return base


def folder_classes(root: PathLike, part: str = "train") -> List[str]:
    """The class names of ``root/part``: its sub-folder names, sorted (index = position)."""
    folder = Path(root) / part
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def detect_in_chans(root: PathLike) -> int:
    """1 when every image under ``train/`` and ``val/`` is grayscale, else 3 (only headers are read)."""
    for part in ("train", "val"):
        for path in _images(Path(root) / part):
            try:
                with Image.open(path) as img:
                    mode = img.mode
                    palette_grey = mode == "P" and img.palette is not None and img.palette.mode == "L"
            except (OSError, ValueError):
                continue  # reported when the sample is read
            if mode not in _GRAY_MODES and not palette_grey:
                return 3
    return 1


def image_transform(img_size: int, train: bool, *, in_chans: int, mean: Sequence[float], std: Sequence[float],
                    hflip: bool = True, aa: Optional[str] = None, reprob: float = 0.0,
                    interpolation: str = "bilinear", crop_pct: float = 1.0,
                    padding: Optional[int] = None) -> Callable[[Image.Image], Any]:
    """The transform of ``image-folder`` (and of ``predict``): CIFAR practice up to 64 px, ImageNet practice above."""
    if len(mean) != in_chans or len(std) != in_chans:
        raise DataOptionError(f"mean {tuple(mean)} and std {tuple(std)} need one value per channel ({in_chans})")
    if img_size > SMALL_IMAGE_MAX:
        from timm.data import create_transform

        return create_transform(
            input_size=(in_chans, img_size, img_size), is_training=train, hflip=0.5 if hflip else 0.0,
            auto_augment=aa if train else None, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
            crop_pct=crop_pct, re_prob=reprob if train else 0.0,
        )
    from timm.data.transforms import str_to_interp_mode

    interp = str_to_interp_mode("bilinear" if interpolation == "random" else interpolation)
    steps: List[Any] = [transforms.Resize((img_size, img_size), interpolation=interp)]
    if train:
        pad = img_size // 8 if padding is None else padding
        steps.append(transforms.RandomCrop(img_size, padding=pad or None))
        if hflip:
            steps.append(transforms.RandomHorizontalFlip())
        if aa:
            from timm.data.auto_augment import rand_augment_transform

            fill = tuple(round(255 * m) for m in mean)
            steps.append(rand_augment_transform(aa, {"translate_const": int(img_size * 0.45),
                                                     "img_mean": fill[0] if in_chans == 1 else fill}))
    steps += [transforms.ToTensor(), transforms.Normalize(tuple(mean), tuple(std))]
    if train and reprob > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(reprob, mode="pixel", device="cpu"))
    return transforms.Compose(steps)


class ImageFolderData(datasets.ImageFolder):
    """torchvision's ImageFolder over ``root/train`` or ``root/val``, images read with ``in_chans`` channels.

    Checks the layout first (both parts present, the same class folders, images in them) and says
    what it expected when it is not so.
    """

    def __init__(self, root: PathLike, train: bool, in_chans: int, transform: Optional[Callable] = None) -> None:
        base = _check_layout(root)
        part = "train" if train else "val"
        classes = folder_classes(base, part)
        if not classes:
            raise DatasetNotFoundError("image-folder", root, f"folder {str(base / part)!r} has no class folders",
                                       LAYOUT)
        other = folder_classes(base, "val" if train else "train")
        if other != classes:
            diff = sorted(set(classes) ^ set(other))[:5]
            raise DatasetNotFoundError(
                "image-folder", root, f"train/ and val/ hold different class folders ({len(classes)} vs "
                f"{len(other)}, e.g. {diff}), so label indices would not agree", LAYOUT)
        try:
            super().__init__(str(base / part), transform=transform, loader=partial(open_image, in_chans=in_chans),
                             is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))
        except FileNotFoundError as e:  # a class folder without images
            raise DatasetNotFoundError("image-folder", root, str(e), LAYOUT) from None
        self.in_chans = in_chans
        self.part = part

    def find_classes(self, directory: str) -> Tuple[List[str], dict]:
        """Sub-folders sorted by name; hidden folders (``.ipynb_checkpoints``) left out."""
        classes = folder_classes(Path(directory).parent, Path(directory).name)
        return classes, {c: i for i, c in enumerate(classes)}
