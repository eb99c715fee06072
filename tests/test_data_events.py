"""Event data: AEDAT 2.0 / 3.1 readers on files written here in the real formats, framing, splits,
the frame cache, corrupt input, DVS augment, and the offline event-digits data set."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch

from spikingresformer.data import (
    CIFAR10DVS,
    CIFAR10DVS_CLASSES,
    DVS128Gesture,
    DVSAugment,
    EventDigits,
    EventFileError,
    GESTURE_CLASSES,
    build_dataset,
    events_to_frames,
    frames_to_input,
    gesture_index,
    images_to_events,
    read_aedat31,
    read_cifar10dvs,
    write_aedat2,
    write_aedat31,
)
from spikingresformer.data import aedat as aedat_mod
from spikingresformer.data.cifar10dvs import split_files
from spikingresformer.data.errors import DataError, DataOptionError, DatasetNotFoundError
from spikingresformer.data.saccades import SaccadeDVSConfig

# ------------------------------------------------------------------------------------------------
# Independent writers (plain struct, one event at a time) in the published formats
# ------------------------------------------------------------------------------------------------

AEDAT2_HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
    b"# created Mon Jan 01 00:00:00 CET 2017\r\n"
)


def dvs128_address(x_raw: int, y_raw: int, pol_raw: int) -> int:
    """DVS128 raw address: polarity bit 0, x bits 1-7, y bits 8-14."""
    return (y_raw << 8) | (x_raw << 1) | pol_raw


def write_cifar_aedat(path: Path, events: Sequence[Tuple[int, int, int, int]], header: bytes = AEDAT2_HEADER) -> None:
    """Write (t, x, y, p) in the reader's convention: x = 127 - y_raw, y = 127 - x_raw, p = 1 - pol_raw."""
    with open(path, "wb") as f:
        f.write(header)
        for t, x, y, p in events:
            f.write(struct.pack(">II", dvs128_address(127 - y, 127 - x, 1 - p), t))


def aedat31_packet(events: Sequence[Tuple[int, int, int, int]], ts_overflow: int = 0, etype: int = 1) -> bytes:
    """One AEDAT 3.1 polarity packet of (t, x, y, p) events (t without the overflow part)."""
    body = b"".join(struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | 1, t) for t, x, y, p in events)
    n = len(events)
    return struct.pack("<hhiiiiii", etype, 1, 8, 4, ts_overflow, n, n, n) + body


AEDAT31_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n"


def random_events(rng: np.random.Generator, n: int, t0: int = 0, t1: int = 1_000_000) -> List[Tuple[int, int, int, int]]:
    t = np.sort(rng.integers(t0, t1, n))
    x = rng.integers(0, 128, n)
    y = rng.integers(0, 128, n)
    p = rng.integers(0, 2, n)
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(t, x, y, p)]


def loop_frames(events: Sequence[Tuple[int, int, int, int]], T: int, H: int = 128, W: int = 128) -> np.ndarray:
    """Slow reference integration: split by number, per-polarity counts, one event at a time."""
    n = len(events)
    out = np.zeros((T, 2, H, W), dtype=np.int64)
    di = n // T
    for i in range(T):
        lo = i * di
        hi = n if i == T - 1 else lo + di
        for t, x, y, p in events[lo:hi]:
            out[i, p, y, x] += 1
    return out


def as_tuples(ev) -> List[Tuple[int, int, int, int]]:
    return list(zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist()))


# ------------------------------------------------------------------------------------------------
# Trees
# ------------------------------------------------------------------------------------------------

CIFAR_IDS = list(range(90, 110))  # string order: 100..109, 90..99


def make_cifar10dvs(root: Path, ids: Sequence[int] = CIFAR_IDS, n_events: int = 40) -> Dict[str, list]:
    written = {}
    for c, cls in enumerate(CIFAR10DVS_CLASSES):
        (root / cls).mkdir(parents=True)
        for i in ids:
            rng = np.random.default_rng([c, i])
            ev = random_events(rng, n_events + i % 7)
            name = f"{cls}/cifar10_{cls}_{i}.aedat"
            write_cifar_aedat(root / name, ev)
            written[name] = ev
    return written


