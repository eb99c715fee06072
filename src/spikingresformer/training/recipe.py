"""Training recipes: every key, its default and its meaning, read from YAML and overridden by ``--key value``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from ..data.builders import INTERPOLATIONS
from ..data.cifar10dvs import parse_split
from ..data.errors import DataOptionError
from .builders import check_data_settings, check_model_settings
from .errors import RecipeError
from .optim import AMP_DTYPES, SCHEDULERS

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_help", "parse_overrides"]


def _k(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Recipe:
    """All settings of a training or evaluation run (``configs/`` holds the official recipes; see docs/training.md)."""

    # model
    model: str = _k("spikingresformer_cifar", "registered variant name (see `spikingresformer.list_models()`)")
    model_args: Dict[str, Any] = _k({}, "extra constructor arguments, e.g. {planes: [32, 64, 128]}")
    num_classes: Optional[int] = _k(None, "classifier outputs; null = the data set's class count")
    T: int = _k(4, "simulation steps (event data: frames per sample)")
    img_size: int = _k(32, "input side in pixels after transforms")
    neuron_backend: Optional[str] = _k(None, "force a neuron backend (null = automatic)")
    transfer: Optional[str] = _k(None, "checkpoint to start from, loading every weight but the classifier")
    # data
    dataset: str = _k("cifar10", "cifar10 | cifar100 | imagenet | cifar10dvs | dvs128gesture | digits | event-digits | image-folder")
    data_root: Optional[str] = _k(None, "data set folder (not needed for digits / event-digits; image-folder: train/<class>/ and val/<class>/)")
    data_args: Dict[str, Any] = _k({}, "options of one data set, e.g. {data_seed: 3, sensor_size: 16} for event-digits")
    cifar10dvs_split: str = _k("official", "CIFAR10-DVS split: official | first100 | random:<seed>")
    cache_dir: Optional[str] = _k(None, "where event frames are cached (null = $SPIKINGRESFORMER_FRAME_CACHE or ~/.cache/spikingresformer)")
    workers: int = _k(4, "data-loading worker processes per training process")
    augment: bool = _k(True, "training-time augmentation on/off")
    aa: Optional[str] = _k(None, "timm RandAugment string, e.g. rand-m9-n1-mstd0.4-inc1")
    reprob: float = _k(0.0, "random-erasing probability")
    interpolation: str = _k("bicubic", "resize interpolation of image data")
    crop_pct: Optional[float] = _k(None, "evaluation centre-crop fraction (null = the data set's default)")
    mean: Optional[List[float]] = _k(None, "normalisation mean (null = the data set's default)")
    std: Optional[List[float]] = _k(None, "normalisation std (null = the data set's default)")
    dvs_augment: bool = _k(False, "event-data augmentation: flip, then roll, rotation or cutout")
    train_limit: Optional[int] = _k(None, "use only the first N training samples (quick runs)")
    eval_limit: Optional[int] = _k(None, "use only the first N evaluation samples (quick runs)")
    # optimisation
    epochs: int = _k(600, "training epochs")
    batch_size: int = _k(128, "samples per process and step (global batch = batch_size x processes)")
    global_batch_size: Optional[int] = _k(
        None, "if set, batch_size = global_batch_size / processes (must divide evenly)"
    )
    eval_batch_size: Optional[int] = _k(None, "evaluation batch per process (null = batch_size)")
    opt: str = _k("adamw", "timm optimizer name")
    lr: float = _k(5e-4, "peak learning rate")
    weight_decay: float = _k(0.01, "weight decay (not applied to 1-D parameters and PLIF w)")
    opt_eps: float = _k(1e-8, "optimizer epsilon")
    sched: str = _k("cosine", "timm scheduler name, stepped once per epoch")
    min_lr: float = _k(1e-5, "learning-rate floor of the schedule")
    warmup_epochs: int = _k(3, "linear warm-up epochs")
    warmup_lr: float = _k(1e-5, "learning rate at the start of warm-up")
    cooldown_epochs: int = _k(
        0, "epochs at min_lr after the cosine; the official runs ask for 10 but stop before they start"
    )
    label_smoothing: float = _k(0.1, "label smoothing")
    mixup: float = _k(0.0, "mixup alpha (0 = off)")
    cutmix: float = _k(0.0, "cutmix alpha (0 = off)")
    mixup_prob: float = _k(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _k(0.5, "probability of cutmix instead of mixup when both are on")
    tet: bool = _k(False, "TET loss: mean over steps of the per-step loss plus tet_lambda x MSE(out, tet_phi)")
    tet_lambda: float = _k(0.0, "weight of the TET regulariser")
    tet_phi: float = _k(1.0, "target of the TET regulariser")
    clip_grad: Optional[float] = _k(None, "clip the global gradient norm to this value (null = off)")
    # precision and speed
    amp: bool = _k(True, "mixed precision (bfloat16 autocast on CPU; float16/bfloat16 on CUDA)")
    amp_dtype: str = _k("auto", "auto | bfloat16 | float16 (auto: bfloat16 on CPU and on CUDA where supported)")
    grad_checkpointing: bool = _k(False, "recompute each block in backward (less memory)")
    compile: bool = _k(False, "torch.compile(model, fullgraph=True): the whole model as one graph")
    channels_last: bool = _k(
        False, "keep feature maps channels-last always (default: only under CPU bfloat16 autocast, where it is faster)"
    )
    # run
    device: str = _k("auto", "auto | cpu | cuda")
    seed: int = _k(12450, "random seed")
    sync_bn: bool = _k(False, "synchronise BatchNorm statistics across processes")
    output: Optional[str] = _k(None, "output folder (null = runs/<model>-<dataset>)")
    resume: Optional[str] = _k(None, "checkpoint to resume from, or 'auto' for <output>/last.pth")
    overwrite: bool = _k(False, "start afresh in an output folder that holds a run, deleting its checkpoints and metrics")
    eval_interval: int = _k(1, "evaluate every N epochs (and always after the last)")
    log_interval: int = _k(50, "steps between log lines")
    progress: bool = _k(True, "show progress bars")
    energy: bool = _k(True, "report energy and firing rates on evaluation data at the end")
    save_last: bool = _k(True, "write last.pth after every epoch (needed for --resume)")

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of every key (what is saved next to the outputs)."""
        return dataclasses.asdict(self)


