"""Registry of neuron backends and the rule that picks one.

A backend is a function ``(x, kind, decay, v_threshold, v_reset, alpha) -> spikes`` over a
``[T, ...]`` tensor (see :func:`spikingresformer.neurons.reference.reference_multistep`). The model
only ever calls :func:`multistep_neuron`, so faster kernels plug in here without touching it.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import torch

from .reference import reference_multistep

__all__ = [
    "BackendFn",
    "register_backend",
    "available_backends",
    "resolve_backend",
    "multistep_neuron",
    "ENV_VAR",
]

BackendFn = Callable[..., torch.Tensor]
ENV_VAR = "SPIKINGRESFORMER_NEURON_BACKEND"

_BACKENDS: Dict[str, BackendFn] = {"reference": reference_multistep}
# Preference order per device type when the backend is "auto"; names not registered are skipped.
_AUTO_ORDER: Dict[str, tuple[str, ...]] = {
    "cpu": ("fused", "reference"),
    "cuda": ("triton", "fused", "reference"),
}


def register_backend(name: str, fn: BackendFn) -> None:
    """Make ``fn`` available as neuron backend ``name``."""
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    """Names of the registered neuron backends."""
    return sorted(_BACKENDS)


def resolve_backend(name: Optional[str], device: torch.device) -> str:
    """Turn ``name`` (``None``/``"auto"`` or a backend name) into a registered backend for ``device``.

    ``None`` defers to the ``SPIKINGRESFORMER_NEURON_BACKEND`` environment variable, then to
    ``"auto"``, which takes the fastest registered backend for the device type.
    """
    if name is None:
        name = os.environ.get(ENV_VAR, "auto") or "auto"
    if name != "auto":
        if name not in _BACKENDS:
            raise ValueError(
                f"unknown neuron backend {name!r}; expected 'auto' or one of {available_backends()}"
            )
        return name
    for candidate in _AUTO_ORDER.get(device.type, ("fused", "reference")):
        if candidate in _BACKENDS:
            return candidate
    return "reference"


@torch.compiler.disable
def multistep_neuron(
    x: torch.Tensor,
    kind: str,
    decay: Optional[torch.Tensor | float],
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Spikes of a multi-step neuron of ``kind`` (``lif``, ``plif``, ``if``) over ``x`` ``[T, ...]``.

    Under ``torch.compile`` the neuron runs eagerly (the fused kernels are already single passes);
    the layers between neurons are compiled.
    """
    name = resolve_backend(backend, x.device)
    return _BACKENDS[name](x, kind, decay, v_threshold, v_reset, alpha)
