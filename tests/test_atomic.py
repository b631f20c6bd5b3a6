"""Atomic writes: a failure at any point leaves the previous file whole and no litter."""

import json
import os

import pytest
import torch

from logitnorm_plugin._core import atomic


def test_write_json_and_torch_save_round_trip(tmp_path):
    atomic.write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1}
    atomic.torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(3))


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "t.txt", "hi")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_failure_while_writing_keeps_the_old_file(tmp_path):
    path = atomic.write_text(tmp_path / "t.txt", "old")

    def broken(f):
        f.write("half of the new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic.atomic_write(path, broken, binary=False)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["t.txt"]


def test_failure_at_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic.write_bytes(tmp_path / "b.bin", b"old")

    def no_replace(src, dst):
        raise OSError("power cut before rename")

    monkeypatch.setattr(atomic.os, "replace", no_replace)
    with pytest.raises(OSError, match="power cut"):
        atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["b.bin"]


def test_full_disk_and_torch_short_write_are_storage_errors(tmp_path):
    import errno

    from logitnorm_plugin._core.errors import StorageError, UserError

    path = atomic.write_bytes(tmp_path / "c.pt", b"old")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    def short_write(f):  # what torch.save reports when the disk fills up under it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    for write, words in ((full, "the disk is full"), (short_write, "most likely because")):
        with pytest.raises(StorageError, match=words) as info:
            atomic.atomic_write(path, write)
        assert isinstance(info.value, UserError) and "c.pt" in str(info.value)
        assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["c.pt"]
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors stay what they are
        atomic.atomic_write(path, lambda f: (_ for _ in ()).throw(RuntimeError("unrelated")))
