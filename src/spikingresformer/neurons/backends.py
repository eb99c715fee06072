"""Registry of neuron backends and the rule that picks one.

A backend is a function ``(x, kind, tau, w, v_threshold, v_reset, alpha) -> spikes`` over a
``[T, ...]`` tensor (see :func:`spikingresformer.neurons.reference.reference_multistep`). The model
only ever calls :func:`multistep_neuron`, so faster kernels plug in here without touching it.

A neuron module fixes its backend name when it is built (an explicit name, else the
``SPIKINGRESFORMER_NEURON_BACKEND`` environment variable, else ``"auto"``); ``"auto"`` maps to the
fastest registered backend for the input's device type, looked up once per device type.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable, Dict, Optional

import torch

from .fused import fused_multistep
from .reference import reference_multistep

__all__ = ["BackendFn", "ENV_VAR", "available_backends", "backend_from_environment", "multistep_neuron",
           "register_backend", "resolve_backend"]

BackendFn = Callable[..., torch.Tensor]
ENV_VAR = "SPIKINGRESFORMER_NEURON_BACKEND"

_BACKENDS: Dict[str, BackendFn] = {"reference": reference_multistep, "fused": fused_multistep}
# Preference order per device type when the backend is "auto"; names not registered are skipped.
_AUTO_ORDER: Dict[str, tuple[str, ...]] = {
    "cpu": ("fused", "reference"),
    "cuda": ("triton", "fused", "reference"),
}
_auto_choice: Dict[str, str] = {}


def _triton_multistep(*args, **kwargs) -> torch.Tensor:
    """The ``triton`` backend, importing Triton on first use (keeps ``import spikingresformer`` fast)."""
    try:
        from .triton_backend import triton_multistep
    except Exception as exc:  # a broken Triton install must not break training
        warnings.warn(
            f"spikingresformer: Triton failed to import ({exc}); using the 'fused' backend instead",
            RuntimeWarning,
            stacklevel=3,
        )
        triton_multistep = fused_multistep  # type: ignore[assignment]
    _BACKENDS["triton"] = triton_multistep
    return triton_multistep(*args, **kwargs)


if importlib.util.find_spec("triton") is not None:  # ships with PyTorch's Linux CUDA wheels
    _BACKENDS["triton"] = _triton_multistep


def register_backend(name: str, fn: BackendFn) -> None:
    """Make ``fn`` available as neuron backend ``name``."""
    _BACKENDS[name] = fn
    _auto_choice.clear()


def available_backends() -> list[str]:
    """Names of the registered neuron backends."""
    return sorted(_BACKENDS)


def backend_from_environment(name: Optional[str] = None) -> str:
    """The backend name a new neuron module fixes: ``name``, else ``$SPIKINGRESFORMER_NEURON_BACKEND``, else auto."""
    if name is None:
        name = os.environ.get(ENV_VAR, "auto") or "auto"
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(f"unknown neuron backend {name!r}; expected 'auto' or one of {available_backends()}")
    return name


def resolve_backend(name: Optional[str], device: torch.device) -> str:
    """Turn ``name`` (``None``/``"auto"`` or a backend name) into a registered backend for ``device``."""
    name = backend_from_environment(name)
    if name != "auto":
        return name
    choice = _auto_choice.get(device.type)
    if choice is None:
        choice = next((c for c in _AUTO_ORDER.get(device.type, ("fused",)) if c in _BACKENDS), "reference")
        _auto_choice[device.type] = choice
    return choice


def multistep_neuron(
    x: torch.Tensor,
    kind: str,
    tau: float = 2.0,
    w: Optional[torch.Tensor] = None,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Spikes of a multi-step neuron of ``kind`` (``lif``, ``plif``, ``if``) over ``x`` ``[T, ...]``.

    ``backend`` is a registered name or ``"auto"``; the fused backends are custom operators, so
    ``torch.compile`` and ``torch.export`` see one node per call.
    """
    if backend == "auto":
        backend = _auto_choice.get(x.device.type) or resolve_backend("auto", x.device)
    elif backend not in _BACKENDS:
        raise ValueError(f"unknown neuron backend {backend!r}; expected 'auto' or one of {available_backends()}")
    return _BACKENDS[backend](x, kind, tau, w, v_threshold, v_reset, alpha)