# three recordings: two train, one test; each with several labelled segments
GESTURE_RECORDINGS = {
    "user01_fluorescent": [(1, 1_000_000, 2_000_000), (11, 2_500_000, 3_400_000), (3, 3_500_000, 4_000_000)],
    "user01_led": [(2, 1_100_000, 1_900_000), (10, 2_000_000, 2_900_000)],
    "user24_natural": [(11, 1_000_000, 1_600_000), (5, 1_700_000, 2_300_000), (1, 2_400_000, 3_000_000)],
}


def make_gesture(root: Path) -> Dict[str, list]:
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for r, (name, rows) in enumerate(GESTURE_RECORDINGS.items()):
        rng = np.random.default_rng(100 + r)
        ev = random_events(rng, 600, 900_000, 4_100_000)
        packets = [ev[i : i + 128] for i in range(0, len(ev), 128)]
        blob = AEDAT31_HEADER
        for k, pk in enumerate(packets):
            blob += aedat31_packet(pk)
            if k == 1:  # a non-polarity packet (special events) in between is skipped
                blob += struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 2, 2, 2) + b"\x00" * 16
        (root / f"{name}.aedat").write_bytes(blob)
        lines = ["class,startTime_usec,endTime_usec"] + [f"{c},{s},{e}" for c, s, e in rows]
        (root / f"{name}_labels.csv").write_text("\n".join(lines) + "\n")
        written[f"{name}.aedat"] = ev
    (root / "trials_to_train.txt").write_text("user01_fluorescent.aedat\nuser01_led.aedat\n\n")
    (root / "trials_to_test.txt").write_text("user24_natural.aedat\n")
    return written


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------


def test_aedat2_decodes_x_y_polarity_time(tmp_path):
    # raw camera fields -> spikingjelly convention, spelled out for a few addresses
    raw = [(5, 9, 1, 10), (0, 0, 0, 11), (127, 127, 1, 4_000_000_000), (64, 3, 0, 12)]
    path = tmp_path / "a.aedat"
    with open(path, "wb") as f:
        f.write(AEDAT2_HEADER)
        for xr, yr, pr, t in raw:
            f.write(struct.pack(">II", dvs128_address(xr, yr, pr), t))
    ev = read_cifar10dvs(path)
    assert ev.x.tolist() == [127 - 9, 127, 0, 127 - 3]
    assert ev.y.tolist() == [127 - 5, 127, 0, 127 - 64]
    assert ev.p.tolist() == [0, 1, 0, 1]
    assert ev.t.tolist() == [10, 11, 4_000_000_000, 12]
    assert ev.t.dtype == np.int64
    # random events round-trip, and the library's vectorised writer writes the same bytes
    events = random_events(np.random.default_rng(0), 500)
    write_cifar_aedat(tmp_path / "b.aedat", events)
    assert as_tuples(read_cifar10dvs(tmp_path / "b.aedat")) == events
    t, x, y, p = (np.array(v) for v in zip(*events))
    write_aedat2(tmp_path / "c.aedat", aedat_mod.cifar10dvs_address(x, y, p), t, header=AEDAT2_HEADER)
    assert (tmp_path / "c.aedat").read_bytes() == (tmp_path / "b.aedat").read_bytes()


