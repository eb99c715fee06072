"""Readers and writers of the jAER AEDAT 2.0 (CIFAR10-DVS) and AEDAT 3.1 (DVS128 Gesture) event files, vectorised.

Events are :class:`Events`: ``t`` (int64, us), ``x``, ``y`` (int32 column and row) and ``p`` (uint8
polarity, 1 = ON). ``docs/data.md`` describes both file layouts and the address decoding.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple, Union

import numpy as np

from .errors import EventFileError

__all__ = ["Events", "read_aedat2_raw", "read_cifar10dvs", "read_aedat31", "write_aedat2", "write_aedat31",
           "cifar10dvs_address", "AEDAT31_HEADER", "POLARITY_EVENT"]

PathLike = Union[str, os.PathLike]

#: eventType of polarity event packets in AEDAT 3.1.
POLARITY_EVENT = 1
#: Size in bytes of an AEDAT 3.1 packet header.
PACKET_HEADER_BYTES = 28
_PACKET_HEADER = struct.Struct("<HHIIIIII")
#: Bytes of one AEDAT 2.0 record (address + timestamp).
AEDAT2_RECORD_BYTES = 8

AEDAT2_HEADER = (
    b"#!AER-DAT2.0\r\n"
    b"# This is a raw AE data file - do not edit\r\n"
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
    b"# Timestamps tick is 1 us\r\n"
)
AEDAT31_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"

_VERSION_RE = re.compile(r"^#!AER-DAT(\d+)\.(\d+)\s*$")


@dataclass(frozen=True)
class Events:
    """An event stream: timestamps (us), pixel column, pixel row and polarity (1 = ON)."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.t, self.x, self.y, self.p))

    def select(self, mask: np.ndarray) -> "Events":
        """The events where ``mask`` is true (boolean mask, index array or slice)."""
        return Events(self.t[mask], self.x[mask], self.y[mask], self.p[mask])


def _parse_header(buf: bytes, path: PathLike, major: int) -> Tuple[List[str], int]:
    """Split the ``#`` header lines off ``buf``; returns (lines, offset of the first data byte)."""
    if not buf.startswith(b"#"):
        raise EventFileError(path, f"bad header: the file does not start with a '#!AER-DAT{major}.x' version line "
                                   f"(first bytes {buf[:16]!r}); not an AEDAT {major} file")
    lines: List[str] = []
    pos = 0
    end_marker_seen = False
    while pos < len(buf) and buf[pos : pos + 1] == b"#":
        nl = buf.find(b"\n", pos)
        if nl < 0:
            raise EventFileError(path, f"bad header: header line at byte {pos} has no line end")
        line = buf[pos:nl].decode("latin-1").rstrip("\r")
        lines.append(line)
        pos = nl + 1
        if line.strip() == "#!END-HEADER":
            end_marker_seen = True
            break
        if major == 3 and len(lines) == 1 and not _VERSION_RE.match(line):
            break
    m = _VERSION_RE.match(lines[0])
    if m is None:
        raise EventFileError(path, f"bad header: first line {lines[0][:60]!r} is not a '#!AER-DAT{major}.x' "
                                   "version line")
    if int(m.group(1)) != major:
        raise EventFileError(path, f"bad header: file is AEDAT {m.group(1)}.{m.group(2)}, expected AEDAT {major}.x")
    if major == 3 and not end_marker_seen:
        raise EventFileError(path, "bad header: no '#!END-HEADER' line closes the AEDAT 3 header")
    return lines, pos


