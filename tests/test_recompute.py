"""BatchNorm outputs and membranes recomputed in backward: identical results, less kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from spikingresformer.model import recompute
from spikingresformer.model.spikingresformer import DSSA, GWFFN


def _model(neuron: str = "lif", **kwargs) -> sr.SpikingResformer:
    torch.manual_seed(0)
    return sr.SpikingResformer(planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=16,
                               num_classes=10, group_size=16, T=2, neuron=neuron, neuron_backend="fused", **kwargs)


def _saved_bytes_and_step(m, x, y, precision: str, steps: int = 2):
    """Run ``steps`` training steps; return (bytes saved for backward in the last one, outputs, grads)."""
    m.train()
    outs, grads, sizes = [], None, []
    for _ in range(steps):
        sizes.clear()

        def keep(t):
            sizes.append(t.untyped_storage().nbytes() if t.numel() else 0)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = m(x)
                loss = F.cross_entropy(out, y)
        m.zero_grad(set_to_none=True)
        loss.backward()
        outs.append(out.detach())
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return sum(sizes), outs, grads


@pytest.mark.parametrize("neuron,precision", [("lif", "fp32"), ("plif", "fp32"), ("if", "fp32"),
                                              ("lif", "bf16"), ("plif", "bf16")])
def test_model_identical_with_and_without_recompute(neuron, precision):
    plain = _model(neuron, recompute_in_backward=False)
    lean = copy.deepcopy(plain)
    lean.set_backward_recompute(True)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    saved_plain, out_plain, g_plain = _saved_bytes_and_step(plain, x, y, precision)
    saved_lean, out_lean, g_lean = _saved_bytes_and_step(lean, x, y, precision)
    for a, b in zip(out_lean, out_plain):
        assert torch.equal(a, b)
    assert g_lean.keys() == g_plain.keys() and len(g_plain) > 0
    for name in g_plain:
        assert torch.equal(g_lean[name], g_plain[name]), name
    for (name, a), (_, b) in zip(lean.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name  # running statistics, batch counters, firing rates
    assert saved_lean < 0.85 * saved_plain, (saved_lean, saved_plain)


def _gwffn_grads(block, x):
    x = x.detach().clone().requires_grad_()
    out = block(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(g)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gwffn_block_identical_per_layer(neuron, layout):
    torch.manual_seed(0)
    plain = GWFFN(16, ratio=4, group_size=16, neuron=neuron, backend="fused").train()
    plain.recompute_in_backward = False
    lean = copy.deepcopy(plain)
    lean.recompute_in_backward = True
    x = torch.randn(2, 3, 16, 6, 5) * 2
    if layout == "channels_last":
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert lean._recompute_ok(x.requires_grad_())
    ref = _gwffn_grads(plain, x)
    got = _gwffn_grads(lean, x)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert got[1].stride() == ref[1].stride()
    for n in ref[2]:
        assert torch.equal(got[2][n], ref[2][n]), n
    for (n, a), (_, b) in zip(lean.named_buffers(), plain.named_buffers()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("layout,bits", [("contiguous", False), ("channels_last", False), ("contiguous", True)])
def test_dssa_block_identical_per_layer(neuron, layout, bits):
    torch.manual_seed(0)
    plain = DSSA(16, num_heads=2, patch_size=2, neuron=neuron, backend="fused").train()
    plain.recompute_in_backward = False
    with torch.no_grad():  # rates already running, so both the first-batch and the moving-average rules run
        plain.firing_rate_x.fill_(0.2)
        plain.rates_seen[0] = True
    lean = copy.deepcopy(plain)
    lean.recompute_in_backward = True
    for m in (plain, lean):
        m.matmul1.save_spikes_as_bits = m.matmul2.save_spikes_as_bits = bits
    x = torch.randn(2, 3, 16, 4, 6) * 2 + 0.5
    if layout == "channels_last":
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert lean._recompute_ok(x.requires_grad_())
    ref = _gwffn_grads(plain, x)
    got = _gwffn_grads(lean, x)
    assert got[0].stride() == ref[0].stride()
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    for n in ref[2]:
        assert torch.equal(got[2][n], ref[2][n]), n
    for (n, a), (_, b) in zip(lean.named_buffers(), plain.named_buffers()):
        assert torch.equal(a, b), n


def test_recompute_stands_aside_where_modules_must_be_called():
    block = GWFFN(16, ratio=4, group_size=16, backend="fused").train()
    x = torch.randn(2, 2, 16, 4, 4, requires_grad=True)
    assert block._recompute_ok(x)
    with torch.no_grad():
        assert not block._recompute_ok(x)  # no backward, nothing to save
    block.eval()
    assert not block._recompute_ok(x)
    block.train()
    calls = []
    handle = block.conv[0][1].register_forward_hook(lambda *a: calls.append(1))
    assert not block._recompute_ok(x)  # hooks (energy counting) must see the module call
    block(x)
    assert calls == [1]
    handle.remove()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(block))
    assert not synced._recompute_ok(x)  # statistics across processes: the module path
    reference = GWFFN(16, ratio=4, group_size=16, backend="reference").train()
    assert not reference._recompute_ok(x)  # no custom operators to call
    block.recompute_in_backward = False
    assert not block._recompute_ok(x)


def test_recompute_path_is_taken_in_training(monkeypatch):
    calls = []

    def spy(name):
        real = getattr(recompute, name)

        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("gwffn_middle", "dssa_middle"):
        monkeypatch.setattr(f"spikingresformer.model.spikingresformer.{name}", spy(name))
    m = _model()
    m.train()
    F.cross_entropy(m(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    assert calls.count("gwffn_middle") == sum(isinstance(b, GWFFN) for b in m.modules())
    assert calls.count("dssa_middle") == sum(isinstance(b, DSSA) for b in m.modules())
    calls.clear()
    m.eval()
    with torch.no_grad():
        m(torch.randn(2, 3, 16, 16))
    assert calls == []


def test_recompute_with_grad_checkpointing_and_bits():
    plain = _model(recompute_in_backward=False)
    lean = copy.deepcopy(plain)
    lean.set_backward_recompute(True)
    lean.set_grad_checkpointing(True)
    lean.set_spike_saving(True)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([4, 5])
    _, out_plain, g_plain = _saved_bytes_and_step(plain, x, y, "fp32")
    _, out_lean, g_lean = _saved_bytes_and_step(lean, x, y, "fp32")
    assert torch.equal(out_lean[-1], out_plain[-1])
    for name in g_plain:
        torch.testing.assert_close(g_lean[name], g_plain[name], rtol=1e-6, atol=1e-7, msg=name)
    for (name, a), (_, b) in zip(lean.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
