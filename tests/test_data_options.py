"""The data options contract: every builder declares its options, refuses the ones it cannot use (naming
them and the data set), checks their values, and the event-digits settings are reachable by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikingresformer.data import RandomShift, build_dataset, dataset_names, dataset_options, register_dataset
from spikingresformer.data.registry import COMMON_OPTIONS
from spikingresformer.training.recipe import Recipe
from spikingresformer.training.builders import data_options

IMAGE = {"aa", "reprob", "interpolation", "crop_pct", "mean", "std"}
EXPECTED = {
    "cifar10": IMAGE,
    "cifar100": IMAGE,
    "imagenet": IMAGE,
    "cifar10dvs": {"dvs_augment", "cifar10dvs_split", "cache_dir"},
    "dvs128gesture": {"dvs_augment", "cache_dir"},
    "digits": {"max_shift"},
    "image-folder": IMAGE | {"hflip", "padding", "in_chans"},
    "event-digits": {"dvs_augment", "cache_dir", "data_seed", "sensor_size", "digit_size", "max_shift"},
}
#: The recipe's generic data keys (the training side passes each one when the recipe changes it).
GENERIC = ("aa", "reprob", "interpolation", "crop_pct", "mean", "std", "cifar10dvs_split", "cache_dir", "dvs_augment")


def test_each_data_set_declares_exactly_its_options():
    assert set(dataset_names()) == set(EXPECTED)
    for name, own in EXPECTED.items():
        assert set(dataset_options(name)) == set(COMMON_OPTIONS) | own, name
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        dataset_options("mnist")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_option_a_data_set_cannot_use_is_an_error_naming_both(name):
    foreign = [k for k in GENERIC + ("data_seed", "sensor_size", "max_shift", "colour") if k not in EXPECTED[name]]
    for key in foreign:  # refused before anything is read: no data root needed
        with pytest.raises(ValueError) as e:
            build_dataset(name, None, True, img_size=8, T=2, augment=True, seed=0, **{key: 1})
        assert f"{name!r}" in str(e.value) and key in str(e.value)
    with pytest.raises(ValueError, match=r"cannot use the option\(s\) colour, data_sed"):  # all of them at once
        build_dataset(name, None, True, colour=1, data_sed=3)


def test_common_options_are_accepted_by_all_and_seed_and_T_ignored_where_documented():
    a, _ = build_dataset("digits", None, False, img_size=8, T=7, augment=False, seed=123)
    b, _ = build_dataset("digits", None, False, img_size=8, T=1, augment=False, seed=0)
    assert torch.equal(a[5][0], b[5][0]) and a[5][0].shape == (1, 8, 8)


def test_event_digits_settings_by_name():
    kw = dict(img_size=None, T=3, augment=False, cache_dir=False)
    small, info = build_dataset("event-digits", None, False, seed=0, sensor_size=12, digit_size=10, data_seed=0, **kw)
    assert small[0][0].shape == (3, 3, 12, 12) and info.event
    other_seed, _ = build_dataset("event-digits", None, False, seed=99, sensor_size=12, digit_size=10, data_seed=0,
                                  **kw)
    assert all(np.array_equal(small.frames(i), other_seed.frames(i)) for i in range(len(small)))  # seed: ignored
    other_data, _ = build_dataset("event-digits", None, False, seed=0, sensor_size=12, digit_size=10, data_seed=3,
                                  **kw)
    assert not all(np.array_equal(small.frames(i), other_data.frames(i)) for i in range(len(small)))
    tr, _ = build_dataset("event-digits", None, True, cache_dir=False, T=2, img_size=None, augment=True, seed=0,
                          max_shift=2, sensor_size=8, digit_size=6)
    assert isinstance(tr.transform, RandomShift) and tr.transform.max_shift == 2


@pytest.mark.parametrize("name,options,match", [
    ("digits", dict(max_shift=-1), "max_shift = -1"),
    ("digits", dict(img_size=0), "img_size = 0"),
    ("digits", dict(augment="yes"), "augment = 'yes'.*true or false"),
    ("event-digits", dict(dvs_augment=1), "dvs_augment = 1"),
    ("event-digits", dict(data_seed=-2), "data_seed = -2"),
    ("event-digits", dict(sensor_size=0), "sensor_size must be an integer of at least 1"),
    ("event-digits", dict(sensor_size=8, digit_size=12), "digit_size 12 does not fit"),
    ("event-digits", dict(T=0), "T must be an integer of at least 1"),
    ("cifar10", dict(reprob=2.0), "reprob = 2.0"),
    ("cifar10", dict(crop_pct=0.0), "crop_pct = 0.0"),
    ("cifar100", dict(interpolation="cubic"), "interpolation = 'cubic'.*bicubic"),
    ("imagenet", dict(mean=(0.5, 0.5)), "mean = "),
    ("imagenet", dict(std=(0.5, 0.0, 0.5)), "std = "),
    ("cifar10", dict(aa=7), "aa = 7"),
    ("cifar10dvs", dict(dvs_augment="on"), "dvs_augment = 'on'"),
])
def test_bad_values_name_the_option(tmp_path, name, options, match):
    with pytest.raises(ValueError, match=match) as e:
        build_dataset(name, str(tmp_path), True, **options)
    assert name in str(e.value)


def test_a_builder_with_a_catch_all_is_refused():
    def sloppy(root, train, *, img_size=8, T=1, augment=True, seed=0, **_):
        raise AssertionError("never built")

    with pytest.raises(TypeError, match="kwargs"):
        register_dataset("sloppy")(sloppy)
    with pytest.raises(TypeError, match="common option"):
        register_dataset("partial")(lambda root, train, *, img_size=8: None)
    assert "sloppy" not in dataset_names() and "partial" not in dataset_names()


def test_training_side_passes_generic_keys_only_when_changed():
    assert set(data_options(Recipe(dataset="digits"))) == {"img_size", "T", "augment", "seed"}
    changed = data_options(Recipe(dataset="cifar10", aa="rand-m9", mean=[0.1, 0.2, 0.3], dvs_augment=True))
    assert changed["aa"] == "rand-m9" and changed["mean"] == (0.1, 0.2, 0.3) and changed["dvs_augment"] is True
    with pytest.raises(ValueError, match="'digits' cannot use the option\\(s\\) aa"):
        build_dataset("digits", None, True, **data_options(Recipe(dataset="digits", aa="rand-m9")))