def read_aedat2_raw(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read a jAER AEDAT 2.0 file: ``(addresses uint32, timestamps int64)``, big-endian records."""
    buf = Path(path).read_bytes()
    _, start = _parse_header(buf, path, major=2)
    nbytes = len(buf) - start
    if nbytes % AEDAT2_RECORD_BYTES:
        raise EventFileError(
            path,
            f"truncated record: {nbytes} data bytes after the header are not a whole number of "
            f"{AEDAT2_RECORD_BYTES}-byte records (the last record has only {nbytes % AEDAT2_RECORD_BYTES} bytes)",
        )
    words = np.frombuffer(buf, dtype=">u4", offset=start).reshape(-1, 2)
    return words[:, 0].astype(np.uint32), words[:, 1].astype(np.int64)


def cifar10dvs_address(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Raw DVS128 address of CIFAR10-DVS events given in the reader's (x, y, p) convention."""
    x, y, p = (np.asarray(v, dtype=np.int64) for v in (x, y, p))
    return (((127 - x) << 8) | ((127 - y) << 1) | (1 - p)).astype(np.uint32)


def read_cifar10dvs(path: PathLike) -> Events:
    """Read one CIFAR10-DVS recording (AEDAT 2.0, DVS128 addresses) in spikingjelly's convention."""
    addr, t = read_aedat2_raw(path)
    x_raw = ((addr & 0xFE) >> 1).astype(np.int32)
    y_raw = ((addr & 0x7F00) >> 8).astype(np.int32)
    return Events(t, 127 - y_raw, 127 - x_raw, (1 - (addr & 0x1)).astype(np.uint8))


def read_aedat31(path: PathLike, sensor_size: Tuple[int, int] = (128, 128)) -> Events:
    """Read the polarity events of an AEDAT 3.1 file (loops over packets, never over events).

    ``sensor_size`` is ``(width, height)``; an event outside it is reported as corruption.
    """
    buf = Path(path).read_bytes()
    _, pos = _parse_header(buf, path, major=3)
    words: List[np.ndarray] = []
    counts: List[int] = []
    overflows: List[int] = []  # per packet: the timestamps' high bits (bit 31 up)
    n = len(buf)
    while pos < n:
        if n - pos < PACKET_HEADER_BYTES:
            raise EventFileError(
                path, f"truncated record: packet header at byte {pos} has {n - pos} of {PACKET_HEADER_BYTES} bytes"
            )
        etype, _src, esize, ets_off, ets_ovf, ecap, _enum, _evalid = _PACKET_HEADER.unpack_from(buf, pos)
        nbytes = ecap * esize
        data_start = pos + PACKET_HEADER_BYTES
        if data_start + nbytes > n:
            raise EventFileError(
                path,
                f"truncated record: packet at byte {pos} declares {ecap} events of {esize} bytes "
                f"({nbytes} bytes) but only {n - data_start} bytes remain",
            )
        if etype == POLARITY_EVENT and ecap > 0:
            if esize != 8 or ets_off != 4:
                raise EventFileError(
                    path,
                    f"bad packet at byte {pos}: polarity events must be 8 bytes with the timestamp at offset 4, "
                    f"got eventSize={esize}, eventTSOffset={ets_off}",
                )
            words.append(np.frombuffer(buf, dtype="<u4", count=2 * ecap, offset=data_start))
            counts.append(ecap)
            overflows.append(ets_ovf)
        pos = data_start + nbytes
    w = np.concatenate(words).reshape(-1, 2) if words else np.zeros((0, 2), dtype=np.uint32)
    data, t = w[:, 0], w[:, 1].astype(np.int64)
    if any(overflows):  # full timestamps, in one pass
        t |= np.repeat(np.array(overflows, dtype=np.int64), counts) << 31
    x = ((data >> 17) & 0x7FFF).astype(np.int32)
    y = ((data >> 2) & 0x7FFF).astype(np.int32)
    p = ((data >> 1) & 0x1).astype(np.uint8)
    width, height = sensor_size
    bad = (x >= width) | (y >= height)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EventFileError(path, f"event {i} at ({int(x[i])}, {int(y[i])}) lies outside the {width}x{height} sensor")
    return Events(t, x, y, p)


def write_aedat2(path: PathLike, addresses: np.ndarray, timestamps: np.ndarray, header: bytes = AEDAT2_HEADER) -> None:
    """Write a jAER AEDAT 2.0 file from raw uint32 addresses and timestamps (big-endian records)."""
    rec = np.empty((len(addresses), 2), dtype=">u4")
    rec[:, 0] = np.asarray(addresses, dtype=np.uint32)
    rec[:, 1] = np.asarray(timestamps, dtype=np.int64).astype(np.uint32)
    with open(path, "wb") as f:
        f.write(header)
        f.write(rec.tobytes())


def write_aedat31(path: PathLike, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                  packet_events: int = 4096, header: bytes = AEDAT31_HEADER) -> None:
    """Write polarity events as an AEDAT 3.1 file, ``packet_events`` per packet (valid mark set)."""
    t = np.asarray(t, dtype=np.int64)
    data = (
        (np.asarray(x, dtype=np.uint32) << 17)
        | (np.asarray(y, dtype=np.uint32) << 2)
        | (np.asarray(p, dtype=np.uint32) << 1)
        | np.uint32(1)
    )
    chunks: List[bytes] = [header]
    for s in range(0, len(t), packet_events):
        tt = t[s : s + packet_events]
        n = len(tt)
        ovf = int(tt[0] >> 31) if n else 0
        if n and int(tt[-1] >> 31) != ovf:  # keep one overflow value per packet
            raise ValueError("a packet would span a timestamp overflow; use a smaller packet_events")
        rec = np.empty((n, 2), dtype="<u4")
        rec[:, 0] = data[s : s + n]
        rec[:, 1] = (tt & 0x7FFFFFFF).astype(np.uint32)
        chunks.append(_PACKET_HEADER.pack(POLARITY_EVENT, 1, 8, 4, ovf, n, n, n))
        chunks.append(rec.tobytes())
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
