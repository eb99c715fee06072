"""Neuron backends against the reference loop, the backend choice, no allocator tuning, checkpointing.

Tolerances: spikes must be bit-identical in every dtype. Input gradients must agree within 1e-6
(absolute and relative) in float32 and float64. PLIF's ``w`` gradient is a sum over every element;
the fused kernels accumulate it in float64 while the reference accumulates in the parameter's dtype,
so in float32 it is compared with a relative tolerance of 1e-5 (in float64, with a float64 ``w``,
1e-9). For bfloat16/float16 the reference itself rounds every intermediate of the backward pass to
16 bits while the kernels round once, so gradients are compared with the reference run in the same
dtype to 5 % of the largest gradient (bfloat16 keeps 8 significant bits).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from spikingresformer.neurons import LIF, PLIF, IF, fused, multistep_neuron, resolve_backend
from spikingresformer.neurons.reference import reference_multistep

KINDS = ("lif", "plif", "if")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SHAPES = ((4, 2, 3, 5, 5), (1, 7), (6, 3 * 1025 + 1), (3, 2, 8, 4, 4))


def _decay(kind: str, dtype: torch.dtype, value: float = 0.3):
    if kind == "plif":
        wdtype = torch.float64 if dtype == torch.float64 else torch.float32
        return torch.tensor(value, dtype=wdtype, requires_grad=True)
    return 2.0 if kind == "lif" else None


def _args(kind, decay):
    """``(tau, w)`` for a backend call from the test's ``decay`` (tau for LIF, the tensor w for PLIF)."""
    return (1.0, decay) if kind == "plif" else ((decay, None) if kind == "lif" else (1.0, None))


def _run(fn, x, kind, decay, grad, vth=1.0, vr=0.0, alpha=2.0):
    x = x.detach().clone().requires_grad_()
    s = fn(x, kind, *_args(kind, decay), vth, vr, alpha)
    inputs = [x] + ([decay] if kind == "plif" else [])
    grads = torch.autograd.grad(s, inputs, grad)
    return s.detach(), grads


def _compare(fn, shape, kind, dtype, vth=1.0, vr=0.0, alpha=2.0, seed=0, layout=None):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5).to(dtype)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        t = x.shape[0]
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (t, -1))
    elif layout == "strided":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    decay = _decay(kind, dtype)
    s_ref, g_ref = _run(reference_multistep, x, kind, decay, grad, vth, vr, alpha)
    s_new, g_new = _run(fn, x, kind, decay, grad, vth, vr, alpha)
    assert s_new.dtype == dtype and s_new.shape == x.shape
    assert torch.equal(s_new, s_ref), f"{kind} {dtype} {shape}: spikes differ"
    if x.numel() >= 100:  # the test exercises both branches
        assert 0.0 < s_ref.float().mean() < 1.0
    gx_ref, gx_new = g_ref[0], g_new[0]
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(gx_new, gx_ref, rtol=1e-6, atol=1e-6)
        if kind == "plif":
            torch.testing.assert_close(
                g_new[1], g_ref[1], rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=0.0
            )
    else:
        scale = gx_ref.float().abs().max().item()
        assert (gx_new.float() - gx_ref.float()).abs().max().item() <= 0.05 * scale
        if kind == "plif":
            assert abs(g_new[1].item() - g_ref[1].item()) <= 0.05 * abs(g_ref[1].item()) + 1e-3


def _fused_with(impl: str):
    def fn(*args):
        with fused.use_impl(impl):
            return fused.fused_multistep(*args)

    return fn


IMPLS = ["c", "torch"]


@pytest.fixture(scope="module", autouse=True)
def _c_kernel():
    if not fused.c_kernel_available():
        IMPLS.remove("c")
        warnings.warn("C kernel unavailable; only the PyTorch implementation of 'fused' is tested")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread (OpenMP barriers on a shared, busy 2-core machine cost seconds)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_fused_c_kernel_multithreaded():
    if "c" not in IMPLS:
        pytest.skip("C kernel unavailable")
    torch.set_num_threads(2)
    for kind in KINDS:
        _compare(_fused_with("c"), (4, 8, 1024 * 9 + 5), kind, torch.float32)