def test_aedat31_decodes_packets_overflow_and_skips_other_types(tmp_path):
    ev1 = [(5, 1, 2, 1), (7, 127, 0, 0), (9, 0, 127, 1)]
    ev2 = [(3, 64, 65, 0), (2**31 - 1, 10, 20, 1)]
    blob = AEDAT31_HEADER + aedat31_packet(ev1)
    blob += struct.pack("<hhiiiiii", 2, 1, 16, 12, 0, 1, 1, 1) + b"\xff" * 16  # an IMU-like packet
    blob += aedat31_packet(ev2, ts_overflow=2)
    path = tmp_path / "g.aedat"
    path.write_bytes(blob)
    ev = read_aedat31(path)
    assert ev.x.tolist() == [1, 127, 0, 64, 10]
    assert ev.y.tolist() == [2, 0, 127, 65, 20]
    assert ev.p.tolist() == [1, 0, 1, 0, 1]
    assert ev.t.tolist() == [5, 7, 9, (2 << 31) | 3, (2 << 31) | (2**31 - 1)]
    # the library writer produces a file the reader returns unchanged
    t, x, y, p = (np.array(v) for v in zip(*random_events(np.random.default_rng(1), 300)))
    write_aedat31(tmp_path / "w.aedat", t, x, y, p, packet_events=64)
    back = read_aedat31(tmp_path / "w.aedat")
    assert np.array_equal(back.t, t) and np.array_equal(back.x, x) and np.array_equal(back.y, y)
    assert np.array_equal(back.p, p)


