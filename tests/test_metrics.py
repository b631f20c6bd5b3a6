"""Every metric key against independent re-derivations of its published definition
(``tests/reference_metrics.py``) and against scikit-learn, as the paper's code and OpenOOD call
it: the paper's FPR95 and AUPR (average precision), OpenOOD's FPR95, and the ECE."""


import numpy as np
import pytest

# tests/ is on sys.path (pytest's pythonpath setting): the independent re-derivations
import reference_metrics as ref  # noqa: E402
import torch
from pytorch_ood.metrics import OODMetrics

from logitnorm_plugin import metrics as metrics_module
from logitnorm_plugin.metrics import (
    OOD_KEYS,
    OPENOOD_FPR_KEY,
    PAPER_AUPR_KEY,
    PAPER_FPR_KEY,
    accuracy,
    average_precision_id,
    expected_calibration_error,
    fpr_at_id_tpr,
    ood_metrics,
    openood_fpr_at_tpr,
)


def _reference_paper_fpr(scores, labels, recall=0.95):
    """The definition of the LogitNorm code (Hendrycks' fpr_and_fdr_at_recall with ID scores as
    positives), spelled out with one loop over thresholds."""
    confidence = -np.asarray(scores, dtype=np.float64)
    is_id = np.asarray(labels) >= 0
    n_id, n_ood = is_id.sum(), (~is_id).sum()
    candidates = []  # (recall, fps) per distinct threshold, from the highest threshold down
    for threshold in sorted(set(confidence.tolist()), reverse=True):
        accepted = confidence >= threshold
        tps = int((accepted & is_id).sum())
        fps = int((accepted & ~is_id).sum())
        candidates.append((tps / n_id, fps))
        if tps == n_id:
            break
    # closest recall; ties go to the later (lower) threshold, as argmin over the reversed list
    best_gap, best_fps = None, None
    for r, fps in reversed(candidates):
        gap = abs(r - recall)
        if best_gap is None or gap < best_gap:
            best_gap, best_fps = gap, fps
    return best_fps / n_ood