@pytest.mark.parametrize("impl", ["c", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_matches_reference(impl, kind, dtype):
    if impl not in IMPLS:
        pytest.skip("C kernel unavailable")
    for i, shape in enumerate(SHAPES):
        _compare(_fused_with(impl), shape, kind, dtype, seed=i)


@pytest.mark.parametrize("impl", ["c", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_other_constants_and_layouts(impl, kind):
    if impl not in IMPLS:
        pytest.skip("C kernel unavailable")
    fn = _fused_with(impl)
    _compare(fn, (5, 2, 6, 3, 3), kind, torch.float32, vth=0.7, vr=-0.3, alpha=4.0)
    _compare(fn, (4, 2, 6, 3, 5), kind, torch.float32, layout="channels_last")
    _compare(fn, (4, 2, 6, 3, 5), kind, torch.float32, layout="strided")


def test_fused_inference_path_and_empty():
    x = torch.randn(4, 3, 50) * 2
    with torch.no_grad():
        s = multistep_neuron(x, "lif", 2.0, backend="fused")
    assert torch.equal(s, reference_multistep(x, "lif", 2.0))
    w = torch.tensor(0.2)
    assert torch.equal(multistep_neuron(x, "plif", w=w, backend="fused"), reference_multistep(x, "plif", w=w))
    assert multistep_neuron(torch.empty(3, 0), "lif", 2.0, backend="fused").shape == (3, 0)


def test_fused_falls_back_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError):
        fused.build_c_kernel()
    monkeypatch.setattr(fused, "_lib", None)
    monkeypatch.setattr(fused, "_lib_tried", True)
    monkeypatch.setattr(fused, "_lib_error", "no compiler")
    monkeypatch.setattr(fused, "_warned", False)
    x = torch.randn(3, 40) * 1.5 + 0.5
    grad = torch.randn(3, 40)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        s, (gx,) = _run(fused.fused_multistep, x, "lif", 2.0, grad)
    s_ref, (gx_ref,) = _run(reference_multistep, x, "lif", 2.0, grad)
    assert torch.equal(s, s_ref) and 0 < s.mean() < 1
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("SPIKINGRESFORMER_NEURON_BACKEND", raising=False)
    assert resolve_backend(None, torch.device("cpu")) == "fused"
    monkeypatch.setenv("SPIKINGRESFORMER_NEURON_BACKEND", "reference")
    assert resolve_backend(None, torch.device("cpu")) == "reference"
    assert resolve_backend("fused", torch.device("cpu")) == "fused"
    x = torch.randn(4, 2, 8) * 2
    for cls, args in ((LIF, {}), (PLIF, {}), (IF, {})):
        a, b = cls(backend="fused", **args), cls(backend="reference", **args)
        assert torch.equal(a(x), b(x))


_TRITON_SCRIPT = textwrap.dedent(
    """
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    sys.path.insert(0, {tests!r})
    import torch
    import test_neuron_backends as t
    from spikingresformer.neurons import multistep_neuron

    def fn(x, kind, tau, w, vth, vr, alpha):
        return multistep_neuron(x, kind, tau, w, vth, vr, alpha, backend="triton")

    for kind in t.KINDS:
        for dtype in t.DTYPES:
            for i, shape in enumerate(((3, 2, 5, 7), (1, 9), (4, 1030))):
                t._compare(fn, shape, kind, dtype, seed=i)
        t._compare(fn, (4, 3, 50), kind, torch.float32, vth=0.7, vr=-0.3, alpha=4.0)
        t._compare(fn, (3, 2, 4, 3, 5), kind, torch.float32, layout="channels_last")
    with torch.no_grad():
        x = torch.randn(4, 3, 50) * 2
        assert torch.equal(fn(x, "lif", 2.0, None, 1.0, 0.0, 2.0), t.reference_multistep(x, "lif", 2.0))
    # the Triton kernels as custom operators
    from spikingresformer.neurons.triton_backend import TRITON_OPS
    t._opcheck(TRITON_OPS)
    print("TRITON-OK")
    """
)


def test_triton_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = _TRITON_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "TRITON-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


_MALLOPT_SPY = textwrap.dedent(
    """
    import ctypes, sys
    calls = []
    real_cdll = ctypes.CDLL

    class Spy(real_cdll):
        def __getattr__(self, name):
            if name == "mallopt":
                calls.append(name)
            return super().__getattr__(name)

    ctypes.CDLL = Spy
    import torch
    import spikingresformer as sr
    from spikingresformer import cli
    model = sr.create_model("spikingresformer_cifar", planes=(16, 32, 64), num_heads=(1, 2, 4), group_size=16)
    model.eval()(torch.randn(1, 3, 32, 32))
    try:
        cli.main(["--help"])
    except SystemExit:
        pass
    print("MALLOPT-CALLS", len(calls))
    """
)


def test_neither_import_nor_command_tunes_the_allocator():
    out = subprocess.run([sys.executable, "-c", _MALLOPT_SPY], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MALLOPT-CALLS 0" in out.stdout


def _tiny_model(neuron: str):
    torch.manual_seed(0)
    return sr.SpikingResformer(
        planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=32, num_classes=10,
        group_size=16, T=2, neuron=neuron,
    )


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_grad_checkpointing_gives_same_gradients(neuron, monkeypatch):
    monkeypatch.delenv("SPIKINGRESFORMER_NEURON_BACKEND", raising=False)
    a = _tiny_model(neuron)
    b = copy.deepcopy(a)
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    for m in (a, b):
        m.train()
        F.cross_entropy(m(x), y).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-6, atol=1e-7, msg=name)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(bb, ba, rtol=0, atol=0, msg=name)


def _opcheck(ops) -> None:
    """``torch.library.opcheck`` on a backend's forward and backward operators, every kind and layout."""
    gen = torch.Generator().manual_seed(3)
    for kind in KINDS:
        for shape, layout in (((4, 2, 3, 5), None), ((3, 2, 4, 3, 3), "channels_last"), ((2, 0), None)):
            x = torch.randn(shape, generator=gen) * 1.5 + 0.5
            if layout == "channels_last":
                x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
            w = torch.tensor(0.3) if kind == "plif" else None
            tau = 2.0 if kind == "lif" else 1.0
            for store_h in (True, False):
                xg = x.clone().requires_grad_(store_h)
                wg = w.clone().requires_grad_(store_h) if w is not None else None
                torch.library.opcheck(ops.forward_op, (xg, wg, kind, tau, 1.0, 0.0, 2.0, store_h))
            _, h = ops.forward_op(x, w, kind, tau, 1.0, 0.0, 2.0, True)
            grad = torch.randn(shape, generator=gen)
            torch.library.opcheck(
                ops.backward_op, (h, x if kind == "plif" else None, grad, w, kind, tau, 1.0, 0.0, 2.0)
            )


@pytest.mark.parametrize("impl", ["c", "torch"])
def test_fused_operators_pass_opcheck(impl):
    if impl not in IMPLS:
        pytest.skip("C kernel unavailable")
    with fused.use_impl(impl):
        _opcheck(fused.FUSED_OPS)


def test_neuron_module_fixes_its_backend_when_built(monkeypatch):
    monkeypatch.setenv("SPIKINGRESFORMER_NEURON_BACKEND", "reference")
    m = LIF()
    monkeypatch.setenv("SPIKINGRESFORMER_NEURON_BACKEND", "no-such-backend")
    assert m.backend == "reference"
    m(torch.randn(2, 3))  # the environment is not read again on forward
