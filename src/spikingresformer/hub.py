"""Model folders: ``config.json`` + ``model.safetensors`` in the timm / Hugging Face layout (docs/training.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import fileio
from .checkpoint import (CONFIG_KEY, CheckpointError, CheckpointNotFoundError, file_kind, load_checkpoint,
                         read_checkpoint_file, read_state_dict, safetensors_metadata, save_weights, unwrap_model)

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "ModelSource", "NoModelDescription", "build_for_command",
           "build_from_config", "config_from_model", "config_from_recipe", "convert_checkpoint", "load_model",
           "make_config", "resolve_source", "save_described_weights", "save_pretrained"]

PathLike = Union[str, os.PathLike]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: constructor arguments that are choices of the machine a model runs on, not part of the model
_RUNTIME_ARGS = ("neuron_backend", "memory_format")
#: weight files looked for in a folder, in order
_FOLDER_WEIGHTS = (WEIGHTS_NAME, "best.safetensors", "pytorch_model.bin", "best.pth")


class NoModelDescription(CheckpointError):
    """A checkpoint that does not say which model it holds (an official ``.pth``, a bare state dict)."""


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (JSON keeps no tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def make_config(architecture: str, model_args: Mapping[str, Any], *, num_classes: int, in_chans: int, T: int,
                img_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic",
                crop_pct: float = 1.0, class_names: Optional[Sequence[str]] = None, input_kind: str = "images",
                extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The ``config.json`` of a model: what timm's ``local-dir:`` / ``hf-hub:`` loaders and :func:`load_model` read."""
    if class_names is not None and len(class_names) != num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model with {num_classes} classes")
    if len(mean) != in_chans or len(std) != in_chans:
        raise CheckpointError(f"mean {tuple(mean)} / std {tuple(std)} need one value per input channel ({in_chans})")
    args = {k: _plain(v) for k, v in model_args.items() if k not in _RUNTIME_ARGS}
    args.update(num_classes=int(num_classes), in_chans=int(in_chans), T=int(T), img_size=int(img_size))
    pretrained_cfg = {
        "input_size": [int(in_chans), int(img_size), int(img_size)], "fixed_input_size": True,
        "interpolation": interpolation, "crop_pct": float(crop_pct), "crop_mode": "center",
        "mean": [float(m) for m in mean], "std": [float(s) for s in std], "num_classes": int(num_classes),
        "first_conv": "prologue.0", "classifier": "classifier", "license": "mit", "paper_ids": "arXiv:2403.14302",
    }
    config: Dict[str, Any] = {"architecture": architecture, "num_classes": int(num_classes), "model_args": args,
                              "pretrained_cfg": pretrained_cfg}
    if class_names is not None:
        config["label_names"] = [str(c) for c in class_names]
    from . import __version__

    config["spikingresformer"] = {"version": __version__, "T": int(T), "input_kind": input_kind,
                                  **_plain(dict(extra or {}))}
    return config


def _state_shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """``num_classes`` and ``in_chans`` read off a state dict."""
    out = {}
    if "classifier.weight" in state:
        out["num_classes"] = int(state["classifier.weight"].shape[0])
    if "prologue.0.weight" in state:
        out["in_chans"] = int(state["prologue.0.weight"].shape[1])
    return out


def _recipe_data_options(recipe: Mapping[str, Any]) -> Dict[str, Any]:
    """The data options of a training recipe that decide evaluation preprocessing."""
    opts: Dict[str, Any] = {"img_size": recipe.get("img_size")}
    for key in ("mean", "std", "crop_pct"):
        if recipe.get(key) is not None:
            opts[key] = recipe[key]
    if recipe.get("interpolation", "bicubic") != "bicubic":
        opts["interpolation"] = recipe["interpolation"]
    opts.update(recipe.get("data_args") or {})
    return opts