# ------------------------------------------------------------------------------------------------
# Framing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,T", [(1003, 7), (16, 16), (5, 8), (0, 4), (4096, 16)])
def test_frames_equal_loop_integration(n, T):
    events = random_events(np.random.default_rng(n + T), n)
    ev = aedat_mod.Events(*(np.array(v, dtype=np.int64) for v in zip(*events))) if n else aedat_mod.Events(
        np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint8))
    frames = events_to_frames(ev, T)
    assert frames.shape == (T, 2, 128, 128)
    assert np.array_equal(frames.astype(np.int64), loop_frames(events, T))
    per_frame = frames.reshape(T, -1).sum(axis=1)  # N // T events per frame, the remainder in the last
    assert per_frame[:-1].tolist() == [n // T] * (T - 1) and per_frame[-1] == n - (T - 1) * (n // T)


def test_model_input_channels_and_resize():
    frames = np.random.default_rng(0).integers(0, 5, (4, 2, 128, 128)).astype(np.uint16)
    x = frames_to_input(frames)
    assert x.shape == (4, 3, 128, 128) and x.dtype == torch.float32
    assert torch.equal(x[:, 2], x[:, 0] + x[:, 1])
    assert torch.equal(x[:, :2], torch.from_numpy(frames.astype(np.float32)))
    y = frames_to_input(frames, 64)
    assert y.shape == (4, 3, 64, 64)
    ref = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(y, ref)
    # antialiased downsampling of counts keeps the mean count
    assert torch.allclose(y.mean(), x.mean(), rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# CIFAR10-DVS
# ------------------------------------------------------------------------------------------------


def test_cifar10dvs_official_split_of_1000_files():
    names = [f"cifar10_cat_{i}.aedat" for i in range(1000)]
    test = {int(n.split("_")[-1][:-6]) for n in split_files(names, "official", train=False)}
    expected = {909} | set(range(91, 100)) | set(range(910, 1000))
    assert test == expected and len(test) == 100
    assert len(split_files(names, "official", True)) == 900
    first100 = {int(n.split("_")[-1][:-6]) for n in split_files(names, "first100", False)}
    assert first100 == set(range(100))


def test_cifar10dvs_splits_members_and_sizes(tmp_path):
    make_cifar10dvs(tmp_path / "c")
    root = tmp_path / "c"
    cache = str(tmp_path / "cache")
    sets = {}
    for split in ("official", "first100", "random:1", "random:2"):
        tr = CIFAR10DVS(root, True, 4, split=split, cache_dir=cache)
        te = CIFAR10DVS(root, False, 4, split=split, cache_dir=cache)
        assert tr.split == split and te.split == split and split in tr.split_name
        a = {s for s, _ in tr.samples}
        b = {s for s, _ in te.samples}
        assert not a & b and len(a | b) == 200
        sets[split] = (a, b)
        for s, label in tr.samples + te.samples:
            assert CIFAR10DVS_CLASSES[label] == s.split("/")[0]
    off_test = {s for s in sets["official"][1] if s.startswith("cat/")}
    assert off_test == {"cat/cifar10_cat_98.aedat", "cat/cifar10_cat_99.aedat"}  # last 2 of 20 in string order
    assert len(sets["official"][0]) == 180
    f100_test = {s for s in sets["first100"][1] if s.startswith("cat/")}
    assert f100_test == {f"cat/cifar10_cat_{i}.aedat" for i in range(90, 100)}
    assert len(sets["first100"][1]) == 100
    assert len(sets["random:1"][0]) == 180 and len(sets["random:1"][1]) == 20
    assert sets["random:1"] != sets["random:2"]
    again = CIFAR10DVS(root, False, 4, split="random:1", cache_dir=cache)
    assert {s for s, _ in again.samples} == sets["random:1"][1]
    with pytest.raises(ValueError, match="split"):
        CIFAR10DVS(root, True, 4, split="last100")
    make_cifar10dvs(tmp_path / "low", ids=[3, 4])
    with pytest.raises(ValueError, match="no samples"):  # only ids < 100: first100 has no training part
        CIFAR10DVS(tmp_path / "low", True, 4, split="first100")


def test_cifar10dvs_split_errors_are_typed_data_errors(tmp_path):
    """A split that cannot be used on the files given is a DataOptionError (a DataError the CLI reports in one
    line, still a ValueError), with its message as it was."""
    make_cifar10dvs(tmp_path / "low", ids=[3, 4])
    with pytest.raises(DataOptionError, match="split 'first100' leaves no samples for the training part") as e:
        CIFAR10DVS(tmp_path / "low", True, 4, split="first100")
    assert isinstance(e.value, DataError) and isinstance(e.value, ValueError) and "\n" not in str(e.value)
    names = ["cifar10_cat_7.aedat", "cat_seven.aedat"]
    assert split_files(names, "official", False) == ["cifar10_cat_7.aedat"]  # names are not read by 'official'
    with pytest.raises(DataOptionError, match=r"cannot read the sample id from file name 'cat_seven.aedat' "
                                              r"\(expected \.\.\._<id>\.aedat\)"):
        split_files(names, "first100", True)


def counting(monkeypatch, name: str) -> List[str]:
    """Replace reader ``name`` of the aedat module by a wrapper that records the files it reads."""
    calls: List[str] = []
    real = getattr(aedat_mod, name)

    def wrapper(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(aedat_mod, name, wrapper)
    return calls


def test_cifar10dvs_frames_and_cache(tmp_path, monkeypatch):
    written = make_cifar10dvs(tmp_path / "c", ids=[0, 1, 2], n_events=30)
    cache = str(tmp_path / "cache")
    reads = counting(monkeypatch, "read_cifar10dvs")
    ds = CIFAR10DVS(tmp_path / "c", False, T=5, split="official", img_size=None, cache_dir=cache)
    assert len(ds) == 10  # 3 files per class: 2 train, 1 test
    x, label = ds[3]
    rel = ds.samples[3][0]
    assert label == 3 and rel.startswith("cat/")
    assert x.shape == (5, 3, 128, 128) and x.dtype == torch.float32
    assert reads == [Path(rel).name]
    assert as_tuples(ds.events(3)) == written[rel]
    ref = loop_frames(written[rel], 5)
    assert np.array_equal(x[:, :2].numpy(), ref.astype(np.float32))
    assert torch.equal(x[:, 2], x[:, 0] + x[:, 1])
    reads.clear()
    x2, _ = ds[3]
    assert torch.equal(x, x2) and reads == []  # from the cache
    fresh = CIFAR10DVS(tmp_path / "c", False, T=5, img_size=32, cache_dir=cache)  # another process, resized
    y, _ = fresh[3]
    assert y.shape == (5, 3, 32, 32) and reads == []
    assert torch.equal(y, frames_to_input(ref.astype(np.uint16), 32))
    x6, _ = CIFAR10DVS(tmp_path / "c", False, T=6, cache_dir=cache)[3]  # another T is another cache entry
    assert reads == [Path(rel).name]
    assert np.array_equal(x6[:, :2].numpy(), loop_frames(written[rel], 6).astype(np.float32))


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    make_cifar10dvs(tmp_path / "c", ids=[0, 1], n_events=10)
    cache = tmp_path / "cache"
    ds = CIFAR10DVS(tmp_path / "c", False, T=2, cache_dir=str(cache))
    path = ds.path(0)
    path.write_bytes(path.read_bytes() + b"\x00\x01\x02")  # truncated record
    with pytest.raises(EventFileError):
        ds[0]
    assert not [p for p in cache.rglob("*") if p.is_file()]

    def failing_savez(f, **arrays):  # dies half-way through writing
        f.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        ds[1]
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_cifar10dvs_missing_or_incomplete_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="airplane") as e:
        CIFAR10DVS(tmp_path / "nope", True, 4)
    assert "figshare" in str(e.value) and "expected layout" in str(e.value)
    (tmp_path / "partial" / "airplane").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="class folder"):
        CIFAR10DVS(tmp_path / "partial", True, 4)


# ------------------------------------------------------------------------------------------------
# DVS128 Gesture
# ------------------------------------------------------------------------------------------------


def test_gesture_class_order():
    assert [gesture_index(g) for g in range(1, 12)] == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 2]
    assert GESTURE_CLASSES[2] == "other_gestures" and GESTURE_CLASSES[0] == "hand_clapping"
    assert GESTURE_CLASSES[3] == "left_hand_wave" and GESTURE_CLASSES[10] == "air_guitar"