_HINTS = get_type_hints(Recipe)
_FIELDS = {f.name: f for f in fields(Recipe)}


_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _coerce(key: str, value: Any) -> Any:
    """Check/convert ``value`` to the type of recipe key ``key``."""
    hint = _HINTS[key]
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    base = next(a for a in get_args(hint) if a is not type(None)) if get_origin(hint) is Union else hint
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and optional):
        if not optional:
            raise RecipeError(f"recipe key {key!r} may not be null")
        return None
    origin = get_origin(base) or base
    try:
        if origin is bool:
            flag = _BOOLS.get(value.lower()) if isinstance(value, str) else value
            if isinstance(flag, bool):
                return flag
        elif origin in (int, float, str):  # no bools, no fractional ints
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and not (
                    origin is int and isinstance(value, float) and not value.is_integer()):
                return origin(value)
        else:  # list or dict, given as YAML on the command line
            value = yaml.safe_load(value) if isinstance(value, str) else value
            if origin is list and isinstance(value, (list, tuple)):
                return [float(v) for v in value]
            if origin is dict and isinstance(value, dict):
                return dict(value)
    except (TypeError, ValueError, yaml.YAMLError):
        pass
    raise RecipeError(
        f"recipe key {key!r} expects {getattr(base, '__name__', str(base))}"
        f"{' or null' if optional else ''}; got {value!r}"
    )


