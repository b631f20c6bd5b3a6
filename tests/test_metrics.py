"""The paper's FPR95 and ECE against straightforward reference implementations."""

import numpy as np
import pytest
import torch
from pytorch_ood.metrics import OODMetrics

from logitnorm_plugin.metrics import (
    OOD_KEYS,
    PAPER_FPR_KEY,
    accuracy,
    expected_calibration_error,
    fpr_at_id_tpr,
    ood_metrics,
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
