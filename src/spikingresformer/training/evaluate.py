"""The ``evaluate`` command: accuracy, loss, speed and energy of a model on a data set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import load_checkpoint
from .builders import build_data, build_model, eval_loader
from .distributed import cleanup_distributed, join_process_group, process_info
from .engine import evaluate
from .optim import amp_dtype
from .recipe import Recipe
from .run_state import Logger, output_folder, write_file

__all__ = ["energy_summary", "run_evaluation"]


def run_evaluation(recipe: Recipe, checkpoint: Optional[str], output_json: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` on the recipe's evaluation data; write the metrics to ``output_json``."""
    start = time.perf_counter()
    dist = process_info(recipe.device)
    join_process_group(dist)
    try:
        output = output_folder(recipe.output, recipe.model, recipe.dataset)
        if dist.is_main:
            output.mkdir(parents=True, exist_ok=True)
        log = Logger(dist)
        eval_ds, info = build_data(recipe, train=False)
        model = build_model(recipe, info)
        if checkpoint:
            load_checkpoint(model, checkpoint)
            log(f"loaded weights from {checkpoint}")
        model.to(dist.device)
        metrics = evaluate(model, eval_loader(recipe, dist, eval_ds), dist, amp_dtype(recipe, dist.device),
                           recipe.progress)
        metrics.update(model=recipe.model, dataset=recipe.dataset, split=info.split, checkpoint=checkpoint,
                       params=sum(p.numel() for p in model.parameters()), T=recipe.T, img_size=recipe.img_size)
        if dist.is_main:
            path = Path(output_json) if output_json else output / "eval.json"
            write_file(path, json.dumps(metrics, indent=1).encode())
            if recipe.energy:
                energy_summary(model, eval_ds, dist.device, output, log)
            log(f"metrics written to {path}")
        log(f"{recipe.model} on {recipe.dataset} ({metrics['eval_samples']} samples): test accuracy top-1 "
            f"{metrics['top1']:.2f}% (top-5 {metrics['top5']:.2f}%), loss {metrics['eval_loss']:.4f}, "
            f"{metrics['eval_images_per_s']:.1f} img/s, {metrics['params'] / 1e6:.3f} M parameters, "
            f"{time.perf_counter() - start:.1f} s")
        return metrics
    finally:
        cleanup_distributed()


def energy_summary(model: nn.Module, eval_ds: Dataset, device: torch.device, output: Path,
                   log: Callable[[str], None]) -> None:
    """Energy and firing-rate report on one evaluation batch: ``<output>/energy.json`` and a log line."""
    from ..energy import analyze, summarize

    batch = torch.stack([eval_ds[i][0] for i in range(min(16, len(eval_ds)))]).to(device)  # type: ignore[index]
    report = analyze(model, batch)
    write_file(output / "energy.json", json.dumps(report.to_dict(), indent=1).encode())
    log(summarize(report))