def _apply(recipe: Recipe, values: Dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {unknown} in {where}; run `spikingresformer train --help` for the list")
    for k, v in values.items():
        setattr(recipe, k, _coerce(k, v))


def parse_overrides(tokens: Sequence[str]) -> Dict[str, str]:
    """``['--lr', '1e-3', '--amp=false']`` -> ``{'lr': '1e-3', 'amp': 'false'}`` (dashes become underscores)."""
    out: Dict[str, str] = {}
    i = 0
    while i < len(tokens):
        if not tokens[i].startswith("--"):
            raise RecipeError(f"expected a --key value pair, got {tokens[i]!r}")
        key, eq, value = tokens[i][2:].partition("=")
        i += 1
        if not eq:  # a bare flag switches a boolean on
            has_value = i < len(tokens) and not tokens[i].startswith("--")
            value, i = (tokens[i], i + 1) if has_value else ("true", i)
        out[key.replace("-", "_")] = value
    return out


def load_recipe(path: Optional[Union[str, Path]] = None, overrides: Optional[Dict[str, Any]] = None) -> Recipe:
    """Read a YAML recipe (or start from the defaults), apply ``overrides``, check every value."""
    recipe = Recipe()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"recipe file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise RecipeError(f"recipe file {p} must hold a mapping of keys to values, got {type(data).__name__}")
        _apply(recipe, data, str(p))
    if overrides:
        _apply(recipe, overrides, "the command line")
    _validate(recipe)
    return recipe


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise RecipeError(f"recipe key {key!r} is {value!r}; allowed: {allowed}")


def _finite(x: Optional[float]) -> bool:
    return x is None or math.isfinite(x)


def _validate(r: Recipe) -> None:
    """Check every key's range up front; the message names the key, the value and what is allowed."""
    # keep the two messages that scripts and tests already match on
    if r.T < 1:
        raise RecipeError(f"T must be at least 1, got {r.T}")
    if not (r.device in ("auto", "cpu", "cuda") or (r.device.startswith("cuda:") and r.device[5:].isdigit())):
        raise RecipeError(f"device must be auto, cpu, cuda or cuda:<index>, got {r.device!r}")
    for key in ("reprob", "crop_pct", "lr", "weight_decay", "opt_eps", "min_lr", "warmup_lr", "label_smoothing",
                "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "tet_lambda", "tet_phi", "clip_grad"):
        _check(_finite(getattr(r, key)), key, getattr(r, key), "a finite number")
    at_least = {"img_size": 1, "epochs": 1, "batch_size": 1, "eval_interval": 1, "workers": 0, "log_interval": 0,
                "warmup_epochs": 0, "cooldown_epochs": 0}
    for key, low in at_least.items():
        _check(getattr(r, key) >= low, key, getattr(r, key), f"an integer >= {low}")
    for key in ("num_classes", "train_limit", "eval_limit", "global_batch_size", "eval_batch_size"):
        v = getattr(r, key)
        _check(v is None or v >= 1, key, v, "null or an integer >= 1")
    _check(0 <= r.seed < 2**32 - 1024, "seed", r.seed, "an integer in [0, 2**32 - 1024)")
    _check(r.lr > 0, "lr", r.lr, "a number > 0")
    _check(r.opt_eps > 0, "opt_eps", r.opt_eps, "a number > 0")
    for key in ("weight_decay", "warmup_lr", "mixup", "cutmix", "tet_lambda"):
        _check(getattr(r, key) >= 0, key, getattr(r, key), "a number >= 0")
    _check(0 <= r.min_lr <= r.lr, "min_lr", r.min_lr, f"a number in [0, lr = {r.lr}]")
    _check(0 <= r.label_smoothing < 1, "label_smoothing", r.label_smoothing, "a number in [0, 1)")
    for key in ("reprob", "mixup_prob", "mixup_switch_prob"):
        _check(0 <= getattr(r, key) <= 1, key, getattr(r, key), "a probability in [0, 1]")
    _check(r.crop_pct is None or 0 < r.crop_pct <= 1, "crop_pct", r.crop_pct, "null or a number in (0, 1]")
    _check(r.clip_grad is None or r.clip_grad > 0, "clip_grad", r.clip_grad,
           "null (off) or a number > 0 (the largest global gradient norm)")
    for key in ("mean", "std"):
        v = getattr(r, key)
        _check(v is None or (len(v) >= 1 and all(math.isfinite(x) for x in v)), key, v,
               "null or a list of finite numbers, one per input channel")
    _check(r.std is None or all(x > 0 for x in r.std), "std", r.std, "null or a list of numbers > 0")
    _check(r.amp_dtype in AMP_DTYPES, "amp_dtype", r.amp_dtype, ", ".join(AMP_DTYPES))
    _check(r.interpolation in INTERPOLATIONS, "interpolation", r.interpolation, ", ".join(INTERPOLATIONS))
    _check(r.sched in SCHEDULERS, "sched", r.sched, ", ".join(SCHEDULERS))
    try:
        parse_split(r.cifar10dvs_split)
    except DataOptionError:
        _check(False, "cifar10dvs_split", r.cifar10dvs_split, "official, first100 or random:<seed>")
    _check(r.resume is None or r.resume == "auto" or bool(r.resume), "resume", r.resume,
           "null, auto or a checkpoint path")
    if r.overwrite and r.resume:
        raise RecipeError(f"overwrite and resume ({r.resume!r}) exclude each other: continue a run, or start over")
    from timm.optim import list_optimizers

    _check(r.opt.lower() in list_optimizers(), "opt", r.opt, "a timm optimizer name (timm.optim.list_optimizers())")
    check_model_settings(r)
    check_data_settings(r)


def recipe_help() -> str:
    """One line per recipe key: name, default and meaning (for ``train --help``)."""
    lines = []
    for f in fields(Recipe):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  --{f.name.replace('_', '-'):<20} {f.metadata['help']} [default: {default!r}]")
    return "\n".join(lines)
