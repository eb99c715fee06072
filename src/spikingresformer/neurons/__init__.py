"""Multi-step spiking neurons: modules, the backend registry and the backends.

Backends: ``reference`` (plain PyTorch loop, the ground truth), ``fused`` (custom operators: a
compiled C kernel on CPU with a PyTorch fallback; see :mod:`.fused`) and ``triton`` (custom
operators with CUDA kernels, registered when Triton is installed; see :mod:`.triton_backend`).
"""

from . import bits, fused
from .backends import ENV_VAR, available_backends, multistep_neuron, register_backend, resolve_backend
from .fused import fused_multistep
from .nodes import IF, LIF, PLIF, MultiStepNeuron, build_neuron, run_neuron
from .reference import reference_multistep
from .surrogate import atan_surrogate_grad, spike_atan

__all__ = ["ENV_VAR", "IF", "LIF", "PLIF", "MultiStepNeuron", "atan_surrogate_grad", "available_backends",
           "bits", "build_neuron", "fused", "fused_multistep", "multistep_neuron", "reference_multistep",
           "register_backend", "resolve_backend", "run_neuron", "spike_atan"]
