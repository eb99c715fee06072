"""Energy and firing-rate analysis: parity with the official counts, purity, CLI outputs, conventions."""

from __future__ import annotations

import json
import math

import pytest
import torch

import spikingresformer
from spikingresformer.energy import (
    EnergyMeter,
    EnergyReport,
    LayerRecord,
    NeuronRecord,
    analyze,
    sops_to_mj,
    summarize,
)
from spikingresformer.energy import cli as energy_cli
from conftest import load_fixture, model_from_fixture


@pytest.fixture(scope="module", params=["cifar", "dvsg"])
def official(request):
    """(fixture dict, loaded model, report on test_input), in float64: SOP counts are exact there.

    Counts follow the spikes, and float32 spikes depend on the processor (``test_parity.py``), so the
    float32 fixtures' counts hold only on the machine that recorded them.
    """
    torch.manual_seed(0)
    fx = load_fixture(f"official_{request.param}_f64")
    model = model_from_fixture(fx)
    report = analyze(model, fx["test_input"])
    return fx, model, report


def test_official_sops_per_layer(official):
    fx, _, report = official
    expected = fx["official_sops_per_layer_per_image"]
    ours = {x.name: x.sops for x in report.layers if x.spike_input}
    assert ours == expected  # exactly
    real = {x.name for x in report.layers if not x.spike_input}
    assert real == {"prologue.0", "classifier"}


def test_official_totals(official):
    fx, _, report = official
    assert report.sops_per_image == fx["official_sops_per_image"]
    assert report.official_macs_per_image_per_step == fx["official_macs_per_image_per_step"]
    assert report.params == fx["official_params"]
    assert report.T == fx["T"] and report.images == fx["batch"]
    assert report.event_input == fx["event_input"]


def test_records_shape(official):
    _, model, report = official
    for x in report.layers:
        assert {"name", "kind", "spike_input", "macs_per_step", "sops"} <= set(vars(x))
        assert x.kind in ("conv", "linear", "matmul")
    names = {n for n, _ in model.named_modules()}
    assert all(x.name in names for x in report.layers)
    assert len(report.neurons) == sum(isinstance(m, spikingresformer.neurons.MultiStepNeuron) for m in model.modules())
    for n in report.neurons:
        assert 0.0 <= n.firing_rate <= 1.0
        assert math.isclose(n.spikes, n.firing_rate * n.neurons_per_step * report.T, rel_tol=1e-9, abs_tol=1e-9)
    # a spike layer's input rate equals the firing rate of the neuron that feeds it
    rates = {n.name: n.firing_rate for n in report.neurons}
    w = next(x for x in report.layers if x.name == "layers.0.0.W")
    assert math.isclose(w.input_rate, rates["layers.0.0.activation_in"], rel_tol=1e-9)


def test_analysis_leaves_model_unchanged(official):
    fx, model, _ = official
    x = fx["test_input"][:1]
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    model.layers[0].eval()  # a mixed mode that must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, x)
    assert {name: m.training for name, m in model.named_modules()} == flags
    after_state = model.state_dict()
    assert all(torch.equal(state[k], after_state[k]) for k in state)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_batches_and_meter_agree(official):
    fx, model, report = official
    if fx["event_input"]:
        pytest.skip("checked once, on the image fixture")
    x = fx["test_input"]
    split = analyze(model, [x[:2], (x[2:], None)])
    assert split.images == report.images
    for a, b in zip(split.layers, report.layers):
        assert a.name == b.name and math.isclose(a.sops, b.sops, rel_tol=1e-12)
    assert split.official_macs_per_image_per_step == report.official_macs_per_image_per_step


def test_stem_counts_once_per_image_per_step(official):
    """The image stem runs once on [B, C, H, W]; its counts are per image per step (x T for SOPs)."""
    fx, model, _ = official
    if fx["event_input"]:
        pytest.skip("image stem")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    r = analyze(model, x)  # the fixture model runs T=4 steps
    stem = r.layers[0]
    assert stem.name == "prologue.0" and not stem.spike_input and not stem.after_neuron
    assert stem.macs_per_step == 64 * 3 * 9 * 8 * 8
    # non-zero real input: every tap that lands inside the image, T times
    inside = sum(min(i + 1, 7) - max(i - 1, 0) + 1 for i in range(8)) ** 2
    assert stem.sops == pytest.approx(4 * 64 * 3 * inside)
    # the same images as T identical event frames give the same figures (counted by a meter)
    model.eval()
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(x.unsqueeze(1).expand(2, 4, 3, 8, 8).contiguous())
    r5 = meter.report()
    assert r5.event_input and r5.layers[0].macs_per_step == stem.macs_per_step
    assert r5.layers[0].sops == pytest.approx(stem.sops)
    assert r5.official_macs_per_image_per_step == r.official_macs_per_image_per_step
    assert r5.sops_per_image == pytest.approx(r.sops_per_image)