def test_gesture_segments_frames_and_cache(tmp_path, monkeypatch):
    written = make_gesture(tmp_path / "DvsGesture")
    cache = str(tmp_path / "cache")
    tr = DVS128Gesture(tmp_path / "DvsGesture", True, T=4, cache_dir=cache)
    te = DVS128Gesture(tmp_path / "DvsGesture", False, T=4, img_size=64, cache_dir=cache)
    reads = counting(monkeypatch, "read_aedat31")
    assert len(tr) == 5 and len(te) == 3
    assert tr.targets == [gesture_index(c) for c in (1, 11, 3, 2, 10)] == [0, 2, 3, 1, 10]
    assert te.targets == [2, 5, 0]
    first = []
    for i, (name, row, label, start, end) in enumerate(tr.samples):
        seg = [e for e in written[name] if start <= e[0] < end]
        assert as_tuples(tr.events(i)) == seg
        x, y = tr[i]
        assert y == label and x.shape == (4, 3, 128, 128)
        assert np.array_equal(x[:, :2].numpy(), loop_frames(seg, 4).astype(np.float32))
        first.append(x)
    # tr.events(i) reads each time; tr[i] read each recording once: its first segment cached them all
    assert reads.count("user01_fluorescent.aedat") == 3 + 1 and reads.count("user01_led.aedat") == 2 + 1
    reads.clear()
    again = DVS128Gesture(tmp_path / "DvsGesture", True, T=4, cache_dir=cache)
    for i in range(len(again)):
        assert torch.equal(again[i][0], first[i])
    assert reads == []
    x, y = te[1]  # user24_natural row 2: class 5, [1_700_000, 2_300_000), resized to 64
    assert x.shape == (4, 3, 64, 64) and y == 5
    seg = [e for e in written["user24_natural.aedat"] if 1_700_000 <= e[0] < 2_300_000]
    assert torch.equal(x, frames_to_input(loop_frames(seg, 4).astype(np.uint16), 64))


def test_gesture_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="trials_to_train.txt"):
        DVS128Gesture(tmp_path, True, 4)
    make_gesture(tmp_path / "g")
    os.remove(tmp_path / "g" / "user01_led_labels.csv")
    with pytest.raises(DatasetNotFoundError, match="user01_led") as e:
        DVS128Gesture(tmp_path / "g", True, 4)
    assert "ibm.com" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Corrupt input
# ------------------------------------------------------------------------------------------------


