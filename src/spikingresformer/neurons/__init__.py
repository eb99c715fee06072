"""Multi-step spiking neurons: modules, the backend registry and the reference loop."""

from .backends import ENV_VAR, available_backends, multistep_neuron, register_backend, resolve_backend
from .nodes import IF, LIF, PLIF, MultiStepNeuron, build_neuron
from .reference import reference_multistep
from .surrogate import atan_surrogate_grad, spike_atan

__all__ = [
    "ENV_VAR",
    "IF",
    "LIF",
    "PLIF",
    "MultiStepNeuron",
    "atan_surrogate_grad",
    "available_backends",
    "build_neuron",
    "multistep_neuron",
    "reference_multistep",
    "register_backend",
    "resolve_backend",
    "spike_atan",
]
