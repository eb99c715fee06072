"""Reference neurons: SPEC section 2 written out step by step."""

from __future__ import annotations

import math

import pytest
import torch

from spikingresformer.neurons import IF, LIF, PLIF, build_neuron, resolve_backend


def _spec_loop(x, kind, k=0.5):
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + x[t] if kind == "if" else v + (x[t] - v) * k
        s = (h >= 1.0).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("cls,kind", [(LIF, "lif"), (PLIF, "plif"), (IF, "if")])
def test_spikes_follow_the_spec(cls, kind):
    x = torch.randn(6, 3, 5, dtype=torch.float64) * 2
    assert torch.equal(cls(backend="reference")(x), _spec_loop(x, kind))


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_state_does_not_leak_between_calls(backend):
    n = LIF(backend=backend)
    n(torch.rand(4, 10, dtype=torch.float64) * 3)
    x = torch.rand(4, 10, dtype=torch.float64) * 3
    s = n(x)  # the membrane starts at zero again, as in a first call
    assert torch.equal(s, _spec_loop(x, "lif")) and 0 < s.mean() < 1


def test_threshold_is_inclusive():
    n = IF(backend="reference")
    assert n(torch.tensor([[1.0], [0.0]])).flatten().tolist() == [1.0, 0.0]


def test_atan_surrogate_and_detached_reset_gradient():
    x = torch.tensor([[0.8]], dtype=torch.float64, requires_grad=True)
    s = LIF(backend="reference")(x)  # one step: h = 0.4
    s.sum().backward()
    u = 0.4 - 1.0
    expected = 0.5 * (2 / 2) / (1 + (math.pi / 2 * 2 * u) ** 2)
    assert x.grad.item() == pytest.approx(expected, rel=1e-12)


def _spec_plif_grads(x, w, grad, alpha=2.0):
    """Gradients of ``sum(spikes * grad)`` for PLIF, written out: ATan surrogate, reset detached."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    k, v, out = torch.sigmoid(w), torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        u = v + (x[t] - v) * k - 1.0
        soft = torch.atan(math.pi / 2 * alpha * u) / math.pi  # slope alpha/2 / (1 + (pi/2 alpha u)^2)
        s = (u >= 0).to(x.dtype) + soft - soft.detach()
        v = (u + 1.0) * (1 - s.detach())
        out.append(s)
    return torch.autograd.grad((torch.stack(out) * grad).sum(), (x, w))


def test_plif_w_gets_gradient_and_starts_at_tau_2():
    n = PLIF(backend="reference").double()
    assert n.w.item() == 0.0
    x = (torch.randn(4, 8, dtype=torch.float64) * 3).requires_grad_()
    grad = torch.randn(4, 8, dtype=torch.float64)
    (n(x) * grad).sum().backward()
    gx, gw = _spec_plif_grads(x, n.w, grad)
    assert n.w.grad.abs().item() > 0
    torch.testing.assert_close(n.w.grad, gw, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x.grad, gx, rtol=1e-12, atol=1e-14)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown neuron kind"):
        build_neuron("izhikevich")
    with pytest.raises(ValueError, match="unknown neuron backend"):
        resolve_backend("nope", torch.device("cpu"))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        LIF()(torch.zeros(3))
    with pytest.raises(ValueError, match="tau > 1"):
        LIF(tau=1.0)


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv("SPIKINGRESFORMER_NEURON_BACKEND", "reference")
    assert resolve_backend(None, torch.device("cpu")) == "reference"
    monkeypatch.setenv("SPIKINGRESFORMER_NEURON_BACKEND", "missing")
    with pytest.raises(ValueError):
        resolve_backend(None, torch.device("cpu"))
