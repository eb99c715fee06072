"""The most valuable tests: our model against golden data from the official release."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import spikingresformer as sr
from conftest import rel_err


def _model(fx: dict) -> sr.SpikingResformer:
    m = sr.create_model(fx["model_name"], num_classes=fx["num_classes"], T=fx["T"], img_size=fx["img_size"])
    sr.load_checkpoint(m, fx["checkpoint"])
    return m


def test_eval_logits_match_official(fixture):
    m = _model(fixture).eval()
    with torch.no_grad():
        steps = m.forward_steps(fixture["test_input"])
        logits = m(fixture["test_input"])
    assert steps.shape == fixture["eval_logits_per_step"].shape
    assert rel_err(steps, fixture["eval_logits_per_step"]) < 1e-4
    assert rel_err(logits, fixture["eval_logits"]) < 1e-4


def test_train_step_matches_official(fixture):
    m = _model(fixture).train()
    logits = m(fixture["train_input"])
    assert rel_err(logits, fixture["train_logits"]) < 1e-4
    loss = F.cross_entropy(logits, fixture["train_target"])
    assert abs(loss.item() - fixture["train_loss"]) <= 1e-5 * abs(fixture["train_loss"])
    loss.backward()

    params = dict(m.named_parameters())
    assert set(fixture["grad_norms"]) <= set(params)
    for name, ref in fixture["grad_norms"].items():
        grad = params[name].grad
        got = 0.0 if grad is None else grad.norm().item()
        ref = float(ref)
        assert abs(got - ref) <= 1e-3 * abs(ref) + 1e-12, f"{name}: grad norm {got} vs official {ref}"
    assert rel_err(params["classifier.weight"].grad, fixture["classifier_weight_grad"]) < 1e-4

    state = m.state_dict()
    for name, ref in fixture["buffers_after_train_forward"].items():
        assert (state[name] - ref).abs().max().item() <= 1e-6, name


def test_event_input_takes_steps_from_its_time_axis(fixture):
    m = _model(fixture).eval()
    x = fixture["test_input"]
    if x.dim() == 4:
        x = x.unsqueeze(1).repeat(1, 2, 1, 1, 1)  # [B, 2, C, H, W]: 2 steps, whatever the model's T
    else:
        x = x[:, :2]
    with torch.no_grad():
        assert m.forward_steps(x).shape[0] == 2


def test_static_image_equals_repeated_event_frames():
    """The stem-once fast path for images computes what repeating the image over T computes."""
    fx = __import__("conftest").load_fixture("official_cifar")
    m = _model(fx).eval()
    x = fx["test_input"]
    with torch.no_grad():
        a = m.forward_steps(x)
        b = m.forward_steps(x.unsqueeze(1).repeat(1, fx["T"], 1, 1, 1))
    assert rel_err(a, b) < 1e-5
