"""Your own images: an image folder trains, and its run folder alone evaluates, exports, predicts and loads in timm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spikingresformer as sr
from spikingresformer.cli import main
from spikingresformer.data import build_dataset
from spikingresformer.data.errors import DatasetNotFoundError

CLASSES = ("bars", "blob", "ring")
TINY = "{planes: [8, 16, 16], num_heads: [1, 1, 1], group_size: 8, depths: [1, 1, 1]}"


def _pattern(c: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    a = (rng.random((size, size)) * 60).astype(np.uint8)
    if c == 0:
        a[::3] += 160
    elif c == 1:
        a[3:9, 3:9] += 160
    else:
        a[1:-1, 1] += 160
        a[1:-1, -2] += 160
    return a


def write_folder(root: Path, n_train: int = 8, n_val: int = 3, colour: bool = True) -> Path:
    """``root/{train,val}/<class>/*.png``: grayscale images, and RGB ones too when ``colour``."""
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(CLASSES):
            (root / part / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = _pattern(c, rng)
                img = Image.fromarray(np.stack([a, a // 2, a], -1), "RGB") if colour and i % 2 else Image.fromarray(a, "L")
                img.save(root / part / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two epochs of a tiny model on a written image folder (grayscale and RGB PNGs)."""
    base = tmp_path_factory.mktemp("own")
    data = write_folder(base / "data")
    out = base / "run"
    rc = main(["train", "--dataset", "image-folder", "--data-root", str(data), "--model", "spikingresformer_cifar",
               "--model-args", TINY, "--img-size", "12", "--T", "1", "--epochs", "2", "--batch-size", "8",
               "--workers", "0", "--warmup-epochs", "0", "--amp", "false", "--device", "cpu", "--progress", "false",
               "--energy", "false", "--log-interval", "0", "--data-args", "{hflip: false}", "--output", str(out)])
    assert rc == 0
    return out


def test_run_folder_describes_its_model(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert config["architecture"] == "spikingresformer_cifar"
    assert config["label_names"] == list(CLASSES)
    assert config["model_args"]["planes"] == [8, 16, 16]
    assert config["model_args"]["T"] == 1 and config["model_args"]["img_size"] == 12
    assert config["model_args"]["in_chans"] == 3  # mixed grayscale and RGB: three channels
    assert config["pretrained_cfg"]["input_size"] == [3, 12, 12]
    assert (run_dir / "model.safetensors").read_bytes() == (run_dir / "best.safetensors").read_bytes()


def test_timm_local_dir_and_load_model_give_identical_logits(run_dir: Path) -> None:
    import timm

    ours = sr.load_model(run_dir)
    theirs = timm.create_model(f"local-dir:{run_dir}", pretrained=True).eval()
    alone = sr.load_model(run_dir / "best.safetensors")  # the weight file alone carries the description
    trained = sr.create_model("spikingresformer_cifar", planes=[8, 16, 16], num_heads=[1, 1, 1], group_size=8,
                              depths=[1, 1, 1], num_classes=3, T=1, img_size=12).eval()
    sr.load_checkpoint(trained, run_dir / "best.pth")
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = trained(x)
        for m in (ours, theirs, alone):
            assert torch.equal(m(x), ref)
    assert theirs.pretrained_cfg["label_names"] == list(CLASSES)


def test_evaluate_from_run_folder_alone(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--json", str(out), "--progress", "false",
                 "--energy", "false"]) == 0
    metrics = json.loads(out.read_text())
    best = max(json.loads(line)["top1"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert metrics["top1"] == best and metrics["eval_samples"] == 9


def test_evaluate_and_energy_from_the_weight_file_alone(run_dir: Path, tmp_path: Path, capsys) -> None:
    # best.safetensors carries the model and its training recipe (data set, data root) in its header
    alone = tmp_path / "weights.safetensors"
    alone.write_bytes((run_dir / "best.safetensors").read_bytes())
    assert main(["evaluate", "--checkpoint", str(alone), "--progress", "false", "--energy", "false",
                 "--eval-limit", "4"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["eval_samples"] == 4
    for source in (alone, run_dir):  # the weight file alone, and the run folder (with recipe.yaml)
        assert main(["energy", "--checkpoint", str(source), "--no-plots"]) == 0
        assert "energy [spikingresformer_cifar, T=1" in capsys.readouterr().out


def test_export_from_run_folder_alone(run_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--output", str(out), "--no-optimize"]) == 0
    assert out.is_file() and "input (1, 3, 12, 12)" in capsys.readouterr().out


def test_predict_lines_json_and_unreadable_image(run_dir: Path, tmp_path: Path, capsys) -> None:
    data = run_dir.parent / "data" / "val"
    good = [data / "blob" / "0.png", data / "ring" / "1.png"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    rc = main(["predict", str(run_dir), str(good[0]), str(bad), str(good[1]), "--top-k", "2"])
    captured = capsys.readouterr()
    assert rc == 2  # one image could not be read
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(good[0])) and lines[1].startswith(str(good[1]))
    assert all(any(name in line for name in CLASSES) and "%" in line for line in lines)
    assert f"cannot read image {bad}" in captured.err
    assert main(["predict", str(run_dir), *map(str, good), "--json", "--top-k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result] == [str(g) for g in good]
    probs = [t["probability"] for t in result[0]["top"]]
    assert sorted(t["label"] for t in result[0]["top"]) == sorted(CLASSES)
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5


def test_grayscale_folder_gives_one_channel(tmp_path: Path) -> None:
    root = write_folder(tmp_path, n_train=2, n_val=1, colour=False)
    ds, info = build_dataset("image-folder", str(root), True, img_size=16)
    x, y = ds[0]
    assert info.in_chans == 1 and x.shape == (1, 16, 16) and info.class_names == CLASSES
    ds3, info3 = build_dataset("image-folder", str(root), False, img_size=16, in_chans=3)
    assert info3.in_chans == 3 and ds3[0][0].shape == (3, 16, 16)


def test_augmentation_follows_image_size(tmp_path: Path) -> None:
    from torchvision import transforms

    root = write_folder(tmp_path, n_train=1, n_val=1)
    small, _ = build_dataset("image-folder", str(root), True, img_size=32, hflip=False)
    kinds = [type(t) for t in small.transform.transforms]
    assert transforms.RandomCrop in kinds and transforms.RandomHorizontalFlip not in kinds
    large, _ = build_dataset("image-folder", str(root), True, img_size=96)
    assert any("RandomResizedCrop" in type(t).__name__ for t in large.transform.transforms)
    assert large[0][0].shape == (1, 96, 96)  # these images are all grayscale


def test_missing_or_mismatched_folders_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train"):
        build_dataset("image-folder", str(tmp_path), True)
    root = write_folder(tmp_path / "d", n_train=1, n_val=1)
    (root / "val" / "extra").mkdir()
    Image.new("L", (4, 4)).save(root / "val" / "extra" / "0.png")
    with pytest.raises(DatasetNotFoundError, match="different class folders"):
        build_dataset("image-folder", str(root), False)
