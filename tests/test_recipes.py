"""Every recipe file parses and carries the official hyper-parameters; data options reach the builders as agreed."""

from __future__ import annotations

from pathlib import Path

import pytest

from spikingresformer.training import RecipeError, load_recipe, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

COMMON = dict(opt="adamw", sched="cosine", warmup_epochs=3, warmup_lr=1e-5, min_lr=1e-5, label_smoothing=0.1,
              amp=True, seed=12450)
# file: (model, dataset, T, img_size, epochs, batch_size, lr, weight_decay, extra)
TABLE = {
    "imagenet_ti": ("spikingresformer_ti", "imagenet", 4, 224, 320, 32, 1e-3, 0.01,
                    dict(aa="rand-m7-mstd0.5-inc1", mixup=0.2, cutmix=1.0, crop_pct=0.95, interpolation="bicubic")),
    "imagenet_s": ("spikingresformer_s", "imagenet", 4, 224, 320, 32, 1e-3, 0.01,
                   dict(aa="rand-m7-mstd0.5-inc1", mixup=0.2, cutmix=1.0, crop_pct=0.95)),
    "imagenet_m": ("spikingresformer_m", "imagenet", 4, 224, 320, 28, 8e-4, 0.01,
                   dict(aa="rand-m9-mstd0.5-inc1", mixup=0.2, cutmix=1.0, crop_pct=0.95)),
    "imagenet_l": ("spikingresformer_l", "imagenet", 4, 224, 320, 16, 5e-4, 0.01,
                   dict(aa="rand-m9-n3-mstd0.5-inc1", sync_bn=True, mixup=0.2, cutmix=1.0, crop_pct=0.95)),
    "cifar10": ("spikingresformer_cifar", "cifar10", 4, 32, 600, 128, 5e-4, 0.01,
                dict(aa="rand-m7-n1-mstd0.5-inc1", mixup=0.5, mixup_switch_prob=0.5, crop_pct=1.0)),
    "cifar100": ("spikingresformer_cifar", "cifar100", 4, 32, 600, 128, 5e-4, 0.01,
                 dict(aa="rand-m7-n1-mstd0.5-inc1", mixup=0.5, crop_pct=1.0)),
    "cifar10dvs": ("spikingresformer_cifar", "cifar10dvs", 16, 64, 300, 8, 5e-4, 0.05,
                   dict(dvs_augment=True, mixup=0.0, cutmix=0.0, cifar10dvs_split="official")),
    "dvs128gesture": ("spikingresformer_dvsg", "dvs128gesture", 16, 64, 300, 8, 1e-4, 0.05,
                      dict(dvs_augment=True, mixup=0.0)),
    "transfer_cifar10": ("spikingresformer_s", "cifar10", 4, 128, 100, 128, 1e-4, 0.01,
                         dict(aa="rand-m9-n1-mstd0.4-inc1", mixup=0.5)),
    "transfer_cifar100": ("spikingresformer_s", "cifar100", 4, 128, 150, 128, 1e-4, 0.01,
                          dict(aa="rand-m9-n1-mstd0.4-inc1", mixup=0.5)),
    "transfer_cifar10dvs": ("spikingresformer_s", "cifar10dvs", 10, 128, 100, 48, 4e-5, 0.01, dict(dvs_augment=True)),
    "transfer_dvs128gesture": ("spikingresformer_s", "dvs128gesture", 10, 128, 100, 48, 1e-4, 0.05,
                               dict(dvs_augment=True)),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_recipe_matches_spec(name):
    r = load_recipe(CONFIGS / f"{name}.yaml")
    model, dataset, T, size, epochs, bs, lr, wd, extra = TABLE[name]
    got = (r.model, r.dataset, r.T, r.img_size, r.epochs, r.batch_size, r.lr, r.weight_decay)
    assert got == (model, dataset, T, size, epochs, bs, pytest.approx(lr), pytest.approx(wd))
    for k, v in {**COMMON, **extra}.items():
        assert getattr(r, k) == v, (name, k)
    if name.startswith("imagenet") and name != "imagenet_l":
        assert not r.sync_bn


def test_every_config_file_loads_and_is_covered():
    files = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(TABLE) <= files
    for name in files:
        load_recipe(CONFIGS / f"{name}.yaml")


def test_overrides_and_their_types():
    r = load_recipe(CONFIGS / "cifar10.yaml", parse_overrides(["--lr", "1e-3", "--amp=false", "--batch-size", "7",
                                                               "--mean", "[0.5, 0.5, 0.5]", "--sync-bn"]))
    assert (r.lr, r.amp, r.batch_size, r.mean, r.sync_bn) == (1e-3, False, 7, [0.5, 0.5, 0.5], True)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"learning_rate": "1"}, "unknown recipe key"),
        ({"epochs": "ten"}, "expects int"),
        ({"amp": "maybe"}, "expects bool"),
        ({"T": "0"}, "T must be at least 1"),
        ({"device": "tpu"}, "device must be"),
        ({"T": None}, "may not be null"),
    ],
)
def test_bad_recipe_values(overrides, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(None, overrides)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("modle: spikingresformer_ti\n")
    with pytest.raises(RecipeError, match="modle"):
        load_recipe(tmp_path / "typo.yaml")


def test_data_options_pass_only_changed_generic_keys_and_data_args():
    from spikingresformer.training.builders import data_options

    base = data_options(load_recipe(None, {"dataset": "event-digits"}))
    assert set(base) == {"img_size", "T", "augment", "seed"}
    r = load_recipe(None, {"dataset": "event-digits", "cache_dir": "/tmp/c",
                           "data_args": "{data_seed: 3, sensor_size: 16}"})
    opts = data_options(r)
    assert opts == {**base, "cache_dir": "/tmp/c", "data_seed": 3, "sensor_size": 16}
    r = load_recipe(None, {"dataset": "cifar10", "reprob": "0.25", "mean": "[0.5, 0.5, 0.5]"})
    assert data_options(r) == {**base, "reprob": 0.25, "mean": (0.5, 0.5, 0.5)}
    with pytest.raises(RecipeError, match="'event-digits' cannot use the option\\(s\\) mean, reprob"):
        load_recipe(None, {"dataset": "event-digits", "reprob": "0.25", "mean": "[0.5]"})
    with pytest.raises(RecipeError, match=r"data_args may not set \['T'\]"):
        data_options(load_recipe(None, {"data_args": "{T: 3}"}))


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"clip_grad": "-1"}, r"'clip_grad' is -1.0; allowed: null \(off\) or a number > 0"),
        ({"seed": "-3"}, r"'seed' is -3"),
        ({"crop_pct": "1.5"}, r"'crop_pct' is 1.5; allowed: null or a number in \(0, 1\]"),
        ({"std": "[0.5, 0]"}, r"'std' is \[0.5, 0.0\]"),
        ({"cifar10dvs_split": "random:x"}, r"'cifar10dvs_split' is 'random:x'"),
        ({"interpolation": "cubic"}, r"'interpolation' is 'cubic'"),
        ({"opt": "adamq"}, r"'opt' is 'adamq'"),
        ({"workers": "-1"}, r"'workers' is -1; allowed: an integer >= 0"),
    ],
)
def test_every_key_has_its_range_checked(overrides, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(None, overrides)
