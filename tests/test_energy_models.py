"""Memory-aware energy, equivalent networks, break-even rates and event-stem figures, on worked examples."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

import spikingresformer
from spikingresformer.energy import (
    MemoryCosts,
    analyze,
    break_even_rate,
    energy_models,
    equivalent_energy,
    memory_energy,
    official_param_count,
    quantized_bits,
    render_table,
)
from spikingresformer.energy import cli as energy_cli
from spikingresformer.neurons import build_neuron


class Toy(nn.Module):
    """Two layers: a 1x1 stem conv (weight 1, real input) -> IF neuron -> a 1x1 conv with 2 outputs.

    With binary input the IF neuron (threshold 1, v starts at 0) fires exactly where the input is 1,
    so the spikes are known in advance.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 1, 1, bias=False)
        self.sn = build_neuron("if")
        self.fc = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.stem.weight.fill_(1.0)
            self.fc.weight.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)  # [B, T, C, H, W] -> [T, B, C, H, W]
        T, B = x.shape[:2]
        s = self.sn(self.stem(x.flatten(0, 1)).unflatten(0, (T, B)))
        return self.fc(s.flatten(0, 1)).unflatten(0, (T, B))


# one image, T = 2 steps, 1 x 2 x 2 frames: 4 input ones -> 4 spikes
TOY_INPUT = torch.tensor([[[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [0.0, 0.0]]]]])


@pytest.fixture(scope="module")
def toy_report():
    return analyze(Toy(), TOY_INPUT)


def test_toy_counts(toy_report):
    r = toy_report
    stem, fc = r.layers
    assert (stem.name, stem.spike_input, fc.name, fc.spike_input) == ("stem", False, "fc", True)
    assert stem.macs_per_step == 4 and stem.steps_computed == 2 and stem.outputs_per_step == 4
    assert fc.macs_per_step == 8 and fc.outputs_per_step == 8 and fc.weight_elements == 2
    assert fc.input_nonzero == 4 and fc.sops == 8  # 4 spikes x 2 output channels
    assert r.neurons[0].spikes == 4 and r.mean_firing_rate == 0.5
    assert not stem.adds_bias and not fc.adds_bias


def test_memory_costs_interpolation():
    c = MemoryCosts()
    assert c.pj_per_byte(0) == 0.0
    assert c.pj_per_byte(8192) == pytest.approx(2.5)  # 10 pJ per 32-bit word at 8 KiB
    assert c.word_pj(32768) == pytest.approx(20.0)
    assert c.word_pj(1 << 20) == pytest.approx(100.0)
    assert c.word_pj(1 << 30) == pytest.approx(100.0)  # constant above 1 MiB
    assert c.pj_per_byte(4096) == pytest.approx(1.25)
    assert c.pj_per_byte(20480) == pytest.approx(2.5 + 2.5 * 0.5)
    assert c.word_pj(16, bits=2) == pytest.approx(2.5 * 16 / 8192 * 2 / 8)
    with pytest.raises(ValueError, match="increase strictly"):
        MemoryCosts(breakpoints=((0.0, 0.0), (10.0, 1.0), (5.0, 2.0)))
    with pytest.raises(ValueError, match="e_add_pj"):
        MemoryCosts(e_add_pj=-1.0)


def _word(buffer_bytes: float) -> float:
    """pJ of one 32-bit access to a buffer below 8 KiB: 10 pJ x size / 8 KiB."""
    return 10.0 * buffer_bytes / 8192


