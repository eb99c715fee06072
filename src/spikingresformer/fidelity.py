"""How far two runs of one network agree: top-1, logits, spikes per layer (statistical: docs/numerics.md)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Sequence

import torch
from torch import nn

from .neurons import MultiStepNeuron

__all__ = ["LayerFlips", "Fidelity", "recording_spikes", "neuron_outputs", "compare"]


@contextmanager
def recording_spikes(model: nn.Module) -> Iterator[Dict[str, torch.Tensor]]:
    """``{neuron layer name: its spikes}`` of the forward passes inside the block (a layer's second call: name#2)."""
    spikes: Dict[str, torch.Tensor] = {}
    names = {m: name for name, m in model.named_modules() if isinstance(m, MultiStepNeuron)}

    def keep(m: nn.Module, _i, out: torch.Tensor) -> None:
        calls = sum(k.split("#")[0] == names[m] for k in spikes)
        spikes[f"{names[m]}#{calls + 1}" if calls else names[m]] = out

    hooks = [m.register_forward_hook(keep) for m in names]
    try:
        yield spikes
    finally:
        for h in hooks:
            h.remove()


def neuron_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run ``model`` on ``x`` without gradients; return (output, :func:`recording_spikes`'s spikes)."""
    with recording_spikes(model) as spikes, torch.no_grad():
        return model(x), spikes


@dataclass
class LayerFlips:
    """Spikes of one neuron layer that differ between the two runs."""

    name: str
    flipped: int
    elements: int

    @property
    def rate(self) -> float:
        return self.flipped / max(self.elements, 1)


@dataclass
class Fidelity:
    """Agreement of a run with a reference run on the same input."""

    images: int
    top1_agreement: float
    max_abs_logit_diff: float
    max_rel_logit_diff: float
    layers: List[LayerFlips] = field(default_factory=list)

    @property
    def flip_rate(self) -> float:
        """Fraction of all spikes (every layer, step and image) that differ."""
        return sum(x.flipped for x in self.layers) / max(sum(x.elements for x in self.layers), 1)

    @property
    def worst_layer(self) -> LayerFlips | None:
        return max(self.layers, key=lambda x: x.rate, default=None)

    def to_dict(self) -> dict:
        return {
            "images": self.images, "top1_agreement": self.top1_agreement,
            "max_abs_logit_diff": self.max_abs_logit_diff, "max_rel_logit_diff": self.max_rel_logit_diff,
            "flip_rate": self.flip_rate,
            "layers": [{"name": x.name, "flipped": x.flipped, "elements": x.elements, "rate": x.rate}
                       for x in self.layers],
        }

    def summary(self) -> str:
        """One line: top-1 agreement, logit difference, spike flips (overall and worst layer)."""
        worst = self.worst_layer
        where = f", worst layer {worst.name} {worst.rate:.2e}" if worst is not None and worst.flipped else ""
        return (f"top-1 agreement {self.top1_agreement:.1%} of {self.images} input(s); max logit difference "
                f"{self.max_abs_logit_diff:.3g} ({self.max_rel_logit_diff:.2e} relative); spikes differing "
                f"{self.flip_rate:.2e} of all{where}")

    def render(self) -> str:
        """The summary and a line per neuron layer."""
        lines = [self.summary()] + [f"  {x.name:<40} {x.flipped:>10} of {x.elements:<12} {x.rate:.2e}"
                                    for x in self.layers]
        return "\n".join(lines)


def compare(reference_logits: torch.Tensor, logits: torch.Tensor,
            reference_spikes: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] = (),
            spikes: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] = ()) -> Fidelity:
    """Agreement of ``logits`` (and per-layer ``spikes``: dicts by name or lists) with a reference run."""
    ref, got = reference_logits.detach().double(), logits.detach().double()
    if ref.shape != got.shape:
        raise ValueError(f"logits of shape {tuple(got.shape)} cannot be compared with {tuple(ref.shape)}")
    names = list(reference_spikes) if isinstance(reference_spikes, Mapping) else \
        [f"neuron {i}" for i in range(len(reference_spikes))]
    a = list(reference_spikes.values()) if isinstance(reference_spikes, Mapping) else list(reference_spikes)
    b = list(spikes.values()) if isinstance(spikes, Mapping) else list(spikes)
    if len(a) != len(b):
        raise ValueError(f"spikes of {len(b)} neuron layers cannot be compared with {len(a)}")
    layers = []
    for name, p, q in zip(names, a, b):
        if p.shape != q.shape:
            raise ValueError(f"{name}: spikes of shape {tuple(q.shape)} against {tuple(p.shape)}")
        layers.append(LayerFlips(name, int((p.double() != q.double()).sum()), p.numel()))
    diff = (got - ref).abs().max().item() if ref.numel() else 0.0
    rows = ref.reshape(-1, ref.shape[-1]) if ref.dim() else ref.reshape(1, 1)
    agree = (rows.argmax(-1) == got.reshape(rows.shape).argmax(-1)).double().mean().item()
    return Fidelity(images=rows.shape[0], top1_agreement=agree, max_abs_logit_diff=diff,
                    max_rel_logit_diff=diff / max(ref.abs().max().item(), 1e-30), layers=layers)