def test_corrupt_aedat2(tmp_path):
    good = tmp_path / "good.aedat"
    write_cifar_aedat(good, random_events(np.random.default_rng(0), 10))
    trunc = tmp_path / "trunc.aedat"
    trunc.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(EventFileError, match="truncated record") as e:
        read_cifar10dvs(trunc)
    assert str(trunc) in str(e.value) and e.value.path == str(trunc)
    data = good.read_bytes()[len(AEDAT2_HEADER):]
    for name, header, msg in [
        ("v3.aedat", b"#!AER-DAT3.1\r\n", "AEDAT 3.1, expected AEDAT 2"),
        ("noversion.aedat", b"# just a comment\r\n", "version line"),
        ("noheader.aedat", b"", "bad header"),
    ]:
        (tmp_path / name).write_bytes(header + data)
        with pytest.raises(EventFileError, match=msg) as e:
            read_cifar10dvs(tmp_path / name)
        assert name in str(e.value) and "bad header" in str(e.value)
    (tmp_path / "open.aedat").write_bytes(b"#!AER-DAT2.0\r\n# never ends")
    with pytest.raises(EventFileError, match="no line end"):
        read_cifar10dvs(tmp_path / "open.aedat")


def test_corrupt_aedat31(tmp_path):
    blob = AEDAT31_HEADER + aedat31_packet([(1, 2, 3, 1), (2, 3, 4, 0)]) + aedat31_packet([(5, 6, 7, 1)])
    for name, data, msg in [
        ("cut_data.aedat", blob[:-5], "declares 1 events"),
        ("cut_header.aedat", blob + b"\x01\x00\x01", "packet header"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EventFileError, match="truncated record") as e:
            read_aedat31(tmp_path / name)
        assert name in str(e.value) and msg in str(e.value)
    (tmp_path / "noend.aedat").write_bytes(AEDAT31_HEADER.replace(b"#!END-HEADER\r\n", b"") + b"#x\n")
    with pytest.raises(EventFileError, match="END-HEADER"):
        read_aedat31(tmp_path / "noend.aedat")
    (tmp_path / "v2.aedat").write_bytes(AEDAT2_HEADER + blob[len(AEDAT31_HEADER):])
    with pytest.raises(EventFileError, match="bad header: file is AEDAT 2.0"):
        read_aedat31(tmp_path / "v2.aedat")
    (tmp_path / "off.aedat").write_bytes(AEDAT31_HEADER + aedat31_packet([(1, 200, 3, 1)]))
    with pytest.raises(EventFileError, match="outside the 128x128 sensor"):
        read_aedat31(tmp_path / "off.aedat")


def test_corrupt_gesture_labels(tmp_path):
    root = tmp_path / "g"
    make_gesture(root)
    csv = root / "user01_led_labels.csv"
    csv.write_text("class,startTime_usec,endTime_usec\n2,1100000,1900000\n10,2000000,90000000\n")
    ds = DVS128Gesture(root, True, T=4, cache_dir=str(tmp_path / "cache"))
    ds[0]  # the other recording is fine
    with pytest.raises(EventFileError, match="outside the recording") as e:
        ds[3]
    assert "user01_led_labels.csv" in str(e.value) and "row 2" in str(e.value)
    assert not list((tmp_path / "cache").rglob("user01_led_*"))
    csv.write_text("class,startTime_usec,endTime_usec\n12,1,2\n")
    with pytest.raises(EventFileError, match="class id 12"):
        DVS128Gesture(root, True, T=4)
    csv.write_text("class,startTime_usec,endTime_usec\n3,5,oops\n")
    with pytest.raises(EventFileError, match="line 2"):
        DVS128Gesture(root, True, T=4)


def test_zero_event_recordings_are_rejected_alike(tmp_path):
    cache = tmp_path / "cache"
    make_cifar10dvs(tmp_path / "c", ids=[0, 1], n_events=5)
    ds = CIFAR10DVS(tmp_path / "c", False, T=4, cache_dir=str(cache))
    write_cifar_aedat(ds.path(0), [])  # a valid header and no events
    with pytest.raises(EventFileError, match="recording holds no events") as e:
        ds[0]
    assert e.value.path == str(ds.path(0))
    make_gesture(tmp_path / "g")
    rec = tmp_path / "g" / "user24_natural.aedat"
    te = DVS128Gesture(tmp_path / "g", False, T=4, cache_dir=str(cache))
    for blob in (AEDAT31_HEADER, AEDAT31_HEADER + struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 1, 1, 1) + bytes(8)):
        rec.write_bytes(blob)  # no packets at all, or only a non-polarity one
        with pytest.raises(EventFileError, match="recording holds no polarity events") as e:
            te[0]
        assert e.value.path == str(rec)
    assert not [p for p in cache.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------------
# DVS augment
# ------------------------------------------------------------------------------------------------


def test_dvs_augment_same_for_every_frame():
    torch.manual_seed(0)
    base = torch.rand(1, 3, 48, 48)
    x = base.repeat(6, 1, 1, 1)
    aug = DVSAugment()
    changed = 0
    for _ in range(30):
        y = aug(x)
        assert y.shape == x.shape
        assert torch.equal(y, y[:1].expand_as(y))  # identical transform across T
        changed += int(not torch.equal(y, x))
    assert changed > 20
    # with the flip forced and nothing else moving, the result is the mirror image
    g = torch.Generator().manual_seed(3)
    flip_roll0 = DVSAugment(flip_p=1.0, roll=0.0, degrees=0.0, cutout=0.0, generator=g)
    assert torch.equal(flip_roll0(x), torch.flip(x, dims=(-1,)))


def test_random_shift_moves_every_frame_alike_and_fills_the_gap():
    from spikingresformer.data import Digits, RandomShift
    from spikingresformer.data.digits import DIGITS_MEAN, DIGITS_STD

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6) + 1
    seen = set()
    torch.manual_seed(0)
    for _ in range(60):
        state = torch.get_rng_state()
        y = RandomShift(2, fill=-7.0)(x)
        torch.set_rng_state(state)
        dy, dx = torch.randint(-2, 3, (2,)).tolist()  # the draw the shift made
        seen.add((dy, dx))
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-7.0)  # out[r, c] = x[r - dy, c - dx] or fill
        assert torch.equal(y, padded[..., 2 - dy : 7 - dy, 2 - dx : 8 - dx])
    assert len(seen) > 15  # many of the 25 offsets occur
    assert torch.equal(RandomShift(0)(x), x)
    far = [RandomShift(40, fill=-1.0)(x) for _ in range(10)]  # offsets beyond the image: all fill, no error
    assert any(torch.equal(y, torch.full_like(x, -1.0)) for y in far) and all(y.shape == x.shape for y in far)
    with pytest.raises(ValueError, match="max_shift"):
        RandomShift(-1)
    ds = Digits(train=True, img_size=8, augment=True, max_shift=1)
    assert isinstance(ds.transform, RandomShift) and ds.transform.fill == pytest.approx(-DIGITS_MEAN / DIGITS_STD)
    assert Digits(train=True, img_size=8, augment=False).transform is None


