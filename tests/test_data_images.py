"""Image data: tiny CIFAR10/100 (torchvision's pickle batches) and ImageNet folders written here,
the timm transforms, clear errors for missing or incomplete folders, and build_dataset by name."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikingresformer.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from spikingresformer.data import (CIFAR10, CIFAR10DVS_CLASSES, CIFAR100, DatasetNotFoundError, build_dataset,
                                   dataset_names)
from spikingresformer.data.registry import dataset_preprocessing

OPTS = dict(img_size=32, T=4, augment=True, aa="rand-m7-n1-mstd0.5-inc1", interpolation="bicubic", crop_pct=None,
            mean=None, std=None, reprob=0.25, seed=0)


def _batch(rng: np.random.Generator, n: int, n_classes: int, fine: bool) -> dict:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, n_classes, n).tolist()
    if fine:
        return {"data": data, "fine_labels": labels, "coarse_labels": [l // 5 for l in labels], "filenames": []}
    return {"data": data, "labels": labels, "batch_label": "x", "filenames": []}


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: Path, n: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _batch(rng, n, 10, False))
    _dump(folder / "test_batch", _batch(rng, n, 10, False))
    _dump(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                    "frog", "horse", "ship", "truck"], "num_cases_per_batch": n})
    return root


def make_cifar100(root: Path, n: int = 8) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    _dump(folder / "train", _batch(rng, n, 100, True))
    _dump(folder / "test", _batch(rng, n, 100, True))
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                            "coarse_label_names": [f"s{i}" for i in range(20)]})
    return root


def make_imagenet(root: Path) -> Path:
    rng = np.random.default_rng(2)
    for part in ("train", "val"):
        for wnid in ("n01440764", "n01443537", "n01484850"):
            d = root / part / wnid
            d.mkdir(parents=True)
            for k in range(2):
                arr = rng.integers(0, 256, (30 + k, 40, 3), dtype=np.uint8)
                ext = "JPEG" if k == 0 else "png"
                Image.fromarray(arr).save(d / f"{wnid}_{k}.{ext}")
    return root


def test_cifar10_reads_torchvision_format(tmp_path):
    make_cifar10(tmp_path)
    tr = CIFAR10(tmp_path, train=True)
    te = CIFAR10(tmp_path / "cifar-10-batches-py", train=False)  # the batches folder itself also works
    assert len(tr) == 30 and len(te) == 6 and tr.classes[0] == "airplane"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    img, label = tr[0]
    assert label == raw["labels"][0]
    arr = np.asarray(img)
    expected = raw["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(arr, expected)


def test_cifar_build_train_and_eval(tmp_path):
    make_cifar10(tmp_path / "c10")
    make_cifar100(tmp_path / "c100")
    ds, info = build_dataset("cifar10", str(tmp_path / "c10"), True, **OPTS)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert info.num_classes == 10 and info.in_chans == 3 and not info.event and info.mixup_ok
    ev, _ = build_dataset("cifar10", str(tmp_path / "c10"), False, **OPTS)
    x, y = ev[0]
    raw = CIFAR10(tmp_path / "c10", train=False)
    img = torch.from_numpy(np.asarray(raw[0][0]).copy()).permute(2, 0, 1).float() / 255
    ref = (img - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    assert torch.allclose(x, ref, atol=1e-5)  # eval at 32 with crop 1.0: just normalised
    ds, info = build_dataset("cifar100", str(tmp_path / "c100"), True, **dict(OPTS, img_size=48))
    assert ds[0][0].shape == (3, 48, 48) and info.num_classes == 100
    assert len(CIFAR100(tmp_path / "c100", train=False)) == 8
    # a batch goes through timm's Mixup as the training loop will use it
    from timm.data import Mixup

    loader = torch.utils.data.DataLoader(build_dataset("cifar10", str(tmp_path / "c10"), True, **OPTS)[0],
                                         batch_size=4)
    xb, yb = next(iter(loader))
    xm, ym = Mixup(mixup_alpha=0.5, label_smoothing=0.1, num_classes=10)(xb, yb)
    assert xm.shape == (4, 3, 32, 32) and ym.shape == (4, 10)


def test_cifar_missing_and_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_dataset("cifar10", str(tmp_path / "none"), True, **OPTS)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "cs.toronto.edu" in msg
    make_cifar10(tmp_path / "c")
    os.remove(tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DatasetNotFoundError, match="missing: data_batch_3"):
        build_dataset("cifar10", str(tmp_path / "c"), True, **OPTS)
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        build_dataset("cifar100", str(tmp_path / "c"), False, **OPTS)
    with pytest.raises(DatasetNotFoundError, match="no data root"):
        build_dataset("cifar10", None, False, **OPTS)


def test_cifar_class_names_from_the_resolved_root(tmp_path):
    """The preprocessing's class names: CIFAR100's from its meta file, also when data_root is the
    ``cifar-100-python`` folder itself (as the data set accepts); CIFAR10's (and CIFAR10-DVS's) one constant."""
    make_cifar100(tmp_path / "c100")
    fine = [f"c{i}" for i in range(100)]
    for root in (tmp_path / "c100", tmp_path / "c100" / "cifar-100-python"):
        assert dataset_preprocessing("cifar100", str(root), {}, 3)["class_names"] == fine
        assert CIFAR100(root, train=False).classes == fine
    assert dataset_preprocessing("cifar100", str(tmp_path / "none"), {}, 3)["class_names"] is None
    assert dataset_preprocessing("cifar100", None, {}, 3)["class_names"] is None
    assert CIFAR10DVS_CLASSES is CIFAR10_CLASSES and CIFAR10_CLASSES[0] == "airplane" and len(CIFAR10_CLASSES) == 10
    for kind in ("cifar10", "cifar10dvs"):
        assert dataset_preprocessing(kind, None, {}, 3)["class_names"] == list(CIFAR10_CLASSES)
    _, info = build_dataset("cifar100", str(tmp_path / "c100" / "cifar-100-python"), False, **OPTS)
    assert info.num_classes == 100  # len(ds.classes)


def test_dataset_not_found_error_two_arguments_and_from_a_worker():
    """``DatasetNotFoundError(dataset, root)`` keeps the root; re-raised from a loader worker, ``.problem`` is the
    original message, not the worker's traceback."""
    import sys

    from torch._utils import ExceptionWrapper

    e = DatasetNotFoundError("x", "/root")
    assert e.dataset == "x" and e.root == "/root" and str(e).startswith("x: data set not found\n")
    assert "root given: '/root'" in str(e)
    assert str(DatasetNotFoundError("just a message")) == "just a message"
    original = DatasetNotFoundError("digits", "/data", "file 3.png is missing", "0.png ...", "scikit-learn")
    try:
        raise original
    except DatasetNotFoundError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(DatasetNotFoundError) as got:
        wrapped.reraise()
    assert "Traceback" in got.value.worker_traceback and "Traceback" not in got.value.problem
    assert got.value.problem == str(got.value) == "in a data-loading worker: " + str(original)


