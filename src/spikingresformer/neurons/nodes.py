"""Multi-step spiking neuron modules (equations in ``docs/numerics.md``).

Each module maps a ``[T, ...]`` tensor to spikes of the same shape. The membrane potential exists
only inside one call: it starts at ``v_reset`` every time, so no reset call is ever needed and two
calls on the same input return the same spikes.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx
from torch import nn

from .backends import backend_from_environment, multistep_neuron
from .bits import mark_spikes

__all__ = ["MultiStepNeuron", "LIF", "PLIF", "IF", "build_neuron", "run_neuron"]


def run_neuron(x: torch.Tensor, kind: str, tau: float, w: Optional[torch.Tensor], v_threshold: float,
               v_reset: float, alpha: float, backend: str, name: str = "neuron") -> torch.Tensor:
    """Check the input, run the backend and hand spikes on in the autocast dtype.

    One function (FX sees it as one call, ``torch.compile`` as one custom operator for the fused
    backends) so that a neuron layer stays one node in every graph.
    """
    if x.dim() < 2:
        raise ValueError(f"{name} expects a [T, ...] tensor with at least 2 dimensions, got shape {tuple(x.shape)}")
    spikes = multistep_neuron(x, kind, tau, w, v_threshold, v_reset, alpha, backend)
    # Under autocast every consumer of the spikes (convolutions, matmuls) would cast them to the
    # low-precision dtype itself, once per consumer; spikes are exactly 0/1, so cast them once here.
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        low = torch.get_autocast_dtype(device_type)
        if spikes.dtype != low:
            spikes = spikes.to(low)
    if not torch.compiler.is_compiling():
        mark_spikes(spikes)  # for a SpikeBits context (the model's set_spike_saving), if one is active
    return spikes


torch.fx.wrap("run_neuron")


class MultiStepNeuron(nn.Module):
    """Base class: threshold, hard reset value, ATan width and the backend.

    ``backend=None`` takes ``$SPIKINGRESFORMER_NEURON_BACKEND`` when the module is built, else
    ``"auto"`` (the fastest backend for the input's device); a name forces that backend.
    """

    kind: str = ""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        surrogate_alpha: float = 2.0,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = float(v_reset)
        self.surrogate_alpha = float(surrogate_alpha)
        self.backend = backend_from_environment(backend)

    def _tau(self) -> float:
        return 1.0

    def _w(self) -> Optional[torch.Tensor]:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_neuron(x, self.kind, self._tau(), self._w(), self.v_threshold, self.v_reset,
                          self.surrogate_alpha, self.backend, type(self).__name__)

    def extra_repr(self) -> str:
        return (
            f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
            f"surrogate=ATan(alpha={self.surrogate_alpha}), backend={self.backend}"
        )


class LIF(MultiStepNeuron):
    """Leaky integrate-and-fire with decaying input: ``h = v + (x - (v - v_reset)) / tau``."""

    kind = "lif"

    def __init__(self, tau: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if tau <= 1.0:
            raise ValueError(f"LIF needs tau > 1, got {tau}")
        self.tau = float(tau)

    def _tau(self) -> float:
        return self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau}, " + super().extra_repr()


class PLIF(MultiStepNeuron):
    """Parametric LIF: like :class:`LIF` with ``1/tau`` replaced by ``sigmoid(w)``, ``w`` learnable.

    ``w`` starts at ``-log(init_tau - 1)``; it is a 0-d parameter named ``w`` as in the official
    checkpoints, and models exclude it from weight decay.
    """

    kind = "plif"

    def __init__(self, init_tau: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if init_tau <= 1.0:
            raise ValueError(f"PLIF needs init_tau > 1, got {init_tau}")
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def _w(self) -> torch.Tensor:
        return self.w

    def extra_repr(self) -> str:
        return f"tau={1.0 / torch.sigmoid(self.w.detach()).item():.4f}, " + super().extra_repr()


class IF(MultiStepNeuron):
    """Integrate-and-fire without leak: ``h = v + x``."""

    kind = "if"


_KINDS = {"lif": LIF, "plif": PLIF, "if": IF}


def build_neuron(kind: str, backend: Optional[str] = None) -> MultiStepNeuron:
    """Create a neuron module by name (``lif``, ``plif`` or ``if``) with the published constants."""
    try:
        cls = _KINDS[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown neuron kind {kind!r}; expected one of {sorted(_KINDS)}") from None
    return cls(backend=backend)
