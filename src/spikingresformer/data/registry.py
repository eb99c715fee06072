"""One entry point that builds any supported data set by name, as recipes name them.

Every builder declares its options as explicit keyword arguments; :func:`build_dataset` refuses an
option the named data set cannot use (a :class:`~.errors.DataOptionError` naming the option and the
data set) instead of dropping it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from torch.utils.data import Dataset

from .errors import DataOptionError

__all__ = ["DatasetInfo", "build_dataset", "register_dataset", "dataset_names", "dataset_options",
           "register_preprocessing", "dataset_preprocessing"]

#: Options every builder accepts (some ignore a few of them; the builders' docstrings say which).
COMMON_OPTIONS = ("img_size", "T", "augment", "seed")


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the training loop need to know about a data set."""

    name: str
    num_classes: int
    in_chans: int
    event: bool  # samples are [T, C, H, W] event frames rather than [C, H, W] images
    mixup_ok: bool = True  # whether the recipe's mixup/cutmix applies (image data only)
    split: Optional[str] = None  # which train/test split the samples come from (recorded with results)
    class_names: Optional[Tuple[str, ...]] = None  # name of each class index, where the data set knows them


Builder = Callable[..., Tuple[Dataset, DatasetInfo]]
_DATASETS: Dict[str, Builder] = {}
_OPTIONS: Dict[str, Tuple[str, ...]] = {}
#: name -> fn(root, options, in_chans) -> the preprocessing a model trained on the data set needs
Describer = Callable[[Optional[str], Dict[str, Any], int], Dict[str, Any]]
_PREPROCESSING: Dict[str, Describer] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn(root, train, *, <options>) -> (dataset, info)`` buildable as ``name``.

    The options must be keyword-only parameters with defaults, and must include :data:`COMMON_OPTIONS`;
    a catch-all ``**kwargs`` is refused, since it would let unknown options pass silently.
    """

    def wrap(fn: Builder) -> Builder:
        params = list(inspect.signature(fn).parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in params):
            raise TypeError(f"builder of {name!r} takes **kwargs; declare each option it uses instead")
        options = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        missing = [o for o in COMMON_OPTIONS if o not in options]
        if missing:
            raise TypeError(f"builder of {name!r} lacks the common option(s) {missing}")
        _DATASETS[name] = fn
        _OPTIONS[name] = options
        return fn

    return wrap


def dataset_names() -> list[str]:
    """Names accepted by :func:`build_dataset` (and by the ``dataset:`` key of a recipe)."""
    return sorted(_DATASETS)


def _check_name(name: str) -> None:
    if name not in _DATASETS:
        raise DataOptionError(f"unknown dataset {name!r}; expected one of {dataset_names()}")


def dataset_options(name: str) -> list[str]:
    """The keyword options data set ``name`` accepts (so a caller can check them before building)."""
    _check_name(name)
    return sorted(_OPTIONS[name])


def build_dataset(name: str, root: Optional[str], train: bool, **options: Any) -> Tuple[Dataset, DatasetInfo]:
    """Build data set ``name`` (training or evaluation part) from ``root``.

    ``options`` carry the recipe's data settings (``img_size``, ``T``, augmentation, ...). An option
    the data set cannot use raises :class:`~.errors.DataOptionError` naming it; see :func:`dataset_options`.
    """
    _check_name(name)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise DataOptionError(
            f"dataset {name!r} cannot use the option(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(sorted(_OPTIONS[name]))}"
        )
    return _DATASETS[name](root, train, **options)


def register_preprocessing(name: str) -> Callable[[Describer], Describer]:
    """Decorator: ``fn(root, options, in_chans) -> dict`` says how data set ``name`` prepares its evaluation images.

    The dict holds ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``input_kind`` (``images`` or
    ``events``) and ``class_names`` (a list, or None when unknown). It must be cheap (no image is
    decoded): it runs whenever a trained model's description (``config.json``) is written.
    """

    def wrap(fn: Describer) -> Describer:
        _PREPROCESSING[name] = fn
        return fn

    return wrap


def dataset_preprocessing(name: str, root: Optional[str], options: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    """What :func:`register_preprocessing` registered for ``name``, for a model with ``in_chans`` input channels."""
    _check_name(name)
    if name not in _PREPROCESSING:
        return {"mean": None, "std": None, "interpolation": "bicubic", "crop_pct": 1.0, "input_kind": "images",
                "class_names": None}
    return _PREPROCESSING[name](root, dict(options), in_chans)
