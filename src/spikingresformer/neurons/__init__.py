"""Multi-step spiking neurons: modules, the backend registry and the backends.

Backends: ``reference`` (plain PyTorch loop, the ground truth), ``fused`` (one autograd node, a
compiled C kernel on CPU with a PyTorch fallback; see :mod:`.fused`) and ``triton`` (CUDA kernels,
registered when Triton imports; see :mod:`.triton_backend`).
"""

import importlib.util

from .. import runtime as _runtime
from .backends import ENV_VAR, available_backends, multistep_neuron, register_backend, resolve_backend
from .fused import fused_multistep, lazy_triton_multistep
from .nodes import IF, LIF, PLIF, MultiStepNeuron, build_neuron
from .reference import reference_multistep
from .surrogate import atan_surrogate_grad, spike_atan

_runtime.apply_defaults()

register_backend("fused", fused_multistep)
if importlib.util.find_spec("triton") is not None:  # ships with PyTorch's Linux CUDA wheels
    register_backend("triton", lazy_triton_multistep)

__all__ = [
    "ENV_VAR",
    "IF",
    "LIF",
    "PLIF",
    "MultiStepNeuron",
    "atan_surrogate_grad",
    "available_backends",
    "build_neuron",
    "fused_multistep",
    "multistep_neuron",
    "reference_multistep",
    "register_backend",
    "resolve_backend",
    "spike_atan",
]
