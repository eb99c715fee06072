"""Spikes kept as bits for backward: exact round trip, identical gradients per layer and on the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from spikingresformer.model import spike_saving
from spikingresformer.model.spike_saving import PackedSpikes, pack_spikes, spike_conv2d, spike_matmul, unpack_spikes
from spikingresformer.neurons import fused

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


def _both_paths(s):
    """``(bits, unpacked)`` from the C kernel and from the PyTorch ops."""
    out = []
    for impl in ("c", "torch"):
        with fused.use_impl(impl):
            packed = pack_spikes(s)
            out.append((packed.bits, packed.unpack()))
    return out


needs_c = pytest.mark.skipif(not fused.c_kernel_available(), reason="the C kernel cannot be built here")


@needs_c
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1023, 4097, 100003])
def test_c_pack_matches_torch_pack(n, dtype):
    for seed, p in enumerate((0.0, 0.05, 0.5, 0.97, 1.0)):
        s = _spikes((n,), dtype, seed=seed, p=p)
        (c_bits, c_back), (t_bits, t_back) = _both_paths(s)
        assert c_bits.dtype == torch.uint8 and c_bits.shape == (-(-n // 8),)
        assert torch.equal(c_bits, t_bits), p
        assert torch.equal(c_back, t_back) and torch.equal(c_back, s)
        assert c_back.dtype == dtype and c_back.stride() == s.stride()


@needs_c
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_c_pack_is_nonzero_test_and_lsb_first(dtype):
    s = torch.tensor([1.0, -0.0, 0.0, float("nan"), -1.0, float("inf"), 0.5, 0.0, -0.0, 1.0], dtype=dtype)
    (c_bits, c_back), (t_bits, _) = _both_paths(s)
    assert c_bits.tolist() == t_bits.tolist() == [0b01111001, 0b10]  # -0.0 is 0, nan / -1 / inf / 0.5 are 1
    assert c_back.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert not torch.signbit(c_back).any()  # +0.0, never -0.0


@needs_c
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "channels_last_5d", "tbchw_permuted"])
def test_c_pack_layouts_match_torch(layout, dtype):
    if layout == "channels_last":
        s = _spikes((3, 5, 7, 9), dtype).contiguous(memory_format=torch.channels_last)
    elif layout == "channels_last_5d":
        s = _spikes((2, 5, 3, 7, 9), dtype).contiguous(memory_format=torch.channels_last_3d)
    else:  # [T, B, C, H, W] stored as [T, B, H, W, C]
        s = _spikes((2, 3, 7, 9, 5), dtype).permute(0, 1, 4, 2, 3)
    (c_bits, c_back), (t_bits, t_back) = _both_paths(s)
    assert torch.equal(c_bits, t_bits)
    assert torch.equal(c_back, s) and torch.equal(t_back, s)
    assert c_back.stride() == s.stride() == t_back.stride()
    flat = s.permute(spike_saving._memory_order(s)).reshape(-1)  # the bits follow memory order
    assert torch.equal(c_bits, spike_saving._torch_pack_flat(flat))


def test_torch_fallback_is_used(monkeypatch):
    calls = []
    for name in ("_torch_pack_flat", "_torch_unpack_flat"):
        real = getattr(spike_saving, name)
        monkeypatch.setattr(spike_saving, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    s = _spikes((2, 3, 5, 7), torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with fused.use_impl("torch"):
        assert fused.bits_lib() is None
        back = pack_spikes(s).unpack()
    assert calls == ["_torch_pack_flat", "_torch_unpack_flat"]
    assert torch.equal(back, s) and back.stride() == s.stride()
    calls.clear()
    monkeypatch.setattr(fused, "_lib", None)  # no compiler: the operators fall back on their own
    monkeypatch.setattr(fused, "_lib_tried", True)
    back = pack_spikes(s).unpack()
    assert calls == ["_torch_pack_flat", "_torch_unpack_flat"] and torch.equal(back, s)
    calls.clear()
    gaps = _spikes((4, 6, 5))[:, ::2]  # not dense: PyTorch ops, no operator
    assert torch.equal(pack_spikes(gaps).unpack(), gaps) and calls[0] == "_torch_pack_flat"
    bits = pack_spikes(s).bits
    calls.clear()
    back = unpack_spikes(PackedSpikes(bits, s.shape, [0, 2, 3, 1], torch.int32))  # a dtype the kernel lacks
    assert calls == ["_torch_unpack_flat"] and back.dtype == torch.int32 and torch.equal(back, s.int())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bit_operators_opcheck(dtype):
    s = _spikes((1001,), dtype)
    bits = torch.ops.spikingresformer.pack_spikes_bits(s)
    torch.library.opcheck(torch.ops.spikingresformer.pack_spikes_bits.default, (s,))
    torch.library.opcheck(torch.ops.spikingresformer.unpack_spikes_bits.default, (bits, 1001, dtype))
    assert torch.equal(torch.ops.spikingresformer.unpack_spikes_bits(bits, 1001, dtype), s)
    with pytest.raises(ValueError):
        torch.ops.spikingresformer.unpack_spikes_bits(bits, 1001 + 8, dtype)


def test_pack_unpack_compiles_in_one_graph():
    torch._dynamo.reset()

    def round_trip(s):
        packed = pack_spikes(s)
        return PackedSpikes(packed.bits, *packed.layout()).unpack() * 2, packed.bits

    compiled = torch.compile(round_trip, fullgraph=True, backend="aot_eager")
    for hw in ((5, 7), (6, 7)):  # the second shape recompiles with symbolic sizes
        s = _spikes((2, 3, *hw)).contiguous(memory_format=torch.channels_last)
        out, bits = compiled(s)
        assert torch.equal(out, s * 2) and out.stride() == s.stride()
        assert torch.equal(bits, pack_spikes(s).bits)


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
    assert all(m.save_spikes_as_bits for m in a.modules() if hasattr(m, "save_spikes_as_bits"))  # on by default
    b = copy.deepcopy(a)
    b.set_spike_saving(False)
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
