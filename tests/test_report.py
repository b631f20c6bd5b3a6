"""``logitnorm-ood report``: the files exist, and every number of every table traces back to the
cells of the result store (recomputed here from the stored rows, without store.aggregate)."""

import io
import json
import random
import re
import sqlite3
import statistics

import parsers
import pytest
import torch

from logitnorm_plugin._core import provenance
from logitnorm_plugin._core.errors import IncompatibleResultsError
from logitnorm_plugin._core.model_groups import model_configuration, model_group_fields
from logitnorm_plugin.cli import main
from logitnorm_plugin.reporting import report
from logitnorm_plugin.store.results import ResultStore

PNG = b"\x89PNG\r\n\x1a\n"


# -- independent recomputation -------------------------------------------------------------------


def recompute(rows, config, spec):
    """``(mean, std, n)`` over the stored models of one (arch, loss, model configuration,
    detector) at one scope."""
    chosen = [r for r in rows if r["config_id"] == spec["config_id"]
              and r.get("Arch") == spec["arch"] and r.get("Loss") == spec["loss"]
              and r.get("model_group") == spec["group"]
              and r["Detector"] == spec["detector"]]
    models = {}
    for r in chosen:
        models.setdefault(r["model_id"], []).append(r)
    metric, scope = spec["metric"], spec["scope"]
    per_model = []
    for model_rows in models.values():
        if metric in ("ACC", "ECE"):
            per_model.append(model_rows[0][metric])
            continue
        names = {"dataset": [spec.get("dataset")], "mean": config["ood_names"]}.get(scope)
        names = names or config["groups"][scope]
        values = [r[metric] for r in model_rows if r["Dataset"] in names]
        per_model.append(sum(values) / len(values))
    std = statistics.stdev(per_model) if len(per_model) > 1 else 0.0
    return statistics.mean(per_model), std, len(per_model)


def number(text):
    return float(text.replace("−", "-"))


def check_traces(folder, out):
    """Every value, change and seed count in report.md equals the stored cells; report.json
    holds the same at full precision. Returns the number of checked cells."""
    text = (out / report.REPORT_FILE).read_text(encoding="utf-8")
    doc = json.loads((out / report.REPORT_JSON).read_text(encoding="utf-8"))
    tables = parsers.parse_report_tables(text, doc)
    assert tables and all("columns" in t for t in tables)
    with ResultStore(folder / "results.sqlite") as store:
        rows = store.rows(with_ids=True)
        configs = {t["config_id"]: store.config(t["config_id"]) for t in tables}
    exact = {(c["table"], c["config_id"], tuple(c["row"]), c["column"]): c for c in doc["cells"]}
    checked = 0
    for table in tables:
        config = configs[table["config_id"]]
        assert len(table["cells"]) == len(table["rows"])
        for row_spec, cells in zip(table["rows"], table["cells"]):
            assert len(cells) == len(table["columns"])
            labels = [c for c, col in zip(cells, table["columns"]) if col["kind"] == "label"]
            for col, cell in zip(table["columns"], cells):
                spec = {**row_spec, **{k: v for k, v in col.items() if k != "header"},
                        "config_id": table["config_id"]}
                kind = spec["kind"]
                if kind == "label":
                    continue
                if cell == "":
                    assert kind == "delta" and ([spec["arch"], spec["loss"], spec["group"]]
                                                == spec["baseline"])
                    continue
                stored = exact[(table["table"], table["config_id"], tuple(labels),
                                col["header"])]
                mean, std, n = recompute(rows, config, spec)
                if kind == "value":
                    parts = cell.split(" ± ")
                    assert abs(number(parts[0]) - 100 * mean) <= 0.005 + 1e-9, (spec, cell)
                    assert stored["mean"] == pytest.approx(mean, abs=1e-12)
                    if n > 1:
                        assert abs(number(parts[1]) - 100 * std) <= 0.005 + 1e-9, (spec, cell)
                        assert stored["std"] == pytest.approx(std, abs=1e-12)
                    else:
                        assert len(parts) == 1
                elif kind == "delta":
                    base = recompute(rows, config, {**spec, "arch": spec["baseline"][0],
                                                    "loss": spec["baseline"][1],
                                                    "group": spec["baseline"][2]})[0]
                    assert abs(number(cell) - 100 * (mean - base)) <= 0.005 + 1e-9, (spec, cell)
                    assert stored["delta"] == pytest.approx(mean - base, abs=1e-12)
                elif kind == "seeds":
                    assert int(cell) == n
                elif kind == "published":
                    from logitnorm_plugin.workflows.bench import load_published

                    published = spec["published"]
                    assert published in load_published()["entries"]
                    assert abs(number(cell.split(" ± ")[0]) - 100 * published["value"]) <= 0.005
                else:
                    raise AssertionError(kind)
                checked += 1
    return checked


# -- a real results folder written by `logitnorm-ood bench` ---------------------------------------


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory):
    from logitnorm_plugin.workflows.bench import run

    out = tmp_path_factory.mktemp("bench") / "results"
    run(out=out, seeds=[0], epochs=1, detectors=["msp", "energy"], progress=False,
        stdout=io.StringIO())
    return out


