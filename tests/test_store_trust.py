"""Issue 22 points 3 and 6, and the damaged store rows of point 11: the result store opens only
a regular file that is ours, seals each cell and checks the seal on every read.

Built as an attacker would: real symbolic links, a real SQLite database of another
application, a digit of a stored AUROC changed with ``sqlite3``, a row replaced by bad JSON and
resealed (anyone can recompute a seal: it finds accidents and casual edits)."""

import hashlib
import json
import os
import sqlite3

import pytest
from toy_store import one_line
from toy_store import write_store as toy_write_store

from logitnorm_plugin._core.errors import IncompatibleResultsError, StorageError
from logitnorm_plugin.store import seals
from logitnorm_plugin.store.database import APPLICATION_ID, ForeignStoreError
from logitnorm_plugin.store.results import STORE_FILE, ResultStore, open_results


def write_store(folder):
    """The toy store (``toy_store.write_store``) in ``folder``."""
    return toy_write_store(folder / STORE_FILE)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_database(path):
    """Another application's SQLite file (no schema record of ours)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT, password TEXT)")
    db.execute("INSERT INTO users VALUES ('alice', 'x')")
    db.commit()
    db.close()
    return path


# -- point 3: links and foreign databases ---------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "-wal", "-journal"])
def test_a_symlinked_store_or_journal_is_refused_and_its_target_untouched(tmp_path, suffix,
                                                                          capsys):
    victim = foreign_database(tmp_path / "victim.sqlite")
    before = digest(victim)
    out = tmp_path / "out"
    out.mkdir()
    if suffix:  # a real store of ours, with a hostile journal beside it
        write_store(out)
    os.symlink(victim, out / f"{STORE_FILE}{suffix}")
    for attempt in (lambda: ResultStore(out / STORE_FILE),
                    lambda: ResultStore(out / STORE_FILE, replace_incompatible=True),
                    lambda: open_results(out)):
        with pytest.raises(StorageError) as info:
            attempt()
        text = str(info.value)
        assert "\n" not in text and "symbolic link" in text and f"{STORE_FILE}{suffix}" in text
    one_line(capsys, ["export", out], "symbolic link", STORE_FILE)
    assert digest(victim) == before
    assert os.path.islink(out / f"{STORE_FILE}{suffix}")


def test_a_dangling_store_link_creates_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "planted.sqlite", out / STORE_FILE)
    with pytest.raises(StorageError, match="does not exist"):
        ResultStore(out / STORE_FILE)
    assert not (tmp_path / "planted.sqlite").exists()


def test_a_foreign_sqlite_database_is_refused_and_left_byte_identical(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    foreign = foreign_database(tmp_path / "out" / STORE_FILE)
    before = digest(foreign)
    for force in (False, True):  # --force moves aside only stores of ours
        with pytest.raises(ForeignStoreError, match="another application.*users"):
            ResultStore(foreign, replace_incompatible=force)
    one_line(capsys, ["export", tmp_path / "out"], "not a result store")
    assert digest(foreign) == before
    assert sorted(p.name for p in foreign.parent.iterdir()) == [STORE_FILE]
    # an application that marks its files (PRAGMA application_id), even with no tables yet
    marked = tmp_path / "marked.sqlite"
    db = sqlite3.connect(marked)
    db.execute("PRAGMA application_id = 1234")
    db.commit()
    db.close()
    before = digest(marked)
    with pytest.raises(ForeignStoreError, match="application id is 0x4d2"):
        ResultStore(marked)
    assert digest(marked) == before


def test_our_stores_of_before_the_marks_keep_opening(tmp_path):
    path = write_store(tmp_path / "old")
    with sqlite3.connect(path) as db:  # as a version before application id and seals wrote it
        db.execute("PRAGMA application_id = 0")
        db.execute("ALTER TABLE cells DROP COLUMN seal")
        db.execute("DELETE FROM meta WHERE key = 'cells_sealed'")
    db.close()
    with open_results(path.parent) as store:
        assert [round(r["AUROC"], 4) for r in store.rows("cfg")] == [0.4692, 0.5692, 0.4792,
                                                                     0.5792]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("SELECT COUNT(*) FROM cells WHERE seal IS NULL").fetchone()[0] == 0
    # a store whose creation stopped before its schema record: recognised by its tables
    db.execute("DELETE FROM meta")
    db.execute("PRAGMA application_id = 0")
    db.commit()
    db.close()
    with ResultStore(path) as store:
        assert store.count() == 4


# -- point 6: sealed cells ------------------------------------------------------------------


def _edit_one_digit(path, dataset="svhn", seed_model="w0"):
    db = sqlite3.connect(path)
    (text,) = db.execute("SELECT row FROM cells WHERE model_id = ? AND dataset = ?",
                         (seed_model, dataset)).fetchone()
    assert "0.4692" in text
    db.execute("UPDATE cells SET row = ? WHERE model_id = ? AND dataset = ?",
               (text.replace("0.4692", "0.4942"), seed_model, dataset))
    db.commit()
    db.close()


def test_a_changed_digit_is_an_error_naming_the_cell(tmp_path, capsys):
    path = write_store(tmp_path / "out")
    _edit_one_digit(path)
    with ResultStore(path) as store:
        for read in (lambda: store.rows("cfg"), lambda: store.cells("w0", "cfg"),
                     lambda: store.aggregate("cfg")):
            with pytest.raises(seals.TamperedCellError) as info:
                read()
            text = str(info.value)
            assert "\n" not in text
            assert "model 'ln/s0', detector 'msp', dataset 'svhn'" in text
            assert "changed after it was written" in text and "--force" in text
        assert store.cells("w1", "cfg")  # the other model's cells are intact
    for command in ("export", "report"):
        one_line(capsys, [command, path.parent], "changed after it was written", "'svhn'")
    # --force: the whole store is moved aside (the numbers around it came from the same file)
    with ResultStore(path, replace_incompatible=True) as store:
        assert store.count() == 0
    assert (path.parent / f"{STORE_FILE}.tampered.bak").is_file()


def test_aggregation_reads_verified_cells_only(tmp_path):
    """The SQL GROUP BY of the aggregation runs over checked cells: a changed cell among those
    selected is the error naming it; outside the selection it does not matter."""
    path = write_store(tmp_path / "out")
    with ResultStore(path) as store:
        before = store.aggregate("cfg", model_ids=["w1"])
    _edit_one_digit(path)
    with ResultStore(path) as store:
        assert repr(store.aggregate("cfg", model_ids=["w1"])) == repr(before)  # NaN != NaN
        with pytest.raises(seals.TamperedCellError, match="'ln/s0'"):
            store.aggregate("cfg", model_ids=["w0", "w1"])
    (entry,) = before
    assert entry["Seeds"] == 1 and entry["Datasets"] == 2
    assert entry["AUROC"] == pytest.approx((0.4792 + 0.5792) / 2)


def test_a_removed_seal_is_a_changed_cell(tmp_path):
    path = write_store(tmp_path / "out")
    db = sqlite3.connect(path)
    db.execute("UPDATE cells SET seal = NULL WHERE dataset = 'textures' AND model_id = 'w1'")
    db.commit()
    db.close()
    with ResultStore(path) as store, pytest.raises(seals.TamperedCellError,
                                                   match="'ln/s1'.*'textures'"):
        store.rows()


# -- point 11: damaged rows -----------------------------------------------------------------


@pytest.mark.parametrize("bad", ['{"AUROC": 0.5', '[1, 2]', '{"AUROC": "high"}',
                                 '{"AUROC": [0.5]}', '{"AUROC": 0.5, "Dataset": 3}'])
def test_a_damaged_row_is_one_line_naming_the_cell(tmp_path, capsys, bad):
    path = write_store(tmp_path / "out")
    db = sqlite3.connect(path)
    seals.install(db)  # the attacker reseals: the seal is not a secret
    db.execute("UPDATE cells SET row = ? WHERE model_id = 'w1' AND dataset = 'textures'",
               (bad,))
    db.execute(f"UPDATE cells SET seal = {seals.SEAL_SQL}")
    db.commit()
    db.close()
    with ResultStore(path) as store, pytest.raises(seals.DamagedCellError) as info:
        store.rows("cfg")
    assert "model 'ln/s1', detector 'msp', dataset 'textures'" in str(info.value)
    assert isinstance(info.value, IncompatibleResultsError)
    one_line(capsys, ["export", path.parent], "damaged cell", "'textures'")


def test_an_unsealed_store_with_a_damaged_row_is_not_sealed(tmp_path):
    path = write_store(tmp_path / "out")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE cells DROP COLUMN seal")
        db.execute("DELETE FROM meta WHERE key = 'cells_sealed'")
        db.execute("UPDATE cells SET row = ? WHERE dataset = 'svhn' AND model_id = 'w0'",
                   (json.dumps({"AUROC": {"x": 1}}),))
    db.close()
    with pytest.raises(seals.DamagedCellError, match="'ln/s0'.*'svhn'.*AUROC"):
        ResultStore(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'cells_sealed'").fetchone() is None
    db.close()


@pytest.mark.parametrize("table", ["configs", "runs"])
def test_a_damaged_configuration_or_provenance_is_one_line(tmp_path, capsys, table):
    path = write_store(tmp_path / "out")
    db = sqlite3.connect(path)
    column = {"configs": "config", "runs": "provenance"}[table]
    db.execute(f"UPDATE {table} SET {column} = ?", ('{"groups": [',))
    seals.install(db)  # resealed, as in the test of damaged cells: the seal is not a secret
    db.execute(f"UPDATE {table} SET seal = {seals.record_seal_sql(table)}")
    db.commit()
    db.close()
    what = {"configs": "the configuration 'cfg'", "runs": "the provenance of run 1"}[table]
    one_line(capsys, ["export", path.parent], "damaged record", what)
