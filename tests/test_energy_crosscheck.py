"""Cross-check of our counts with SpikingJelly 2.0's op_counter (skipped when the extra is absent)."""

from __future__ import annotations

import json

import pytest
import torch

import spikingresformer
from spikingresformer.energy import analyze, crosscheck, spikingjelly_available
from spikingresformer.energy import cli as energy_cli
from spikingresformer.energy import sj_crosscheck as crosscheck_module

needs_sj = pytest.mark.skipif(
    not spikingjelly_available(),
    reason="SpikingJelly 2.0 not installed: pip install --no-deps 'spikingjelly==2.0.*' && pip install loguru",
)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = spikingresformer.create_model("spikingresformer_cifar", planes=[16, 32, 64], num_heads=[1, 2, 4],
                                          group_size=16, img_size=8, T=2)
    x = torch.randn(2, 3, 8, 8)
    energy_cli.calibrate_batchnorm(model, [x])
    return model, x


@needs_sj
def test_crosscheck_agrees_exactly_per_layer(small):
    model, x = small
    cc = crosscheck(model, x)
    report = analyze(model, x)
    assert cc.same_output
    assert [a.name for a in cc.layers] == [r.name for r in report.layers]
    assert cc.disagreements == []
    spiking = [a for a in cc.layers if a.spike_input]
    assert len(spiking) == len(cc.layers) - 2 and all(a.sj_sops > 0 for a in spiking)
    assert cc.sj_sops == cc.ours_sops == report.sops_per_image
    # MACs: SpikingJelly counts only products without a binary operand (stem once per image, classifier)
    macs = {a.name: a.sj_macs for a in cc.layers if a.sj_macs}
    assert macs == {"prologue.0": report.layers[0].macs_per_step, "classifier": report.layers[-1].macs_per_step * 2}
    assert cc.sj_macs_batchnorm == cc.ours_bn_elements  # one per BatchNorm output element
    assert cc.sj_unmatched == {}
    data = json.loads(json.dumps(cc.to_dict()))
    assert data["disagreements"] == [] and all(r["sops_agree"] for r in data["layers"])
    assert "46 of 46 layers agree exactly" in cc.render()


@needs_sj
def test_crosscheck_reports_a_disagreement(small, monkeypatch):
    """A layer our meter miscounts shows up as a disagreement (the comparison can fail)."""
    model, x = small
    real = crosscheck_module.analyze

    def off_by_one(*args, **kwargs):
        r = real(*args, **kwargs)
        r.layers[3].sops += 1
        return r

    monkeypatch.setattr(crosscheck_module, "analyze", off_by_one)
    cc = crosscheck(model, x)
    assert [a.name for a in cc.disagreements] == [cc.layers[3].name]
    assert "45 of 46 layers agree exactly" in cc.render()


def test_crosscheck_without_spikingjelly(small, monkeypatch, capsys):
    model, x = small
    monkeypatch.setattr(crosscheck_module, "spikingjelly_available", lambda: False)
    with pytest.raises(ImportError, match="--no-deps"):
        crosscheck(model, x)
    rc = energy_cli.main(["--model", "spikingresformer_cifar", "--img-size", "8", "--T", "1", "--device", "cpu",
                          "--crosscheck", "--no-plots"])
    assert rc == 2 and "spikingjelly" in capsys.readouterr().err


@needs_sj
def test_crosscheck_on_the_official_fixture():
    """The float64 cifar fixture (exact on any CPU): both counters agree layer for layer with the official total."""
    from conftest import load_fixture, model_from_fixture

    fx = load_fixture("official_cifar_f64")
    model = model_from_fixture(fx)
    cc = crosscheck(model, fx["test_input"])
    assert cc.disagreements == [] and cc.same_output
    assert set(fx["official_sops_per_layer_per_image"]) == {a.name for a in cc.layers if a.spike_input}
    assert cc.sj_sops == cc.ours_sops == fx["official_sops_per_image"]