def _reference_ece(logits, labels, n_bins=15):
    """Naeini et al.'s ECE with equal-width bins on (0, 1], as the LogitNorm code computes it."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=1)
    conf, pred = probs.max(dim=1)
    conf, pred = conf.numpy().astype(np.float64), pred.numpy()
    edges = np.linspace(0, 1, n_bins + 1).astype(np.float32).astype(np.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            gap = conf[in_bin].mean() - (pred[in_bin] == np.asarray(labels)[in_bin]).mean()
            total += abs(gap) * in_bin.mean()
    return total


@pytest.mark.parametrize("seed", range(6))
def test_paper_fpr_matches_reference_on_random_scores(seed):
    g = torch.Generator().manual_seed(seed)
    n_id, n_ood = 200 + 37 * seed, 150 + 11 * seed
    scores = torch.cat([torch.randn(n_id, generator=g), torch.randn(n_ood, generator=g) + 1.0])
    if seed % 2:  # heavy ties, as MSP gives for saturated softmax outputs
        scores = (scores * 3).round() / 3
    labels = torch.cat([torch.randint(0, 10, (n_id,), generator=g), -torch.ones(n_ood)]).long()
    expected = _reference_paper_fpr(scores.numpy(), labels.numpy())
    assert fpr_at_id_tpr(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_paper_fpr_known_values():
    # ID scores 0..99, OOD scores 50..149: keeping 95 of 100 ID (scores <= 94) accepts the
    # 45 OOD samples with scores 50..94
    id_scores = torch.arange(100, dtype=torch.float64)
    ood_scores = torch.arange(50, 150, dtype=torch.float64)
    scores = torch.cat([id_scores, ood_scores])
    labels = torch.cat([torch.zeros(100), -torch.ones(100)]).long()
    assert fpr_at_id_tpr(scores, labels) == pytest.approx(0.45)
    # perfect separation: nothing accepted; reversed: everything accepted
    assert fpr_at_id_tpr(torch.cat([id_scores, ood_scores + 100]), labels) == 0.0
    assert fpr_at_id_tpr(torch.cat([id_scores + 1000, ood_scores]), labels) == 1.0


def test_paper_fpr_differs_from_pytorch_ood_convention():
    g = torch.Generator().manual_seed(3)
    scores = torch.cat([torch.randn(500, generator=g), torch.randn(500, generator=g) * 2 + 1])
    labels = torch.cat([torch.zeros(500), -torch.ones(500)]).long()
    ours = ood_metrics(scores, labels)
    host = OODMetrics().update(scores, labels).compute()
    assert set(OOD_KEYS) <= set(ours)
    for key in ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "AUTC"):
        assert ours[key] == host[key]
    assert abs(ours[PAPER_FPR_KEY] - ours["FPR95TPR"]) > 0.05  # two different numbers


def test_paper_fpr_rejects_bad_input():
    with pytest.raises(ValueError, match="ID"):
        fpr_at_id_tpr(torch.rand(5), -torch.ones(5))
    with pytest.raises(ValueError, match="ID"):
        fpr_at_id_tpr(torch.rand(5), torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        fpr_at_id_tpr(torch.tensor([0.1, float("nan")]), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_id_tpr(torch.rand(2), torch.tensor([0, -1]), tpr=0.0)


@pytest.mark.parametrize("scale", [0.3, 1.0, 5.0, 40.0])
def test_ece_matches_reference(scale):
    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(700, 10, generator=g) * scale
    labels = torch.where(
        torch.rand(700, generator=g) < 0.7, logits.argmax(1), torch.randint(0, 10, (700,),
                                                                             generator=g)
    )
    expected = _reference_ece(logits, labels)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-6)


def test_ece_extremes_and_temperature():
    # confident and always right: ECE ~ 0; confident and always wrong: ECE ~ 1
    logits = torch.eye(5).repeat(20, 1) * 50
    labels = torch.arange(5).repeat(20)
    assert expected_calibration_error(logits, labels) < 1e-6
    assert expected_calibration_error(logits, (labels + 1) % 5) > 0.999
    # a huge temperature flattens the softmax to 1/C: confidence 0.2, accuracy 1
    assert expected_calibration_error(logits, labels, t=1e6) == pytest.approx(0.8, abs=1e-4)
    with pytest.raises(ValueError):
        expected_calibration_error(logits, -labels - 1)
    with pytest.raises(ValueError):
        expected_calibration_error(logits, labels, n_bins=0)


def test_accuracy_ignores_ood_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, -1, -1])
    assert accuracy(logits, labels) == 0.5


def test_reliability_diagram_writes_a_png(tmp_path):
    from logitnorm_plugin.plots import reliability_diagram

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g) * 3
    labels = torch.randint(0, 10, (300,), generator=g)
    path = reliability_diagram({"a": (logits, labels), "b": (logits * 0.1, labels)},
                               tmp_path / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the result keys and their conventions -----------------------------------------------------


def _id_ood(scores, labels):
    """Numpy views for the references: the ID mask and the confidence (negated score)."""
    labels = np.asarray(labels)
    return labels >= 0, labels < 0


def _untied(seed, n_id=300, n_ood=200):
    g = torch.Generator().manual_seed(seed)
    scores = torch.cat([torch.randn(n_id, generator=g), torch.randn(n_ood, generator=g) + 1])
    labels = torch.cat([torch.randint(0, 10, (n_id,), generator=g),
                        -torch.ones(n_ood, dtype=torch.long)])
    return scores, labels


def _tied(seed):
    scores, labels = _untied(seed)
    return (scores * 3).round() / 3, labels  # a dozen distinct values, shared by ID and OOD


def _saturated(seed, n_id=400, n_ood=300):
    """float32 MSP outlier scores (``-max softmax``) of confident logits: many are exactly -1.0
    in float32, for ID and OOD samples alike."""
    g = torch.Generator().manual_seed(seed)
    id_logits = torch.randn(n_id, 10, generator=g) * 40
    ood_logits = torch.randn(n_ood, 10, generator=g) * torch.rand(n_ood, 1, generator=g) * 40
    scores = -torch.softmax(torch.cat([id_logits, ood_logits]), dim=1).max(dim=1).values
    labels = torch.cat([torch.zeros(n_id, dtype=torch.long), -torch.ones(n_ood, dtype=torch.long)])
    assert scores.dtype == torch.float32
    return scores, labels


CASES = {"untied": _untied, "tied": _tied, "saturated": _saturated}


def test_saturated_case_is_saturated():
    scores, labels = _saturated(0)
    at_one = scores == -1.0
    assert int((at_one & (labels >= 0)).sum()) > 100 and int((at_one & (labels < 0)).sum()) > 20


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_paper_aupr_is_average_precision_score_bit_for_bit(kind, seed):
    scores, labels = CASES[kind](seed)
    is_id, _ = _id_ood(scores, labels)
    confidence = -scores.numpy()  # float32 for the saturated case, as in the paper's code
    ours = average_precision_id(scores, labels)
    assert ours == ref.sklearn_average_precision(is_id, confidence)
    assert ours == pytest.approx(ref.average_precision(is_id, confidence), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_paper_fpr_is_fpr_and_fdr_at_recall_bit_for_bit(kind, seed):
    scores, labels = CASES[kind](seed)
    is_id, _ = _id_ood(scores, labels)
    for recall in (0.95, 0.9, 0.5):
        expected = ref.fpr_and_fdr_at_recall_fpr(is_id, -scores.numpy(), recall)
        assert fpr_at_id_tpr(scores, labels, tpr=recall) == expected
        assert _reference_paper_fpr(scores.numpy(), labels.numpy(), recall) == expected


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_openood_fpr_is_roc_curve_with_drop_intermediate(kind, seed):
    scores, labels = CASES[kind](seed)
    _, is_ood = _id_ood(scores, labels)
    for tpr in (0.95, 0.9, 0.5):
        ours = openood_fpr_at_tpr(scores, labels, tpr=tpr)
        assert ours == ref.sklearn_openood_fpr(is_ood, scores.numpy(), tpr)
        assert ours == ref.roc_fpr_at_tpr_thinned(is_ood, scores.numpy(), tpr)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_pytorch_ood_keys_are_what_their_docstrings_claim(kind, seed):
    """AUROC is the paper's and OpenOOD's (up to rounding), AUPR-IN/OUT are OpenOOD's
    trapezoidal ``aupr_in``/``aupr_out``, FPR95TPR uses every ROC point."""
    scores, labels = CASES[kind](seed)
    is_id, is_ood = _id_ood(scores, labels)
    s = scores.numpy()
    r = ood_metrics(scores, labels)
    assert r["AUROC"] == pytest.approx(ref.sklearn_auroc(is_id, -s), abs=1e-12)  # the paper
    assert r["AUROC"] == pytest.approx(ref.sklearn_auroc(is_ood, s), abs=1e-12)  # OpenOOD
    assert r["AUPR-IN"] == pytest.approx(ref.sklearn_trapezoidal_aupr(is_id, -s), abs=1e-12)
    assert r["AUPR-IN"] == pytest.approx(ref.trapezoidal_aupr(is_id, -s), abs=1e-12)
    assert r["AUPR-OUT"] == pytest.approx(ref.sklearn_trapezoidal_aupr(is_ood, s), abs=1e-12)
    assert r["FPR95TPR"] == ref.roc_fpr_at_tpr_all_points(is_ood, s)
    assert r[PAPER_FPR_KEY] == fpr_at_id_tpr(scores, labels)
    assert r[PAPER_AUPR_KEY] == average_precision_id(scores, labels)
    assert r[OPENOOD_FPR_KEY] == openood_fpr_at_tpr(scores, labels)


def test_issue_example_id_and_ood_both_scored_0_to_99():
    scores = torch.cat([torch.arange(100.0), torch.arange(100.0)])
    labels = torch.cat([torch.zeros(100), -torch.ones(100)]).long()
    is_id, is_ood = _id_ood(scores, labels)
    s = scores.numpy()
    r = ood_metrics(scores, labels)
    # FPR95: pytorch-ood's (every ROC point) 0.95, OpenOOD's (collinear points dropped) 1.00
    assert r["FPR95TPR"] == 0.95
    assert r[OPENOOD_FPR_KEY] == 1.0 == ref.sklearn_openood_fpr(is_ood, s)
    # the paper's: keep ID scores 0..94, which accepts the OOD samples scored 0..94
    assert r[PAPER_FPR_KEY] == 0.95 == ref.fpr_and_fdr_at_recall_fpr(is_id, -s)
    # AUPR: precision is 0.5 at every threshold; the trapezoid adds the segment from (0, 1)
    assert r[PAPER_AUPR_KEY] == 0.5 == ref.sklearn_average_precision(is_id, -s)
    assert r["AUPR-IN"] == pytest.approx(0.5025, abs=1e-12)
    assert r["AUPR-IN"] == pytest.approx(ref.sklearn_trapezoidal_aupr(is_id, -s), abs=1e-12)
    assert r["AUROC"] == 0.5


def test_average_precision_and_trapezoid_differ_most_on_ties():
    # every sample tied: AP is the share of ID samples, the trapezoid (1 + share) / 2
    scores = torch.zeros(100)
    labels = torch.cat([torch.zeros(50), -torch.ones(50)]).long()
    with pytest.warns(UserWarning, match="AUTC"):  # pytorch-ood: AUTC is NaN for constants
        r = ood_metrics(scores, labels)
    assert np.isnan(r["AUTC"])
    assert r[PAPER_AUPR_KEY] == 0.5
    assert r["AUPR-IN"] == pytest.approx(0.75, abs=1e-12)
    # without ties the two are close; on saturated float32 MSP they drift apart
    untied, saturated = ood_metrics(*_untied(0)), ood_metrics(*_saturated(0))
    assert abs(untied[PAPER_AUPR_KEY] - untied["AUPR-IN"]) < 5e-3
    assert abs(saturated[PAPER_AUPR_KEY] - saturated["AUPR-IN"]) > abs(
        untied[PAPER_AUPR_KEY] - untied["AUPR-IN"])


def test_openood_fpr_equals_fpr95tpr_unless_id_and_ood_share_a_score():
    for seed in range(4):
        r = ood_metrics(*_untied(seed))
        assert r[OPENOOD_FPR_KEY] == r["FPR95TPR"]
    # ties within one class only: vertical or horizontal ROC steps, nothing changes
    scores = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0])
    labels = torch.tensor([0, 0, -1, -1, -1, 0, -1, -1, 0, -1])
    assert openood_fpr_at_tpr(scores, labels) == ood_metrics(scores, labels)["FPR95TPR"]


def _random_small_cases(seed, count):
    """Small score sets with heavy ties (1 to 6 distinct float32 values, sometimes signed
    zeros), both classes present, and a random recall level."""
    rng = np.random.default_rng(seed)
    levels = (0.5, 0.8, 0.9, 0.95, 1.0)
    made = 0
    while made < count:
        n = int(rng.integers(2, 26))
        labels = np.where(rng.random(n) < rng.uniform(0.2, 0.8), 0, -1)
        if labels.min() == labels.max():
            continue
        values = rng.normal(size=int(rng.integers(1, 7))).astype(np.float32)
        scores = rng.choice(values, size=n)
        if made % 7 == 0:
            scores = np.where(rng.random(n) < 0.5, np.float32(0.0), np.float32(-0.0))
        made += 1
        yield scores, labels, float(rng.choice(levels))


def test_random_small_tied_cases_against_rederivations():
    """2000 seeded small tied cases: each formula against its numpy re-derivation."""
    for scores, labels, level in _random_small_cases(seed=13, count=2000):
        is_id, is_ood = labels >= 0, labels < 0
        s, y = torch.from_numpy(scores), torch.from_numpy(labels)
        assert average_precision_id(s, y) == pytest.approx(
            ref.average_precision(is_id, -scores), abs=1e-12)
        assert fpr_at_id_tpr(s, y, tpr=level) == ref.fpr_and_fdr_at_recall_fpr(
            is_id, -scores, level)
        openood = openood_fpr_at_tpr(s, y, tpr=level)
        assert openood == ref.roc_fpr_at_tpr_thinned(is_ood, scores, level)
        if not set(scores[is_id].tolist()) & set(scores[is_ood].tolist()):
            assert openood == ref.roc_fpr_at_tpr_all_points(is_ood, scores, level)


def test_random_small_tied_cases_against_sklearn():
    """400 seeded small tied cases: the paper's AUPR and OpenOOD's FPR against scikit-learn,
    bit for bit."""
    for scores, labels, level in _random_small_cases(seed=31, count=400):
        is_id, is_ood = labels >= 0, labels < 0
        s, y = torch.from_numpy(scores), torch.from_numpy(labels)
        assert average_precision_id(s, y) == ref.sklearn_average_precision(is_id, -scores)
        assert openood_fpr_at_tpr(s, y, tpr=level) == ref.sklearn_openood_fpr(
            is_ood, scores, level)


def test_infinite_scores_and_signed_zeros_tie():
    base = torch.tensor([0.0, 1.0, 5.0, 5.0, 5.0, 2.0, 5.0, -3.0, -3.0, 0.5])
    labels = torch.tensor([0, 0, 0, -1, -1, 0, 0, 0, -1, -1])
    # the largest and smallest finite values stand for +inf and -inf: same ranks, same ties
    infinite = base.clone()
    infinite[base == 5.0], infinite[base == -3.0] = float("inf"), float("-inf")
    zeros = torch.where(base == 0.0, torch.tensor(-0.0), base)
    for f in (average_precision_id, fpr_at_id_tpr, openood_fpr_at_tpr):
        assert f(infinite, labels) == f(base, labels)
        assert f(zeros, labels) == f(base, labels)


def test_new_metrics_reject_bad_input():
    for f in (average_precision_id, openood_fpr_at_tpr):
        with pytest.raises(ValueError, match="ID"):
            f(torch.rand(5), -torch.ones(5))
        with pytest.raises(ValueError, match="OOD"):
            f(torch.rand(5), torch.zeros(5))
        with pytest.raises(ValueError, match="NaN"):
            f(torch.tensor([0.1, float("nan")]), torch.tensor([0, -1]))
        with pytest.raises(ValueError, match="same number"):
            f(torch.rand(3), torch.tensor([0, -1]))
    for tpr in (0.0, 1.5):
        with pytest.raises(ValueError, match="tpr"):
            openood_fpr_at_tpr(torch.rand(2), torch.tensor([0, -1]), tpr=tpr)


def test_every_key_names_its_convention():
    assert OOD_KEYS[-2:] == (PAPER_AUPR_KEY, OPENOOD_FPR_KEY)
    assert set(ood_metrics(*_untied(0))) == set(OOD_KEYS)
    # the paper's AUPR has its own key, not to be mistaken for pytorch-ood's AUPR-IN
    assert PAPER_AUPR_KEY == "AUPR-ID-AP" and not any(c.isspace() for c in PAPER_AUPR_KEY)
    assert OPENOOD_FPR_KEY == "FPR95-OpenOOD"
    doc = metrics_module.__doc__
    for key in (*OOD_KEYS, "ACC", "ECE"):
        assert f"   * - ``{key}``" in doc, key  # a row of the table of conventions
    for f in (fpr_at_id_tpr, average_precision_id, openood_fpr_at_tpr):
        assert "bit-identical" in f.__doc__ or "scikit-learn's float64" in f.__doc__