def test_binary_event_input_is_not_spikes(official):
    """Event frames of 0/1 pass the value test but follow no neuron: the stem stays a real-input layer."""
    fx, model, _ = official
    if not fx["event_input"]:
        pytest.skip("event stem")
    torch.manual_seed(0)
    x = (torch.rand(1, 2, 3, 8, 8) < 0.3).double()
    r = analyze(model, x)
    stem = r.layers[0]
    assert stem.binary_input and not stem.after_neuron and not stem.spike_input
    assert r.T == 2 and r.device == "cpu"  # a CUDA-free run


def _toy_report() -> EnergyReport:
    layers = [
        LayerRecord("prologue.0", "prologue", "conv", False, 1_000_000, 3.0e6),
        LayerRecord("layers.0.0.W", "stage1", "conv", True, 5_000_000, 0.6e9),
        LayerRecord("layers.0.0.matmul1", "stage1", "matmul", True, 2_000_000, 0.4e9),
        LayerRecord("classifier", "head", "linear", False, 500, 2000.0),
    ]
    neurons = [NeuronRecord("layers.0.0.activation_in", "stage1", "lif", 1000, 400.0, 0.1)]
    return EnergyReport("toy", [1, 3, 8, 8], False, 4, 1, "cpu", 4.6, 0.9, layers, neurons, 100, 10, 8)


def test_energy_conventions_arithmetic():
    r = _toy_report()
    assert r.sops_per_image == pytest.approx(1.0e9)
    assert r.energy_mj("paper") == pytest.approx(0.9)
    assert r.energy_mj("full") == pytest.approx(0.9 + 4.6 * 4 * 1_000_500 / 1e9)
    assert r.official_macs_per_image_per_step == 8_000_500 + 100
    assert sum(s["energy_full_mj"] for s in r.stage_totals()) == pytest.approx(r.energy_mj("full"))
    assert round(sops_to_mj(2.73e9), 2) == 2.46  # the paper's Ti figure
    with pytest.raises(ValueError):
        r.energy_mj("other")
    again = EnergyReport.from_dict(json.loads(r.to_json()))
    assert again.energy_mj("full") == pytest.approx(r.energy_mj("full"))
    assert "mJ" in summarize(r)


def test_cli_writes_json_csv_png(tmp_path, capsys):
    out = tmp_path / "energy"
    rc = energy_cli.main(
        ["--model", "spikingresformer_cifar", "--img-size", "8", "--T", "2", "--batch-size", "2",
         "--device", "cpu", "--calibrate-bn", "--output", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "paper convention" in text and "full convention" in text and "[stage2 total]" in text
    data = json.loads((out / "energy.json").read_text())
    assert data["totals"]["sops_per_image"] > 0 and data["layers"][0]["name"] == "prologue.0"
    assert (out / "layers.csv").read_text().splitlines()[0].startswith("name,stage,kind,spike_input")
    assert len((out / "neurons.csv").read_text().splitlines()) == len(data["neurons"]) + 1
    for png in ("firing_rates.png", "sops_per_layer.png", "energy_models.png", "memory_per_layer.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_unknown_model(capsys):
    assert energy_cli.main(["--model", "nope", "--no-plots"]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    fx = load_fixture("official_cifar_f64")
    model = model_from_fixture(fx)
    cpu = analyze(model, fx["test_input"])
    gpu = analyze(model.cuda(), fx["test_input"])
    assert gpu.device.startswith("cuda")
    assert gpu.official_macs_per_image_per_step == cpu.official_macs_per_image_per_step
    assert gpu.sops_per_image == cpu.sops_per_image == fx["official_sops_per_image"]
