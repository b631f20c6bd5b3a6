"""``tune-t`` says when its winner lies inside the seed noise (issue 21, point 6)."""

import json

from logitnorm_plugin.metrics import PAPER_FPR_KEY
from logitnorm_plugin.workflows import t_selection
from logitnorm_plugin.workflows import tune_t as tuning


def _point(t, seed, acc, fpr, auroc=0.9):
    return {"t": t, "seed": seed, "status": "ok", "ACC": acc, PAPER_FPR_KEY: fpr,
            "FPR95TPR": fpr, "AUROC": auroc}


def _choose(points, seeds):
    summary = t_selection.summarize(points, seeds)
    chosen, eligible = t_selection.select_t(summary)
    for s in summary:
        s["eligible"] = float(s["t"]) in eligible
    return summary, chosen, t_selection.significance(summary, chosen)


def test_a_winner_inside_the_seed_spread_is_not_significant():
    """The issue's case: 73.77 vs 74.13 with a seed spread of about 22 points."""
    points = [
        _point(0.02, 0, 0.95, 0.95), _point(0.02, 1, 0.95, 0.97), _point(0.02, 2, 0.95, 0.96),
        _point(0.04, 0, 0.98, 0.50), _point(0.04, 1, 0.98, 0.95), _point(0.04, 2, 0.98, 0.7631),
        _point(0.08, 0, 0.98, 0.52), _point(0.08, 1, 0.98, 0.96), _point(0.08, 2, 0.98, 0.7539),
    ]
    summary, chosen, sig = _choose(points, [0, 1, 2])
    assert chosen == 0.04
    assert sig["significant"] is False
    assert sig["within_spread"] == [0.04, 0.08]  # 0.02: 3 points less accurate, no candidate
    assert sig["decided_by"] == f"the lowest mean {PAPER_FPR_KEY}"
    assert "not significant" in sig["text"] and "0.04, 0.08" in sig["text"]


def test_a_clear_winner_and_a_tie_break_are_named():
    clear = [_point(0.02, s, 0.98, 0.9 + 0.01 * s) for s in (0, 1)] + [
        _point(0.04, s, 0.98, 0.2 + 0.01 * s) for s in (0, 1)]
    _, chosen, sig = _choose(clear, [0, 1])
    assert chosen == 0.04 and sig["significant"] is True and sig["within_spread"] == [0.04]
    tied = [_point(0.02, s, 0.98, 0.3 + 0.1 * s) for s in (0, 1)] + [
        _point(0.04, s, 0.98, 0.3 + 0.1 * s) for s in (0, 1)]
    _, chosen, sig = _choose(tied, [0, 1])
    assert chosen == 0.02 and sig["decided_by"] == "the tie-break: smaller t"
    one_seed = [_point(0.02, 0, 0.98, 0.3), _point(0.04, 0, 0.98, 0.4)]
    _, chosen, sig = _choose(one_seed, [0])
    assert sig["significant"] is None and "one seed" in sig["text"]


def test_tune_t_reports_the_significance(tmp_path):
    out = tmp_path / "tune"
    record = tuning.tune_t(grid=[0.02, 0.1], out=out, dataset="digits", epochs=1, seeds=[0, 1],
                           device="cpu", noise_n=200, progress=False, stdout=False)
    saved = json.loads((out / "recommended_t.json").read_text())
    sig = saved["significance"]
    assert sig == record["significance"] and record["chosen_t"] in sig["within_spread"]
    assert isinstance(sig["significant"], bool)
    assert f"Significance: {sig['text']}." in (out / "table.md").read_text()
