"""benchmarks/step.py and benchmarks/official_model.py: saved-for-backward counting, rounds, ratios,
argument errors, and the official-model builder's neuron-backend substitution (on a stand-in checkout)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> types.ModuleType:
    """Import a benchmark script by path (the benchmarks folder is not a package)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(BENCH / f"{name}.py"):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


official_model = _load("official_model")
step = _load("step")


class _SaveUint8(torch.autograd.Function):
    """Identity whose backward needs a uint8 tensor (stands in for bit-packed spikes)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward((x > 0).to(torch.uint8))
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (m,) = ctx.saved_tensors
        return g * m


def test_saved_for_backward_counts_each_kind_once():
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(32, 16))
    spikes = (torch.randn(64, 32) > 0).float()
    idx = torch.arange(64)

    def run():
        a = spikes @ w            # saves spikes (w needs grad) — and not w, spikes need none
        b = (spikes * x).sum()    # saves spikes again (same storage: counted once) and x (real)
        c = torch.sigmoid(x * 3)  # saves its real output
        d = _SaveUint8.apply(x)   # saves a uint8 tensor
        e = (x.T @ torch.full((64, 16), 2.0)) * w  # saves the 2.0s, w (a parameter), the product
        f = x[idx]                # saves the int64 index
        return a.sum() + b + c.sum() + d.sum() + e.sum() + f.sum()

    out = step.saved_for_backward(run, [w])
    mb, n = out["mb"], out["tensors"]
    assert n["spike"] == 1 and mb["spike"] * 2**20 == spikes.numel() * 4
    assert n["bits"] == 1 and mb["bits"] * 2**20 == 64 * 32
    assert n["params"] == 1 and mb["params"] * 2**20 == w.numel() * 4
    assert n["other"] == 1 and mb["other"] * 2**20 == 64 * 8
    assert n["real"] == 3 and mb["real"] * 2**20 == (64 * 32 + 64 * 16 + 32 * 16) * 4
    assert abs(mb["total"] - sum(mb[k] for k in step.SAVED_KINDS)) < 1e-12


def test_classify_saved_kinds():
    assert step.classify_saved(torch.tensor([0.0, 1.0, 1.0])) == "spike"
    assert step.classify_saved(torch.tensor([0.0, 0.5])) == "real"
    assert step.classify_saved(torch.tensor([0, 1], dtype=torch.uint8)) == "bits"
    assert step.classify_saved(torch.tensor([True, False])) == "other"
    assert step.classify_saved(torch.tensor([0.0, 1.0], dtype=torch.bfloat16)) == "spike"


def test_official_configs_and_alternating_order():
    off = step.official_configs("bf16", "auto")
    assert [c["precision"] for c in off] == ["fp32", "bf16"] and all(c["impl"] == "official" for c in off)
    assert [c["precision"] for c in step.official_configs("fp32,fp32", "torch")] == ["fp32"]
    with pytest.raises(SystemExit, match="unknown precision 'int8'"):
        step.official_configs("int8", "auto")
    ours = [step._parse_config("fused:fp32", "bf16", "glibc"), step._parse_config("fused", "bf16", "glibc")]
    order = step.run_order(off[:1], ours, 2)
    assert [c["impl"] for c in order] == ["official", "ours", "ours", "official", "ours", "ours"]
    assert ours[1]["precision"] == "bf16"
    with pytest.raises(SystemExit, match="at least 1"):
        step.run_order(off, ours, 0)


def test_merge_rounds_pools_steps_and_ratios():
    base = dict(impl="official", backend="auto", precision="fp32", malloc="system", mode="eager", batch_size=4)
    runs = [dict(base, train_step_times_s=[3.0, 5.0], infer_times_s=[1.0], train_peak_rss_mb=1000.0,
                 rss_after_build_mb=500.0),
            dict(base, train_step_times_s=[4.0], infer_times_s=[2.0], train_peak_rss_mb=1200.0,
                 rss_after_build_mb=700.0),
            dict(base, error="killed")]
    m = step.merge_rounds(runs)
    assert m["train_step_s"] == 4.0 and m["train_step_min_s"] == 3.0
    assert m["train_step_round_medians_s"] == [4.0, 4.0] and m["infer_s"] == 1.5
    assert m["train_peak_rss_mb"] == 1100.0 and m["failed_rounds"] == ["killed"] and m["rounds"] == 3
    assert m["train_img_per_s"] == 1.0
    ours = dict(base, impl="ours", train_step_s=2.0, infer_s=0.5, train_peak_rss_mb=550.0, rss_after_build_mb=400.0,
                saved={"mb": {"total": 10.0}})
    q = step.ratios(ours, dict(m, saved={"mb": {"total": 40.0}}))
    # growth: (550 - 400) over the official's (1100 - 600), the medians of its rounds
    assert q == {"train": 2.0, "infer": 3.0, "peak": 0.5, "saved": 0.25, "growth": 0.3}
    assert step.ratios(ours, dict(base, error="x"))["train"] is None
    assert step.merge_rounds([dict(base, error="boom")])["error"] == "boom"


def test_official_arguments_errors(tmp_path):
    with pytest.raises(SystemExit, match="--official needs --official-path DIR .* or --official-python PY"):
        step.main(["--official", str(tmp_path)])
    with pytest.raises(SystemExit, match="need --official DIR"):
        step.main(["--official-python", sys.executable])
    with pytest.raises(SystemExit, match="need --official DIR"):
        step.main(["--official-path", str(tmp_path)])
    with pytest.raises(SystemExit, match="lacks models/spikingresformer.py"):
        step.main(["--official", str(tmp_path), "--official-python", sys.executable])
    _fake_checkout(tmp_path)
    with pytest.raises(SystemExit, match="expected an executable Python"):
        step.main(["--official", str(tmp_path), "--official-python", str(tmp_path / "nope")])


def test_official_path_goes_first_on_the_official_side_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    assert "PYTHONPATH" not in step._official_env()
    assert step._official_env(str(tmp_path))["PYTHONPATH"] == str(tmp_path)
    assert step._ours_env("glibc")["PYTHONPATH"] == "/somewhere/else"


def test_choose_backend():
    assert official_model.choose_backend("auto", "cpu") == "torch"
    assert official_model.choose_backend("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="cupy backend needs a CUDA device"):
        official_model.choose_backend("cupy", "cpu")
    with pytest.raises(ValueError, match="auto, torch or cupy, got 'jax'"):
        official_model.choose_backend("jax", "cpu")


def _fake_checkout(root: Path) -> Path:
    """A stand-in for the official repository's layout: neurons that ask for the cupy backend."""
    (root / "models" / "submodules").mkdir(parents=True, exist_ok=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "submodules" / "__init__.py").write_text("")
    (root / "models" / "submodules" / "layers.py").write_text(textwrap.dedent("""
        from spikingjelly.activation_based import neuron, surrogate

        class LIF(neuron.LIFNode):
            def __init__(self):
                super().__init__(tau=2., decay_input=True, v_threshold=1., v_reset=0.,
                                 surrogate_function=surrogate.ATan(), detach_reset=True,
                                 step_mode='m', backend='cupy', store_v_seq=False)
        """))
    (root / "models" / "spikingresformer.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        from .submodules.layers import LIF

        class Tiny(nn.Module):
            def __init__(self, T, num_classes, img_size):
                super().__init__()
                self.T = T
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.lif = LIF()
                self.fc = nn.Linear(4 * img_size * img_size, num_classes)

            def forward(self, x):
                x = self.conv(x).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
                return self.fc(self.lif(x).flatten(2))

        def spikingresformer_cifar(T=4, num_classes=1000, img_size=224, **kwargs):
            return Tiny(T, num_classes, img_size)
        """))
    return root


def _stub_spikingjelly(monkeypatch) -> types.ModuleType:
    """A minimal stand-in for spikingjelly 0.0.0.0.14's neuron API: asking for cupy without CuPy fails."""
    sj = types.ModuleType("spikingjelly")
    ab = types.ModuleType("spikingjelly.activation_based")
    neuron = types.ModuleType("spikingjelly.activation_based.neuron")
    surrogate = types.ModuleType("spikingjelly.activation_based.surrogate")
    functional = types.ModuleType("spikingjelly.activation_based.functional")

    class BaseNode(torch.nn.Module):
        def __init__(self, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False,
                     step_mode="s", backend="torch", store_v_seq=False):
            super().__init__()
            if backend == "cupy":
                raise ImportError("CuPy is not installed!")
            self.backend, self.v, self.v_threshold = backend, 0.0, v_threshold

        def forward(self, x):
            self.v = self.v + x
            return (self.v >= self.v_threshold).to(x.dtype)

        def reset(self):
            self.v = 0.0

    class LIFNode(BaseNode):
        def __init__(self, tau=2.0, decay_input=True, **kwargs):
            super().__init__(**kwargs)

    def reset_net(net):
        for m in net.modules():
            if hasattr(m, "reset"):
                m.reset()

    neuron.BaseNode, neuron.LIFNode = BaseNode, LIFNode
    neuron.IFNode = type("IFNode", (BaseNode,), {})
    neuron.ParametricLIFNode = type("ParametricLIFNode", (BaseNode,), {})
    surrogate.ATan = lambda: None
    functional.reset_net = reset_net
    sj.activation_based, ab.neuron, ab.surrogate, ab.functional = ab, neuron, surrogate, functional
    for name, mod in (("spikingjelly", sj), ("spikingjelly.activation_based", ab),
                      ("spikingjelly.activation_based.neuron", neuron),
                      ("spikingjelly.activation_based.surrogate", surrogate),
                      ("spikingjelly.activation_based.functional", functional)):
        monkeypatch.setitem(sys.modules, name, mod)
    return neuron


def test_build_official_substitutes_torch_backend_and_resets(tmp_path, monkeypatch):
    neuron = _stub_spikingjelly(monkeypatch)
    before = neuron.LIFNode.__init__
    root = _fake_checkout(tmp_path)
    with pytest.raises(ImportError, match="CuPy"):  # what the official code does on a CPU without the patch
        official_model.import_official(str(root)).spikingresformer_cifar(T=2, num_classes=5, img_size=4)
    with pytest.raises(ValueError, match="has no model 'spikingresformer_zz'"):
        official_model.build_official(str(root), "spikingresformer_zz", 2, 5, 4)
    om = official_model.build_official(str(root), "spikingresformer_cifar", 2, 5, 4)
    assert neuron.LIFNode.__init__ is before  # the patch is undone after the build
    assert om.backend == "torch" and om.in_chans == 3
    assert om.info["neuron_backend_asked"] == ["cupy"] and om.info["neuron_backend_used"] == "torch"
    assert om.model.lif.backend == "torch" and len(om.info["official_code_sha256"]) == 12
    out = om.logits(torch.randn(3, 3, 4, 4) * 5)
    assert out.shape == (3, 5) and isinstance(om.model.lif.v, torch.Tensor)
    om.reset()
    assert om.model.lif.v == 0.0
    with pytest.raises(ValueError, match="lacks"):
        official_model.build_official(str(tmp_path / "missing"), "spikingresformer_cifar", 2, 5, 4)


def test_worker_ours_reports_times_and_saved_spikes():
    args = step.build_parser().parse_args(
        ["--batch-size", "1", "--T", "1", "--img-size", "16", "--steps", "1", "--warmup", "0", "--no-infer"])
    plain = step.run_worker(args, step._parse_config("fused:fp32:glibc:eager:plain", "bf16", "glibc"))
    assert plain["train_step_s"] > 0 and plain["train_peak_rss_mb"] > 0 and plain["img"] == 16
    assert not plain["spike_bits"] and not plain["lean"] and plain["malloc_status"] == "glibc"
    mb = plain["saved"]["mb"]
    assert mb["spike"] > 0 and mb["bits"] == 0 and mb["real"] > 0 and mb["params"] > 0
    assert mb["total"] == pytest.approx(sum(mb[k] for k in step.SAVED_KINDS))
    bits = step.run_worker(args, step._parse_config("fused:fp32", "bf16", "glibc"))  # the model as built: bits
    assert bits["spike_bits"] and bits["saved"]["mb"]["spike"] < 0.01 * mb["spike"] and bits["saved"]["mb"]["bits"] > 0
    assert bits["saved"]["mb"]["total"] < mb["total"]
    lean = step.run_worker(args, step._parse_config("fused:fp32::eager:lean", "bf16", "glibc"))
    assert lean["lean"] and lean["train_step_s"] > 0 and "lean mode" in lean["saved_error"]


def test_config_saving_and_malloc_fields():
    cfg = step._parse_config("fused:bf16:tcmalloc:eager:lean", "fp32", "glibc")
    assert (cfg["precision"], cfg["malloc"], cfg["mode"], cfg["saving"]) == ("bf16", "tcmalloc", "eager", "lean")
    assert step._parse_config("fused", "fp32", "glibc")["saving"] == "default"
    with pytest.raises(SystemExit, match="unknown saving"):
        step._parse_config("fused:bf16:glibc:eager:tiny", "fp32", "glibc")
    with pytest.raises(SystemExit, match="unknown malloc"):
        step._parse_config("fused:bf16:jemalloc", "fp32", "glibc")
    assert step._ours_env("tcmalloc")["LD_PRELOAD"].endswith(step.TCMALLOC)
    assert step.TCMALLOC not in step._ours_env("glibc").get("LD_PRELOAD", "")


@pytest.mark.skipif(not (os.environ.get("SPIKINGRESFORMER_OFFICIAL_DIR") and os.environ.get("SPIKINGRESFORMER_OFFICIAL_PYTHON")),
                    reason="set SPIKINGRESFORMER_OFFICIAL_DIR and SPIKINGRESFORMER_OFFICIAL_PYTHON to run against the official code")
def test_side_by_side_against_official_checkout(tmp_path, capsys):
    out = tmp_path / "r.json"
    step.main(["--batch-size", "1", "--T", "1", "--img-size", "16", "--steps", "1", "--warmup", "0",
               "--infer-steps", "1", "--rounds", "1", "--configs", "fused:fp32",
               "--official", os.environ["SPIKINGRESFORMER_OFFICIAL_DIR"],
               "--official-python", os.environ["SPIKINGRESFORMER_OFFICIAL_PYTHON"], "--json", str(out)])
    text = capsys.readouterr().out
    assert "official/torch" in text and "against official fp32" in text and "ERROR" not in text
    import json

    res = json.loads(out.read_text())["results"]
    assert [r["impl"] for r in res] == ["official", "ours"] and all("saved" in r for r in res)


def test_saved_for_backward_without_our_package(monkeypatch):
    """The official code's environment has no spikingresformer: counting must still work there."""
    monkeypatch.setitem(sys.modules, "spikingresformer.neurons.bits", None)  # import raises ImportError
    x = torch.randn(4, requires_grad=True)
    assert step.saved_for_backward(lambda: (x * x).sum())["tensors"]["real"] == 1
