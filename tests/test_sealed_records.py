"""Issue 22 point 6, extended to the store's other tables: each benchmark configuration
(``configs``), each run's provenance (``runs``) and each stored score vector (``scores``) is
sealed like a cell, checked by every read that uses it; a changed row is one line naming the
table and the row's key.

Built as an attacker would: a real store written by the package, then a group of OOD sets, a
temperature in a provenance record or one float of a score vector changed with the standard
library's ``sqlite3``; a store of before these seals made by dropping them the same way."""

import json
import sqlite3
import struct

import pytest
import torch
from toy_store import SCORES, one_line
from toy_store import write_store as toy_write_store

from logitnorm_plugin._core.conventions import ID_DATASET
from logitnorm_plugin.store import seals
from logitnorm_plugin.store.results import STORE_FILE, ResultStore, open_results
from logitnorm_plugin.workflows.shards import merge_shards, shard_path


def write_store(path):
    """The toy store with per-sample scores, near/far groups and a provenance recording
    ``t=0.08``."""
    return toy_write_store(path, groups={"near": ["svhn"], "far": ["textures"]},
                           run_config={"t": 0.08}, scores=True)


def edit(path, sql, args=()):
    db = sqlite3.connect(path)
    assert db.execute(sql, args).rowcount == 1
    db.commit()
    db.close()


def change_groups(path):
    """near and far swapped: the published near/far columns change."""
    edit(path, "UPDATE configs SET config = replace(replace(replace(config, '\"near\"', "
               "'\"x\"'), '\"far\"', '\"near\"'), '\"x\"', '\"far\"') WHERE config_id = 'cfg'")


def change_t(path):
    db = sqlite3.connect(path)
    (text,) = db.execute("SELECT provenance FROM runs WHERE run_id = 1").fetchone()
    db.close()
    assert '"t": 0.08' in text
    edit(path, "UPDATE runs SET provenance = ? WHERE run_id = 1",
         (text.replace('"t": 0.08', '"t": 1.0'),))


def change_one_score(path, dataset="textures"):
    db = sqlite3.connect(path)
    (data,) = db.execute("SELECT data FROM scores WHERE model_id = 'w1' AND dataset = ?",
                         (dataset,)).fetchone()
    db.close()
    edit(path, "UPDATE scores SET data = ? WHERE model_id = 'w1' AND dataset = ?",
         (struct.pack("<f", 9.5) + data[4:], dataset))


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "out" / STORE_FILE)


def test_a_changed_configuration_is_one_line_naming_it(store_path, capsys):
    with ResultStore(store_path) as store:
        before = store.aggregate("cfg")
    change_groups(store_path)
    with ResultStore(store_path) as store:
        for read in (lambda: store.config("cfg"), lambda: store.aggregate("cfg"),
                     lambda: store.results_config("cfg")):
            with pytest.raises(seals.TamperedRecordError) as info:
                read()
            text = str(info.value)
            assert "\n" not in text
            assert "its configs table" in text and "the configuration 'cfg'" in text
            assert "changed after it was written" in text and "--force" in text
        assert len(store.rows("cfg")) == 4  # the cells themselves are intact
    assert before[0]["near/AUROC"] != before[0]["far/AUROC"]
    for command in ("export", "report"):
        one_line(capsys, [command, store_path.parent], "configs table", "'cfg'")


def test_a_changed_provenance_is_one_line_naming_the_run(store_path, capsys):
    change_t(store_path)
    with ResultStore(store_path) as store:
        for read in (lambda: store.provenance(1), store.runs, store.provenance_summary):
            with pytest.raises(seals.TamperedRecordError,
                               match=r"its runs table .*\(the provenance of run 1: ") as info:
                read()
            assert "\n" not in str(info.value)
        assert store.config("cfg")["groups"]["near"] == ["svhn"]
    for command in ("export", "report"):
        one_line(capsys, [command, store_path.parent], "runs table", "provenance of run 1")


def test_changed_scores_are_one_line_naming_model_detector_and_dataset(store_path, capsys):
    change_one_score(store_path)
    with ResultStore(store_path) as store:
        assert torch.equal(store.scores("w0", "cfg", "msp", "textures"), SCORES["textures"])
        assert torch.equal(store.scores("w1", "cfg", "msp", "svhn"), SCORES["svhn"])
        with pytest.raises(seals.TamperedRecordError) as info:
            store.scores("w1", "cfg", "msp", "textures")
    text = str(info.value)
    assert "\n" not in text and "its scores table" in text
    assert "model 'w1', detector 'msp', dataset 'textures'" in text
    one_line(capsys, ["report", store_path.parent], "scores table", "'w1'", "'textures'")


