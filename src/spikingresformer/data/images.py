"""Image data sets: CIFAR10/100 (torchvision's on-disk format) and ImageNet (folders), with timm transforms.

Nothing is downloaded: a missing or incomplete folder raises a
:class:`~spikingresformer.data.errors.DatasetNotFoundError` that shows the expected layout.
``docs/data.md`` describes the transforms.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from timm.data import create_transform
from torchvision import datasets

from .errors import DatasetNotFoundError

__all__ = ["CIFAR10", "CIFAR100", "build_image_transform", "imagenet_folder"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html (the 'python version' archives)"
IMAGENET_URL = "https://image-net.org/download.php (ILSVRC2012 train and validation images)"
IMAGENET_LAYOUT = """\
<root>/train/n01440764/*.JPEG   (one folder per class, WordNet ids)
<root>/train/...
<root>/val/n01440764/*.JPEG     (the validation images sorted into the same class folders,
<root>/val/...                   e.g. with the widely used valprep.sh)"""


def build_image_transform(img_size: int, is_training: bool, mean: Sequence[float], std: Sequence[float],
                          aa: Optional[str] = None, interpolation: str = "bicubic", crop_pct: Optional[float] = None,
                          reprob: float = 0.0) -> Callable:
    """timm's transform for training (RandAugment ``aa``, random erasing ``reprob``) or evaluation."""
    return create_transform(input_size=img_size, is_training=is_training, auto_augment=aa if is_training else None,
                            interpolation=interpolation, mean=tuple(mean), std=tuple(std), crop_pct=crop_pct,
                            re_prob=reprob if is_training else 0.0)


def _cifar_layout(base_folder: str, files: Sequence[str]) -> str:
    return f"<root>/{base_folder}/\n" + "".join(f"<root>/{base_folder}/{f}\n" for f in files) + (
        "(the extracted python-version archive; <root> may also be that folder itself)"
    )


class _CifarOnDisk:
    """Mixin: find torchvision's CIFAR folder, check its files exist (no md5, so small copies work)."""

    base_folder: str
    train_list: list
    test_list: list
    meta: dict
    root: str

    @classmethod
    def _resolve_root(cls, root: Union[str, os.PathLike, None], name: str) -> str:
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        layout = _cifar_layout(cls.base_folder, files)
        if root is None:
            raise DatasetNotFoundError(name, root, "no data root given", layout, CIFAR_URL)
        root = os.fspath(root)
        if os.path.basename(os.path.normpath(root)) == cls.base_folder:
            root = os.path.dirname(os.path.normpath(root))
        folder = os.path.join(root, cls.base_folder)
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(name, root, f"folder {folder!r} does not exist", layout, CIFAR_URL)
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise DatasetNotFoundError(
                name, root, f"folder {folder!r} is incomplete, missing: {', '.join(missing)}", layout, CIFAR_URL
            )
        return root

    def __init__(self, root: Union[str, os.PathLike], train: bool = True, transform: Optional[Callable] = None) -> None:
        root = self._resolve_root(root, type(self).__name__)
        super().__init__(root, train=train, transform=transform, download=False)  # type: ignore[call-arg]

    def _check_integrity(self) -> bool:  # torchvision hook: existence only (md5 needs the real files)
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in self.train_list + self.test_list
        )

    @classmethod
    def class_names(cls, root: Union[str, os.PathLike, None]) -> Optional[list]:
        """The class names in the meta file of the data set at ``root``, or None when ``root`` does not hold it."""
        try:
            root = cls._resolve_root(root, cls.__name__)
        except DatasetNotFoundError:
            return None
        with open(os.path.join(root, cls.base_folder, cls.meta["filename"]), "rb") as f:
            return pickle.load(f, encoding="latin1")[cls.meta["key"]]

    def _load_meta(self) -> None:  # torchvision hook, without its md5 check
        self.classes = self.class_names(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10(_CifarOnDisk, datasets.CIFAR10):
    """torchvision's CIFAR10 read from ``root`` (never downloaded; file presence checked, not md5)."""


class CIFAR100(_CifarOnDisk, datasets.CIFAR100):
    """torchvision's CIFAR100 read from ``root`` (never downloaded; file presence checked, not md5)."""


def _imagenet_not_found(root: Union[str, os.PathLike, None], problem: str) -> DatasetNotFoundError:
    return DatasetNotFoundError("ImageNet", root, problem, IMAGENET_LAYOUT, IMAGENET_URL)


def imagenet_folder(
    root: Union[str, os.PathLike, None], train: bool, transform: Optional[Callable] = None
) -> datasets.ImageFolder:
    """ImageNet's ``train`` or ``val`` folder as a torchvision ImageFolder, after checking the layout."""
    if root is None:
        raise _imagenet_not_found(root, "no data root given")
    base = Path(root)
    for part in ("train", "val"):
        if not (base / part).is_dir():
            raise _imagenet_not_found(root, f"folder {str(base / part)!r} does not exist")
    part_dir = base / ("train" if train else "val")
    classes = sorted(d.name for d in part_dir.iterdir() if d.is_dir())
    if not classes:
        loose = [f.name for f in part_dir.iterdir() if f.is_file()][:3]
        hint = (f" (it holds loose files such as {loose}: the validation images must be sorted into class folders)"
                if loose else "")
        raise _imagenet_not_found(root, f"folder {str(part_dir)!r} has no class folders{hint}")
    if not train:
        train_classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
        if train_classes != classes:
            extra = sorted(set(classes) ^ set(train_classes))[:5]
            raise _imagenet_not_found(root, f"train/ and val/ hold different class folders ({len(train_classes)} "
                                            f"vs {len(classes)}; e.g. {extra}), so label indices would not agree")
    try:
        return datasets.ImageFolder(str(part_dir), transform=transform)
    except FileNotFoundError as e:  # a class folder without images
        raise _imagenet_not_found(root, f"incomplete: {e}") from None
