"""Model behaviour: variants, timm integration, input checks, finiteness, determinism."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import spikingresformer as sr
from conftest import FIXTURES
from spikingresformer.energy.cli import calibrate_batchnorm
from spikingresformer.model import DSSA
from spikingresformer.fidelity import neuron_outputs

#: the six published variants (the fixture's official_state_dict_keys.json covers each)
PUBLISHED = sorted(f"spikingresformer_{v}" for v in ("ti", "s", "m", "l", "dvsg", "cifar"))


@pytest.mark.parametrize("name", PUBLISHED)
def test_variant_keys_shapes_and_param_counts(name):
    path = FIXTURES / "official_state_dict_keys.json"
    if not path.is_file():
        pytest.skip(f"golden fixture {path} is missing; set SPIKINGRESFORMER_FIXTURES to the fixtures folder")
    spec = json.loads(path.read_text())[name]
    with torch.device("meta"):
        m = sr.create_model(name, **spec["kwargs"])
    state = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert state == spec["state_dict"]
    total = sum(p.numel() for p in m.parameters())
    bn = sum(p.numel() for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters())
    assert total == spec["params_total"]
    assert total - bn == spec["params_without_bn"]


def test_list_models_and_timm_registry():
    assert sr.list_models() == PUBLISHED
    for name in PUBLISHED:
        assert name in timm.list_models("spikingresformer*")
    m = timm.create_model("spikingresformer_cifar", num_classes=7, T=2, img_size=32)
    assert isinstance(m, sr.SpikingResformer)
    assert m.T == 2 and m.num_classes == 7
    assert m.pretrained_cfg["T"] == 4 and m.pretrained_cfg["input_size"] == (3, 32, 32)
    assert timm.create_model("spikingresformer_dvsg").pretrained_cfg["T"] == 16
    with pytest.raises(ValueError, match="unknown model"):
        sr.create_model("spikingresformer_xl")


def test_pretrained_cfgs_are_complete():
    for name in PUBLISHED:
        cfg = timm.create_model(name).pretrained_cfg
        for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "first_conv", "classifier", "T"):
            assert key in cfg, (name, key)
        assert cfg["first_conv"] == "prologue.0" and cfg["classifier"] == "classifier"


def _firing(model, x):
    """``model`` in eval mode with BatchNorm statistics taken from ``x``, so every neuron layer spikes on ``x``.

    A fresh model in eval mode (running mean 0, variance 1) never reaches the threshold anywhere: every
    neuron is silent, and a comparison of two paths through it would not see the spiking layers at all.
    """
    calibrate_batchnorm(model, [x])
    _, spikes = neuron_outputs(model.eval(), x)
    silent = [name for name, s in spikes.items() if not s.any()]
    assert spikes and not silent, silent
    return model


def _stage_outputs(model, x):
    """Each stage's output ``[T, B, C, H, W]``, caught by hooks on its last block during ``model(x)``."""
    seen = []
    handles = [stage[-1].register_forward_hook(lambda mod, i, o: seen.append(o.detach())) for stage in model.layers]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_features_only_strides():
    feats = timm.create_model("spikingresformer_ti", features_only=True, T=1).eval()
    assert feats.feature_info.reduction() == [4, 8, 16]
    assert feats.feature_info.channels() == [64, 192, 384]
    x = torch.randn(1, 3, 64, 64)
    ref = _firing(sr.create_model("spikingresformer_ti", T=1), x)
    assert feats.model.load_state_dict(ref.state_dict(), strict=False).unexpected_keys == ["classifier.weight"]
    with torch.no_grad():
        out = feats(x)
        stages = _stage_outputs(ref, x)
    assert [tuple(o.shape) for o in out] == [(1, 64, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4)]
    for o, s in zip(out, stages, strict=True):  # the time-averaged stage outputs of the full model
        assert torch.equal(o, s.mean(0))


