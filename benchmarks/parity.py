"""Print how far this package is from the official release on the golden fixtures.

For each fixture: the relative error of eval logits (mean and per step), the train loss, the worst
gradient-norm relative error (and its parameter) and the worst buffer difference after the train
forward. ``tests/test_parity.py`` asserts the same quantities; this script prints the figures.

    python benchmarks/parity.py [FIXTURES_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import spikingresformer as sr


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over max abs reference value."""
    return ((a - b).abs().max() / b.abs().max()).item()


def report(path: Path) -> None:
    """Compare one fixture file and print the figures."""
    fx = torch.load(path, map_location="cpu", weights_only=True)
    m = sr.create_model(fx["model_name"], num_classes=fx["num_classes"], T=fx["T"], img_size=fx["img_size"])
    sr.load_checkpoint(m, fx["checkpoint"])
    m.eval()
    with torch.no_grad():
        steps = m.forward_steps(fx["test_input"])
    print(f"{path.name}: eval logits rel {rel(steps.mean(0), fx['eval_logits']):.3g}, "
          f"per-step rel {rel(steps, fx['eval_logits_per_step']):.3g}")
    m.train()
    loss = F.cross_entropy(m(fx["train_input"]), fx["train_target"])
    print(f"  train loss {loss.item():.10g} vs {fx['train_loss']:.10g} "
          f"(rel {abs(loss.item() - fx['train_loss']) / abs(fx['train_loss']):.3g})")
    loss.backward()
    params = dict(m.named_parameters())
    worst, where = 0.0, None
    for name, ref in fx["grad_norms"].items():
        got = params[name].grad.norm().item()
        r = abs(got - float(ref)) / max(abs(float(ref)), 1e-30)
        if r > worst:
            worst, where = r, name
    print(f"  gradient norms: worst rel {worst:.3g} ({where}), {len(fx['grad_norms'])} parameters")
    state = m.state_dict()
    buf = max((state[k] - v).abs().max().item() for k, v in fx["buffers_after_train_forward"].items())
    print(f"  buffers after the train forward: worst abs {buf:.3g}")


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    for name in ("official_cifar.pt", "official_dvsg.pt"):
        report(root / name)


if __name__ == "__main__":
    main()