def test_memory_energy_toy_by_hand(toy_report):
    mem = memory_energy(toy_report)
    stem, fc = mem["layers"]
    (neuron,) = mem["neurons"]
    fifo = _word(1000 * 4)  # spike FIFO: 1000 words
    # stem: 4 outputs x 1 tap per step, 2 steps computed -> 8 MACs (mul 3.1 + add 0.1 each);
    # 8 weight reads from a 4-byte buffer, 8 input reads and 8 output writes from 16-byte buffers
    assert stem.dense_pj == pytest.approx(8 * 3.2)
    assert stem.weights_pj == pytest.approx(8 * _word(4))
    assert stem.activations_pj == pytest.approx(8 * _word(16) + 8 * _word(16))
    assert stem.total_pj == pytest.approx(25.6 + 0.0390625 + 0.3125)
    # fc: 8 SOPs (8 additions, 8 addressing additions, 2 multiplications per spike), 4 spike reads,
    # 8 weight reads (8-byte buffer), 8 potential reads and 8 writes (2 x 2 x 2 outputs = 32 bytes)
    assert fc.synaptic_pj == pytest.approx(0.8)
    assert fc.addressing_pj == pytest.approx(0.8 + 2 * 4 * 3.1)
    assert fc.spikes_pj == pytest.approx(4 * fifo)
    assert fc.weights_pj == pytest.approx(8 * _word(8))
    assert fc.potential_pj == pytest.approx(16 * _word(32))
    assert fc.total_pj == pytest.approx(0.8 + 25.6 + 19.53125 + 0.078125 + 0.625)
    # IF neuron: 4 neurons x 2 steps, 2 additions each; potential read + write; 4 spike writes
    assert neuron.neuron_pj == pytest.approx(8 * 0.2)
    assert neuron.state_pj == pytest.approx(16 * _word(16))
    assert neuron.spikes_pj == pytest.approx(4 * fifo)
    assert mem["total"].total_pj == pytest.approx(94.0296875)
    assert mem["total"].variable_pj == pytest.approx(46.634375 + 19.53125)
    assert toy_report.memory_energy_mj() == pytest.approx(94.0296875e-9)


def test_equivalent_networks_toy_by_hand(toy_report):
    relu = equivalent_energy(toy_report, "relu")
    q = equivalent_energy(toy_report, "quantized")
    assert relu["macs"] == q["macs"] == 4 + 8  # one step: stem 4, fc 8
    assert relu["bits"] == 32 and q["bits"] == 2  # ceil(log2(2 + 1))
    assert relu["ops_mj"] * 1e9 == pytest.approx(12 * 4.6)
    assert q["ops_mj"] * 1e9 == pytest.approx(4 * 4.6 + 8 * 2 * 0.9)  # stem at E_MAC, 2-bit MAC = 2 x E_AC
    stem_pj = 4 * 3.2 + 4 * _word(4) + 4 * _word(16) + 4 * _word(16)
    fc_relu = 8 * 3.2 + 8 * _word(8) + 8 * _word(16) + 8 * _word(32)
    assert relu["memory_mj"] * 1e9 == pytest.approx(stem_pj + fc_relu + 4 * 0.1)
    fc_q = 8 * 2 * 0.1 + 8 * _word(8) + 8 * _word(1) * 2 / 32 + 8 * _word(32)  # 2-bit reads from a 1-byte buffer
    assert q["memory_mj"] * 1e9 == pytest.approx(stem_pj + fc_q + 4 * 0.2)
    with pytest.raises(ValueError, match="unknown equivalent network"):
        equivalent_energy(toy_report, "cnn")


def test_break_even_toy_by_hand(toy_report):
    rows = {r["network"]: r for r in energy_models(toy_report)["rows"]}
    # ops model: fixed = stem 8 MACs x 4.6 = 36.8 pJ, variable = 8 SOPs x 0.9 = 7.2 pJ, rate 0.5
    assert rows["spiking"]["ops_mj"] * 1e9 == pytest.approx(36.8 + 7.2)
    assert rows["relu"]["break_even_ops"] == pytest.approx(0.5 * (55.2 - 36.8) / 7.2)
    assert rows["quantized"]["break_even_ops"] == 0.0  # the stem alone costs more: cannot win
    fixed = 94.0296875 - 66.165625
    assert rows["relu"]["break_even_memory"] == pytest.approx(0.5 * (rows["relu"]["memory_mj"] * 1e9 - fixed) / 66.165625)
    assert break_even_rate(0.0, 1.0, 0.0, 5.0) is None
    assert break_even_rate(0.1, 2.0, 4.0, 6.0) == pytest.approx(0.1)


@pytest.mark.parametrize("T,bits", [(1, 1), (2, 2), (3, 2), (4, 3), (7, 3), (8, 4), (15, 4), (16, 5)])
def test_quantized_bits(T, bits):
    assert quantized_bits(T) == bits


def test_quantized_bits_rejects_bad_T():
    with pytest.raises(ValueError, match="at least 1"):
        quantized_bits(0)