def test_imagenet_folders(tmp_path):
    make_imagenet(tmp_path / "in")
    ds, info = build_dataset("imagenet", str(tmp_path / "in"), True, **OPTS)
    assert len(ds) == 6 and info.num_classes == 3
    x, y = ds[5]
    assert x.shape == (3, 32, 32) and y == 2
    ev, _ = build_dataset("imagenet", str(tmp_path / "in"), False, **dict(OPTS, img_size=24, crop_pct=0.95))
    x, y = ev[0]
    assert x.shape == (3, 24, 24) and y == 0
    # eval: bicubic resize of the short side to floor(24 / 0.95) = 25, centre crop 24, ImageNet normalisation
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import transforms as tv

    ref = tv.Compose([tv.Resize(25, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(24), tv.ToTensor(),
                      tv.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    with Image.open(tmp_path / "in" / "val" / "n01440764" / "n01440764_0.JPEG") as img:
        assert torch.allclose(x, ref(img.convert("RGB")), atol=1e-6)
    assert ev.classes == ds.classes


def test_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_dataset("imagenet", str(tmp_path), True, **OPTS)
    assert "train/n01440764" in str(e.value) and "image-net.org" in str(e.value)
    root = make_imagenet(tmp_path / "in")
    # validation images left flat (not sorted into class folders)
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    os.rename(root / "train" / "n01440764", flat / "train" / "n01440764")
    (flat / "val").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetNotFoundError, match="class folders"):
        build_dataset("imagenet", str(flat), False, **OPTS)
    # val with classes that train lacks
    with pytest.raises(DatasetNotFoundError, match="different class folders"):
        build_dataset("imagenet", str(root), False, **OPTS)
    # an empty class folder
    empty = tmp_path / "empty"
    (empty / "train" / "n0").mkdir(parents=True)
    (empty / "val" / "n0").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="incomplete"):
        build_dataset("imagenet", str(empty), True, **OPTS)


def test_every_name_is_registered():
    assert set(dataset_names()) >= {"cifar10", "cifar100", "imagenet", "cifar10dvs", "dvs128gesture", "digits",
                                    "event-digits"}
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("mnist", None, True)
