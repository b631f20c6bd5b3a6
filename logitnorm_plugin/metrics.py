"""The metrics of the result rows: pytorch-ood's, the LogitNorm paper's and OpenOOD's, each
under its own key.

:func:`ood_metrics` runs pytorch-ood's :class:`~pytorch_ood.metrics.OODMetrics` (``AUROC``,
``AUTC``, ``AUPR-IN``, ``AUPR-OUT``, ``FPR95TPR``, ``ACC``) and adds three numbers that
pytorch-ood does not compute: the paper's FPR95 (:data:`PAPER_FPR_KEY`), the paper's AUPR
(:data:`PAPER_AUPR_KEY`) and OpenOOD v1.5's FPR95 (:data:`OPENOOD_FPR_KEY`). A key names one
convention; numbers of different conventions are never put under one key.

Conventions: labels :math:`< 0` are OOD, a larger outlier score means more OOD, and the
*confidence* of the paper's and OpenOOD's code is the negated outlier score. "Distinct
thresholds" means one threshold per distinct score value: tied samples always enter a curve
together, as one step. The definitions were read from the original LogitNorm code
(``common/display_results.py``: ``get_measures``, ``fpr_and_fdr_at_recall``; ``test.py``
calls ``get_measures(-in_score, -out_score)``, so ID is the positive class), from OpenOOD v1.5
(``openood/evaluators/metrics.py``: ``compute_all_metrics``) and from scikit-learn's
``roc_curve``, ``precision_recall_curve`` and ``average_precision_score``; no code was copied.
scikit-learn is only used by the tests, never here.

.. list-table:: Result keys, whose convention each follows, and how it treats ties
   :header-rows: 1

   * - key
     - convention
     - definition
     - ties
   * - ``AUROC``
     - pytorch-ood; equals the paper's (``roc_auc_score``) and OpenOOD's up to float rounding
     - trapezoidal area under the ROC curve, OOD positive (AUROC is symmetric, so ID positive
       on the confidence gives the same number)
     - a tied ID/OOD pair counts 1/2 (diagonal ROC segment)
   * - ``AUTC``
     - pytorch-ood only (not in the paper nor in OpenOOD)
     - mean of the areas under the FPR and FNR threshold curves of the min-max normalised
       scores; lower is better
     - depends on score values, not ranks: ties need no rule; NaN (with a warning) for constant
       or infinite scores
   * - ``AUPR-IN``
     - pytorch-ood; equals OpenOOD's ``aupr_in`` up to float rounding; **not** the paper's AUPR
     - trapezoidal area (``sklearn.metrics.auc``) under ``precision_recall_curve`` with ID
       positive (low outlier score = positive), ending at (recall 0, precision 1)
     - one curve point per distinct score; straight lines between points (interpolated)
   * - ``AUPR-OUT``
     - pytorch-ood; equals OpenOOD's ``aupr_out`` up to float rounding
     - as ``AUPR-IN`` with OOD positive (high outlier score = positive)
     - as ``AUPR-IN``
   * - ``AUPR-ID-AP`` (:data:`PAPER_AUPR_KEY`)
     - the LogitNorm paper's AUPR (``average_precision_score`` in ``get_measures``)
     - average precision, ID positive: :math:`\\sum_k (R_k - R_{k-1}) P_k` over the distinct
       thresholds, :math:`R_0 = 0` (:func:`average_precision_id`)
     - one step per distinct score, no interpolation; bit-identical to scikit-learn >= 1.1
   * - ``FPR95TPR``
     - pytorch-ood (:class:`~pytorch_ood.metrics.FPRAtTPR`); **not** OpenOOD's
     - OOD positive: share of ID samples scored at or above the first threshold (from the
       highest score down) at which at least 95% of the OOD samples are
     - every distinct score is a ROC point; a tied group enters as one step, so all ID samples
       of the group that crosses 95% count
   * - ``FPR95-OpenOOD`` (:data:`OPENOOD_FPR_KEY`)
     - OpenOOD v1.5 ``compute_all_metrics`` (:func:`openood_fpr_at_tpr`)
     - as ``FPR95TPR``, on the ROC curve of ``roc_curve(drop_intermediate=True)``
     - collinear intermediate ROC points are dropped first, so where ID and OOD tie at the
       same rate over consecutive scores the first *kept* point at or above 95% is used: ID
       and OOD both scored 0..99 give 0.95 for ``FPR95TPR`` and 1.00 here
   * - ``FPR95-ID95`` (:data:`PAPER_FPR_KEY`)
     - the LogitNorm paper (Hendrycks' ``fpr_and_fdr_at_recall``; :func:`fpr_at_id_tpr`)
     - ID positive: share of OOD samples accepted (confidence at or above the threshold) at
       the threshold whose ID recall is *closest* to 95%
     - candidate thresholds are the distinct scores down to the first one that keeps every ID
       sample; equally close recalls go to the lower threshold (higher recall)
   * - ``ACC``
     - pytorch-ood (:class:`~pytorch_ood.metrics.Accuracy`), as the paper and OpenOOD
     - share of ID samples (labels :math:`\\geq 0`) whose predicted class is the label
     - the prediction is the caller's; :func:`accuracy` takes the first maximal logit
   * - ``ECE``
     - the LogitNorm paper's code (``_ECELoss``), not pytorch-ood's ``calibration_error``
     - 15 equal-width bins on ``(0, 1]`` of the maximum softmax probability of ``logits / t``,
       :math:`\\sum_b \\frac{|S_b|}{N} |\\text{conf}_b - \\text{acc}_b|`
       (:func:`expected_calibration_error`)
     - bins are ``(lower, upper]`` with float32 edges: a confidence on an edge goes to the
       lower bin

**Two FPR95 conventions, never mixed.** ``FPR95TPR`` (OOD positive: ID samples flagged when
95% of OOD is detected) and ``FPR95-ID95`` (ID positive: OOD samples accepted when 95% of ID is
kept) are different numbers. ``FPR95-OpenOOD`` is the former's definition on OpenOOD's thinned
ROC curve; it equals ``FPR95TPR`` unless ties make OpenOOD drop the 95% point. OpenOOD also
defines ``fpr_recall`` (ID positive, first kept threshold reaching 95% ID recall), which its
evaluators do not call; it is not computed here.

**Two AUPR conventions, never mixed.** ``AUPR-IN`` interpolates linearly between the points of
the precision-recall curve; ``AUPR-ID-AP`` sums rectangles (precision times recall step). They
differ most where many ID and OOD samples share a score (saturated softmax): ID and OOD both
scored 0..99 give 0.5025 and 0.5.

**Scores that scikit-learn refuses.** NaN scores raise :class:`ValueError` everywhere. Infinite
scores are ties like any other equal values here; scikit-learn (and so the paper's code and
OpenOOD) refuses them, so for them no reference number exists.
"""

