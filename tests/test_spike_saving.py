"""Spikes kept as bits for backward: exact round trip, identical gradients per layer and on the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from spikingresformer.model.spike_saving import pack_spikes, spike_conv2d, spike_matmul

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _spikes(shape, dtype=torch.float32, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 5, 7), (4, 2, 3, 5, 5), (2, 1, 1, 9, 17)])
def test_pack_unpack_is_exact(shape, dtype):
    s = _spikes(shape, dtype)
    packed = pack_spikes(s)
    assert packed.bits.dtype == torch.uint8 and packed.nbytes == -(-s.numel() // 8)
    back = packed.unpack()
    assert back.dtype == dtype and back.shape == s.shape and back.stride() == s.stride()
    assert torch.equal(back, s)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "channels_last_5d"])
def test_pack_keeps_the_memory_order(layout):
    s = _spikes((4, 3, 5, 6))
    if layout == "channels_last":
        s = s.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        s = s.transpose(-1, -2)
    else:
        s = _spikes((2, 3, 4, 5, 3)).permute(0, 1, 4, 2, 3)
    back = pack_spikes(s).unpack()
    assert back.stride() == s.stride() and torch.equal(back, s)


def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return out.detach(), torch.autograd.grad(out, tensors, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups,stride,k", [(1, 1, 1), (1, 2, 3), (4, 1, 3), (1, 4, 4)])
def test_spike_conv_gradients_identical(dtype, groups, stride, k):
    s = _spikes((3, 8, 9, 9), dtype)
    w = torch.randn(8, 8 // groups, k, k, dtype=dtype)
    pad = (k // 2, k // 2) if k == 3 else (0, 0)
    ref = _grads(lambda a, b: F.conv2d(a, b, None, stride, pad, 1, groups), s, w)
    got = _grads(lambda a, b: spike_conv2d(a, b, (stride, stride), pad, (1, 1), groups), s, w)
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spike_matmul_gradients_identical(dtype):
    left = torch.randn(2, 3, 2, 7, 5, dtype=dtype)
    right = _spikes((2, 3, 2, 5, 11), dtype)
    ref = _grads(torch.matmul, left, right)
    got = _grads(spike_matmul, left, right)
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("neuron,precision", [("lif", "fp32"), ("plif", "fp32"), ("lif", "bf16")])
def test_model_gradients_identical_with_and_without_bits(neuron, precision):
    torch.manual_seed(0)
    a = sr.SpikingResformer(planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=16,
                            num_classes=10, group_size=16, T=2, neuron=neuron)
    assert not any(getattr(m, "save_spikes_as_bits", False) for m in a.modules())  # off by default
    b = copy.deepcopy(a)
    a.set_spike_saving(True)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    saved = []
    for m in (a, b):
        m.train()
        sizes = []

        def keep(t, sizes=sizes):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(m(x), y)
        loss.backward()
        saved.append(sum(sizes))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert saved[0] < saved[1]  # and less is kept for backward
