"""``spikingresformer predict``: the top-k classes of image files, with a model that brings its preprocessing."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .checkpoint import CheckpointError

__all__ = ["Prediction", "add_arguments", "predict", "preprocessing", "run"]


@dataclass
class Prediction:
    """One image's result: the top classes (name, index, probability), or why it could not be classified."""

    image: str
    top: List[Dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"image": self.image}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["top"] = self.top
        return out

    def line(self) -> str:
        """``path: 1. cat 91.2%  2. dog 5.0%  ...``"""
        if self.error is not None:
            return f"{self.image}: error: {self.error}"
        return f"{self.image}: " + "  ".join(
            f"{i + 1}. {t['label']} {100 * t['probability']:.1f}%" for i, t in enumerate(self.top))


def preprocessing(model: nn.Module) -> Callable:
    """The evaluation transform a model was trained with, from its ``pretrained_cfg`` (PIL image -> tensor)."""
    from .data.image_folder import image_transform

    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_kind") == "events":
        raise CheckpointError("this model classifies event-camera frames, not images; predict takes image files")
    chans, height, width = cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224))
    size = int(getattr(model, "img_size", None) or height)
    return image_transform(size, False, in_chans=int(chans), mean=cfg.get("mean", (0.5,) * chans),
                           std=cfg.get("std", (0.5,) * chans), interpolation=cfg.get("interpolation", "bilinear"),
                           crop_pct=float(cfg.get("crop_pct") or 1.0))


def _positive_int(text: str) -> int:
    """``--top-k``: an integer of at least 1 (argparse reports anything else as a usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _label(names: Optional[Sequence[str]], index: int) -> str:
    return str(names[index]) if names is not None and index < len(names) else str(index)


def predict(model: nn.Module, images: Sequence[Union[str, Path]], top_k: int = 5,
            batch_size: int = 32) -> List[Prediction]:
    """Classify image files with ``model`` (in eval mode); an unreadable file gets ``error`` and no classes."""
    from .data.errors import ImageFileError
    from .data.image_folder import open_image

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    transform = preprocessing(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    chans = int(cfg.get("input_size", (getattr(model, "in_chans", 3),))[0])
    device = next(model.parameters()).device
    results = [Prediction(str(p)) for p in images]
    readable: List[int] = []
    tensors: List[torch.Tensor] = []
    for i, path in enumerate(images):
        try:
            tensors.append(transform(open_image(path, chans)))
            readable.append(i)
        except ImageFileError as e:
            results[i].error = str(e)
    k = min(top_k, int(getattr(model, "num_classes", top_k)))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(tensors), batch_size):
            batch = torch.stack(tensors[start:start + batch_size]).to(device)
            probs = model(batch).float().softmax(-1).cpu()
            values, indices = probs.topk(k, dim=-1)
            for row, idx in enumerate(readable[start:start + batch_size]):
                results[idx].top = [{"label": _label(names, int(j)), "index": int(j), "probability": float(v)}
                                    for v, j in zip(values[row], indices[row])]
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``spikingresformer predict``."""
    p.description = ("Classify image files: one line per image with the top-k classes and their probabilities "
                     "(or --json). The model brings its own size, normalisation and class names.")
    p.add_argument("model", help="run folder, model folder (config.json + model.safetensors) or weight file")
    p.add_argument("images", nargs="+", help="image files (png, jpg, bmp, ...)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def run(args: argparse.Namespace) -> int:
    """Run ``predict``; exit status 0 when every image was classified, 2 when some could not be read."""
    from .hub import load_model

    model = load_model(args.model, device=args.device)
    results = predict(model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    for r in results:
        if r.error is not None:
            print(f"spikingresformer predict: error: {r.error}", file=sys.stderr)
        elif not args.json:
            print(r.line())
    return 2 if any(r.error is not None for r in results) else 0
