"""Detector settings on the command line: one spelling, ``NAME(KEY=VALUE, ...)``, the same in
Python and as the tables' label (issue 21, point 4)."""

import json

import pytest
import torch
from pytorch_ood.detector import KNN

import logitnorm_plugin as lp
from logitnorm_plugin._core.detector_text import parse_detector_text
from logitnorm_plugin._core.errors import UnknownNameError, UsageError
from logitnorm_plugin.cli import main
from logitnorm_plugin.evaluation.specs import parse_detectors


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "run"
    lp.train(epochs=1, out=out, progress=False)
    return out


def test_the_spelling_parses_to_name_and_settings():
    assert parse_detector_text("knn(k=5)") == ("knn", {"k": 5})
    assert parse_detector_text(" msp ") == ("msp", {})
    assert parse_detector_text("ash(variant=ash_b, percentile=90)") == (
        "ash", {"variant": "ash_b", "percentile": 90})
    assert parse_detector_text("fakeplug:logitnorm(t=0.1)") == ("fakeplug:logitnorm", {"t": 0.1})
    for bad in ("knn:k=5", "knn(5)", "knn(k=open('x'))", "knn(k=5"):
        with pytest.raises(UsageError, match=r"knn\(k=5\)"):
            parse_detector_text(bad)


def test_python_takes_the_same_string():
    specs = parse_detectors(["msp", "knn(k=5)"])
    assert [s.label for s in specs] == ["msp", "knn(k=5)"]
    assert specs[1].kwargs == {"k": 5}
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    detector = lp.create_detector("knn(k=5)", model)
    assert isinstance(detector, KNN) and detector.k == 5
    with pytest.raises(UsageError, match="given both"):
        lp.create_detector("knn(k=5)", model, k=3)
    with pytest.raises(UnknownNameError, match="knn"):
        parse_detectors(["knnn(k=5)"])


def test_bench_command_line_with_detector_settings(run_dir, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--models", str(run_dir), "--detectors", "msp, knn(k=5)",
                 "knn(k=2)", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    table = capsys.readouterr().out
    for label in ("knn(k=5)", "knn(k=2)", "msp"):
        assert f"| {label} " in table
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {r["Detector"] for r in doc["rows"]} == {"msp", "knn(k=5)", "knn(k=2)"}
    # the k reached the detector: the two settings give different numbers
    auroc = {r["Detector"]: r["AUROC"] for r in doc["rows"] if r["Dataset"] == "rotated"}
    assert auroc["knn(k=5)"] != auroc["knn(k=2)"]
    assert main(["bench", "--models", str(run_dir), "--detectors", "knn:k=5", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "knn(k=5)" in err and len(err.strip().splitlines()) == 1


def test_python_evaluate_labels_settings(run_dir):
    from logitnorm_plugin.evaluation.specs import resolve_benchmark

    bench = resolve_benchmark("digits")
    # the string and Python's dict give the same numbers
    rows = lp.evaluate([str(run_dir)], bench, detectors=["knn(k=3)"], progress=False)
    same = lp.evaluate([str(run_dir)], bench, detectors={"knn": {"k": 3}}, progress=False)
    assert [r["AUROC"] for r in rows] == [r["AUROC"] for r in same]
    # two settings of one name in one call: each row labelled with its settings
    both = lp.evaluate([str(run_dir)], bench, detectors=["knn(k=3)", "knn(k=1)"],
                       progress=False)
    assert {r["Detector"] for r in both} == {"knn(k=3)", "knn(k=1)"}


def test_infinity_is_a_float_wherever_it_stands_and_nan_is_refused_with_one_line():
    """``inf`` is read the same bare, signed or in a tuple (before: ``inf`` a string, ``-inf``
    refused as not a literal), and written back by the label as it was read; ``nan`` would be a
    setting that makes scores undefined or silently wrong: refused when the text is read."""
    from logitnorm_plugin._core.conventions import detector_label

    inf = float("inf")
    assert parse_detector_text("odin(eps=inf)") == ("odin", {"eps": inf})
    assert parse_detector_text("odin(eps=-inf)") == ("odin", {"eps": -inf})
    assert parse_detector_text("odin(eps=+Infinity)") == ("odin", {"eps": inf})
    assert parse_detector_text("x(a=(1, -INF))") == ("x", {"a": (1, -inf)})
    for text in ("odin(eps=-inf)", "odin(eps=inf)"):
        assert detector_label(*parse_detector_text(text)) == text
    assert parse_detector_text("x(a='nan')") == ("x", {"a": "nan"})  # quoted: a string
    for bad in ("energy(t=nan)", "energy(t=-NaN)", "x(a=(1, nan))"):
        with pytest.raises(UsageError, match="is not a value a detector setting can take"):
            parse_detector_text(bad)
