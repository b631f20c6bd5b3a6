"""Issue 22 point 7: cleaning up after a crashed run removes only temporary files of ours (their
name carries a mark only ``_core/atomic.py`` writes), never a user's file that merely looks like
one, in an ``--out`` folder that already held files."""

import os
import time

from logitnorm_plugin._core import atomic
from logitnorm_plugin.cli import main

TRAIN = ["train", "--dataset", "digits", "--arch-arg", "width=8", "--device", "cpu", "--quiet",
         "--epochs", "1"]


def _user_files(folder, names=(".notes.md.12345678.tmp", ".X.12345678.tmp",
                                ".model.pt.abcdefgh.tmp", ".checkpoint.pt.ab12cd_9.tmp")):
    """Files a user (or another tool) keeps, named the way temporaries used to be matched."""
    old = time.time() - 24 * 3600  # older than any process of the test
    files = {}
    for name in names:
        path = folder / name
        path.write_bytes(f"user data of {name}\n".encode())
        os.utime(path, (old, old))
        files[path] = path.read_bytes()
    return files


def test_only_our_marked_leftovers_are_removed(tmp_path):
    user = _user_files(tmp_path)
    # our shape with a made-up mark, and with the mark of another name
    user.update(_user_files(tmp_path, (
        ".model.pt.abcdefgh.lnp00000000.tmp",
        f".model.pt.abcdefgh.lnp{atomic.temporary_mark('other.json')}.tmp")))
    crashed = atomic.temporary_path(tmp_path / "checkpoint.pt")  # as a killed run leaves it
    crashed.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(crashed, (old, old))
    link = atomic.temporary_path(tmp_path / "model.json")  # our name, but a link: not ours
    os.symlink(tmp_path / ".X.12345678.tmp", link)
    os.utime(link, (old, old), follow_symlinks=False)
    assert atomic.is_our_temporary(crashed.name)
    assert not any(atomic.is_our_temporary(p.name) for p in user)
    assert atomic.remove_stale_temporaries(tmp_path) == [crashed]
    assert {p: p.read_bytes() for p in user} == user
    assert os.path.islink(link)


def test_atomic_writes_use_marked_names(tmp_path, monkeypatch):
    seen = []
    real = atomic.tempfile.mkstemp

    def spy(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        seen.append(os.path.basename(name))
        return fd, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", spy)
    atomic.write_text(tmp_path / "a.json", "{}")
    assert len(seen) == 1 and atomic.is_our_temporary(seen[0]), seen
    assert atomic.is_our_temporary(atomic.temporary_path(tmp_path / "b.pt").name)


def test_train_into_an_existing_out_keeps_the_users_files(tmp_path, capsys):
    """Through the command line: a real training run in a folder that holds user files."""
    run = tmp_path / "run"
    run.mkdir()
    user = _user_files(run)
    assert main([*TRAIN, "--out", str(run)]) == 0, capsys.readouterr().err
    assert (run / "model.pt").is_file()
    assert {p: p.read_bytes() for p in user} == user
