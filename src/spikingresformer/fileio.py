"""Files that are complete or absent: a temporary file beside the destination, synced, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

__all__ = ["TMP_SUFFIX", "atomic_open", "atomic_write_bytes", "atomic_write_with", "remove_orphans"]

#: Suffix of the temporary files (``.<name>.<random>.tmp`` next to the destination).
TMP_SUFFIX = ".tmp"

PathLike = Union[str, os.PathLike]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """A fresh temporary file name beside ``path``; after the block it is synced and renamed over
    ``path``, or deleted if the block raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` only when the ``with`` block ends without error."""
    with _replacing(Path(path)) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: PathLike, data: Union[bytes, bytearray, memoryview]) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_with(path: PathLike, write: Callable[[str], None]) -> Path:
    """Atomically create ``path`` with ``write(tmp_name)``, for writers that only take a file name."""
    with _replacing(Path(path)) as tmp:
        write(tmp)
    return Path(path)


def remove_orphans(folder: PathLike, name: str = "*") -> list[Path]:
    """Delete temporary files that killed writers left in ``folder`` (for destination ``name``)."""
    removed = []
    for p in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