def test_forward_intermediates_keeps_time_axis():
    x = torch.randn(1, 3, 16, 16)
    m = _firing(sr.create_model("spikingresformer_cifar", T=2), x)
    with torch.no_grad():
        final, feats = m.forward_intermediates(x, output_fmt="TNCHW")
        final_nchw, feats_nchw = m.forward_intermediates(x)
        assert torch.equal(final, m.forward_features_steps(x))
        assert torch.equal(final_nchw, m.forward_features(x))
        stages = _stage_outputs(m, x)
    assert final.shape == (2, 1, 384, 4, 4) and final_nchw.shape == (1, 384, 4, 4)
    assert [tuple(f.shape) for f in feats] == [(2, 1, 64, 16, 16), (2, 1, 192, 8, 8), (2, 1, 384, 4, 4)]
    for a, b, s in zip(feats, feats_nchw, stages, strict=True):
        assert torch.equal(a, s) and torch.equal(b, s.mean(0))


def test_timm_interface_methods():
    m = sr.create_model("spikingresformer_dvsg")
    nwd = m.no_weight_decay()
    assert nwd and all(n.endswith(".w") for n in nwd)
    assert len(nwd) == sum(1 for n, _ in m.named_parameters() if n.endswith(".w"))
    assert sr.create_model("spikingresformer_cifar").no_weight_decay() == set()
    m.reset_classifier(5)
    assert m.get_classifier().weight.shape == (5, 192)
    x = torch.randn(1, 2, 3, 16, 16)
    _firing(m, x)
    with torch.no_grad():
        feats = m.forward_features(x)  # timm convention: [B, C, H, W], the mean over time
        steps = m.forward_features_steps(x)
        assert feats.shape == (1, 192, 4, 4) and steps.shape == (2, 1, 192, 4, 4)
        assert torch.equal(feats, steps.mean(0))
        assert m.forward_head(feats).shape == (1, 5)
        assert torch.equal(m.forward_head(feats, pre_logits=True), feats.mean((-2, -1)))
        assert torch.equal(m.forward_head(steps), m(x))  # per-step head: exactly forward
        torch.testing.assert_close(m.forward_head(feats), m(x), rtol=1e-5, atol=1e-6)  # linear head
        assert torch.equal(m(x, return_steps=True), m.forward_steps(x))
    m.reset_classifier(0)
    with torch.no_grad():
        pooled = m(x)  # per-step pooled features, averaged over time
        assert pooled.shape == (1, 192)
        assert torch.equal(pooled, steps.mean((-2, -1)).mean(0))
    m.reset_classifier(0, "")  # no pooling either: the time-averaged feature map
    with torch.no_grad():
        assert torch.equal(m(x), feats)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(0, "max")


def _finite_hooks(model):
    bad = []

    def hook(mod, inputs, output):
        for i, t in enumerate(list(inputs) + [output]):
            if isinstance(t, torch.Tensor) and not torch.isfinite(t).all():
                bad.append(f"{mod.__class__.__name__} {'input' if i < len(inputs) else 'output'}")

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    return bad, handles


@pytest.mark.parametrize("name,size", [("spikingresformer_cifar", 32), ("spikingresformer_ti", 64)])
def test_fresh_model_eval_is_finite_everywhere(name, size):
    m = sr.create_model(name, T=2).eval()
    bad, handles = _finite_hooks(m)
    with torch.no_grad():
        out = m(torch.randn(2, 3, size, size) * 3)
    for h in handles:
        h.remove()
    assert torch.isfinite(out).all()
    assert not bad, bad
    # the rule: a zero firing-rate buffer is read as a rate of 1
    dssa = next(mod for mod in m.modules() if isinstance(mod, DSSA))
    assert torch.all(dssa.firing_rate_x == 0)
    assert torch.equal(DSSA._scale(dssa.firing_rate_x, 16.0), torch.full_like(dssa.firing_rate_x, 0.25))


def test_forward_after_another_input_matches_a_fresh_reference_model():
    """Nothing carries over between calls: after another input, the logits equal those of a fresh copy run
    with the reference neuron loop (a different code path; spikes are bit-identical across backends)."""
    x = torch.randn(2, 3, 32, 32) * 2
    m = _firing(sr.create_model("spikingresformer_cifar", T=3, neuron_backend="fused"), x)
    ref = sr.create_model("spikingresformer_cifar", T=3, neuron_backend="reference").eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32) * 2)
        a = m(x)
        b = ref(x)
    assert torch.equal(a, b)


