"""``logitnorm-ood export``: tables in pytorch-ood's layout (Markdown, RST, CSV, JSON) read back
and compared with the store; ``ModelEntry`` snippets checked with pytorch-ood's registry."""

import csv
import dataclasses
import hashlib
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import parsers
import pytest
import torch

from logitnorm_plugin._core import provenance
from logitnorm_plugin._core.errors import IncompatibleResultsError
from logitnorm_plugin._core.model_groups import model_configuration, model_group_fields
from logitnorm_plugin.cli import main
from logitnorm_plugin.reporting import export
from logitnorm_plugin.reporting import model_entry as upstream
from logitnorm_plugin.store.results import STORE_FILE, ResultStore

OOD = ["near_a", "far_b", "far_c"]
GROUPS = {"near": ["near_a"], "far": ["far_b", "far_c"]}
LOSSES = ["cross_entropy", "logitnorm"]
SEEDS = [0, 1, 2]
DETECTORS = ["msp", "energy", "odin"]
METRICS = ("AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "FPR95-ID95")
# pytorch-ood's docs print percentages with two decimals: half a unit of the last digit
ROUNDING = 0.005 / 100 + 1e-12


def write_store(folder: Path) -> Path:
    """A real result store written through ResultStore's API: 2 losses x 3 seeds x 3 detectors
    x 3 OOD sets (near/far groups), random metric values."""
    rng = random.Random(0)
    with ResultStore(folder / STORE_FILE) as store:
        store.register_config("cfg0", {
            "benchmark": "toy", "protocol": "full", "seed": 0, "kwargs": {},
            "ood_names": OOD, "groups": GROUPS,
        })
        run = store.start_run(provenance.collect(
            device="cpu", config={"command": "logitnorm-ood bench --out results"}))
        for loss in LOSSES:
            for seed in SEEDS:
                acc, ece = rng.uniform(0.8, 0.99), rng.uniform(0.0, 0.2)
                for dataset in OOD:
                    for det in DETECTORS:
                        row = {
                            "Model": f"{loss}/s{seed}", "Loss": loss, "Seed": seed,
                            "Arch": "toy-net", "Detector": det, "Dataset": dataset,
                            "Group": "near" if dataset in GROUPS["near"] else "far",
                            "Benchmark": "toy", "Protocol": "full",
                            **{m: rng.random() for m in METRICS}, "ACC": acc, "ECE": ece,
                            # as the engine records it: the configuration without the seed
                            **model_group_fields(model_configuration(arch="toy-net", loss=loss)),
                        }
                        store.put(row, model_id=f"weights:{loss}{seed}", config_id="cfg0",
                                  detector_id=det, run_id=run)
    return folder


@pytest.fixture
def results(tmp_path):
    return write_store(tmp_path / "results")


def stored_rows(folder):
    with ResultStore(folder / STORE_FILE) as store:
        return store.rows(with_ids=True)


def expected(rows, loss, detector, metric, scope, dataset=None):
    """Mean and std over seeds, recomputed from the stored cells without store.aggregate."""
    names = {"dataset": [dataset], "mean": OOD}.get(scope) or GROUPS[scope]
    per_model = []
    for seed in SEEDS:
        values = [r[metric] for r in rows if r["Loss"] == loss and r["Seed"] == seed
                  and r["Detector"] == detector and r["Dataset"] in names]
        per_model.append(sum(values) / len(values))
    return statistics.mean(per_model), statistics.stdev(per_model)


def check_doc_records(records, rows):
    """Every (loss, scope, dataset, detector) once; every pytorch-ood metric equal to the store."""
    keys = [(r["loss"], r["scope"], r["Dataset"], r["Detector"]) for r in records]
    want = [(loss, "mean", None, d) for loss in LOSSES for d in DETECTORS]
    want += [(loss, "dataset", s, d) for loss in LOSSES for d in DETECTORS for s in OOD]
    assert sorted(keys, key=str) == sorted(want, key=str)
    for r in records:
        assert r["benchmark"] == "toy" and r["protocol"] == "full" and r["arch"] == "toy-net"
        for metric in export.DOC_METRICS:
            mean, _ = expected(rows, r["loss"], r["Detector"], metric, r["scope"], r["Dataset"])
            assert abs(r[metric] - mean) <= ROUNDING, (r, metric, mean)


def test_markdown_in_pytorch_ood_layout_reads_back_as_stored(results):
    path = export.export_results(results, formats=["md"])["md"]
    text = path.read_text(encoding="utf-8")
    records = parsers.parse_markdown(text)
    check_doc_records(records, stored_rows(results))
    # pytorch-ood's columns, in its order
    assert "| Detector | AUROC | AUTC  | AUPR-IN | AUPR-OUT | FPR95TPR |" in text
    assert "| Dataset | Detector | AUROC | AUTC  | AUPR-IN | AUPR-OUT | FPR95TPR |" in text
    # summary tables are sorted by AUROC ascending, as pytorch-ood's docs sort them
    for loss in LOSSES:
        aurocs = [r["AUROC"] for r in records if r["loss"] == loss and r["scope"] == "mean"]
        assert aurocs == sorted(aurocs)
    # two decimals, in percent
    assert all(len(cell.strip().split(".")[1]) == 2 for line in text.splitlines()
               if line.startswith("| msp") for cell in line.split("|")[2:-1])


def test_rst_grid_tables_read_back_as_stored(results):
    path = export.export_results(results, formats=["rst"])["rst"]
    text = path.read_text(encoding="utf-8")
    check_doc_records(parsers.parse_rst(text), stored_rows(results))
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Dataset "))
    assert lines[header - 1].startswith("+---") and lines[header + 1].startswith("+===")
    assert [c.strip() for c in lines[header].strip("|").split("|")] == [
        "Dataset", "Detector", "AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"]


def test_csv_reads_back_as_stored_with_extras_and_groups(results):
    path = export.export_results(results, formats=["csv"])["csv"]
    sidecar = path.with_name("results_table.provenance.json")
    rows_csv, prov = parsers.parse_csv(path.read_text(encoding="utf-8"),
                                       sidecar.read_text(encoding="utf-8"))
    # a plain CSV: any reader takes it as it is, the header first
    with path.open(newline="", encoding="utf-8") as f:
        plain = list(csv.DictReader(f))
    n_keys = len(export.CSV_KEYS)
    assert len(plain) == len(rows_csv) and list(plain[0])[:n_keys] == list(export.CSV_KEYS)
    rows = stored_rows(results)
    assert list(rows_csv[0])[:n_keys + 5] == [*export.CSV_KEYS, *export.DOC_METRICS]
    # per (loss, detector): the mean, near, far and one row per OOD set
    assert len(rows_csv) == len(LOSSES) * len(DETECTORS) * (3 + len(OOD))
    for r in rows_csv:
        scope = r["Scope"]
        metrics = METRICS + (("ACC", "ECE") if scope in ("mean", "dataset") else ())
        for metric in metrics:
            if metric in ("ACC", "ECE"):
                values = [statistics.mean(x[metric] for x in rows if x["Loss"] == r["Loss"]
                                          and x["Seed"] == s) for s in SEEDS]
                mean, std = statistics.mean(values), statistics.stdev(values)
            else:
                mean, std = expected(rows, r["Loss"], r["Detector"], metric, scope,
                                     r["Dataset"])
            assert abs(r[metric] - mean) <= ROUNDING, (r, metric)
            assert abs(r[f"{metric}_std"] - std) <= ROUNDING, (r, metric)
        assert r["Seeds"] == len(SEEDS)
    assert prov["seeds"] == SEEDS and prov["devices"]


def test_json_is_exact(results):
    path = export.export_results(results, formats=["json"])["json"]
    doc = parsers.parse_json(path.read_text(encoding="utf-8"))
    rows = stored_rows(results)
    assert doc["units"] == "fraction"
    assert doc["doc_columns"]["mean"] == ["Detector", *export.DOC_METRICS]
    n = 0
    for table in doc["tables"]:
        assert table["groups"] == GROUPS and table["ood_names"] == OOD
        for scope in ("mean", "per_dataset"):
            for e in table[scope]:
                kind = "mean" if scope == "mean" else "dataset"
                for metric in METRICS:
                    mean, std = expected(rows, table["loss"], e["Detector"], metric, kind,
                                         e.get("Dataset"))
                    assert e[metric] == pytest.approx(mean, abs=1e-12)
                    assert e[f"{metric}_std"] == pytest.approx(std, abs=1e-12)
                    if kind == "mean":
                        for g in GROUPS:
                            gm, _ = expected(rows, table["loss"], e["Detector"], metric, g)
                            assert e[f"{g}/{metric}"] == pytest.approx(gm, abs=1e-12)
                n += 1
    assert n == len(LOSSES) * len(DETECTORS) * (1 + len(OOD))
    bad = dict(doc, format_version=99)
    import json

    with pytest.raises(IncompatibleResultsError, match="version 99"):
        parsers.parse_json(json.dumps(bad))


def test_every_format_carries_provenance(results):
    with ResultStore(results / STORE_FILE) as store:
        record = store.runs()[0]["provenance"]
    written = export.export_results(results)
    assert set(written) == set(export.FORMATS)
    for fmt, path in written.items():
        # the CSV stays plain: its provenance is the sidecar beside it
        text = (export.provenance_path(path) if fmt == "csv" else path).read_text(
            encoding="utf-8")
        for needle in (f"torch {record['versions']['torch']}",
                       f"pytorch-ood {record['versions']['pytorch-ood']}",
                       f"logitnorm-plugin {record['versions']['logitnorm-plugin']}",
                       # an installed wheel has no git checkout: the export says so
                       f"git commit {record['git_commit'] or 'unknown'}",
                       record["device"], "seeds 0, 1, 2",
                       record["created_utc"][:10]):
            assert needle in text, (fmt, needle)


def test_cli_export_writes_all_formats(results, tmp_path, capsys):
    out = tmp_path / "docs"
    assert main(["export", str(results), "--out", str(out), "--format", "md,rst"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results_table.md", "results_table.rst"]
    assert "md:" in capsys.readouterr().out
    assert main(["export", str(results), "--out", str(out), "--format", "csv"]) == 0
    assert "csv provenance: " in capsys.readouterr().out
    assert (out / "results_table.provenance.json").is_file()


def _incompatible(tmp_path):
    """Folders the export must refuse, with a word the message must contain."""
    cases = {"missing": (tmp_path / "nowhere", "does not exist")}
    not_results = tmp_path / "not_results"
    not_results.mkdir()
    cases["no store"] = (not_results, "not a results folder")
    empty = tmp_path / "empty"
    ResultStore(empty / STORE_FILE).close()
    cases["empty store"] = (empty, "empty")
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / STORE_FILE).write_bytes(b"")
    cases["zero bytes"] = (zero, "empty")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / STORE_FILE).write_bytes(b"this is not sqlite" * 100)
    cases["not sqlite"] = (garbage, "not a result store")
    other = tmp_path / "other_sqlite"
    other.mkdir()
    db = sqlite3.connect(other / STORE_FILE)
    db.execute("CREATE TABLE things (x)")
    db.commit()
    db.close()
    cases["foreign sqlite"] = (other, "not a result store")
    newer = write_store(tmp_path / "newer")
    db = sqlite3.connect(newer / STORE_FILE)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    cases["newer schema"] = (newer, "schema version 99")
    return cases


def test_missing_empty_or_incompatible_results_are_refused(tmp_path, capsys):
    for name, (folder, words) in _incompatible(tmp_path).items():
        with pytest.raises(IncompatibleResultsError, match=words):
            export.export_results(folder)
        assert main(["export", str(folder)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("logitnorm-ood export: error: ") and words in err, (name, err)
    # the foreign database was only read, not turned into a result store
    db = sqlite3.connect(tmp_path / "other_sqlite" / STORE_FILE)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert tables == {"things"}


def test_console_script_error_has_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "logitnorm-ood"
    result = subprocess.run([str(exe), "export", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


# -- ModelEntry snippets -------------------------------------------------------------------------


def test_snippet_builds_the_real_model_entry(run_dir):
    from pytorch_ood.model.registry import ModelEntry

    from logitnorm_plugin.training.runs import model_entry, read_card

    card = read_card(run_dir)
    snippet = upstream.model_entry_snippet(run_dir)
    entry = upstream.build_model_entry(snippet)
    assert isinstance(entry, ModelEntry)
    digest = hashlib.sha256((run_dir / "model.pt").read_bytes()).hexdigest()
    assert entry.sha256 == digest == card["sha256"]
    assert entry.key == "digits-cnn/digits/logitnorm/s0"
    assert (entry.arch, entry.dataset, entry.loss, entry.seed) == (
        "digits-cnn", "digits", "logitnorm", "s0")
    assert entry.url == f"{upstream.URL_PLACEHOLDER}/{entry.key}/model-{digest[:16]}.pt"
    assert "FILL IN" in snippet
    assert entry.preprocessing.mean == tuple(card["preprocessing"]["mean"])
    assert entry.preprocessing.std == tuple(card["preprocessing"]["std"])
    assert entry.preprocessing.size == tuple(card["preprocessing"]["size"])
    assert entry.metrics == card["metrics"]
    from logitnorm_plugin.training.recipes import DIGITS_T

    assert "'digits' recipe" in entry.description
    assert f"t={DIGITS_T:g}" in entry.description
    # the same entry as the trainer's own card converter builds
    assert entry == model_entry(run_dir, url=entry.url)
    # the snippet is source code meant for registry.py: short lines
    assert max(len(line) for line in snippet.splitlines() if not line.startswith("#")) <= 99


def test_load_model_round_trip_through_pytorch_ood(run_dir, tmp_path, monkeypatch):
    from pytorch_ood.model import registry

    entry = upstream.build_model_entry(upstream.model_entry_snippet(run_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name
    cache.parent.mkdir(parents=True)
    shutil.copy(run_dir / "model.pt", cache)
    monkeypatch.setattr(registry, "_ENTRIES", [*registry._ENTRIES, entry])
    monkeypatch.setattr(registry, "_INDEX_CACHE", None)
    assert entry.key in registry.list_models(dataset="digits")
    model = registry.load_model(entry.key)  # offline: the file is in the hub cache
    assert not model.training
    weights = torch.load(run_dir / "model.pt", weights_only=True)
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    monkeypatch.setattr(registry, "_INDEX_CACHE", None)  # leave no trace in the real index


def test_cli_model_prints_the_snippet_and_copies_weights(run_dir, tmp_path, capsys):
    upload = tmp_path / "upload"
    assert main(["export", "--model", str(run_dir), "--weights-out", str(upload)]) == 0
    out = capsys.readouterr().out
    assert out == upstream.model_entry_snippet(run_dir)
    entry = upstream.build_model_entry(out)
    copied = upload / entry.key / f"model-{entry.sha256[:16]}.pt"
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == entry.sha256
    url = "https://example.org/weights/model-" + entry.sha256[:16] + ".pt"
    assert main(["export", "--model", str(run_dir), "--url", url]) == 0
    snippet = capsys.readouterr().out
    assert upstream.build_model_entry(snippet).url == url and "FILL" not in snippet


def test_tampered_weights_are_refused(run_dir, tmp_path, capsys):
    from logitnorm_plugin._core.errors import ModelIntegrityError

    copy = tmp_path / "tampered"
    shutil.copytree(run_dir, copy)
    state = torch.load(copy / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, copy / "model.pt")
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        upstream.model_entry_snippet(copy)
    assert main(["export", "--model", str(copy)]) == 2
    captured = capsys.readouterr()
    assert "SHA-256" in captured.err and captured.out == ""
    assert main(["export", "--model", str(tmp_path / "no_run")]) == 2


def test_upstream_key_uses_pytorch_ood_method_names(run_dir):
    from logitnorm_plugin.training.runs import read_card

    card = dict(read_card(run_dir), loss="cross_entropy")
    assert upstream.upstream_key(card) == "digits-cnn/digits/crossentropy/s0"
    assert upstream.upstream_key(dict(card, loss="outlier_exposure", seed=None)) == (
        "digits-cnn/digits/oe")
    fields = {f.name for f in dataclasses.fields(upstream.build_model_entry(
        upstream.model_entry_snippet(run_dir, key="my/key")))}
    assert {"key", "arch_class", "arch_kwargs", "url", "sha256", "preprocessing", "metrics",
            "source", "description"} <= fields


def test_registry_keys_are_plain_names():
    from logitnorm_plugin._core.errors import UntrustedFileError

    assert upstream.check_key("wrn-40-2/cifar10/logitnorm/s0") == "wrn-40-2/cifar10/logitnorm/s0"
    for key in ("../x", "a/../b", "/abs", "a//b", ".hidden/x", "a/b\nimport os", "a\\b"):
        with pytest.raises(UntrustedFileError, match="not a plain name"):
            upstream.check_key(key)
    card = {"arch": "digits-cnn", "dataset": "../../escaped_dir", "loss": "logitnorm",
            "seed": "s0"}
    with pytest.raises(UntrustedFileError, match="escaped_dir"):
        upstream.upstream_key(card)