from typing import Dict, Tuple

import numpy as np
import torch
from pytorch_ood.metrics import OODMetrics
from torch import Tensor

from logitnorm_plugin._core.conventions import (
    OOD_KEYS,
    OPENOOD_FPR_KEY,
    PAPER_AUPR_KEY,
    PAPER_FPR_KEY,
)

__all__ = [
    "PAPER_FPR_KEY",
    "PAPER_AUPR_KEY",
    "OPENOOD_FPR_KEY",
    "OOD_KEYS",
    "fpr_at_id_tpr",
    "average_precision_id",
    "openood_fpr_at_tpr",
    "expected_calibration_error",
    "accuracy",
    "ood_metrics",
]


def _flat_scores(scores: Tensor, labels: Tensor):
    scores = torch.as_tensor(scores).detach().reshape(-1).to("cpu", torch.float64)
    labels = torch.as_tensor(labels).detach().reshape(-1).to("cpu")
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must have the same number of entries, got {scores.numel()} "
            f"and {labels.numel()}"
        )
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    return scores, labels


def _check_tpr(tpr: float) -> None:
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")


def _split(labels: Tensor, what: str) -> Tuple[Tensor, int, int]:
    """ID mask and the numbers of ID and OOD samples; both must be present."""
    is_id = labels >= 0
    n_id = int(is_id.sum())
    n_ood = is_id.numel() - n_id
    if n_id == 0 or n_ood == 0:
        raise ValueError(f"{what} needs both ID (label >= 0) and OOD (label < 0) samples")
    return is_id, n_id, n_ood


