"""Lean mode (set_grad_checkpointing: per-block activation checkpointing) and spikes as bits: identical outputs, gradients and buffers;
bit packing; the kernel source as package data; layering (model does not import data, no energy cycle)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from spikingresformer.neurons import bits, fused
from conftest import load_fixture


def _tiny(neuron: str = "lif", dtype: torch.dtype = torch.float32) -> sr.SpikingResformer:
    """A small model with autograd's own saving (spike bits off), the baseline of the comparisons."""
    torch.manual_seed(0)
    return sr.SpikingResformer(planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=16,
                               num_classes=10, group_size=16, T=2, neuron=neuron,
                               save_spikes_as_bits=False).to(dtype)


def _train_twice(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32"):
    """Two training forwards and backwards (the second reads the buffers the first set)."""
    model.train()
    outs = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        outs.append(out.detach())
    grads = {n: p.grad for n, p in model.named_parameters()}
    return outs, grads, {n: b.clone() for n, b in model.named_buffers()}


def _assert_identical(a, b) -> None:
    for oa, ob in zip(a[0], b[0]):
        assert torch.equal(oa, ob)
    for name in a[1]:
        assert (a[1][name] is None) == (b[1][name] is None), name
        if a[1][name] is not None:
            assert torch.equal(a[1][name], b[1][name]), name
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name


@pytest.mark.parametrize("neuron,dtype,precision", [("lif", torch.float64, "fp32"), ("plif", torch.float64, "fp32"),
                                                    ("lif", torch.float32, "fp32"), ("lif", torch.float32, "bf16")])
@pytest.mark.parametrize("mode", ["lean", "bits"])
def test_lean_and_bits_identical_to_default(neuron, dtype, precision, mode):
    base = _tiny(neuron, dtype)
    other = copy.deepcopy(base)
    if mode == "lean":
        other.set_grad_checkpointing(True)
    else:
        other.set_spike_saving(True)
    x = torch.randn(3, 3, 16, 16, dtype=dtype) * 2
    y = torch.tensor([1, 2, 3])
    _assert_identical(_train_twice(base, x, y, precision), _train_twice(other, x, y, precision))
    assert base.layers[0][0].rates_seen.all()  # the buffers really moved


def test_spike_bits_are_on_by_default_and_off_in_lean_mode():
    m = sr.create_model("spikingresformer_cifar", img_size=8, T=1).train()
    assert m.save_spikes_as_bits and not m.grad_checkpointing
    assert isinstance(m._saving(), bits.SpikeBits)
    with torch.no_grad():
        assert not isinstance(m._saving(), bits.SpikeBits)  # nothing is saved without autograd
    m.set_grad_checkpointing(True)
    assert not isinstance(m._saving(), bits.SpikeBits)  # recomputed blocks keep no spikes


def test_lean_matches_the_official_float64_fixture():
    fx = load_fixture("official_cifar_f64")
    model = sr.create_model(fx["model_name"], num_classes=fx["num_classes"], T=fx["T"], img_size=fx["img_size"])
    sr.load_checkpoint(model.double(), fx["checkpoint"])
    model.train().set_grad_checkpointing(True)
    logits = model(fx["train_input"].double())
    F.cross_entropy(logits, fx["train_target"]).backward()
    torch.testing.assert_close(logits, fx["train_logits"].double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.classifier.weight.grad, fx["classifier_weight_grad"].double(), rtol=1e-7, atol=1e-12)


def test_lean_keeps_less_than_default():
    """In lean mode autograd keeps no block activation (checkpointing keeps each block's input only)."""
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    kept = {}
    for lean in (False, True):
        model = _tiny().train()
        model.set_grad_checkpointing(lean)
        stored = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            stored.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), y)
        kept[lean] = sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in stored}.values())
        loss.backward()
    assert kept[True] < 0.2 * kept[False]


def test_lean_only_in_training_with_grad(monkeypatch):
    from spikingresformer.model import spikingresformer as module

    calls = []
    monkeypatch.setattr(module, "checkpoint", lambda fn, *a, **kw: calls.append(fn) or fn(*a))
    model = _tiny()
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.train()(x)
    model.eval()(x)
    assert calls == []
    model.train()(x)
    assert len(calls) == sum(len(stage) for stage in model.layers)  # every block, once