def test_report_of_a_bench_folder(bench_folder):
    rep = report.write_report(bench_folder)
    out = bench_folder / "report"
    assert rep.path == out / report.REPORT_FILE and rep.json_path.is_file()
    text = rep.path.read_text(encoding="utf-8")
    # histograms per detector, reliability diagram, logit-norm curves: all drawn and linked
    names = sorted(p.name for p in rep.figures)
    assert len(names) == 4, (names, rep.notes)
    assert any(n.startswith("hist_") and n.endswith("_msp.png") for n in names)
    assert any(n.startswith("hist_") and n.endswith("_energy.png") for n in names)
    assert any(n.startswith("reliability_") for n in names)
    assert any(n.startswith("logit_norm_") for n in names)
    for path in rep.figures:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
        assert f"]({path.name})" in text
    assert not rep.notes
    # the sections the issue asks for
    for heading in ("### ID accuracy and calibration", "### Summary per detector",
                    "#### Detector `msp`", "#### Detector `energy`",
                    "### Published numbers beside ours"):
        assert heading in text
    assert "**near** (rotated)" in text and "**far** (" in text
    # the recomputed ECE of the reliability diagram agrees with the stored one
    assert text.count("matches the stored ECE") == 2
    assert check_traces(bench_folder, out) > 50


def test_cli_report(bench_folder, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(bench_folder), "--out", str(out), "--no-figures"]) == 0
    assert f"report: {out / report.REPORT_FILE}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [report.REPORT_JSON, report.REPORT_FILE]


# -- a store with several seeds, OOD groups and published numbers ---------------------------------


OOD = ["textures", "svhn", "places365"]
GROUPS = {"near": ["textures"], "far": ["svhn", "places365"]}


def write_cifar_like_store(folder):
    """Cells as the paper protocol on CIFAR-10 with WRN-40-2 would store them (so published
    numbers match), 3 seeds, and per-sample scores for the first seed."""
    rng = random.Random(1)
    gen = torch.Generator().manual_seed(0)
    with ResultStore(folder / "results.sqlite") as store:
        store.register_config("c10", {"benchmark": "cifar10", "protocol": "paper", "seed": 0,
                                      "kwargs": {}, "ood_names": OOD, "groups": GROUPS})
        run = store.start_run(provenance.collect(device="cpu"))
        for loss in ("logitnorm", "cross_entropy"):
            for seed in (0, 1, 2):
                model_id = f"weights:{loss}-{seed}"
                acc, ece = rng.uniform(0.9, 0.95), rng.uniform(0.01, 0.1)
                for det in ("msp", "odin"):
                    for dataset in OOD:
                        row = {"Model": f"{loss}/s{seed}", "Loss": loss, "Seed": seed,
                               "Arch": "wrn-40-2", "Detector": det, "Dataset": dataset,
                               "Benchmark": "cifar10", "Protocol": "paper", "ACC": acc,
                               "ECE": ece,
                               # as the engine records it: the configuration without the seed
                               **model_group_fields(model_configuration(arch="wrn-40-2",
                                                                        loss=loss))}
                        row.update({m: rng.random() for m in (
                            "AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "FPR95-ID95",
                            "AUPR-ID-AP", "FPR95-OpenOOD")})
                        store.put(row, model_id=model_id, config_id="c10", detector_id=det,
                                  run_id=run)
                        if seed == 0:
                            store.put_scores(model_id, "c10", det, dataset,
                                             torch.randn(200, generator=gen) + 1)
                    if seed == 0:
                        store.put_scores(model_id, "c10", det, "ID", torch.randn(300,
                                                                                 generator=gen))
    return folder


def test_report_with_seeds_groups_and_published_numbers(tmp_path):
    folder = write_cifar_like_store(tmp_path / "results")
    rep = report.write_report(folder)
    text = rep.path.read_text(encoding="utf-8")
    # cross-entropy is the baseline even when stored second
    assert "Δ FPR95 logitnorm" in text and "Δ FPR95 cross_entropy" not in text
    # published numbers beside ours, with their sources
    published = text.split("### Published numbers beside ours")[1]
    assert "| cross_entropy | msp" in published and "| cross_entropy | odin" in published
    assert "51.04" in published and "90.90" in published and "97.92" in published
    assert "energy_ood README" in published and "GEM README" in published
    # histograms from the stored scores; no run folders, so the rest is explained, not faked
    assert sorted(p.name for p in rep.figures) == ["hist_c10_msp.png", "hist_c10_odin.png"]
    assert any("reliability" in n for n in rep.notes)
    assert any("logit-norm" in n for n in rep.notes)
    assert "## Not shown" in text
    assert "**near** (textures)" in text and "**far** (svhn, places365)" in text
    # the paper-style AUPR is the paper's (average precision, AUPR-ID-AP), not AUPR-IN
    doc = json.loads(rep.json_path.read_text(encoding="utf-8"))
    paper_aupr = {c["metric"] for t in doc["tables"] if t["table"].startswith("paper:")
                  for c in t["columns"] if c["header"].startswith(("AUPR", "Δ AUPR"))}
    assert paper_aupr == {"AUPR-ID-AP"}
    assert "key `AUPR-ID-AP`" in text and "as in the paper's code" not in text
    assert "| AUPR-ID-AP |" in published  # the published AUPRs are average precision
    assert check_traces(folder, folder / "report") > 150


def test_report_refuses_missing_empty_or_incompatible_folders(tmp_path, capsys):
    with pytest.raises(IncompatibleResultsError, match="does not exist"):
        report.write_report(tmp_path / "missing")
    empty = tmp_path / "empty"
    ResultStore(empty / "results.sqlite").close()
    with pytest.raises(IncompatibleResultsError, match="empty"):
        report.write_report(empty)
    old = write_cifar_like_store(tmp_path / "old")
    db = sqlite3.connect(old / "results.sqlite")
    db.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    for folder in (tmp_path / "missing", empty, old):
        assert main(["report", str(folder)]) == 2
        err = capsys.readouterr().err
        assert re.match(r"logitnorm-ood report: error: .+", err) and "Traceback" not in err
    assert not (tmp_path / "missing").exists()
