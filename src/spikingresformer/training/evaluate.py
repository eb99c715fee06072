"""The ``evaluate`` command: accuracy, loss, speed and energy of a model on a data set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .. import load_checkpoint
from ..fileio import atomic_write_bytes
from .distributed import cleanup_distributed, init_distributed
from .engine import evaluate
from .recipe import Recipe
from .builders import Logger, build_data, build_model, default_output, energy_summary, eval_loader, resolve_amp_dtype

__all__ = ["run_evaluation"]


def run_evaluation(recipe: Recipe, checkpoint: Optional[str], output_json: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``recipe.model`` with weights from ``checkpoint`` on the recipe's evaluation data.

    Prints top-1/top-5, loss, images per second and parameter count; writes them as JSON to
    ``output_json`` (default ``<output>/eval.json``). Works under ``torchrun`` too (each sample is
    counted exactly once).
    """
    start = time.perf_counter()
    dist = init_distributed(recipe.device)
    try:
        output = default_output(recipe)
        if dist.is_main:
            output.mkdir(parents=True, exist_ok=True)
        log = Logger(dist, None)
        eval_ds, info = build_data(recipe, train=False)
        model = build_model(recipe, info)
        if checkpoint:
            load_checkpoint(model, checkpoint)
            log(f"loaded weights from {checkpoint}")
        model.to(dist.device)
        loader = eval_loader(recipe, dist, eval_ds)
        amp_dtype = resolve_amp_dtype(recipe, dist.device)
        metrics = evaluate(model, loader, len(loader), dist, amp=recipe.amp, amp_dtype=amp_dtype,
                           progress=recipe.progress)
        metrics.update(model=recipe.model, dataset=recipe.dataset, split=info.split, checkpoint=checkpoint,
                       params=sum(p.numel() for p in model.parameters()), T=recipe.T, img_size=recipe.img_size)
        if dist.is_main:
            path = Path(output_json) if output_json else output / "eval.json"
            atomic_write_bytes(path, json.dumps(metrics, indent=1).encode())
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
