"""Set-up shared by the ``train`` and ``evaluate`` commands: data, model, loaders, loss, log, energy.

Every function here turns recipe keys into one ready object and raises :class:`RecipeError` with
the key, the value and what is allowed when a setting cannot work, before any long work starts.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .. import create_model, list_models
from ..data import build_dataset, dataset_names
from ..data.registry import DatasetInfo
from ..model import SpikingResformer
from .distributed import DistInfo, ShardedEvalSampler
from .recipe import Recipe, RecipeError

__all__ = [
    "Logger",
    "build_criterion",
    "build_data",
    "build_model",
    "check_model_settings",
    "data_options",
    "default_output",
    "energy_summary",
    "eval_loader",
    "resolve_amp_dtype",
    "train_loader",
]

#: Data keys of a recipe that reach the data builders only when they differ from the default.
GENERIC_DATA_KEYS = ("aa", "reprob", "interpolation", "crop_pct", "mean", "std", "cifar10dvs_split", "cache_dir",
                     "dvs_augment")
#: Model constructor arguments that recipe keys set (so ``model_args`` may not).
_RECIPE_MODEL_KEYS = {"num_classes": "num_classes", "T": "T", "img_size": "img_size",
                      "neuron_backend": "neuron_backend"}


def default_output(recipe: Recipe) -> Path:
    """The run folder: ``recipe.output``, or ``runs/<model>-<dataset>`` when it is not set."""
    return Path(recipe.output or f"runs/{recipe.model}-{recipe.dataset}")


class Logger:
    """Prints on rank 0 and, once a file is attached, appends the same lines to it.

    Lines logged before :meth:`attach` are kept and written when the file is attached, so a run
    can report its set-up without touching its folder until the set-up has succeeded.
    """

    def __init__(self, dist: DistInfo, file: Optional[Path] = None) -> None:
        self.enabled = dist.is_main
        self.file: Optional[Path] = None
        self._pending: List[str] = []
        if file is not None:
            self.attach(file)

    def attach(self, file: Path) -> None:
        """Start appending to ``file`` (with every line logged so far)."""
        if not self.enabled:
            return
        self.file = file
        if self._pending:
            with open(file, "a") as f:
                f.write("".join(line + "\n" for line in self._pending))
            self._pending = []

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if self.file is None:
            self._pending.append(line)
            return
        with open(self.file, "a") as f:
            f.write(line + "\n")


def resolve_amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """bfloat16 on CPU and on CUDA devices that support it, else float16 (unless the recipe says)."""
    if recipe.amp_dtype == "bfloat16":
        return torch.bfloat16
    if recipe.amp_dtype == "float16":
        if device.type == "cpu" and recipe.amp:
            raise RecipeError("amp_dtype float16 is not supported on CPU; use bfloat16 or amp: false")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def data_options(recipe: Recipe) -> Dict[str, Any]:
    """The data settings of a recipe, as :func:`spikingresformer.data.build_dataset` takes them.

    ``img_size``, ``T``, ``augment`` and ``seed`` always; each generic data key only when the
    recipe changes it from its default; then the data-set-specific ``data_args``.
    """
    defaults = Recipe()
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


def _limit(ds: Dataset, n: Optional[int]) -> Dataset:
    return Subset(ds, range(min(n, len(ds)))) if n is not None else ds  # type: ignore[arg-type]


def build_data(recipe: Recipe, train: bool) -> Tuple[Dataset, DatasetInfo]:
    """Build the training or evaluation data set of ``recipe`` (fails fast on a bad name, option or folder)."""
    if recipe.dataset not in dataset_names():
        raise RecipeError(f"unknown dataset {recipe.dataset!r}; expected one of {dataset_names()}")
    opts = data_options(recipe)
    opts["augment"] = recipe.augment and train
    try:
        ds, info = build_dataset(recipe.dataset, recipe.data_root, train, **opts)
    except (TypeError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "EventFileError":
            raise
        raise RecipeError(f"data set {recipe.dataset!r}: {e}") from None
    return _limit(ds, recipe.train_limit if train else recipe.eval_limit), info


def _constructor_args() -> List[str]:
    params = inspect.signature(SpikingResformer.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def check_model_settings(recipe: Recipe) -> None:
    """Refuse an unknown model name or ``model_args`` key before any data is read."""
    if recipe.model not in list_models():
        raise RecipeError(f"unknown model {recipe.model!r}; expected one of {list_models()}")
    allowed = [a for a in _constructor_args() if a not in _RECIPE_MODEL_KEYS]
    for key in recipe.model_args:
        if key in _RECIPE_MODEL_KEYS:
            raise RecipeError(f"model_args may not set {key!r}: use the recipe key {_RECIPE_MODEL_KEYS[key]!r}")
        if key not in allowed:
            raise RecipeError(f"unknown model_args key {key!r} for {recipe.model}; allowed: {allowed}")


def build_model(recipe: Recipe, info: DatasetInfo) -> nn.Module:
    """Create the recipe's model for a data set (classes and channels from the data unless set)."""
    check_model_settings(recipe)
    if recipe.num_classes is not None and recipe.num_classes < info.num_classes:
        raise RecipeError(
            f"num_classes {recipe.num_classes} is smaller than the {info.num_classes} classes of {info.name}"
        )
    kwargs = dict(recipe.model_args)
    kwargs.setdefault("in_chans", info.in_chans)
    kwargs.setdefault("memory_format", "channels_last" if recipe.channels_last else "auto")
    try:
        return create_model(
            recipe.model,
            num_classes=recipe.num_classes if recipe.num_classes is not None else info.num_classes,
            T=recipe.T,
            img_size=recipe.img_size,
            neuron_backend=recipe.neuron_backend,
            **kwargs,
        )
    except (TypeError, ValueError) as e:
        raise RecipeError(f"cannot build {recipe.model} with model_args {recipe.model_args}: {e}") from None


