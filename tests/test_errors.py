"""Errors by type: expected failures end in one line (also from data-loading workers), bugs keep their traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from spikingresformer import cli
from spikingresformer.data import DataOptionError, DatasetNotFoundError, EventFileError
from spikingresformer.data.builders import INTERPOLATIONS
from spikingresformer.training import RecipeError, load_recipe, run_training
from spikingresformer.training.errors import EXPECTED_ERRORS
from spikingresformer.training.run_state import load_training_checkpoint
from test_training import ROOT, TINY

RUN = dict(TINY, epochs=1, train_limit=32, eval_limit=16)


def _args(out: Path, **kw) -> List[str]:
    args = ["train"]
    for k, v in {**RUN, "output": str(out), **kw}.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return args


class _Raises(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise self.error


@pytest.mark.parametrize("error", [
    EventFileError("/data/rec5.aedat", "header ends after 3 bytes"),
    DatasetNotFoundError("CIFAR10", "/nowhere", "folder '/nowhere' does not exist", "cifar-10-batches-py/", "http://x"),
    DataOptionError("event-digits: digit_size 20 does not fit on the 16 px sensor"),
])
def test_data_errors_keep_type_and_message_through_a_loader_worker(error):
    with pytest.raises(type(error)) as got:
        list(DataLoader(_Raises(error), num_workers=1))
    assert isinstance(got.value, EXPECTED_ERRORS)
    assert str(got.value) == "in a data-loading worker: " + str(error)
    assert "Traceback" in got.value.worker_traceback  # the worker's traceback is kept, not printed


def test_each_expected_failure_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    from spikingresformer.data.digits import Digits

    cases = [
        (_args(tmp_path / "a", lr=-1), "'lr' is -1.0"),  # RecipeError
        (_args(tmp_path / "b", resume=str(tmp_path / "none.pth")), "does not exist"),  # CheckpointNotFoundError
        (_args(tmp_path / "c", dataset="cifar10", data_root=str(tmp_path / "none"), img_size=8), "expected layout"),
        (_args(tmp_path / "d", interpolation="lanczos"), "'interpolation' is 'lanczos'"),
        (["export", "--model", "nope", "--output", str(tmp_path / "x.onnx")], "unknown model 'nope'"),
        (["convert", str(tmp_path / "none.pth"), "--model", "spikingresformer_cifar", "--output", str(tmp_path / "f"),
          "--class-names", str(tmp_path / "names.txt")], f"No such file or directory: {tmp_path / 'names.txt'}"),
    ]
    for args, words in cases:
        capsys.readouterr()
        assert cli.main(args) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err

    real = Digits.__getitem__

    def missing(self, i):  # found by a worker: a data folder that vanished mid-run
        if i == 3:
            raise DatasetNotFoundError("digits", "/data", "file 3.png is missing", "0.png ...", "scikit-learn")
        return real(self, i)

    monkeypatch.setattr(Digits, "__getitem__", missing)
    capsys.readouterr()
    assert cli.main(_args(tmp_path / "e", workers=1, augment=False)) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "in a data-loading worker: digits: file 3.png is missing" in err


_BUG = """
import sys
import spikingresformer.model.spikingresformer as m
from spikingresformer import cli

def forward(self, *a, **kw):
    raise ValueError("a bug inside the model's forward")

m.SpikingResformer.forward = forward
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_unexpected_exception_keeps_its_traceback_and_fails(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _BUG] + _args(tmp_path / "run"), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback (most recent call last)" in res.stderr
    assert "ValueError: a bug inside the model's forward" in res.stderr
    assert "spikingresformer train: error" not in res.stderr


def test_interpolation_names_are_the_data_builders(tmp_path):
    for name in INTERPOLATIONS:
        load_recipe(None, {"interpolation": name})
    for name in ("box", "hamming", "lanczos", "cubic"):
        with pytest.raises(RecipeError, match=f"'interpolation' is '{name}'; allowed: {', '.join(INTERPOLATIONS)}"):
            load_recipe(None, {"interpolation": name})


def test_resume_at_an_epoch_boundary_is_exact_with_loader_workers(tmp_path):
    """Workers start afresh each epoch with seeds from (seed, rank, epoch): a resumed run draws the same."""
    import spikingresformer.training.train as train_mod

    kw = dict(TINY, train_limit=48, eval_limit=16, epochs=2, workers=1)
    run_training(load_recipe(None, {**kw, "output": str(tmp_path / "full")}))
    real = train_mod._epoch_line

    def crash_after_first(m):
        if m["epoch"] == 0:
            raise KeyboardInterrupt  # as a kill after epoch 0 was saved
        return real(m)

    train_mod._epoch_line = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(load_recipe(None, {**kw, "output": str(tmp_path / "part")}))
    finally:
        train_mod._epoch_line = real
    run_training(load_recipe(None, {**kw, "output": str(tmp_path / "part"), "resume": "auto"}))
    a = load_training_checkpoint(tmp_path / "full" / "last.pth")["model"]
    b = load_training_checkpoint(tmp_path / "part" / "last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