def test_lean_under_compile_fullgraph():
    torch._dynamo.reset()
    eager = _tiny()
    lean = copy.deepcopy(eager)
    lean.set_grad_checkpointing(True)
    compiled = torch.compile(lean, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    for model in (eager, compiled):
        model.train()
        F.cross_entropy(model(x), y).backward()
    for (name, p), (_, q) in zip(eager.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), (_, b) in zip(eager.named_buffers(), lean.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    torch._dynamo.reset()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [0, 1, 8, 13, 4096 * 8 * 2 + 5])
def test_pack_bits_roundtrip_and_c_equals_torch(dtype, n):
    s = (torch.rand(n) > 0.6).to(dtype)
    packed = bits.pack_bits(s)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(bits.unpack_bits(packed, n, dtype), s)
    with fused.use_impl("torch"):  # the PyTorch fallback (what other devices run) gives the same bytes
        assert torch.equal(bits.pack_bits(s), packed)
        assert torch.equal(bits.unpack_bits(packed, n, dtype), s)


def test_bit_operators_check_inputs_and_trace():
    with pytest.raises(ValueError, match="1-d"):
        bits.pack_bits(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least 2 bytes"):
        bits.unpack_bits(torch.zeros(1, dtype=torch.uint8), 9, torch.float32)
    torch.library.opcheck(torch.ops.spikingresformer.pack_bits, ((torch.rand(21) > 0.5).float(),))
    torch.library.opcheck(torch.ops.spikingresformer.unpack_bits, (torch.tensor([5, 255], dtype=torch.uint8), 11,
                                                                   torch.float32))


def test_spike_bits_pack_only_marked_spikes():
    s = (torch.rand(4, 6) > 0.5).float().requires_grad_()
    w = torch.randn(6, 3, requires_grad=True)
    other = torch.rand(6, 3, requires_grad=True)
    with bits.SpikeBits() as ctx:
        bits.mark_spikes(s)
        out = (s.t()[:, 1:] @ torch.ones(3, 3)).sum() + (s @ w).sum() + (torch.ones(4, 6) @ other).sum()
        kept = [k for k in ctx._packed.values()]
    assert len(kept) == 1 and kept[0][0].dtype == torch.uint8  # s packed once, for both of its views
    out.backward()
    torch.testing.assert_close(w.grad, s.detach().t() @ torch.ones(4, 3))


def test_kernel_source_ships_and_keys_the_cache():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    assert fused.C_SOURCE_PATH.is_file() and fused.C_SOURCE_PATH.suffix == ".c"
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "neurons/*.c" in data["spikingresformer"]
    src = fused.C_SOURCE_PATH.read_text()
    assert "DEFINE_NEURON" in src  # macros, not a Python template


def test_layering_model_imports_neither_data_nor_training():
    code = ("import sys, spikingresformer.model, spikingresformer.energy.report, spikingresformer.energy.memory; "
            "print(sorted(m for m in sys.modules if m.startswith(('spikingresformer.data', 'spikingresformer.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_torch_floor_apis():
    """The APIs that set the declared floor (torch>=2.4): custom operators with fake implementations
    (torch.library.custom_op / register_fake), their opcheck, saved-tensor hooks."""
    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.4" in deps  # custom_op and register_fake arrived in 2.4: a lower floor would break import
    assert hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")
    assert hasattr(torch.autograd.graph, "saved_tensors_hooks")
    assert hasattr(torch.library, "opcheck")


_TRITON_LEAN = """
import copy, torch, torch.nn.functional as F, spikingresformer as sr
torch.manual_seed(0)
base = sr.SpikingResformer(planes=(8, 16, 32), num_heads=(1, 2, 4), prologue="cifar", img_size=8, num_classes=3,
                           group_size=8, T=2, depths=(1, 1, 1), neuron_backend="triton").double().train()
x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 2, torch.tensor([0, 2])
res = {}
for mode in ("default", "lean", "bits"):
    m = copy.deepcopy(base)
    m.set_grad_checkpointing(mode == "lean")
    m.set_spike_saving(mode == "bits")
    out = m(x)
    F.cross_entropy(out, y).backward()
    res[mode] = [out.detach()] + [p.grad for p in m.parameters()] + list(m.buffers())
assert all(torch.equal(a, b) for mode in ("lean", "bits") for a, b in zip(res["default"], res[mode]))
print("TRITON-LEAN-OK")
"""


def test_lean_and_bits_with_triton_neurons_under_interpreter():
    """The CUDA path of the lean mode (Triton neurons, PyTorch bit packing) on CPU, via Triton's interpreter."""
    pytest.importorskip("triton")
    import os

    env = dict(os.environ, TRITON_INTERPRET="1", SPIKINGRESFORMER_FUSED_IMPL="torch")  # bits packed as on CUDA
    proc = subprocess.run([sys.executable, "-c", _TRITON_LEAN], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "TRITON-LEAN-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