def config_from_recipe(recipe: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                       extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The description of weights ``state`` trained by ``recipe`` (a dict of recipe keys); no data is read."""
    from .data import dataset_preprocessing

    shapes = _state_shapes(state)
    if "num_classes" not in shapes or "in_chans" not in shapes:
        raise CheckpointError("the weights lack classifier.weight or prologue.0.weight: not a SpikingResformer")
    dataset = recipe.get("dataset")
    try:
        prep = dataset_preprocessing(dataset, recipe.get("data_root"), _recipe_data_options(recipe), shapes["in_chans"])
    except (ValueError, OSError):  # an unknown data set or an unreadable folder: keep the model, lose the names
        prep = {}
    names = prep.get("class_names")
    if names is not None and len(names) != shapes["num_classes"]:
        names = None  # e.g. num_classes set larger than the data's class count
    mean, std = prep.get("mean"), prep.get("std")
    if mean is None or len(mean) != shapes["in_chans"]:
        mean, std = (0.5,) * shapes["in_chans"], (0.5,) * shapes["in_chans"]
    info = {"dataset": dataset, "data_root": recipe.get("data_root"), "recipe": dict(recipe), **dict(extra or {})}
    return make_config(recipe["model"], recipe.get("model_args") or {}, T=recipe["T"], img_size=recipe["img_size"],
                       mean=mean, std=std, interpolation=prep.get("interpolation", "bicubic"),
                       crop_pct=prep.get("crop_pct", 1.0), class_names=names,
                       input_kind=prep.get("input_kind", "images"), extra=info, **shapes)


def config_from_model(model: nn.Module, architecture: str, model_args: Optional[Mapping[str, Any]] = None,
                      class_names: Optional[Sequence[str]] = None,
                      extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The description of a built model: sizes from the model, preprocessing from its ``pretrained_cfg``."""
    model = unwrap_model(model)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    in_chans = int(getattr(model, "in_chans", 3))
    mean, std = cfg.get("mean", (0.5,) * in_chans), cfg.get("std", (0.5,) * in_chans)
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return make_config(architecture, model_args or {}, num_classes=int(model.num_classes), in_chans=in_chans,
                       T=int(model.T), img_size=int(model.img_size), mean=mean, std=std,
                       interpolation=cfg.get("interpolation", "bicubic"), crop_pct=cfg.get("crop_pct", 1.0),
                       class_names=class_names if class_names is not None else cfg.get("label_names"),
                       input_kind=cfg.get("input_kind", "images"), extra=extra)


def _write_config(folder: Path, config: Mapping[str, Any]) -> Path:
    return fileio.atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())


def _link_or_copy(src: Path, tmp: str) -> None:
    """Make ``tmp`` the same file as ``src``: a hard link, or a copy where links are not possible."""
    import shutil

    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)


