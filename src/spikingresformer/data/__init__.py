"""Data sets: images, event-camera recordings and offline data, built by name from recipes."""

from .digits import Digits
from .registry import DatasetInfo, build_dataset, dataset_names, register_dataset

__all__ = ["DatasetInfo", "Digits", "build_dataset", "dataset_names", "register_dataset"]
