"""Checkpoint loading: formats, key reports, transfer learning, refusing code."""

from __future__ import annotations

import pickle

import pytest
import torch

import spikingresformer as sr
from conftest import load_fixture


@pytest.fixture(scope="module")
def official():
    return load_fixture("official_cifar")


def _model(**kw):
    return sr.create_model("spikingresformer_cifar", **kw)


def _assert_holds(model, state):
    """Every entry of ``model``'s state dict equals the checkpoint's."""
    ours = model.state_dict()
    assert sorted(ours) == sorted(state)
    for k, v in state.items():
        assert torch.equal(ours[k], v), k


def test_load_official_dict_path_and_raw_state(official, tmp_path):
    m = _model()
    res = sr.load_checkpoint(m, official["checkpoint"])
    assert res.missing_keys == [] and res.unexpected_keys == []
    _assert_holds(m, official["checkpoint"]["model"])
    path = tmp_path / "ckpt.pth"
    torch.save(official["checkpoint"], path)
    m2 = _model()
    sr.load_checkpoint(m2, path)
    _assert_holds(m2, official["checkpoint"]["model"])
    m3 = _model()
    sr.load_checkpoint(m3, official["checkpoint"]["model"])  # raw state dict
    _assert_holds(m3, official["checkpoint"]["model"])


def test_ddp_prefix_is_stripped(official):
    state = {"module." + k: v for k, v in official["checkpoint"]["model"].items()}
    m = _model()
    sr.load_checkpoint(m, {"model": state})
    _assert_holds(m, official["checkpoint"]["model"])


def test_safetensors_round_trip(official, tmp_path):
    m = _model()
    sr.load_checkpoint(m, official["checkpoint"])
    path = sr.save_weights(m, tmp_path / "w.safetensors")
    m2 = _model()
    sr.load_checkpoint(m2, path)
    _assert_holds(m2, official["checkpoint"]["model"])
    with pytest.raises(ValueError, match="safetensors"):
        sr.save_weights(m, tmp_path / "w.pt")


def test_missing_and_unexpected_keys_are_named(official):
    state = dict(official["checkpoint"]["model"])
    state.pop("layers.0.0.W.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(sr.CheckpointError, match=r"layers\.0\.0\.W\.weight") as e:
        sr.load_checkpoint(_model(), state)
    assert "extra.weight" in str(e.value)
    res = sr.load_checkpoint(_model(), state, strict=False)
    assert res.missing_keys == ["layers.0.0.W.weight"] and res.unexpected_keys == ["extra.weight"]


def test_other_variant_is_refused_with_shapes(official):
    with pytest.raises(sr.CheckpointError, match="another variant"):
        sr.load_checkpoint(sr.create_model("spikingresformer_dvsg"), official["checkpoint"])


def test_exclude_classifier_for_transfer(official):
    m = _model(num_classes=100)
    head = m.classifier.weight.detach().clone()
    res = sr.load_checkpoint(m, official["checkpoint"], exclude_classifier=True)
    assert res.skipped_keys == ["classifier.weight"] and res.missing_keys == []
    assert torch.equal(m.classifier.weight, head)
    assert torch.equal(m.prologue[0].weight, official["checkpoint"]["model"]["prologue.0.weight"])
    with pytest.raises(sr.CheckpointError):
        sr.load_checkpoint(_model(num_classes=100), official["checkpoint"])


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_callable_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(1)}, "payload": _Exploit()}, f, protocol=2)
    with pytest.raises(sr.CheckpointError, match="refused"):
        sr.load_checkpoint(_model(), path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_and_non_tensor_entries(tmp_path):
    with pytest.raises(FileNotFoundError):
        sr.load_checkpoint(_model(), tmp_path / "nope.pth")
    with pytest.raises(sr.CheckpointError, match="not tensors"):
        sr.load_checkpoint(_model(), {"model": {"a": 1}})


def test_run_checkpoints_keep_the_dssa_rate_flags():
    """The 'first training batch seen' flags live outside the state dict; a resumed run gets them back."""
    from spikingresformer.model import DSSA
    from spikingresformer.training.run_state import rate_flags, set_rate_flags

    trained = sr.create_model("spikingresformer_dvsg", T=2, img_size=32, num_classes=3)
    trained(torch.rand(1, 2, 3, 32, 32))
    flags = rate_flags(trained)
    n_dssa = sum(isinstance(m, DSSA) for m in trained.modules())
    assert n_dssa == 6 and len(flags) == 2 * n_dssa and all(flags.values())
    assert "layers.0.0.firing_rate_x" in flags and "layers.0.0.firing_rate_attn" in flags
    fresh = sr.create_model("spikingresformer_dvsg", T=2, img_size=32, num_classes=3)
    assert not any(rate_flags(fresh).values())
    set_rate_flags(fresh, {**flags, "layers.0.0.firing_rate_attn": False})
    restored = rate_flags(fresh)
    assert restored.pop("layers.0.0.firing_rate_attn") is False and all(restored.values())
