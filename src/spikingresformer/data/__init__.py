"""Data sets: images, event-camera recordings and offline data, built by name from recipes.

``build_dataset(name, root, train, **options)`` builds any of: cifar10, cifar100, imagenet,
cifar10dvs, dvs128gesture, digits, event-digits, image-folder (``docs/data.md`` gives each one's
options, the data protocols and the frame cache).
"""

from . import builders as _builders  # noqa: F401  (registers the data sets)
from .aedat import Events, read_aedat2_raw, read_aedat31, read_cifar10dvs, write_aedat2, write_aedat31
from .augment import DVSAugment, RandomShift
from .cifar10dvs import CIFAR10DVS, CIFAR10DVS_CLASSES
from .digits import Digits
from .dvs128gesture import (DVS128Gesture, GESTURE_CLASSES, INDEX_TO_GESTURE_ID, gesture_index,
                            read_gesture_labels)
from .errors import DataError, DataOptionError, DatasetNotFoundError, EventFileError, FrameCacheWarning
from .event_digits import EventDigits
from .framing import FRAME_CACHE_ENV, FrameCache, events_to_frames, frames_to_input
from .image_folder import ImageFolderData, image_transform, open_image
from .images import CIFAR10, CIFAR100, build_image_transform, imagenet_folder
from .registry import (DatasetInfo, build_dataset, dataset_names, dataset_options, dataset_preprocessing,
                       register_dataset, register_preprocessing)
from .saccades import SaccadeDVSConfig, images_to_events

__all__ = ["CIFAR10", "CIFAR100", "CIFAR10DVS", "CIFAR10DVS_CLASSES", "DVS128Gesture", "DVSAugment",
           "DatasetInfo", "DataError", "DataOptionError", "DatasetNotFoundError", "Digits", "EventDigits",
           "EventFileError", "Events", "FRAME_CACHE_ENV", "FrameCache", "FrameCacheWarning",
           "GESTURE_CLASSES", "INDEX_TO_GESTURE_ID", "ImageFolderData", "RandomShift", "SaccadeDVSConfig",
           "build_dataset", "build_image_transform", "dataset_names", "dataset_options",
           "dataset_preprocessing", "events_to_frames", "frames_to_input", "gesture_index",
           "image_transform", "imagenet_folder", "images_to_events", "open_image", "read_aedat2_raw",
           "read_aedat31", "read_cifar10dvs", "read_gesture_labels", "register_dataset",
           "register_preprocessing", "write_aedat2", "write_aedat31"]
