"""The atomic-write rule: complete file or the old one, never a partial one."""

import pytest

from spikingresformer.fileio import atomic_open, atomic_write_bytes, atomic_write_with, remove_orphans


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_with_name_writer(tmp_path):
    target = tmp_path / "w.txt"
    atomic_write_with(target, lambda name: open(name, "w").write("hi"))
    assert target.read_text() == "hi"


def test_remove_orphans(tmp_path):
    (tmp_path / ".best.pth.123.tmp").write_bytes(b"x")
    (tmp_path / "best.pth").write_bytes(b"y")
    removed = remove_orphans(tmp_path)
    assert [p.name for p in removed] == [".best.pth.123.tmp"]
    assert (tmp_path / "best.pth").exists()