def _step_counts(values: Tensor, positive: Tensor) -> Tuple[Tensor, Tensor]:
    """
    Cumulative counts at each distinct value of ``values``, from the highest down: ``tps[j]``
    and ``fps[j]`` count the positive and the other samples with a value :math:`\\geq` the
    ``j``-th highest distinct value. Equal values (also ``-0.0`` and ``0.0``, and equal
    infinities) enter together, at one threshold.

    :return: ``tps``, ``fps`` (int64, exact for any number of samples)
    """
    order = torch.argsort(values, descending=True, stable=True)
    values, positive = values[order], positive[order]
    # the last position of each distinct value: one threshold per value
    last = torch.nonzero(values[1:] != values[:-1]).reshape(-1)
    last = torch.cat([last, torch.tensor([values.numel() - 1])])
    tps = torch.cumsum(positive.to(torch.int64), 0)[last]
    return tps, last + 1 - tps


def fpr_at_id_tpr(scores: Tensor, labels: Tensor, tpr: float = 0.95) -> float:
    """
    The LogitNorm paper's FPR at 95% TPR (key :data:`PAPER_FPR_KEY`, ``FPR95-ID95``), with
    **ID as the positive class**.

    Confidence is the negated outlier score. Thresholds are the distinct confidence values, from
    the highest down to the first one that keeps every ID sample; among them the one whose ID
    recall is closest to ``tpr`` is chosen (on a tie, the one with the higher recall), and the
    share of OOD samples at or above it is returned. This is the definition of the paper's
    ``test.py`` (Hendrycks' ``fpr_and_fdr_at_recall`` with ID scores as positives), computed
    with the same float64 operations, so the result is bit-identical to it. Tied samples enter
    at one threshold; equal infinite scores are tied too (the paper's code has no defined
    result for infinite scores).

    :param scores: outlier scores of shape :math:`N`, larger means more likely OOD
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples
    :param tpr: share of ID samples to keep, in :math:`(0, 1]`
    :return: share of OOD samples accepted as ID, in :math:`[0, 1]`
    :raises ValueError: without ID or OOD samples, on NaN scores, or for ``tpr`` outside (0, 1]
    """
    _check_tpr(tpr)
    scores, labels = _flat_scores(scores, labels)
    is_id, n_id, n_ood = _split(labels, "the paper's FPR")
    tps, fps = _step_counts(-scores, is_id)
    # thresholds up to the first one that keeps every ID sample
    end = int(torch.searchsorted(tps, torch.tensor([n_id]))[0])
    gap = (tps[: end + 1].to(torch.float64) / n_id - tpr).abs()
    # closest recall; among equal gaps the lowest threshold (highest recall)
    best = end - int(torch.argmin(gap.flip(0)))
    return float(fps[best]) / n_ood


