"""Property-based tests of the two AEDAT readers: random valid files (written here, independently of the
library's writers) read back as the events written; random damage (truncation, flipped bytes, garbage
headers, inserted bytes) gives either a valid event stream or the documented EventFileError, never
another exception.

The examples are derandomised, so the suite sees the same ones on every run; raise
``SPIKINGRESFORMER_FUZZ_EXAMPLES`` (default 40 per test) to explore more.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikingresformer.data import EventFileError, read_aedat31, read_cifar10dvs

FUZZ = settings(max_examples=int(os.environ.get("SPIKINGRESFORMER_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=True, database=None)

coord = st.integers(0, 127)
comment = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).filter(
    lambda s: s.strip() != "!END-HEADER"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# AEDAT 2.0 (CIFAR10-DVS): big-endian (address, timestamp) records after '#' lines
# ------------------------------------------------------------------------------------------------

aedat2_events = st.lists(st.tuples(st.integers(0, 2**32 - 1), coord, coord, st.integers(0, 1)), max_size=200)


def aedat2_bytes(comments: List[str], events: List[Tuple[int, int, int, int]]) -> bytes:
    """A jAER AEDAT 2.0 file of (t, x, y, p) events in the reader's convention (DVS128 addresses)."""
    head = b"#!AER-DAT2.0\r\n" + b"".join(b"#" + c.encode() + b"\r\n" for c in comments)
    rec = b"".join(struct.pack(">II", ((127 - x) << 8) | ((127 - y) << 1) | (1 - p), t) for t, x, y, p in events)
    return head + rec


@FUZZ
@given(comments=st.lists(comment, max_size=4), events=aedat2_events)
def test_aedat2_round_trip(folder, comments, events):
    path = folder / "rt2.aedat"
    path.write_bytes(aedat2_bytes(comments, events))
    ev = read_cifar10dvs(path)
    assert list(zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist())) == events


# ------------------------------------------------------------------------------------------------
# AEDAT 3.1 (DVS128 Gesture): header up to '#!END-HEADER', then 28-byte packet headers and events
# ------------------------------------------------------------------------------------------------

polarity_packet = st.tuples(
    st.just(1), st.integers(0, 3),  # type 1, timestamp overflow
    st.lists(st.tuples(st.integers(0, 2**31 - 1), coord, coord, st.integers(0, 1), st.integers(0, 1)), max_size=60),
)
other_packet = st.tuples(
    st.integers(0, 12).filter(lambda k: k != 1), st.integers(1, 16), st.integers(0, 4), st.binary(max_size=64)
)
packets = st.lists(st.one_of(polarity_packet, other_packet), max_size=6)


