"""Deployment: BatchNorm folding, torch.export of every variant, ONNX Runtime parity on the fixtures, FX."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import spikingresformer as sr
from conftest import load_fixture, rel_err
from spikingresformer.export import check_onnx, export_onnx, export_program
from spikingresformer.model import count_spike_flips


def _tiny(**kw) -> sr.SpikingResformer:
    torch.manual_seed(0)
    args = dict(planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=16, num_classes=10,
                group_size=16, T=2, depths=(1, 1, 1))
    args.update(kw)
    m = sr.SpikingResformer(**args)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to fold
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.0005, 0.002)
            bn.weight.uniform_(2.0, 4.0)
            bn.bias.uniform_(0.0, 0.6)
    return m.eval()


def test_fuse_for_inference_folds_every_batchnorm():
    m = _tiny()
    fused = sr.fuse_for_inference(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fused.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # the original is untouched
    x = torch.randn(3, 3, 16, 16)
    flips = count_spike_flips(m, fused, x)
    assert flips["elements"] > 0 and flips["spikes"] > 0
    assert flips["flip_rate"] < 1e-3
    with torch.no_grad():
        if flips["flipped"] == 0:
            assert rel_err(fused(x), m(x)) < 1e-5
    with pytest.raises(RuntimeError, match="folded"):
        fused.train()


def _neuron_layers(model) -> int:
    return sum(isinstance(m, sr.neurons.MultiStepNeuron) for m in model.modules())


@pytest.mark.parametrize("name", sorted(sr.VARIANTS))
def test_torch_export_of_every_variant_equals_eager(name, tmp_path):
    size = 32 if "imagenet" in str(sr.VARIANTS[name].get("prologue", "imagenet")) else 16
    model = sr.create_model(name, img_size=size, T=2).eval()
    events = name == "spikingresformer_dvsg"
    x = torch.randn(1, 2, 3, size, size).clamp_min(0) if events else torch.randn(1, 3, size, size)
    program = export_program(model, x, tmp_path / "m.pt2", fold=False)
    ops = [n for n in program.graph.nodes if "fused_neuron_forward" in str(n.target)]
    assert len(ops) == _neuron_layers(model)  # one node per neuron layer
    loaded = torch.export.load(str(tmp_path / "m.pt2"))
    with torch.no_grad():
        assert torch.equal(loaded.module()(x), model(x))


def test_export_folded_program_with_dynamic_batch(tmp_path):
    m = _tiny()
    program = export_program(m, torch.randn(2, 3, 16, 16), tmp_path / "m.pt2", dynamic_batch=True)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(program.module()(x), sr.fuse_for_inference(m)(x))


@pytest.mark.parametrize("fixture_name", ["official_cifar", "official_dvsg"])
def test_onnx_runtime_matches_eager_on_the_fixtures(fixture_name, tmp_path):
    pytest.importorskip("onnxruntime")
    fx = load_fixture(fixture_name)
    model = sr.create_model(fx["model_name"], num_classes=fx["num_classes"], T=fx["T"], img_size=fx["img_size"])
    sr.load_checkpoint(model, fx["checkpoint"])
    model.eval()
    x = fx["test_input"]
    path = export_onnx(model, x, tmp_path / "m.onnx", optimize=False)
    err, logits = check_onnx(path, model, x)
    assert err < 1e-4
    assert rel_err(logits, fx["eval_logits"]) < 1e-4  # and so the official release's logits


def test_export_command_writes_a_checked_onnx_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from spikingresformer.cli import main

    out = tmp_path / "m.onnx"
    model = sr.create_model("spikingresformer_cifar", num_classes=7, T=1, img_size=8)
    ckpt = tmp_path / "cifar.safetensors"
    sr.save_weights(model, ckpt)
    rc = main(["export", "--model", "spikingresformer_cifar", "--checkpoint", str(ckpt), "--output", str(out),
               "--T", "1", "--img-size", "8", "--dynamic-batch", "--batch-size", "2", "--no-optimize"])
    assert rc == 0
    said = capsys.readouterr().out
    assert "onnx.checker passed" in said
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 8)  # another batch size than at export
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(got), model.eval()(x)) < 1e-4


def test_fx_feature_extraction_in_eval_and_training():
    m = _tiny()
    x = torch.randn(2, 3, 16, 16)
    fe = create_feature_extractor(m, return_nodes={"layers.1": "stage1", "classifier": "logits"})
    with torch.no_grad():
        out = fe(x)
        assert out["stage1"].shape == (2, 2, 32, 8, 8)
        assert torch.equal(out["logits"].mean(0), m(x))
    m.train()
    fe = create_feature_extractor(m, return_nodes={"classifier": "logits"})
    fe(x)["logits"].mean().backward()
    assert all(p.grad is not None for p in fe.parameters())


def test_input_dtype_and_finite_checks():
    m = _tiny()
    with pytest.raises(ValueError, match="floating-point.*torch.uint8"):
        m(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match="floating-point"):
            m(torch.zeros(1, 3, 16, 16, dtype=dtype))
    x = torch.randn(1, 3, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        m(x)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        m(x)
    m.check_finite_input = False  # the documented switch
    with torch.no_grad():
        m(x)