def average_precision_id(scores: Tensor, labels: Tensor) -> float:
    """
    The LogitNorm paper's AUPR (key :data:`PAPER_AUPR_KEY`, ``AUPR-ID-AP``): average precision
    with **ID as the positive class** and the negated outlier score as the confidence, i.e.
    ``sklearn.metrics.average_precision_score(is_id, -scores)`` as the paper's
    ``get_measures`` computes it.

    .. math::
        \\mathrm{AP} = \\sum_k (R_k - R_{k-1})\\, P_k

    over the distinct confidence values, from the highest down, with :math:`P_k` and
    :math:`R_k` the precision and ID recall of accepting every sample with a confidence
    :math:`\\geq` the :math:`k`-th value, and :math:`R_0 = 0`. A step function: no
    interpolation between the points, unlike pytorch-ood's trapezoidal ``AUPR-IN``, a different
    number: 0.5 against 0.75 when 50 ID and 50 OOD samples share one score, 0.5 against 0.5025
    when ID and OOD are both scored 0..99. Tied samples enter at one threshold, as in
    scikit-learn; the float64 operations (and numpy's pairwise sum) are scikit-learn's, so the
    result is bit-identical to scikit-learn >= 1.1. Releases before 1.1 (which the paper's code
    of 2022 may have run on) cut the curve at full recall; that only changes the order of the
    float sum, by a few units in the last place. Equal infinite scores are tied (scikit-learn
    refuses them).

    :param scores: outlier scores of shape :math:`N`, larger means more likely OOD
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples
    :return: average precision in :math:`(0, 1]`; higher is better, guessing gets the share of
        ID samples
    :raises ValueError: without ID or OOD samples or on NaN scores
    """
    scores, labels = _flat_scores(scores, labels)
    is_id, _, _ = _split(labels, "the paper's AUPR")
    tps, fps = _step_counts(-scores, is_id)
    tps, fps = tps.numpy().astype(np.float64), fps.numpy().astype(np.float64)
    # scikit-learn's precision-recall curve: decreasing recall, closed by (recall 0, precision 1)
    precision = np.concatenate([np.flip(tps / (tps + fps)), [1.0]])
    recall = np.concatenate([np.flip(tps / tps[-1]), [0.0]])
    # the step-function integral, summed as numpy sums (pairwise), clipped at -0.0
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def openood_fpr_at_tpr(scores: Tensor, labels: Tensor, tpr: float = 0.95) -> float:
    """
    OpenOOD v1.5's FPR@95 (key :data:`OPENOOD_FPR_KEY`, ``FPR95-OpenOOD``): the FPR that
    ``openood.evaluators.metrics.compute_all_metrics`` reports, with **OOD as the positive
    class**.

    The ROC curve has one point per distinct outlier score, as for pytorch-ood's ``FPR95TPR``,
    but, as ``sklearn.metrics.roc_curve(drop_intermediate=True)`` does, every point whose
    false and true positive counts both have a zero second difference (a point collinear with
    its neighbours at equal steps) is dropped, except the first and the last. The curve starts
    at (0, 0); the result is the FPR of the first remaining point whose TPR is at least ``tpr``
    (``fpr[argmax(tpr_curve >= tpr)]``), computed with scikit-learn's float64 operations.

    It differs from ``FPR95TPR`` only on ties: where ID and OOD samples enter at the same rate
    over consecutive thresholds, the point at 95% can be dropped and a later point with a
    higher FPR is used. ID and OOD both scored 0..99: ``FPR95TPR`` is 0.95, this is 1.0.
    OpenOOD marks OOD with the label ``-1``; every label :math:`< 0` does here.

    :param scores: outlier scores of shape :math:`N`, larger means more likely OOD
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples
    :param tpr: share of OOD samples to detect, in :math:`(0, 1]`
    :return: share of ID samples flagged as OOD, in :math:`[0, 1]`
    :raises ValueError: without ID or OOD samples, on NaN scores, or for ``tpr`` outside (0, 1]
    """
    _check_tpr(tpr)
    scores, labels = _flat_scores(scores, labels)
    is_id, n_id, n_ood = _split(labels, "OpenOOD's FPR")
    tps, fps = _step_counts(scores, ~is_id)
    if tps.numel() > 2:
        # drop_intermediate: keep the ends and every point with a kink in fps or tps
        def second_difference(x):
            return x[2:] - 2 * x[1:-1] + x[:-2]

        kink = (second_difference(tps) != 0) | (second_difference(fps) != 0)
        keep = torch.cat([torch.tensor([True]), kink, torch.tensor([True])])
        tps, fps = tps[keep], fps[keep]
    zero = torch.zeros(1, dtype=torch.int64)
    tpr_curve = torch.cat([zero, tps]).to(torch.float64) / n_ood
    fpr_curve = torch.cat([zero, fps]).to(torch.float64) / n_id
    # the curve ends at tpr 1 >= tpr, so a point is always found
    first = int(torch.nonzero(tpr_curve >= tpr)[0, 0])
    return float(fpr_curve[first])