def test_first_training_forward_sets_rates_then_ema():
    m = sr.create_model("spikingresformer_cifar", T=2).train()
    dssa = next(mod for mod in m.modules() if isinstance(mod, DSSA))
    seen = {}
    dssa.activation_in.register_forward_hook(lambda mod, i, o: seen.setdefault("s", o.detach()))
    m(torch.randn(2, 3, 16, 16) * 3)
    rate = seen["s"].mean((0, 1, 2, 3, 4)).reshape(1, 1, 1, 1, 1)  # one head in stage 0
    assert torch.allclose(dssa.firing_rate_x, rate, rtol=1e-6, atol=1e-9)
    first = dssa.firing_rate_x.clone()
    seen.clear()
    m(torch.randn(2, 3, 16, 16) * 3)
    rate2 = seen["s"].mean().reshape(1, 1, 1, 1, 1)
    assert torch.allclose(dssa.firing_rate_x, first * 0.999 + rate2 * (1 - 0.999), rtol=1e-6, atol=1e-9)


def test_model_built_at_224_runs_at_288():
    """``img_size`` only sets the default: at 288 the 224 model computes what a model built at 288 does."""
    x = torch.randn(1, 3, 288, 288)
    m = _firing(sr.create_model("spikingresformer_ti", T=1, img_size=224), x)
    at_288 = sr.create_model("spikingresformer_ti", T=1, img_size=288).eval()
    at_288.load_state_dict(m.state_dict())
    with torch.no_grad():
        out = m(x)
        assert out.shape == (1, 1000)
        assert torch.equal(out, at_288(x))


@pytest.mark.parametrize(
    "name,shape,match",
    [
        ("spikingresformer_cifar", (3, 32, 32), "3-d tensor"),
        ("spikingresformer_cifar", (1, 1, 2, 3, 32, 32), "6-d tensor"),
        ("spikingresformer_cifar", (1, 1, 32, 32), "got 1 channels"),
        ("spikingresformer_cifar", (1, 2, 4, 32, 32), "got 4 channels"),
        ("spikingresformer_cifar", (1, 3, 30, 32), "multiples of 4"),
        ("spikingresformer_ti", (1, 3, 200, 200), "multiples of 16"),
    ],
)
def test_bad_input_raises_value_error(name, shape, match):
    m = sr.create_model(name, T=1)
    with pytest.raises(ValueError, match=match) as e:
        m(torch.zeros(shape))
    assert str(tuple(shape)) in str(e.value)


def test_constructor_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="one entry per stage"):
        sr.SpikingResformer(planes=(8, 16), num_heads=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        sr.SpikingResformer(planes=(8, 16, 30), num_heads=(1, 2, 4), group_size=8, num_classes=3)
    with pytest.raises(TypeError, match="unexpected"):
        sr.SpikingResformer(bogus=1)


def test_small_custom_network_trains_a_step():
    m = sr.SpikingResformer(
        planes=(16, 32, 64), num_heads=(1, 2, 4), group_size=16, prologue="cifar", in_chans=1,
        num_classes=10, T=2, img_size=16,
    )
    x = torch.randn(4, 1, 16, 16)
    loss = m(x).logsumexp(-1).mean()
    loss.backward()
    for name, p in m.named_parameters():  # every parameter is reached, with a usable gradient
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_channels_last_is_the_layout_under_cpu_bf16_autocast():
    """bf16 autocast on the CPU picks channels-last and trains; float32 stays contiguous.

    That the channels-last layout computes the same model is checked against the official release in
    float64 (``test_parity.py::test_channels_last_layout_matches_official_float64``).
    """
    torch.manual_seed(0)
    m = sr.create_model("spikingresformer_cifar", planes=[16, 32, 64], num_heads=[1, 2, 4], group_size=16,
                        img_size=16, T=2)
    x = torch.randn(2, 3, 16, 16)
    m.memory_format = "auto"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.use_channels_last(x)
        loss = m(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert not m.use_channels_last(x)  # float32 outside autocast stays contiguous
    with pytest.raises(ValueError, match="memory_format"):
        sr.create_model("spikingresformer_cifar", memory_format="nhwc")
