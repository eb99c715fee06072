"""The data sets, loaders and model of a recipe, and the checks of the recipe keys they use."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .. import create_model, list_models
from ..data import build_dataset, dataset_names, dataset_options
from ..data.registry import DatasetInfo
from ..model import SpikingResformer
from .distributed import DistInfo, convert_sync_batchnorm
from .errors import RecipeError

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["GENERIC_DATA_KEYS", "EpochSampler", "build_data", "build_model", "check_data_settings",
           "check_model_settings", "data_options", "eval_loader", "train_loader"]

#: Data keys of a recipe that reach the data builders only when they differ from the default.
GENERIC_DATA_KEYS = ("aa", "reprob", "interpolation", "crop_pct", "mean", "std", "cifar10dvs_split", "cache_dir",
                     "dvs_augment")
#: Model constructor arguments that recipe keys of the same name set (so ``model_args`` may not).
_RECIPE_MODEL_KEYS = ("num_classes", "T", "img_size", "neuron_backend")


def data_options(recipe: "Recipe") -> Dict[str, Any]:
    """A recipe's data settings for ``build_dataset``: generic data keys only when changed, then ``data_args``."""
    defaults = type(recipe)()
    opts: Dict[str, Any] = dict(img_size=recipe.img_size, T=recipe.T, augment=recipe.augment, seed=recipe.seed)
    for key in GENERIC_DATA_KEYS:
        value = getattr(recipe, key)
        if value != getattr(defaults, key):
            opts[key] = tuple(value) if isinstance(value, list) else value
    clash = sorted(set(recipe.data_args) & (set(opts) | set(GENERIC_DATA_KEYS)))
    if clash:
        raise RecipeError(f"data_args may not set {clash}: they are recipe keys of their own; set them directly")
    opts.update(recipe.data_args)
    return opts


def check_data_settings(recipe: "Recipe") -> None:
    """Refuse an unknown data set, or an option (a changed data key or a ``data_args`` key) it cannot use."""
    if recipe.dataset not in dataset_names():
        raise RecipeError(f"unknown dataset {recipe.dataset!r}; expected one of {dataset_names()}")
    accepted = dataset_options(recipe.dataset)
    unusable = sorted(set(data_options(recipe)) - set(accepted))
    if unusable:
        raise RecipeError(f"dataset {recipe.dataset!r} cannot use the option(s) {', '.join(unusable)}; "
                          f"it accepts {', '.join(accepted)}")


def build_data(recipe: "Recipe", train: bool) -> Tuple[Dataset, DatasetInfo]:
    """The training or evaluation part of the recipe's data set (``train_limit`` / ``eval_limit`` applied)."""
    opts = data_options(recipe)
    opts["augment"] = recipe.augment and train
    ds, info = build_dataset(recipe.dataset, recipe.data_root, train, **opts)
    limit = recipe.train_limit if train else recipe.eval_limit
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))  # type: ignore[arg-type]
    return ds, info


class EpochSampler(DistributedSampler):
    """The shuffled training order of one epoch (set by seed and epoch), optionally from a later step on."""

    def __init__(self, ds: Dataset, dist: DistInfo, seed: int, batch_size: int) -> None:
        super().__init__(ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.skip = 0

    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Make the next pass the order of ``epoch`` from step ``first_step`` on (a resumed, stopped epoch)."""
        self.set_epoch(epoch)
        self.skip = first_step * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def train_loader(recipe: "Recipe", dist: DistInfo, train_ds: Dataset) -> DataLoader:
    """Shuffled training loader of full batches; ``loader.sampler`` is its :class:`EpochSampler`."""
    if len(train_ds) < recipe.batch_size * dist.world_size:  # type: ignore[arg-type]
        raise RecipeError(
            f"the training set has {len(train_ds)} samples, fewer than one global batch "  # type: ignore[arg-type]
            f"({recipe.batch_size} x {dist.world_size} processes)"
        )
    return DataLoader(
        train_ds, batch_size=recipe.batch_size, sampler=EpochSampler(train_ds, dist, recipe.seed, recipe.batch_size),
        num_workers=recipe.workers, pin_memory=dist.device.type == "cuda", drop_last=True,
    )


def eval_loader(recipe: "Recipe", dist: DistInfo, eval_ds: Dataset) -> DataLoader:
    """Evaluation loader in which every sample goes to exactly one rank (rank r: r, r + W, ...; no padding)."""
    shard = Subset(eval_ds, range(dist.rank, len(eval_ds), dist.world_size))  # type: ignore[arg-type]
    return DataLoader(shard, batch_size=recipe.eval_batch_size or recipe.batch_size, num_workers=recipe.workers,
                      pin_memory=dist.device.type == "cuda")


def _constructor_args() -> List[str]:
    params = inspect.signature(SpikingResformer.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def check_model_settings(recipe: "Recipe") -> None:
    """Refuse an unknown model name or ``model_args`` key."""
    if recipe.model not in list_models():
        raise RecipeError(f"unknown model {recipe.model!r}; expected one of {list_models()}")
    allowed = [a for a in _constructor_args() if a not in _RECIPE_MODEL_KEYS]
    for key in recipe.model_args:
        if key in _RECIPE_MODEL_KEYS:
            raise RecipeError(f"model_args may not set {key!r}: use the recipe key {key!r}")
        if key not in allowed:
            raise RecipeError(f"unknown model_args key {key!r} for {recipe.model}; allowed: {allowed}")


def build_model(recipe: "Recipe", info: DatasetInfo, dist: Optional[DistInfo] = None) -> nn.Module:
    """The recipe's model for a data set; with ``dist``, ready to train on the process's device."""
    if recipe.num_classes is not None and recipe.num_classes < info.num_classes:
        raise RecipeError(
            f"num_classes {recipe.num_classes} is smaller than the {info.num_classes} classes of {info.name}"
        )
    kwargs = dict(recipe.model_args)
    kwargs.setdefault("in_chans", info.in_chans)
    kwargs.setdefault("memory_format", "channels_last" if recipe.channels_last else "auto")
    try:
        model = create_model(
            recipe.model,
            num_classes=recipe.num_classes if recipe.num_classes is not None else info.num_classes,
            T=recipe.T,
            img_size=recipe.img_size,
            neuron_backend=recipe.neuron_backend,
            **kwargs,
        )
    except (TypeError, ValueError) as e:  # a model_args value the constructor refuses
        raise RecipeError(f"cannot build {recipe.model} with model_args {recipe.model_args}: {e}") from None
    if dist is None:
        return model
    if recipe.sync_bn and dist.distributed:
        model = convert_sync_batchnorm(model, dist.device)
    if recipe.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model.to(dist.device)