def test_a_removed_seal_or_a_resealed_row_of_the_wrong_size(store_path):
    edit(store_path, "UPDATE scores SET seal = NULL WHERE model_id = 'w0' AND dataset = 'svhn'")
    with ResultStore(store_path) as store, pytest.raises(seals.TamperedRecordError,
                                                         match="'w0'.*'svhn'"):
        store.scores("w0", "cfg", "msp", "svhn")
    db = sqlite3.connect(store_path)
    seals.install(db)  # the attacker reseals: the seal is not a secret
    db.execute("UPDATE scores SET n = 8 WHERE model_id = 'w0' AND dataset = 'svhn'")
    db.execute(f"UPDATE scores SET seal = {seals.record_seal_sql('scores')}")
    db.commit()
    db.close()
    with ResultStore(store_path) as store, pytest.raises(seals.DamagedCellError,
                                                         match="8 float32 values.* 28 bytes"):
        store.scores("w0", "cfg", "msp", "svhn")


@pytest.mark.parametrize("change", [change_groups, change_t, change_one_score])
def test_force_moves_a_store_with_a_changed_record_aside(store_path, change):
    change(store_path)
    with ResultStore(store_path, replace_incompatible=True) as store:
        assert store.count() == 0 and store.config("cfg") is None
    assert (store_path.parent / f"{STORE_FILE}.tampered.bak").is_file()


def unseal_records(path):
    """The store as the version that sealed only its cells wrote it."""
    with sqlite3.connect(path) as db:
        for table in ("configs", "runs", "scores"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN seal")
        db.execute("DELETE FROM meta WHERE key = 'records_sealed'")
    db.close()


def test_an_older_store_is_sealed_on_first_open_then_checked(store_path):
    unseal_records(store_path)
    with open_results(store_path.parent) as store:
        assert store.config("cfg")["groups"] == {"near": ["svhn"], "far": ["textures"]}
        assert store.provenance(1)["config"] == {"t": 0.08}
        assert torch.equal(store.scores("w1", "cfg", "msp", "textures"), SCORES["textures"])
    db = sqlite3.connect(store_path)
    for table in ("configs", "runs", "scores"):
        assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE seal IS NULL").fetchone()[0] == 0
    assert db.execute("SELECT 1 FROM meta WHERE key = 'records_sealed'").fetchone()
    db.close()
    change_t(store_path)  # from now on, a change is found
    with open_results(store_path.parent) as store, pytest.raises(seals.TamperedRecordError):
        store.provenance_summary()


@pytest.mark.parametrize("table", ["configs", "runs", "scores"])
def test_an_older_store_with_a_damaged_record_is_not_sealed(store_path, table):
    unseal_records(store_path)
    bad = {"configs": "UPDATE configs SET config = '[1, 2]'",
           "runs": "UPDATE runs SET provenance = '{\"t\": '",
           "scores": "UPDATE scores SET n = 3 WHERE model_id = 'w0' AND dataset = 'svhn'"}
    edit(store_path, bad[table])
    with pytest.raises(seals.DamagedCellError, match="damaged record"):
        ResultStore(store_path)
    db = sqlite3.connect(store_path)
    assert db.execute("SELECT 1 FROM meta WHERE key = 'records_sealed'").fetchone() is None
    for name in ("configs", "runs", "scores"):  # the one transaction was rolled back
        assert "seal" not in {r[1] for r in db.execute(f"PRAGMA table_info({name})")}
    db.close()


def test_shards_merge_with_their_seals_and_a_changed_shard_is_refused(tmp_path):
    out = tmp_path / "out"
    for slug in ("a", "b"):
        shard_path(out, slug).parent.mkdir(parents=True, exist_ok=True)
        write_store(shard_path(out, slug))
    merge_shards(out, [shard_path(out, "a")])
    with open_results(out) as store:  # every record merged is sealed as stored here
        assert json.dumps(store.config("cfg"), sort_keys=True)
        assert store.runs()[0]["provenance"]["config"] == {"t": 0.08}
        assert torch.equal(store.scores("w0", "cfg", "msp", ID_DATASET), SCORES[ID_DATASET])
    change_one_score(shard_path(out, "b"), ID_DATASET)
    with pytest.raises(seals.TamperedRecordError, match=r"b\.sqlite.*scores table.*'ID'"):
        merge_shards(out, [shard_path(out, "b")])
    assert shard_path(out, "b").is_file()  # kept, as it was
