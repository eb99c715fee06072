"""scikit-learn's handwritten digits as an offline image data set (no download needed).

1,797 grey 8x8 images of the digits 0-9 ship inside scikit-learn. The split is fixed: a stratified
80/20 train/test split with seed 0 (1,437 training and 360 test images), the same on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .augment import RandomShift

__all__ = ["Digits", "load_digits_split", "write_digits_folder", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_MEAN = 0.3
DIGITS_STD = 0.4


def load_digits_split(train: bool) -> Tuple[np.ndarray, np.ndarray]:
    """The fixed split: ``(images [N, 8, 8] in [0, 1] as float32, labels [N] as int64)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    return (x_tr, y_tr) if train else (x_te, y_te)


class Digits(Dataset):
    """Digits resized to ``img_size`` (bilinear), one channel, normalised; ``(image [1,H,W], label)``.

    With ``augment=True`` (training) each image is shifted by up to ``max_shift`` pixels at random
    (:class:`~.augment.RandomShift`, the gap filled with the normalised background).
    """

    num_classes = 10
    in_chans = 1

    def __init__(self, train: bool, img_size: int = 16, augment: bool = False, max_shift: int = 1) -> None:
        images, labels = load_digits_split(train)
        x = torch.from_numpy(images).unsqueeze(1)
        if img_size != 8:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.images = ((x - DIGITS_MEAN) / DIGITS_STD).contiguous()
        self.labels = torch.from_numpy(labels)
        self.img_size = img_size
        self.train = train
        self.transform = RandomShift(max_shift, fill=-DIGITS_MEAN / DIGITS_STD) if augment and max_shift > 0 else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), int(self.labels[i])


def write_digits_folder(root: Union[str, os.PathLike], img_size: int = 28) -> Path:
    """Write the fixed split as grayscale PNGs, ``root/{train,val}/<digit>/<n>.png``, upscaled to ``img_size`` px.

    An ``image-folder`` data set that anyone can make offline (bilinear upscaling of the 8x8 originals).
    """
    from PIL import Image

    root = Path(root)
    for part, train in (("train", True), ("val", False)):
        images, labels = load_digits_split(train)
        for n, (img, label) in enumerate(zip(images, labels)):
            folder = root / part / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(np.round(img * 255).astype(np.uint8), "L")
            pil.resize((img_size, img_size), Image.Resampling.BILINEAR).save(folder / f"{n:04d}.png")
    return root