def train_loader(recipe: Recipe, dist: DistInfo, train_ds: Dataset,
                 start_step: int = 0) -> Tuple[DistributedSampler, DataLoader]:
    """Shuffled training loader (same order on every run with the same seed and epoch).

    ``start_step`` skips that many batches of the first epoch iterated (a resumed partial epoch).
    """
    sampler = _SkippingSampler(train_ds, dist, recipe.seed, skip=start_step * recipe.batch_size)
    loader = DataLoader(
        train_ds, batch_size=recipe.batch_size, sampler=sampler, num_workers=recipe.workers,
        pin_memory=dist.device.type == "cuda", drop_last=True, persistent_workers=recipe.workers > 0,
    )
    return sampler, loader


class _SkippingSampler(DistributedSampler):
    """A distributed sampler that can leave out the first samples of one epoch (resuming mid-epoch)."""

    def __init__(self, ds: Dataset, dist: DistInfo, seed: int, skip: int = 0) -> None:
        super().__init__(ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def eval_loader(recipe: Recipe, dist: DistInfo, eval_ds: Dataset) -> DataLoader:
    """Evaluation loader in which every sample goes to exactly one rank."""
    return DataLoader(
        eval_ds, batch_size=recipe.eval_batch_size or recipe.batch_size,
        sampler=ShardedEvalSampler(len(eval_ds), dist.rank, dist.world_size),  # type: ignore[arg-type]
        num_workers=recipe.workers, pin_memory=dist.device.type == "cuda",
    )


def build_criterion(recipe: Recipe, mixup_on: bool) -> Callable:
    """Training loss: soft-target cross entropy under mixup/cutmix, else smoothed cross entropy."""
    from timm.loss import SoftTargetCrossEntropy

    if mixup_on:
        return SoftTargetCrossEntropy()  # mixup produces smoothed soft targets
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def energy_summary(model: nn.Module, eval_ds: Dataset, device: torch.device, output: Path,
                   log: Callable[[str], None]) -> None:
    """Energy and firing-rate report on one evaluation batch: ``<output>/energy.json`` and a log line."""
    from ..energy import analyze, summarize
    from ..fileio import atomic_write_bytes

    batch = torch.stack([eval_ds[i][0] for i in range(min(16, len(eval_ds)))]).to(device)  # type: ignore[index]
    report = analyze(model, batch)
    atomic_write_bytes(output / "energy.json", json.dumps(report.to_dict(), indent=1).encode())
    log(summarize(report))
