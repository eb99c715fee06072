"""Training loop: learning, exact resumption, surviving a kill, distributed runs, early errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spikingresformer as sr
from spikingresformer.training import RecipeError, load_recipe, run_training
from spikingresformer.training.run_state import load_training_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    model="spikingresformer_cifar",
    model_args={"planes": [8, 16, 32], "num_heads": [1, 1, 2], "group_size": 8},
    dataset="digits", img_size=8, T=2, batch_size=16, workers=0, lr=5e-3, warmup_epochs=0,
    amp=False, device="cpu", progress=False, energy=False, log_interval=0,
)


def _recipe(tmp_path: Path, **kw):
    return load_recipe(None, {**TINY, "output": str(tmp_path), **kw})


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_short_digits_training_learns(tmp_path):
    small = {"planes": [16, 32, 64], "num_heads": [1, 2, 4], "group_size": 16}
    out = run_training(_recipe(tmp_path, epochs=3, train_limit=960, batch_size=32, model_args=small))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] - 0.3
    assert out["top1"] > 40.0  # chance is 10 %
    for key in ("train_loss", "top1", "top5", "lr", "train_images_per_s", "wall_time_s", "eval_loss"):
        assert key in lines[-1]
    for name in ("last.pth", "best.pth", "best.safetensors", "recipe.yaml", "log.txt"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    ckpt = load_training_checkpoint(tmp_path / "last.pth")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "max_acc1", "recipe", "rate_flags"} <= set(ckpt)
    assert load_recipe(tmp_path / "recipe.yaml").epochs == 3


def _weights(path: Path):
    return load_training_checkpoint(path)["model"]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    kw = dict(train_limit=96, eval_limit=32, epochs=2)
    run_training(_recipe(tmp_path / "full", **kw))
    # a 2-epoch run that dies after its first epoch, then is resumed for the second
    _run_one_epoch_then_stop(_recipe(tmp_path / "part", **kw))
    run_training(_recipe(tmp_path / "part", **kw, resume="auto"))
    a = _weights(tmp_path / "full" / "last.pth")
    b = _weights(tmp_path / "part" / "last.pth")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]


def _run_one_epoch_then_stop(recipe):
    """Run a 2-epoch recipe but stop after epoch 0 (as a crash would), via the metrics hook."""
    import spikingresformer.training.train as train_mod

    original = train_mod._epoch_line

    class Stop(Exception):
        pass

    def stop_after_first(m):
        line = original(m)
        if m["epoch"] == 0:
            raise Stop
        return line

    train_mod._epoch_line = stop_after_first
    try:
        with pytest.raises(Stop):
            run_training(recipe)
    finally:
        train_mod._epoch_line = original


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        ({"model": "spikingresformer_xxl"}, RecipeError, "unknown model"),
        ({"dataset": "mnist"}, RecipeError, "unknown dataset"),
        ({"resume": "/nonexistent/last.pth"}, FileNotFoundError, "does not exist"),
        ({"transfer": "/nonexistent/w.pth"}, FileNotFoundError, "does not exist"),
        ({"num_classes": 5}, RecipeError, "num_classes 5 is smaller"),
    ],
)
def test_bad_settings_fail_fast(tmp_path, overrides, exc, match):
    with pytest.raises(exc, match=match):
        run_training(_recipe(tmp_path, epochs=1, **overrides))


def test_missing_data_folder_fails_fast(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="cifar"):
        run_training(_recipe(tmp_path, dataset="cifar10", data_root=str(tmp_path / "nothing"), epochs=1))


def test_batch_that_does_not_divide_across_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match="does not divide across 2"):
        run_training(_recipe(tmp_path, global_batch_size=15, epochs=1))


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    other = sr.create_model("spikingresformer_dvsg")
    path = sr.save_weights(other, tmp_path / "dvsg.safetensors")
    with pytest.raises(sr.CheckpointError, match="another variant"):
        run_training(_recipe(tmp_path / "run", transfer=str(path), epochs=1))


def test_transfer_loads_all_but_classifier(tmp_path, monkeypatch):
    import spikingresformer.training.train as train_mod

    run_training(_recipe(tmp_path / "src", epochs=1, train_limit=32, eval_limit=16))
    source = sr.read_state_dict(tmp_path / "src" / "best.safetensors")
    seen = {}
    original = train_mod.train_one_epoch

    def snapshot(run, *args, **kwargs):  # the weights the first epoch starts from
        seen.setdefault("start", {k: v.clone() for k, v in run.model.state_dict().items()})
        return original(run, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", snapshot)
    # same class count, so a transfer that wrongly loaded the head would succeed silently
    out = run_training(_recipe(tmp_path / "dst", epochs=1, train_limit=32, eval_limit=16, seed=7,
                               transfer=str(tmp_path / "src" / "best.safetensors")))
    assert "top1" in out
    start = seen["start"]
    assert set(start) == set(source)
    for k, v in source.items():
        if k.startswith("classifier."):
            assert not torch.equal(start[k], v), f"{k} was loaded from the source checkpoint"
        else:
            assert torch.equal(start[k], v), f"{k} was not loaded from the source checkpoint"
    log = (tmp_path / "dst" / "log.txt").read_text()
    assert f"loaded {len(source) - 1} tensors" in log and "classifier left out: ['classifier.weight']" in log


def test_tet_loss_is_what_tet_computes_and_clipping_bounds_the_step(tmp_path):
    import copy

    from torch.utils.data import DataLoader

    from spikingresformer.training import engine
    from spikingresformer.training.builders import build_data, build_model
    from spikingresformer.training.optim import build_criterion
    from spikingresformer.training.distributed import DistInfo

    recipe = _recipe(tmp_path, train_limit=16, augment=False)
    ds, info = build_data(recipe, train=True)
    torch.manual_seed(0)
    model = build_model(recipe, info)
    ref = copy.deepcopy(model).train()
    images, target = next(iter(DataLoader(ds, batch_size=16)))
    crit = build_criterion(recipe, mixup_on=False)
    lam, phi = 0.05, 1.0
    steps = ref(images, return_steps=True).float()
    assert steps.shape == (recipe.T, 16, 10)
    by_hand = sum(crit(steps[t], target) for t in range(recipe.T)) / recipe.T + lam * ((steps - phi) ** 2).mean()
    plain = crit(steps.mean(0), target)
    assert abs(by_hand.item() - plain.item()) > 1e-3  # the two losses differ on this batch

    before = [p.detach().clone() for p in model.parameters()]
    clip, lr = 1e-4, 1.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tet = _recipe(tmp_path, train_limit=16, augment=False, tet=True, tet_lambda=lam, tet_phi=phi, clip_grad=clip)
    run = engine.Run(recipe=tet, dist=DistInfo(), model=model, optimizer=opt, criterion=crit,
                     train_loader=[(images, target)])
    out, stopped = engine.train_one_epoch(run, epoch=0)
    assert stopped is None
    assert out["train_loss"] == pytest.approx(by_hand.item(), rel=1e-5)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < moved.item() <= clip * lr * 1.001  # SGD step of a gradient clipped to norm `clip`


def test_cli_help_lists_every_key_and_evaluate_writes_json(tmp_path):
    res = subprocess.run([sys.executable, "-m", "spikingresformer", "train", "--help"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for key in ("--lr", "--T ", "--dataset", "--transfer", "--sync-bn", "--resume", "--tet"):
        assert key in res.stdout
    run_training(_recipe(tmp_path / "run", epochs=1, train_limit=32, eval_limit=16))
    args = [sys.executable, "-m", "spikingresformer", "evaluate", "--checkpoint",
            str(tmp_path / "run" / "best.pth"), "--json", str(tmp_path / "eval.json")]
    for k, v in {**TINY, "eval_limit": 16, "output": str(tmp_path / "ev"), "energy": True}.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v)]
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["eval_samples"] == 16 and 0 <= metrics["top1"] <= 100 and metrics["params"] > 0
    assert "top-1" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "spikingresformer", "train", "--bogus-key", "1"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "bogus_key" in bad.stderr


def _cli_args(recipe: dict) -> list:
    args = []
    for k, v in recipe.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return args


def _free_port() -> int:
    """A TCP port nobody listens on (several test runs may share the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_with_sync_bn(tmp_path):
    """2 CPU processes (Gloo) with SyncBN and global batch 16 == 1 process with batch 16."""
    common = {**TINY, "epochs": 1, "train_limit": 16, "eval_limit": 50, "augment": False, "global_batch_size": 16}
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "spikingresformer", "train"] + _cli_args({**common, "sync_bn": True, "output": str(tmp_path / "two")}),
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    one = subprocess.run(
        [sys.executable, "-m", "spikingresformer", "train"] + _cli_args({**common, "output": str(tmp_path / "one")}),
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    m2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    assert m2["eval_samples"] == m1["eval_samples"] == 50  # every sample counted exactly once
    assert m2["train_samples"] == m1["train_samples"] == common["train_limit"]
    print("loss", m1["train_loss"], m2["train_loss"], "eval", m1["eval_loss"], m2["eval_loss"])
    assert abs(m2["train_loss"] - m1["train_loss"]) < 1e-4
    a, b = _weights(tmp_path / "one" / "last.pth"), _weights(tmp_path / "two" / "last.pth")
    assert set(a) == set(b)  # synchronised BN keeps the official key layout
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst
    assert not list((tmp_path / "two").glob("*.tmp"))


def test_event_digits_recipe_trains_the_event_path(tmp_path):
    """The offline event recipe (simulated event camera) learns well above chance in a few epochs."""
    recipe = load_recipe(ROOT / "configs" / "event_digits.yaml",
                         {"output": str(tmp_path), "epochs": 4, "progress": False, "energy": False})
    out = run_training(recipe)
    assert out["top1"] > 30.0  # chance is 10 %
