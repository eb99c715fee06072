"""Model folders: convert an official checkpoint, load it back, and the errors for weights that describe nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spikingresformer as sr
from spikingresformer.cli import main
from spikingresformer.hub import NoModelDescription, make_config, resolve_source

from conftest import load_fixture


@pytest.fixture(scope="module", params=["official_cifar_f64", "official_cifar"])
def official(request, tmp_path_factory) -> tuple:
    """The fixture's official checkpoint written as a ``.pth`` file, and the fixture."""
    fx = load_fixture(request.param)
    path = tmp_path_factory.mktemp("official") / "checkpoint.pth"
    torch.save(fx["checkpoint"], path)
    return path, fx


def test_convert_round_trips_to_identical_outputs(official, tmp_path: Path, capsys) -> None:
    import timm

    path, fx = official
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    out = tmp_path / "model"
    assert main(["convert", str(path), "--model", "spikingresformer_cifar", "--output", str(out),
                 "--class-names", str(names)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "spikingresformer_cifar" and config["label_names"][3] == "class3"
    direct = sr.create_model("spikingresformer_cifar").eval()  # float32, as convert builds it
    sr.load_checkpoint(direct, path)
    loaded = sr.load_model(out)
    via_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = fx["test_input"][:2].double()
    with torch.no_grad():  # in float64, so that nothing but the weights could make a difference
        ref = direct.double()(x)
        assert torch.equal(loaded.double()(x), ref) and torch.equal(via_timm.double()(x), ref)


def test_official_checkpoint_alone_asks_for_the_model(official, tmp_path: Path, capsys) -> None:
    path, _ = official
    with pytest.raises(NoModelDescription, match="convert"):
        sr.load_model(path)
    assert main(["export", str(path), "--output", str(tmp_path / "m.pt2"), "--format", "pt2"]) == 2
    assert "--model" in capsys.readouterr().err


def test_save_pretrained_weights_carry_their_description(tmp_path: Path) -> None:
    model = sr.create_model("spikingresformer_cifar", planes=[8, 16, 16], num_heads=[1, 1, 1], group_size=8,
                            num_classes=2, T=1, img_size=8, in_chans=1).eval()
    config = make_config("spikingresformer_cifar", {"planes": (8, 16, 16), "num_heads": (1, 1, 1), "group_size": 8,
                                                    "neuron_backend": "reference"},
                         num_classes=2, in_chans=1, T=1, img_size=8, mean=(0.5,), std=(0.25,),
                         class_names=["no", "yes"])
    assert "neuron_backend" not in config["model_args"]  # a choice of the machine, not of the model
    folder = sr.save_pretrained(model, tmp_path / "m", config)
    (folder / "config.json").unlink()  # the weight file alone still describes the model
    src = resolve_source(folder / "model.safetensors")
    assert src.config["label_names"] == ["no", "yes"]
    again = sr.load_model(folder / "model.safetensors")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.pretrained_cfg["mean"] == [0.5] and again.pretrained_cfg["input_size"] == [1, 8, 8]
    sr.save_weights(model, tmp_path / "w.safetensors", config=config)  # our save_weights can carry it too
    assert sr.load_model(tmp_path / "w.safetensors").pretrained_cfg["label_names"] == ["no", "yes"]


def test_bad_sources_are_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sr.load_model(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sr.CheckpointError, match="holds no weights"):
        sr.load_model(empty)
    with pytest.raises(ValueError, match="class names"):
        make_config("spikingresformer_cifar", {}, num_classes=3, in_chans=3, T=1, img_size=8, mean=(0,) * 3,
                    std=(1,) * 3, class_names=["a"])
