"""The most valuable tests: our model against golden data from the official release.

Which fixture proves what (``shared/fixtures/README.md``):

- **float64** (``official_*_f64.pt``, the ``fixture64`` fixture): strict parity, on every backend that
  runs float64 on the CPU. Any processor reproduces these numbers; we match them to float64 rounding.
  Measured on an AMD EPYC (AVX-512): eval and train logits equal to 0 (contiguous) and 2e-15
  (channels-last), loss to 1e-16, gradient norms to 1e-10 relative (1.2e-8 for the 4e-5 norm of one
  PLIF ``w``: 5e-13 absolute), firing-rate buffers to 1.3e-11. The tolerances below sit about a
  hundred times above that and below what a real change moves: a DSSA scale or LIF decay changed by
  1e-9 relative moves gradient norms by 6e-10 to 2e-9 absolute (see
  ``test_float64_parity_catches_a_1e9_change``), which a float32 test cannot see at all (1e-9 is
  below float32's resolution, so the float32 scale does not even change).
- **float32** (``official_*.pt``): recorded on one machine; other processors round float32
  convolutions differently, flip spikes that sit on the threshold, and the flip spreads. So these
  files serve only what is processor-independent: the tests here compare two runs inside one process
  (backends against each other; float32 against float64 of the same weights, judged by what a
  rounding flip can and cannot explain).
"""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from conftest import FLOAT64_BACKENDS, load_fixture, model_from_fixture, rel_err

LOGITS_RTOL = 1e-12  # logits and loss, relative (measured: <= 2e-15)
GRAD_NORM_RTOL, GRAD_NORM_ATOL = 1e-9, 1e-11  # per parameter (measured: 1e-10 relative, 5e-13 absolute)
BUFFER_ATOL = 1e-10  # firing rates and running means (measured: 1.3e-11)


def _train_step(m: sr.SpikingResformer, fx: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    m.train()
    logits = m(fx["train_input"])
    loss = F.cross_entropy(logits, fx["train_target"])
    loss.backward()
    return logits, loss


def _grad_norm_misses(m: sr.SpikingResformer, fx: dict) -> Dict[str, Tuple[float, float]]:
    """Parameters whose gradient norm misses the official one: {name: (ours, official)}."""
    params = dict(m.named_parameters())
    assert set(fx["grad_norms"]) <= set(params)
    misses = {}
    for name, ref in fx["grad_norms"].items():
        grad = params[name].grad
        got, ref = (0.0 if grad is None else grad.norm().item()), float(ref)
        if abs(got - ref) > GRAD_NORM_RTOL * abs(ref) + GRAD_NORM_ATOL:
            misses[name] = (got, ref)
    return misses


# -- float64: strict ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_eval_logits_match_official_float64(fixture64, backend):
    m = model_from_fixture(fixture64, backend).eval()
    with torch.no_grad():
        steps = m.forward_steps(fixture64["test_input"])
        logits = m(fixture64["test_input"])
    assert steps.dtype == torch.float64 and steps.shape == fixture64["eval_logits_per_step"].shape
    assert rel_err(steps, fixture64["eval_logits_per_step"]) <= LOGITS_RTOL
    assert rel_err(logits, fixture64["eval_logits"]) <= LOGITS_RTOL


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_train_step_matches_official_float64(fixture64, backend):
    fx = fixture64
    m = model_from_fixture(fx, backend)
    logits, loss = _train_step(m, fx)
    assert rel_err(logits, fx["train_logits"]) <= LOGITS_RTOL
    assert abs(loss.item() - fx["train_loss"]) <= LOGITS_RTOL * abs(fx["train_loss"])
    assert _grad_norm_misses(m, fx) == {}
    assert rel_err(m.classifier.weight.grad, fx["classifier_weight_grad"]) <= LOGITS_RTOL
    state = m.state_dict()
    for name, ref in fx["buffers_after_train_forward"].items():
        assert (state[name] - ref).abs().max().item() <= BUFFER_ATOL, name


def test_channels_last_layout_matches_official_float64(fixture64):
    """The channels-last feature-map layout (the default under CPU bf16 autocast) computes the same model."""
    fx = fixture64
    m = model_from_fixture(fx)
    m.memory_format = "channels_last"
    with torch.no_grad():
        assert rel_err(m.eval().forward_steps(fx["test_input"]), fx["eval_logits_per_step"]) <= LOGITS_RTOL
    logits, _ = _train_step(m, fx)
    assert rel_err(logits, fx["train_logits"]) <= LOGITS_RTOL
    assert _grad_norm_misses(m, fx) == {}


def test_float64_parity_catches_a_1e9_change(monkeypatch):
    """A DSSA scale off by 1e-9 relative fails the gradient check (no spike flips, so logits stay equal)."""
    from spikingresformer.model import DSSA

    fx = load_fixture("official_cifar_f64")
    scale = DSSA.__dict__["_scale"].__func__
    monkeypatch.setattr(DSSA, "_scale", staticmethod(lambda rate, size: scale(rate, size) * (1 + 1e-9)))
    m = model_from_fixture(fx)
    _train_step(m, fx)
    assert len(_grad_norm_misses(m, fx)) > 10


def test_event_input_takes_steps_from_its_time_axis(fixture64):
    m = model_from_fixture(fixture64).eval()
    x = fixture64["test_input"]
    x = x.unsqueeze(1).repeat(1, 2, 1, 1, 1) if x.dim() == 4 else x[:, :2]  # 2 steps, whatever the model's T
    with torch.no_grad():
        assert m.forward_steps(x).shape[0] == 2


def test_static_image_equals_repeated_event_frames():
    """The stem-once fast path for images computes what repeating the image over T computes."""
    fx = load_fixture("official_cifar_f64")
    m = model_from_fixture(fx).eval()
    x = fx["test_input"]
    with torch.no_grad():
        a = m.forward_steps(x)
        b = m.forward_steps(x.unsqueeze(1).repeat(1, fx["T"], 1, 1, 1))
    assert rel_err(a, b) <= LOGITS_RTOL


# -- float32: what holds on any processor ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["official_cifar", "official_dvsg"])
def test_float32_backends_agree_elementwise(name):
    """Same convolutions in one process: the backends give identical outputs, losses and buffers."""
    fx = {k: v[:2] if k in ("test_input", "train_input", "train_target") else v for k, v in load_fixture(name).items()}
    runs = []
    for backend in FLOAT64_BACKENDS:
        m = model_from_fixture(fx, backend)
        with torch.no_grad():
            ev = m.eval()(fx["test_input"])
        logits, loss = _train_step(m, fx)
        runs.append((ev, logits, loss, m))
    (ev_a, lg_a, loss_a, a), (ev_b, lg_b, loss_b, b) = runs
    assert torch.equal(ev_a, ev_b) and torch.equal(lg_a, lg_b) and torch.equal(loss_a, loss_b)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        # PLIF's w gradient sums over every neuron: in float64 in the fused kernel, in float32 by autograd
        # in the reference, whose summation order follows the processor's vector width; the sum also
        # cancels (terms of both signs). Measured: 1.03e-5 on a Xeon (AVX-512), below 1e-5 on an AMD EPYC
        tol = 1e-4 if k.endswith(".w") else 0.0
        assert rel_err(q.grad, p.grad) <= tol, k


def _neuron_io(model: torch.nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, tuple]]:
    """Eval output and, per neuron layer in call order: (module, its input, its spikes)."""
    io: Dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: io.__setitem__(n, (mod, i[0].detach(), o.detach())))
             for n, m in model.named_modules() if isinstance(m, sr.neurons.MultiStepNeuron)]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return out, io