def save_described_weights(path: PathLike, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                           recipe: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``state`` as ``path`` (``.safetensors``); with the training ``recipe`` also its description.

    The description goes into the header and ``config.json``; ``model.safetensors`` beside it links to ``path``.
    """
    path = Path(path)
    if recipe is None:
        return save_weights(dict(state), path, metadata=dict(metadata))
    extra = {k: v for k, v in metadata.items() if k in ("epoch", "top1")}
    config = config_from_recipe(recipe, state, extra={"trained": extra} if extra else None)
    save_weights(dict(state), path, metadata=dict(metadata), config=config)
    _write_config(path.parent, config)
    if path.name != WEIGHTS_NAME:
        fileio.atomic_write_with(path.parent / WEIGHTS_NAME, lambda tmp: _link_or_copy(path, tmp))
    return path


def save_pretrained(model: Union[nn.Module, Mapping[str, torch.Tensor]], folder: PathLike,
                    config: Mapping[str, Any]) -> Path:
    """Write a model folder: ``config.json`` and ``model.safetensors`` (which also carries ``config``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = unwrap_model(model).state_dict() if isinstance(model, nn.Module) else dict(model)
    save_weights(state, folder / WEIGHTS_NAME, config=config)
    _write_config(folder, config)
    return folder


@dataclass
class ModelSource:
    """What a path names: the model's description, the weight file, and the training recipe when known."""

    config: Dict[str, Any]
    weights: Path
    recipe: Optional[Dict[str, Any]] = None

    @property
    def folder(self) -> Path:
        return self.weights.parent


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict) or "architecture" not in data:
        raise CheckpointError(f"{path} does not describe a model (it has no 'architecture' key)")
    return data


def _recipe_of(config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    recipe = (config.get("spikingresformer") or {}).get("recipe")
    return dict(recipe) if isinstance(recipe, dict) else None


def resolve_source(source: PathLike) -> ModelSource:
    """The description and weights of a model / run folder or a weight file.

    Raises :class:`NoModelDescription` when nothing says which model the weights hold.
    """
    path = Path(source)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist (expected a model folder, a run folder or a weight file)")
    if path.is_dir():
        weights = next((path / n for n in _FOLDER_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path} holds no weights: expected one of {', '.join(_FOLDER_WEIGHTS)}")
        if (path / CONFIG_NAME).is_file():
            config = _read_json(path / CONFIG_NAME)
            return ModelSource(config, weights, _recipe_of(config))
        if (path / "recipe.yaml").is_file():  # a run written before runs carried config.json
            import yaml

            recipe = yaml.safe_load((path / "recipe.yaml").read_text())
            return ModelSource(config_from_recipe(recipe, read_state_dict(weights)), weights, recipe)
        raise NoModelDescription(f"{path} has no {CONFIG_NAME}: it does not say which model its weights hold")
    sibling = path.parent / CONFIG_NAME
    if file_kind(path) == "safetensors":
        text = safetensors_metadata(path).get(CONFIG_KEY)
        config = json.loads(text) if text else None
        if config is None and sibling.is_file():
            config = _read_json(sibling)
        if config is None:
            raise NoModelDescription(f"{path} does not say which model it holds (no description in its header, "
                                     f"no {CONFIG_NAME} beside it); name the model (--model NAME)")
        return ModelSource(config, path, _recipe_of(config))
    data = read_checkpoint_file(path)
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict) and isinstance(data.get("model"), dict):
        recipe = data["recipe"]
        return ModelSource(config_from_recipe(recipe, read_state_dict(data)), path, recipe)
    if sibling.is_file():
        config = _read_json(sibling)
        return ModelSource(config, path, _recipe_of(config))
    raise NoModelDescription(f"{path} does not say which model it holds (an official checkpoint or a bare state "
                             f"dict); name the model (--model NAME), or turn it into a model folder with "
                             f"`spikingresformer convert {path} --model NAME --output DIR`")


def build_from_config(config: Mapping[str, Any], architecture: Optional[str] = None, **overrides: Any) -> nn.Module:
    """A fresh model as ``config`` describes it (``overrides``: constructor arguments that replace its own)."""
    import timm

    from . import model as _registered  # noqa: F401  (registers the variants with timm)

    name = architecture or config["architecture"]
    args = dict(config.get("model_args") or {})
    args.update({k: v for k, v in overrides.items() if v is not None})
    try:
        model = timm.create_model(name, **args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot build {name} with {args}: {e}") from None
    cfg = dict(config.get("pretrained_cfg") or {})
    ours = dict(config.get("spikingresformer") or {})
    model.pretrained_cfg = dict(model.pretrained_cfg, **cfg, T=int(getattr(model, "T", ours.get("T", 4))),
                                input_kind=ours.get("input_kind", "images"), label_names=config.get("label_names"))
    model.default_cfg = model.pretrained_cfg
    return model


def load_model(source: PathLike, *, architecture: Optional[str] = None, device: Union[str, torch.device] = "cpu",
               **overrides: Any) -> nn.Module:
    """Rebuild a trained model (eval mode, on ``device``) from a model or run folder or a described weight file.

    ``overrides`` replace constructor arguments; ``pretrained_cfg`` holds the preprocessing and ``label_names``.
    """
    src = resolve_source(source)
    model = build_from_config(src.config, architecture, **overrides)
    load_checkpoint(model, src.weights)
    return model.to(device).eval()


def build_for_command(model_name: Optional[str], checkpoint: Optional[PathLike], **overrides: Any) -> nn.Module:
    """A command line's model: ``checkpoint`` rebuilds itself when it can, else ``--model`` names it."""
    from . import create_model

    if checkpoint is not None:
        try:
            return load_model(checkpoint, architecture=model_name, **overrides)
        except NoModelDescription:
            if model_name is None:
                raise
    if model_name is None:
        raise NoModelDescription("no model given: pass --model NAME, or a run folder / model folder / weight "
                                 "file that carries config.json")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if checkpoint is not None and "num_classes" not in kwargs:
        kwargs.update({k: v for k, v in _state_shapes(read_state_dict(checkpoint)).items() if k == "num_classes"})
    model = create_model(model_name, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def convert_checkpoint(checkpoint: PathLike, architecture: str, output: PathLike, *, T: Optional[int] = None,
                       img_size: Optional[int] = None, class_names: Optional[Sequence[str]] = None) -> Path:
    """Turn an official (or any bare) checkpoint of variant ``architecture`` into a model folder at ``output``."""
    from . import create_model

    state = read_state_dict(checkpoint)
    shapes = _state_shapes(state)
    kwargs = {k: v for k, v in dict(shapes, T=T, img_size=img_size).items() if v is not None}
    model = create_model(architecture, **kwargs)
    load_checkpoint(model, state)
    config = config_from_model(model, architecture, class_names=class_names,
                               extra={"converted_from": Path(checkpoint).name})
    return save_pretrained(model, output, config)