def test_event_stem_counts_events(small_cifar):
    """Event counts: dense MACs on the counts vs one addition per event and weight reached."""
    x = TOY_INPUT.clone()
    x[0, 0, 0, 0, 0] = 3.0  # three events at one pixel in step 1
    r = analyze(Toy(), x)
    ev = r.event_stem()
    assert ev["dense_macs"] == 8 and ev["dense_mj"] == pytest.approx(8 * 4.6e-9)
    assert ev["integer_counts"] and ev["nonzero_additions"] == 4
    assert ev["additions_per_event"] == 6  # 3 + 1 + 1 + 1 events, one weight each
    assert ev["additions_mj"] == pytest.approx(6 * 0.9e-9)
    r2 = analyze(Toy(), x * 0.5)  # resized frames: fractional counts
    assert not r2.event_stem()["integer_counts"]
    model, images, _ = small_cifar
    assert analyze(model, images).event_stem() is None  # image input: no event stem


@pytest.fixture(scope="module")
def small_cifar():
    torch.manual_seed(0)
    kw = dict(planes=[16, 32, 64], num_heads=[1, 2, 4], group_size=16, img_size=8)
    model = spikingresformer.create_model("spikingresformer_cifar", T=2, **kw)
    x = torch.randn(2, 3, 8, 8)
    energy_cli.calibrate_batchnorm(model, [x])
    return model, x, kw


def test_equivalent_macs_match_a_plain_mac_count(small_cifar):
    """The equivalent network's MACs equal torch's own FLOP count / 2 of the same shapes at T = 1."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x, kw = small_cifar
    report = analyze(model, x)
    one_step = spikingresformer.create_model("spikingresformer_cifar", T=1, **kw).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        one_step(x)
    macs = flops.get_total_flops() / 2 / x.shape[0]
    for name in ("relu", "quantized"):
        assert equivalent_energy(report, name)["macs"] == macs
    # and the spiking network's folded-BN flags: every conv is followed by a BatchNorm
    assert all(layer.adds_bias == (layer.kind == "conv") for layer in report.layers)


def test_models_in_json_csv_and_table(small_cifar, tmp_path):
    model, x, _ = small_cifar
    report = analyze(model, x)
    data = json.loads(report.to_json(tmp_path / "e.json"))
    rows = {r["network"]: r for r in data["energy_models"]["rows"]}
    assert set(rows) == {"spiking", "relu", "quantized"} and rows["quantized"]["bits"] == 2
    assert data["totals"]["energy_memory_mj"] == pytest.approx(rows["spiking"]["memory_mj"])
    per_layer = sum(r["energy_memory_mj"] for r in data["layers"]) + sum(n["energy_memory_mj"] for n in data["neurons"])
    assert per_layer == pytest.approx(data["totals"]["energy_memory_mj"])
    stages = data["energy_models"]["stages"]
    assert sum(s["relu_mj"] for s in stages) == pytest.approx(rows["relu"]["memory_mj"])
    assert sum(s["spiking_ops_mj"] for s in stages) == pytest.approx(rows["spiking"]["ops_mj"])
    report.write_csv(tmp_path / "l.csv", tmp_path / "n.csv", tmp_path / "m.csv")
    with open(tmp_path / "l.csv") as f:
        layer_rows = list(csv.DictReader(f))
    for row, layer in zip(layer_rows, data["layers"], strict=True):  # the CSV holds the JSON's figures
        assert row["name"] == layer["name"] and float(row["sops"]) == pytest.approx(layer["sops"], rel=1e-12)
        assert float(row["energy_memory_mj"]) == pytest.approx(layer["energy_memory_mj"], rel=1e-12)
        for part in ("weights", "dense", "synaptic", "spikes", "total"):
            assert float(row[f"memory_{part}_pj"]) == pytest.approx(layer["memory_pj"][f"{part}_pj"], rel=1e-12)
    assert any(float(r["memory_weights_pj"]) > 0 for r in layer_rows)
    with open(tmp_path / "m.csv") as f:
        model_rows = list(csv.DictReader(f))
    assert [r["network"] for r in model_rows] == ["spiking", "relu", "quantized"]
    for row in model_rows:
        for key in ("ops_mj", "memory_mj"):
            assert float(row[key]) == pytest.approx(rows[row["network"]][key], rel=1e-12)
    table = render_table(report)
    assert "break-even" in table and "memory-aware" in table and "E mem uJ" in table
    assert math.isfinite(rows["relu"]["break_even_memory"])


def test_cli_recipe_defaults_and_overrides(tmp_path, capsys):
    """``energy -c recipe.yaml`` takes the recipe's model, size, T and model_args; flags override them."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: spikingresformer_cifar\nmodel_args: {planes: [8, 16, 32], num_heads: [1, 2, 4], "
                      "group_size: 8, neuron: plif}\nimg_size: 8\nT: 3\ndataset: digits\n")
    out = tmp_path / "o"
    rc = energy_cli.main(["-c", str(recipe), "--data", "random", "--T", "2", "--device", "cpu", "--no-plots",
                          "--output", str(out)])
    assert rc == 0
    data = json.loads((out / "energy.json").read_text())
    assert data["T"] == 2 and data["input_shape"] == [1, 3, 8, 8]  # --T overrides, img_size from the recipe
    small = spikingresformer.create_model("spikingresformer_cifar", planes=[8, 16, 32], num_heads=[1, 2, 4],
                                          group_size=8, neuron="plif")
    assert data["params"] == official_param_count(small)[0]  # the recipe's small planes were used
    assert data["params"] < sum(p.numel() for p in small.parameters())  # the official count leaves out PLIF's w
    with open(out / "energy_models.csv") as f:
        model_rows = {r["network"]: r for r in csv.DictReader(f)}
    assert float(model_rows["spiking"]["memory_mj"]) == pytest.approx(data["totals"]["energy_memory_mj"], rel=1e-12)
    capsys.readouterr()
    assert energy_cli.main(["--device", "cpu", "--no-plots"]) == 2
    assert "no model given" in capsys.readouterr().err
    assert energy_cli.main(["-c", str(tmp_path / "missing.yaml")]) == 2