def expected_calibration_error(
    logits: Tensor, labels: Tensor, n_bins: int = 15, t: float = 1.0
) -> float:
    """
    Expected calibration error (key ``ECE``) of the softmax of ``logits / t``, as in the paper's
    code (``_ECELoss``); not pytorch-ood's ``calibration_error``, which bins by equal counts.

    .. math::
        \\mathrm{ECE} = \\sum_{b=1}^{B} \\frac{|S_b|}{N}
        \\Big| \\frac{1}{|S_b|}\\sum_{i \\in S_b} c_i - \\frac{1}{|S_b|}\\sum_{i \\in S_b}
        [\\hat y_i = y_i] \\Big|

    with :math:`c_i` the maximum softmax probability, :math:`\\hat y_i` its class and
    :math:`S_b` the samples with :math:`c_i \\in (\\frac{b-1}{B}, \\frac{b}{B}]`.
    The bin edges are float32 (``torch.linspace(0, 1, B + 1)``) and compared in float32, as in
    the paper's code: a confidence equal to an edge falls into the lower bin.

    :param logits: ID logits of shape :math:`N \\times C`
    :param labels: class labels of shape :math:`N` (all :math:`\\geq 0`)
    :param n_bins: number :math:`B` of equal-width bins
    :param t: softmax temperature
    :return: ECE in :math:`[0, 1]`
    :raises ValueError: for empty input, mismatched shapes, OOD labels or ``n_bins < 1``
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    logits = torch.as_tensor(logits).detach()
    labels = torch.as_tensor(labels).detach().reshape(-1).to(logits.device)
    if logits.dim() != 2 or logits.shape[0] != labels.numel() or labels.numel() == 0:
        raise ValueError(
            f"expected N x C logits and N labels (N > 0), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if bool((labels < 0).any()):
        raise ValueError("ECE is defined on ID samples only; got labels < 0")
    confidence, prediction = logits.float().div(t).softmax(dim=1).max(dim=1)
    correct = prediction.eq(labels).to(torch.float64)
    # float32 boundaries, compared in float32, as the reference does
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device)
    ece = torch.zeros((), dtype=torch.float64, device=confidence.device)
    n = confidence.numel()
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lower) & (confidence <= upper)
        count = int(in_bin.sum())
        if count:
            gap = confidence[in_bin].to(torch.float64).mean() - correct[in_bin].mean()
            ece += gap.abs() * (count / n)
    return float(ece)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """
    Closed-set accuracy (key ``ACC``) of ``argmax(logits)`` on the samples with labels
    :math:`\\geq 0`, as pytorch-ood's :class:`~pytorch_ood.metrics.Accuracy` (and the paper's
    and OpenOOD's code); equal maximal logits predict the first of them.

    :param logits: logits of shape :math:`N \\times C`
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples, which are
        ignored
    :return: accuracy in :math:`[0, 1]`
    :raises ValueError: without ID samples
    """
    labels = torch.as_tensor(labels).reshape(-1).to(logits.device)
    known = labels >= 0
    if not bool(known.any()):
        raise ValueError("accuracy needs ID samples (labels >= 0)")
    return float((logits.argmax(dim=1)[known] == labels[known]).to(torch.float64).mean())


def ood_metrics(
    scores: Tensor, labels: Tensor, predictions: Tensor | None = None
) -> Dict[str, float]:
    """
    pytorch-ood's :class:`~pytorch_ood.metrics.OODMetrics` (kept on the CPU) plus the paper's
    FPR95 (:data:`PAPER_FPR_KEY`, :func:`fpr_at_id_tpr`), the paper's AUPR
    (:data:`PAPER_AUPR_KEY`, :func:`average_precision_id`) and OpenOOD's FPR95
    (:data:`OPENOOD_FPR_KEY`, :func:`openood_fpr_at_tpr`). Each key's convention and tie rule
    is in the table of this module's docstring.

    - ``AUROC``, ``AUTC``, ``AUPR-IN``, ``AUPR-OUT``, ``FPR95TPR``: pytorch-ood's values,
      unchanged;
    - ``FPR95-ID95``: the paper's FPR95 (ID positive, closest to 95% of ID kept);
    - ``AUPR-ID-AP``: the paper's AUPR (average precision, ID positive, step-wise);
    - ``FPR95-OpenOOD``: OpenOOD v1.5's FPR95 (``FPR95TPR`` on the thinned ROC curve of
      ``roc_curve(drop_intermediate=True)``);
    - ``ACC`` (with ``predictions``): pytorch-ood's closed-set accuracy on the ID samples.

    :param scores: outlier scores of shape :math:`N` (any device), larger means more OOD
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples
    :param predictions: optional predicted classes of shape :math:`N`; adds ``ACC``
    :return: dict with the keys of :data:`OOD_KEYS` (and ``ACC`` with ``predictions``)
    :raises ValueError: without ID or OOD samples or on NaN scores
    """
    metrics = OODMetrics(device="cpu")
    labels = torch.as_tensor(labels)
    if predictions is None:
        metrics.update(scores, labels.to(scores.device))
    else:
        metrics.update(scores, labels.to(scores.device), predictions.to(scores.device))
    result = metrics.compute()
    result[PAPER_FPR_KEY] = fpr_at_id_tpr(scores, labels)
    result[PAPER_AUPR_KEY] = average_precision_id(scores, labels)
    result[OPENOOD_FPR_KEY] = openood_fpr_at_tpr(scores, labels)
    return result