# ------------------------------------------------------------------------------------------------
# Offline event data and the registry
# ------------------------------------------------------------------------------------------------


def test_saccade_converter_deterministic_for_seed():
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 10, 10)).astype(np.float32)
    a = images_to_events(imgs, 14, seed=5)
    b = images_to_events(imgs, 14, seed=5)
    c = images_to_events(imgs, 14, seed=6)
    for ea, eb in zip(a, b):
        assert all(np.array_equal(u, v) for u, v in zip(ea, eb))
    assert any(len(ea) != len(ec) or not np.array_equal(ea.t, ec.t) for ea, ec in zip(a, c))
    for ev in a:
        assert len(ev) > 100 and np.all(np.diff(ev.t) >= 0)
        assert ev.t.min() > 0 and ev.t.max() <= 3 * SaccadeDVSConfig().saccade_us
        assert set(np.unique(ev.p)) == {0, 1}
        assert ev.x.min() >= 0 and ev.x.max() < 14 and ev.y.max() < 14
    # a static scene (no saccade) emits nothing
    still = images_to_events(imgs[:1], 14, SaccadeDVSConfig(amplitude=0.0), seed=5)[0]
    assert len(still) == 0


def test_saccade_converter_takes_the_sensor_thresholds():
    imgs = np.random.default_rng(0).random((2, 10, 10)).astype(np.float32)
    cfg = SaccadeDVSConfig()
    rng = np.random.default_rng(5)  # the draw that seed=5 makes
    on, off = (np.maximum(rng.normal(m, cfg.sigma_thres, (14, 14)), cfg.min_thres) for m in (cfg.pos_thres, cfg.neg_thres))
    for ea, eb in zip(images_to_events(imgs, 14, seed=5), images_to_events(imgs, 14, seed=9, thresholds=(on, off))):
        assert all(np.array_equal(u, v) for u, v in zip(ea, eb))
    coarse = images_to_events(imgs, 14, thresholds=(2 * on, 2 * off))
    assert sum(map(len, coarse)) < sum(map(len, images_to_events(imgs, 14, seed=5))) / 1.5