def _membranes(neuron: sr.neurons.MultiStepNeuron, x: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """Membrane potential before the threshold at every step (the float64 run's own resets)."""
    kind, v_reset = neuron.kind, neuron.v_reset
    v, hs = torch.full_like(x[0], v_reset), []
    for t in range(x.shape[0]):
        if kind == "if":
            charge = x[t]
        elif kind == "lif":
            charge = (x[t] - (v - v_reset)) / neuron.tau
        else:
            charge = (x[t] - (v - v_reset)) * neuron.w.detach().to(x.dtype).sigmoid()
        h = v + charge
        hs.append(h)
        v = torch.where(spikes[t] > 0, torch.full_like(h, v_reset), h)
    return torch.stack(hs)


#: a float32 run may flip a spike only where the float64 membrane lies this close to the threshold:
#: float32 rounding moves a membrane by about 1e-6 here (measured on an AMD EPYC: the inputs of the first
#: flipped layer differ by 1.6e-6 (dvsg_f64) and 2.0e-6 (float32 cifar) between the two precisions, and
#: any layer's by at most 1.4e-5 in runs without a flip), so a bug that moves membranes by 1e-4 or more fails
FLIP_MARGIN = 1e-4


@pytest.mark.parametrize("name", ["official_cifar_f64", "official_dvsg_f64", "official_cifar", "official_dvsg"])
def test_float32_agrees_with_float64_up_to_rounding_flips(name):
    """Float32 against float64 of the same weights: equal logits if no spike flipped, else only rounding flips.

    Without a flip, logits agree to float32 rounding and the top-1 class is the same. A flip is
    legitimate only where the float64 membrane sat within ``FLIP_MARGIN`` of the threshold in the
    first layer that differs (every later difference follows from it). Measured on an AMD EPYC:
    cifar_f64 no flip; dvsg_f64 one flip (1.4e-8 of all spikes, top-1 unchanged); the float32 cifar
    checkpoint one flip in ``layers.0.0.activation_attn`` that spreads to 1.4 % of all spikes and moves
    the logits by 36 % relative (the reason strict parity lives in float64).
    """
    fx = load_fixture(name)
    out64, io64 = _neuron_io(model_from_fixture(fx, dtype=torch.float64), fx["test_input"].double())
    out32, io32 = _neuron_io(model_from_fixture(fx, dtype=torch.float32), fx["test_input"].float())
    assert list(io64) == list(io32)
    first = next((n for n in io64 if not torch.equal(io64[n][2], io32[n][2].double())), None)
    if first is None:
        assert rel_err(out32.double(), out64) < 1e-5
        assert torch.equal(out32.argmax(-1), out64.argmax(-1))
        return
    neuron, x64, s64 = io64[first]
    _, x32, s32 = io32[first]
    assert (x32.double() - x64).abs().max().item() < FLIP_MARGIN  # inputs differ by rounding only
    flipped = s32.double() != s64
    first_in_time = flipped & (flipped.int().cumsum(0) == 1)  # a later step may follow from the first flip
    h = _membranes(neuron, x64, s64)
    margin = (h[first_in_time] - neuron.v_threshold).abs().max().item()
    assert margin <= FLIP_MARGIN, f"{first}: a spike flipped with its membrane {margin:.3g} from the threshold"
