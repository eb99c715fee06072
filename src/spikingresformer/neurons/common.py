"""What the fused backends share: kind numbering, and one rule that turns a pair of kernel functions
into PyTorch custom operators with a fake (meta) implementation and an autograd formula.

Each fused backend registers two operators, ``spikingresformer::<name>_forward`` and
``spikingresformer::<name>_backward``. The compiler and exporter see one node per neuron layer
(the operators are opaque to them but their output shapes are known from the fake implementations),
and autograd differentiates the forward operator with the backward one, PLIF's ``w`` included.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["KIND_CODES", "check_kind", "needs_autograd", "plif_w_grad", "NeuronOps", "register_neuron_ops"]

#: Neuron kinds as the kernels number them.
KIND_CODES = {"if": 0, "lif": 1, "plif": 2}

#: ``forward(x, w, kind, tau, v_threshold, v_reset, store_h) -> (spikes, h or an empty tensor)``
ForwardImpl = Callable[[Tensor, Optional[Tensor], str, float, float, float, bool], Tuple[Tensor, Tensor]]
#: ``backward(h, x, grad, w, kind, tau, v_threshold, v_reset, alpha) -> (grad_x, summed grad of k)``
BackwardImpl = Callable[
    [Tensor, Optional[Tensor], Tensor, Optional[Tensor], str, float, float, float, float], Tuple[Tensor, Tensor]
]


def check_kind(kind: str, w: Optional[Tensor]) -> None:
    """Raise ``ValueError`` unless ``kind`` is a neuron kind the kernels know (PLIF with its weight ``w``)."""
    if kind not in KIND_CODES:
        raise ValueError(f"unknown neuron kind {kind!r}; expected one of {sorted(KIND_CODES)}")
    if kind == "plif" and w is None:
        raise ValueError("a PLIF neuron needs its weight w")


def needs_autograd(x: Tensor, w: Optional[Tensor]) -> bool:
    """Whether a call must build an autograd node (otherwise nothing is stored for backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or (w is not None and w.requires_grad))


def plif_w_grad(grad_k: Tensor, w: Tensor) -> Tensor:
    """Gradient of PLIF's raw ``w`` from the summed gradient of ``k = sigmoid(w)``, in float64."""
    kd = torch.sigmoid(w.detach()).double()
    return (grad_k.double() * kd * (1.0 - kd)).to(w.dtype)


class NeuronOps:
    """The registered operators of one fused backend and the function the model calls."""

    def __init__(self, forward_op, backward_op) -> None:
        self.forward_op = forward_op
        self.backward_op = backward_op

    def __call__(self, x: Tensor, kind: str, tau: float, w: Optional[Tensor], v_threshold: float,
                 v_reset: float, alpha: float) -> Tensor:
        """Spikes of a multi-step neuron; stores the membrane for backward only when autograd needs it."""
        store_h = needs_autograd(x, w)
        spikes, _ = self.forward_op(x, w, kind, float(tau), float(v_threshold), float(v_reset), float(alpha), store_h)
        return spikes


def register_neuron_ops(name: str, forward: ForwardImpl, backward: BackwardImpl) -> NeuronOps:
    """Register ``spikingresformer::{name}_forward``/``_backward`` around two kernel functions."""
    lib_name = f"spikingresformer::{name}"

    @torch.library.custom_op(f"{lib_name}_forward", mutates_args=())
    def forward_op(x: Tensor, w: Optional[Tensor], kind: str, tau: float, v_threshold: float, v_reset: float,
                   alpha: float, store_h: bool) -> Tuple[Tensor, Tensor]:
        check_kind(kind, w)
        return forward(x, w, kind, tau, v_threshold, v_reset, store_h)

    @forward_op.register_fake
    def _(x, w, kind, tau, v_threshold, v_reset, alpha, store_h):
        return torch.empty_like(x), (torch.empty_like(x) if store_h else x.new_empty(0))

    @torch.library.custom_op(f"{lib_name}_backward", mutates_args=())
    def backward_op(h: Tensor, x: Optional[Tensor], grad: Tensor, w: Optional[Tensor], kind: str, tau: float,
                    v_threshold: float, v_reset: float, alpha: float) -> Tuple[Tensor, Tensor]:
        return backward(h, x, grad, w, kind, tau, v_threshold, v_reset, alpha)

    @backward_op.register_fake
    def _(h, x, grad, w, kind, tau, v_threshold, v_reset, alpha):
        return torch.empty_like(h), h.new_empty((), dtype=torch.float64)

    def setup_context(ctx, inputs, output) -> None:
        x, w, kind, tau, v_threshold, v_reset, alpha, store_h = inputs
        ctx.params = (kind, tau, v_threshold, v_reset, alpha)
        ctx.stored = store_h
        ctx.save_for_backward(output[1], x if kind == "plif" else None, w)
        ctx.mark_non_differentiable(output[1])

    def backward_formula(ctx, grad_spikes, _grad_h):
        if not ctx.stored:
            raise RuntimeError(
                f"{lib_name}_forward was called with store_h=False, so it cannot be differentiated"
            )
        h, x, w = ctx.saved_tensors
        kind, tau, v_threshold, v_reset, alpha = ctx.params
        grad_x, grad_k = backward_op(h, x, grad_spikes, w, kind, tau, v_threshold, v_reset, alpha)
        grad_w = plif_w_grad(grad_k, w) if (w is not None and ctx.needs_input_grad[1]) else None
        return grad_x, grad_w, None, None, None, None, None, None

    forward_op.register_autograd(backward_formula, setup_context=setup_context)
    return NeuronOps(forward_op, backward_op)
