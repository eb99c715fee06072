"""The event-frame cache checks what it reads: a truncated, corrupted, wrong-shape, wrong-dtype, NaN, wrong-T
or pickled entry is reported by name and rebuilt (never a crash), and a rewritten source is framed again."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from spikingresformer.data import CIFAR10DVS, DVS128Gesture, EventDigits, EventFileError, FrameCacheWarning
from spikingresformer.data import aedat as aedat_mod
from spikingresformer.data.framing import FRAME_CACHE_ENV, FrameCache, default_cache_root, source_stamp
from test_data_events import counting, loop_frames, make_cifar10dvs, make_gesture, random_events, write_cifar_aedat

T = 3


@pytest.fixture()
def cifar(tmp_path, monkeypatch):
    """A 2-files-per-class CIFAR10-DVS tree, its test part with a cache, and the files the reader opens."""
    written = make_cifar10dvs(tmp_path / "c", ids=[0, 1], n_events=25)
    ds = CIFAR10DVS(tmp_path / "c", False, T=T, cache_dir=str(tmp_path / "cache"))
    return ds, written, counting(monkeypatch, "read_cifar10dvs")


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _good_entry(ds: CIFAR10DVS, i: int) -> Path:
    ds[i]
    path = ds.cache.path(ds.samples[i][0][: -len(".aedat")])
    assert path.is_file()
    return path


def _stamp(ds: CIFAR10DVS, i: int) -> str:
    return source_stamp(ds.path(i))


def _bad_entries(ds: CIFAR10DVS, i: int, good: bytes):
    counts = np.zeros((T, 2, 128, 128), np.uint16)
    stamp = np.array(_stamp(ds, i))
    yield "truncated", good[: len(good) // 2], "cannot be read"
    flipped = bytearray(good)
    for k in range(len(good) // 3, len(good) // 3 + 16):
        flipped[k] ^= 0x5A
    yield "corrupted", bytes(flipped), "cannot be read"
    yield "empty", b"", "cannot be read"
    yield "text", b"this is not a cache entry\n", "cannot be read"
    yield "wrong shape", _npz(frames=counts[:, :, :64], source=stamp, T=np.array(T)), r"shape \(3, 2, 64, 128\)"
    yield "wrong dtype", _npz(frames=counts.astype(np.int64), source=stamp, T=np.array(T)), "holds int64 frames"
    nan = counts.astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    yield "NaN", _npz(frames=nan, source=stamp, T=np.array(T)), "float32 frames with NaN"
    yield "wrong T", _npz(frames=counts, source=stamp, T=np.array(T + 1)), "made for T=4, expected T=3"
    yield "no frames", _npz(source=stamp, T=np.array(T)), "cannot be read"
    yield "pickle", _npz(frames=np.array([print], dtype=object), source=stamp, T=np.array(T)), "cannot be read"


def test_every_bad_entry_is_named_deleted_and_rebuilt(cifar):
    ds, written, reads = cifar
    i = 4
    path = _good_entry(ds, i)
    good = path.read_bytes()
    expected = loop_frames(written[ds.samples[i][0]], T).astype(np.float32)
    for case, blob, problem in _bad_entries(ds, i, good):
        path.write_bytes(blob)
        reads.clear()
        with pytest.warns(FrameCacheWarning, match=re.escape(str(path)) + ".*" + problem):
            x, _ = ds[i]
        assert np.array_equal(x[:, :2].numpy(), expected), case
        assert reads == [ds.path(i).name], case  # framed again from the source ...
        reads.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds[i]  # ... and the rewritten entry is good again: no warning, no reading
        assert reads == [], case


def test_a_bad_entry_and_a_bad_source_give_the_source_error(cifar):
    ds, _, _ = cifar
    path = _good_entry(ds, 0)
    path.write_bytes(b"PK\x03\x04 garbage")
    ds.path(0).write_bytes(ds.path(0).read_bytes() + b"\x01")  # truncated record
    with pytest.warns(FrameCacheWarning, match=re.escape(str(path))):
        with pytest.raises(EventFileError, match="truncated record") as e:
            ds[0]
    assert str(ds.path(0)) in str(e.value)
    assert not path.exists()  # the bad entry went; nothing half-written took its place


def test_a_rewritten_source_of_the_same_size_is_framed_again(cifar):
    ds, _, reads = cifar
    i = 2
    first, _ = ds[i]
    src = ds.path(i)
    before = os.stat(src)
    new_events = random_events(np.random.default_rng(99), len(ds.events(i)))  # as many events: the same size
    reads.clear()
    write_cifar_aedat(src, new_events)
    after = os.stat(src)
    assert after.st_size == before.st_size
    if after.st_mtime_ns == before.st_mtime_ns:  # rewritten within one tick of the file-system clock
        os.utime(src, ns=(after.st_atime_ns, after.st_mtime_ns + 1_000_000_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a changed source is not a broken entry: no warning
        x, _ = ds[i]
    assert reads == [src.name]
    assert np.array_equal(x[:, :2].numpy(), loop_frames(new_events, T).astype(np.float32))
    assert not np.array_equal(x.numpy(), first.numpy())


def test_gesture_labels_rewritten_with_the_same_size_are_framed_again(tmp_path, monkeypatch):
    written = make_gesture(tmp_path / "g")
    ds = DVS128Gesture(tmp_path / "g", False, T=T, cache_dir=str(tmp_path / "cache"))
    before, _ = ds[0]  # user24_natural row 1: class 11, [1_000_000, 1_600_000)
    csv = tmp_path / "g" / "user24_natural_labels.csv"
    text = csv.read_text()
    csv.write_text(text.replace("11,1000000,1600000", "11,1300000,1900000"))
    st = os.stat(csv)
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    reads = counting(monkeypatch, "read_aedat31")
    again = DVS128Gesture(tmp_path / "g", False, T=T, cache_dir=str(tmp_path / "cache"))
    x, _ = again[0]
    seg = [e for e in written["user24_natural.aedat"] if 1_300_000 <= e[0] < 1_900_000]
    assert reads == ["user24_natural.aedat"]
    assert np.array_equal(x[:, :2].numpy(), loop_frames(seg, T).astype(np.float32))
    assert not np.array_equal(x.numpy(), before.numpy())


def test_event_digits_entry_is_checked_too(tmp_path):
    ds = EventDigits(False, T=2, sensor_size=8, digit_size=6, cache_dir=str(tmp_path))
    (entry,) = [p for p in tmp_path.rglob("*.npz")]
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(FrameCacheWarning, match=re.escape(str(entry))):
        again = EventDigits(False, T=2, sensor_size=8, digit_size=6, cache_dir=str(tmp_path))
    assert all(np.array_equal(ds.frames(i), again.frames(i)) for i in range(len(ds)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EventDigits(False, T=2, sensor_size=8, digit_size=6, cache_dir=str(tmp_path))


def test_stamp_holds_size_and_modification_time(tmp_path):
    f = tmp_path / "a.aedat"
    f.write_bytes(b"12345")
    st = os.stat(f)
    assert source_stamp(f) == f"a.aedat:5:{st.st_mtime_ns}"
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert source_stamp(f) != f"a.aedat:5:{st.st_mtime_ns}"


def test_cache_location_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(FRAME_CACHE_ENV, str(tmp_path / "frames"))
    monkeypatch.setenv("SPIKINGRESFORMER_CACHE", str(tmp_path / "old"))
    assert FRAME_CACHE_ENV == "SPIKINGRESFORMER_FRAME_CACHE"
    assert default_cache_root() == tmp_path / "frames"
    assert FrameCache("x", tmp_path, 4).dir.parent.parent == tmp_path / "frames"
    monkeypatch.delenv(FRAME_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.warns(FutureWarning, match="SPIKINGRESFORMER_CACHE is no longer read.*SPIKINGRESFORMER_FRAME_CACHE"):
        assert default_cache_root() == tmp_path / "xdg" / "spikingresformer"