def test_sop_count_exact_without_onednn(small_cifar):
    """Our conv SOPs equal a brute-force float64 ``sum(conv2d(s, ones_like(W)))`` even when float32
    convolutions are not exact (oneDNN disabled), unlike a truncated float32 count."""
    import torch.nn.functional as F

    model, x, _ = small_cifar
    inputs = {}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "prologue.0"}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0].detach().flatten(0, 1)))
             for n, m in convs.items()]
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            report = analyze(model, x)
    finally:
        for h in hooks:
            h.remove()
    ours = {r.name: r.sops for r in report.layers}
    for name, m in convs.items():
        s = inputs[name].double()
        brute = F.conv2d(s, torch.ones_like(m.weight, dtype=torch.float64), stride=m.stride, padding=m.padding,
                         groups=m.groups).sum().item() / x.shape[0]
        assert ours[name] == round(brute), name


def test_folded_model_keeps_its_biases(small_cifar):
    """After BatchNorm folding, each conv's own bias is priced like the folded BatchNorm it replaces."""
    model, x, _ = small_cifar
    fused = spikingresformer.fuse_for_inference(model)
    plain, folded = analyze(model, x), analyze(fused, x)
    assert folded.bn_ops_per_image_per_step == 0 and plain.bn_ops_per_image_per_step > 0
    assert [r.adds_bias for r in folded.layers] == [r.adds_bias for r in plain.layers]
    bias = [c.bias_pj for c in memory_energy(folded)["layers"]]
    assert bias == pytest.approx([c.bias_pj for c in memory_energy(plain)["layers"]])


def test_cli_fresh_weights_repeat_exactly(tmp_path):
    """Two runs with fresh weights and the same --seed give the same counts; another seed differs."""
    recipe = tmp_path / "small.yaml"
    recipe.write_text("model: spikingresformer_cifar\nmodel_args: {planes: [8, 16, 32], num_heads: [1, 2, 4], "
                      "group_size: 8}\nimg_size: 8\nT: 2\n")

    def sops(seed: int, out: str) -> float:
        args = ["-c", str(recipe), "--data", "random", "--device", "cpu", "--calibrate-bn", "--no-plots",
                "--seed", str(seed), "--output", str(tmp_path / out)]
        assert energy_cli.main(args) == 0
        return json.loads((tmp_path / out / "energy.json").read_text())["totals"]["sops_per_image"]

    first = sops(3, "a")
    assert sops(3, "b") == first and sops(4, "c") != first