def aedat31_bytes(comments: List[str], items: list) -> Tuple[bytes, List[Tuple[int, int, int, int]]]:
    """An AEDAT 3.1 file and the (full timestamp, x, y, p) polarity events it holds, in order."""
    out = [b"#!AER-DAT3.1\r\n", *(b"#" + c.encode() + b"\r\n" for c in comments), b"#!END-HEADER\r\n"]
    expected = []
    for item in items:
        if item[0] == 1:
            _, ovf, evs = item
            n = len(evs)
            out.append(struct.pack("<hhiiiiii", 1, 1, 8, 4, ovf, n, n, n))
            for t, x, y, p, valid in evs:
                out.append(struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | valid, t))
                expected.append(((ovf << 31) | t, x, y, p))
        else:
            etype, size, cap, blob = item
            body = (blob * (size * cap // max(len(blob), 1) + 1))[: size * cap] if blob else bytes(size * cap)
            out.append(struct.pack("<hhiiiiii", etype, 1, size, 0, 0, cap, cap, cap) + body)
    return b"".join(out), expected


@FUZZ
@given(comments=st.lists(comment, max_size=4), items=packets)
def test_aedat31_round_trip(folder, comments, items):
    blob, expected = aedat31_bytes(comments, items)
    path = folder / "rt31.aedat"
    path.write_bytes(blob)
    ev = read_aedat31(path)
    assert list(zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist())) == expected


# ------------------------------------------------------------------------------------------------
# Damaged files: only EventFileError (naming the file) or a well-formed event stream
# ------------------------------------------------------------------------------------------------


@st.composite
def damaged(draw, blob: bytes, body: int) -> bytes:
    """``blob`` truncated, with flipped bytes (anywhere, or only after the ``body`` header bytes), with a
    garbage start, or with bytes inserted."""
    kind = draw(st.sampled_from(["truncate", "flip", "flip body", "garbage header", "insert"]))
    n = len(blob)  # never 0: the version line is always there
    if kind == "truncate":
        return blob[: draw(st.integers(0, n - 1))]
    if kind.startswith("flip"):
        if kind == "flip body" and body == n:  # no records to damage: make some
            blob += draw(st.binary(min_size=8, max_size=64))
            n = len(blob)
        lo = body if kind == "flip body" else 0
        out = bytearray(blob)
        for pos, mask in draw(st.lists(st.tuples(st.integers(lo, n - 1), st.integers(1, 255)), min_size=1,
                                       max_size=8)):
            out[pos] ^= mask
        return bytes(out)
    if kind == "garbage header":
        return draw(st.binary(min_size=1, max_size=40)) + blob[draw(st.integers(0, min(n, 60))):]
    pos = draw(st.integers(0, n))
    return blob[:pos] + draw(st.binary(min_size=1, max_size=12)) + blob[pos:]


def _read_or_documented_error(reader, path: Path) -> str:
    """``"error"`` or ``"events"``: which of the two allowed outcomes reading ``path`` had."""
    try:
        ev = reader(path)
    except EventFileError as e:
        assert e.path == str(path) and str(path) in str(e)
        return "error"
    n = len(ev)
    assert ev.t.shape == ev.x.shape == ev.y.shape == ev.p.shape == (n,)
    assert ev.t.dtype == np.int64 and ev.p.dtype == np.uint8
    if n:
        assert 0 <= ev.x.min() and ev.x.max() < 128 and 0 <= ev.y.min() and ev.y.max() < 128
        assert set(np.unique(ev.p).tolist()) <= {0, 1}
    return "events"


@FUZZ
@given(data=st.data(), comments=st.lists(comment, max_size=2), events=aedat2_events)
def test_damaged_aedat2_gives_only_event_file_error(folder, data, comments, events):
    path = folder / "bad2.aedat"
    path.write_bytes(data.draw(damaged(aedat2_bytes(comments, events), len(aedat2_bytes(comments, [])))))
    _read_or_documented_error(read_cifar10dvs, path)


@FUZZ
@given(data=st.data(), comments=st.lists(comment, max_size=2), items=packets)
def test_damaged_aedat31_gives_only_event_file_error(folder, data, comments, items):
    path = folder / "bad31.aedat"
    path.write_bytes(data.draw(damaged(aedat31_bytes(comments, items)[0], len(aedat31_bytes(comments, [])[0]))))
    _read_or_documented_error(read_aedat31, path)


def test_damaged_records_reach_both_outcomes(tmp_path):
    """Flipped record bytes (header intact) must be read as events or rejected as documented; these cases
    make sure both outcomes, and so the event-stream checks above, are exercised."""
    rng = np.random.default_rng(0)
    outcomes = {read_cifar10dvs: set(), read_aedat31: set()}
    events = [(int(t), int(x), int(y), int(p)) for t, x, y, p in zip(rng.integers(0, 2**31, 50),
                                                                        *rng.integers(0, 128, (2, 50)),
                                                                        rng.integers(0, 2, 50))]
    blobs = {read_cifar10dvs: (aedat2_bytes([], events), len(aedat2_bytes([], []))),
             read_aedat31: (aedat31_bytes([], [(1, 0, [e + (1,) for e in events])])[0],
                            len(aedat31_bytes([], [])[0]) + 28)}
    for trial in range(40):
        for reader, (blob, body) in blobs.items():
            out = bytearray(blob)
            for pos in rng.integers(body, len(blob), 4):
                out[pos] ^= int(rng.integers(1, 256))
            path = tmp_path / f"flip{trial}.aedat"
            path.write_bytes(bytes(out))
            outcomes[reader].add(_read_or_documented_error(reader, path))
    assert outcomes[read_cifar10dvs] == {"events"}  # every 8-byte AEDAT 2 record decodes to a sensor pixel
    assert outcomes[read_aedat31] == {"events", "error"}  # AEDAT 3.1 x/y fields can leave the sensor