def test_event_digits_dataset(tmp_path):
    ds = EventDigits(False, T=4, seed=0, cache_dir=str(tmp_path))
    assert len(ds) == 360
    x, y = ds[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    assert torch.equal(x, frames_to_input(ds.frames(0)))
    again = EventDigits(False, T=4, seed=0, img_size=32, cache_dir=str(tmp_path))  # from the cache
    assert all(np.array_equal(again.frames(i), ds.frames(i)) for i in range(len(ds)))
    assert again[0][0].shape == (4, 3, 32, 32)
    assert torch.equal(again[0][0], frames_to_input(ds.frames(0), 32))
    for i in (0, 123):  # frames are the split-by-number framing of the simulated events
        assert np.array_equal(events_to_frames(ds.events(i), 4, 16, 16), ds.frames(i))


def test_build_dataset_event_names(tmp_path):
    make_cifar10dvs(tmp_path / "c", ids=[0, 1, 100], n_events=20)
    make_gesture(tmp_path / "g")
    opts = dict(img_size=32, T=4, augment=True, cache_dir=str(tmp_path / "cache"), seed=1)
    for name, root, n_classes, extra in [("cifar10dvs", tmp_path / "c", 10, dict(cifar10dvs_split="first100")),
                                         ("dvs128gesture", tmp_path / "g", 11, {}), ("event-digits", None, 10, {})]:
        for train in (True, False):
            ds, info = build_dataset(name, root and str(root), train, **opts, **extra)
            x, y = ds[0]
            assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
            assert info.event and not info.mixup_ok and info.num_classes == n_classes and info.in_chans == 3
            assert info.split
    _, info = build_dataset("cifar10dvs", str(tmp_path / "c"), False, **opts, cifar10dvs_split="first100")
    assert info.split == "cifar10dvs:first100"
    # DVS augment: training only, and only with dvs_augment (the recipe's default is off)
    assert build_dataset("cifar10dvs", str(tmp_path / "c"), True, **opts)[0].transform is None
    on = dict(opts, dvs_augment=True)
    assert isinstance(build_dataset("cifar10dvs", str(tmp_path / "c"), True, **on)[0].transform, DVSAugment)
    assert build_dataset("cifar10dvs", str(tmp_path / "c"), False, **on)[0].transform is None
    assert build_dataset("cifar10dvs", str(tmp_path / "c"), True, **dict(on, augment=False))[0].transform is None
    assert isinstance(build_dataset("dvs128gesture", str(tmp_path / "g"), True, **on)[0].transform, DVSAugment)
    ds, info = build_dataset("digits", None, True, img_size=32, T=4, augment=True, seed=1)
    assert ds[0][0].shape == (1, 32, 32) and not info.event
