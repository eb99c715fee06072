"""Tiny end-to-end runs of the paths users take that no other test covers (seconds each).

Mixed precision (the recipes' default), mixup and cutmix, ``compile: true``, ``eval_interval``, and
timm's feature extraction with pruning. Each checks a value that a broken path would change, not
only that the run finishes.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import timm
import torch

import spikingresformer as sr
from spikingresformer.training import load_recipe, run_training
from test_training import TINY as TRAINING_TINY

TINY = dict(TRAINING_TINY, T=1, epochs=1, train_limit=64, eval_limit=32, seed=0)


def _run(tmp_path: Path, **kw) -> list[dict]:
    """Train a tiny recipe; return its metrics lines."""
    run_training(load_recipe(None, {**TINY, "output": str(tmp_path), **kw}))
    return [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def _state(path: Path) -> dict:
    return sr.read_state_dict(path)


def test_amp_bfloat16_trains_float32_weights(tmp_path):
    """``amp: true`` (the recipes' default) runs under bfloat16 autocast: other losses, float32 weights."""
    amp = _run(tmp_path / "amp", amp=True)
    plain = _run(tmp_path / "fp32", amp=False)
    assert math.isfinite(amp[0]["train_loss"]) and math.isfinite(amp[0]["eval_loss"])
    assert amp[0]["train_loss"] != plain[0]["train_loss"]  # autocast really changed the arithmetic
    assert abs(amp[0]["train_loss"] - plain[0]["train_loss"]) < 0.1 * plain[0]["train_loss"]
    state = _state(tmp_path / "amp" / "best.safetensors")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_float16_on_cpu_takes_the_gradient_scaler(tmp_path):
    """``amp_dtype: float16`` runs on the CPU with a GradScaler, whose state is checkpointed for resume."""
    from spikingresformer.training.run_state import load_training_checkpoint

    lines = _run(tmp_path, amp=True, amp_dtype="float16")
    assert math.isfinite(lines[0]["train_loss"]) and math.isfinite(lines[0]["eval_loss"])
    scaler = load_training_checkpoint(tmp_path / "last.pth")["scaler"]
    # the scale starts at 2**16 and halves on each step whose float16 gradients overflowed; a step
    # without overflow counts towards growth: either way the scaler saw the steps
    assert scaler is not None and scaler["scale"] in {2.0 ** k for k in range(8, 17)}
    assert scaler["scale"] < 2.0 ** 16 or scaler["_growth_tracker"] > 0
    state = _state(tmp_path / "best.safetensors")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_mixup_and_cutmix_change_the_targets(tmp_path):
    """Mixed targets change the training loss of the same model on the same batches (same seed)."""
    plain = _run(tmp_path / "plain")
    mixed = _run(tmp_path / "mixed", mixup=0.8, cutmix=1.0, mixup_prob=1.0)  # each batch one or the other
    assert math.isfinite(mixed[0]["train_loss"]) and mixed[0]["train_loss"] != plain[0]["train_loss"]
    assert mixed[0]["eval_loss"] != plain[0]["eval_loss"]  # the model learnt from other targets


def test_compile_true_trains_like_eager(tmp_path, monkeypatch):
    """``compile: true`` compiles the model as one graph, trains and evaluates like eager.

    The compiler backend is swapped for ``aot_eager`` (the same graph capture and autograd split as
    inductor, without generating C++: minutes less); ``test_compile.py`` covers inductor itself.
    """
    calls = []
    real_compile = torch.compile

    def compile_spy(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_spy)
    eager = _run(tmp_path / "eager", train_limit=32, eval_limit=16)
    assert calls == []
    compiled = _run(tmp_path / "compiled", train_limit=32, eval_limit=16, compile=True)
    assert len(calls) == 1 and calls[0].get("fullgraph") is True
    assert compiled[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-3)
    assert math.isfinite(compiled[0]["eval_loss"])


def test_eval_interval_two_evaluates_every_second_epoch_and_the_last(tmp_path):
    lines = _run(tmp_path, epochs=3, eval_interval=2, train_limit=32, eval_limit=16)
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    assert ["top1" in x for x in lines] == [False, True, True]
    assert (tmp_path / "best.safetensors").is_file()


def _small_model() -> sr.SpikingResformer:
    torch.manual_seed(0)
    return sr.create_model("spikingresformer_cifar", planes=[16, 32, 64], num_heads=[1, 2, 4], group_size=16,
                           img_size=16, T=2).eval()


def test_prune_intermediate_layers_keeps_the_wanted_stages_exactly():
    full = _small_model()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        pruned = copy.deepcopy(full)
        assert pruned.prune_intermediate_layers(indices=[0, 1]) == [0, 1]
        got = pruned.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert len(pruned.layers) == 2 and pruned.num_classes == 0
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in full.parameters())
    assert len(want) == len(got) == 2 and all(torch.equal(a, b) for a, b in zip(want, got))


def test_features_only_with_out_indices_matches_forward_intermediates():
    full = _small_model()
    feats = timm.create_model("spikingresformer_cifar", features_only=True, out_indices=(0, 1), planes=[16, 32, 64],
                              num_heads=[1, 2, 4], group_size=16, img_size=16, T=2).eval()
    missing, unexpected = feats.model.load_state_dict(full.state_dict(), strict=False)
    assert missing == [] and all(k.startswith(("layers.2.", "classifier.")) for k in unexpected)
    assert feats.feature_info.channels() == [16, 32] and feats.feature_info.reduction() == [1, 2]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        got = feats(x)
    assert len(want) == len(got) == 2 and all(torch.equal(a, b) for a, b in zip(want, got))
