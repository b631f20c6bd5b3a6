"""Independent re-derivations of the metric definitions, for the tests of
``logitnorm_plugin.metrics``. Not a test module (no ``test_`` prefix); loaded by file path.

Each function is written from the published definition, with numpy only (the ``sklearn_*``
ones call scikit-learn, as the paper's code and OpenOOD do). They count by thresholds with
``np.unique`` and ``np.searchsorted`` rather than by one sorted cumulative sum, so they share no
code path with the package. Inputs are plain arrays: ``positive`` a boolean mask of the positive
class, ``score`` larger means "more positive".
"""

import numpy as np


def _at_or_above(score, positive):
    """Distinct thresholds (descending) and, for each, the positive and negative samples with a
    score at or above it."""
    score = np.asarray(score)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.unique(score)[::-1]
    pos = np.sort(score[positive])
    neg = np.sort(score[~positive])
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    return thresholds, tp, fp


def average_precision(positive, score):
    """Average precision, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds from the
    highest down (``R_0 = 0``): the step-wise area of scikit-learn's
    ``average_precision_score``. Summed with ``math.fsum`` (exact, then rounded once)."""
    import math

    _, tp, fp = _at_or_above(score, positive)
    n_pos = tp[-1]
    terms, previous = [], 0
    for t, f in zip(tp.tolist(), fp.tolist()):
        terms.append((t - previous) / n_pos * (t / (t + f)))
        previous = t
    return math.fsum(terms)


def trapezoidal_aupr(positive, score):
    """Area under the precision-recall curve by straight lines between its points (one per
    distinct threshold, plus (recall 0, precision 1)), as ``sklearn.metrics.auc`` of
    ``precision_recall_curve``: pytorch-ood's ``AUPR-IN`` / ``AUPR-OUT``."""
    _, tp, fp = _at_or_above(score, positive)
    recall = np.concatenate([[0.0], tp / tp[-1]])
    precision = np.concatenate([[1.0], tp / (tp + fp)])
    return float(np.sum((recall[1:] - recall[:-1]) * (precision[1:] + precision[:-1]) / 2))


def fpr_and_fdr_at_recall_fpr(positive, score, recall_level=0.95):
    """The FPR of Hendrycks' ``fpr_and_fdr_at_recall`` (the LogitNorm paper's FPR95): among the
    distinct thresholds from the highest down to the first one with full recall, plus a final
    candidate (recall 1, no false positives) that the original appends, the first one in the
    order *lowest threshold first* whose recall is closest to ``recall_level``; the share of
    negatives at or above it. Recall is ``tp / n_pos`` and the gap ``|recall - level|``, both in
    float64, as in the original, so the result is bit-identical to it."""
    _, tp, fp = _at_or_above(score, positive)
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    full = int(np.flatnonzero(tp == n_pos)[0])
    tp, fp = tp[: full + 1][::-1], fp[: full + 1][::-1]  # lowest threshold first
    recall = np.concatenate([tp / n_pos, [1.0]])
    fp = np.concatenate([fp, [0]])
    best = int(np.argmin(np.abs(recall - recall_level)))  # first of equal gaps
    return fp[best] / n_neg


def roc_fpr_at_tpr_thinned(positive, score, tpr_level=0.95):
    """OpenOOD v1.5's FPR@95 (``compute_all_metrics``): on the ROC curve of
    ``roc_curve(drop_intermediate=True)`` (every distinct threshold, minus the inner points where
    both the FP and the TP counts have a zero second difference, plus (0, 0) in front), the FPR
    of the first point whose TPR reaches ``tpr_level``."""
    _, tp, fp = _at_or_above(score, positive)
    if tp.size > 2:
        inner = (np.diff(tp, 2) != 0) | (np.diff(fp, 2) != 0)
        keep = np.concatenate([[True], inner, [True]])
        tp, fp = tp[keep], fp[keep]
    tpr = np.concatenate([[0], tp]) / tp[-1]
    fpr = np.concatenate([[0], fp]) / fp[-1]
    return fpr[np.flatnonzero(tpr >= tpr_level)[0]]


def roc_fpr_at_tpr_all_points(positive, score, tpr_level=0.95):
    """pytorch-ood's ``FPR95TPR``: as :func:`roc_fpr_at_tpr_thinned` without thinning."""
    _, tp, fp = _at_or_above(score, positive)
    tpr = np.concatenate([[0], tp]) / tp[-1]
    fpr = np.concatenate([[0], fp]) / fp[-1]
    return fpr[np.flatnonzero(tpr >= tpr_level)[0]]


# -- scikit-learn, as the reference code calls it -------------------------------------------------


def sklearn_average_precision(positive, score):
    """The paper's ``get_measures``: ``average_precision_score`` with the given positives."""
    from sklearn.metrics import average_precision_score

    return average_precision_score(np.asarray(positive, dtype=np.int32), score)


def sklearn_openood_fpr(positive, score, tpr_level=0.95):
    """OpenOOD v1.5's ``compute_all_metrics`` FPR: ``roc_curve`` (``drop_intermediate=True``, its
    default), then the FPR at the first TPR ``>= tpr_level``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(positive, dtype=np.int32), score,
                            drop_intermediate=True)
    return fpr[np.argmax(tpr >= tpr_level)]


def sklearn_auroc(positive, score):
    """The paper's and OpenOOD's AUROC (``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.asarray(positive, dtype=np.int32), score)


def sklearn_trapezoidal_aupr(positive, score):
    """OpenOOD's ``aupr_in`` / ``aupr_out``: ``auc`` of ``precision_recall_curve``."""
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(np.asarray(positive, dtype=np.int32), score)
    return auc(recall, precision)
