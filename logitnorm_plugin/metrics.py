"""The two numbers of the LogitNorm paper that pytorch-ood does not compute.

Everything else (AUROC, AUTC, AUPR-IN, AUPR-OUT, FPR95TPR) comes from
:class:`pytorch_ood.metrics.OODMetrics`; :func:`ood_metrics` runs it and adds the paper's FPR.

**Two FPR95 conventions, never mixed.**

- ``FPR95TPR`` (pytorch-ood, OpenOOD): OOD is the positive class; the share of ID samples
  flagged as OOD at the threshold that detects 95% of the OOD samples.
- ``FPR95-ID95`` (:data:`PAPER_FPR_KEY`; the LogitNorm paper and its code, after Hendrycks'
  ``fpr_and_fdr_at_recall``): ID is the positive class; the share of OOD samples *accepted*
  at the threshold that keeps (closest to) 95% of the ID samples.

**ECE** follows the paper's code: 15 equal-width confidence bins on ``(0, 1]``, confidence =
maximum softmax probability of ``logits / t``, gap = ``|mean confidence - accuracy|`` per bin,
weighted by the bin's share of samples. (pytorch-ood's ``calibration_error`` bins by equal
*counts* of 100 samples instead, a different number.)
"""

from typing import Dict

import torch
from pytorch_ood.metrics import OODMetrics
from torch import Tensor

from logitnorm_plugin.conventions import OOD_KEYS, PAPER_FPR_KEY

__all__ = [
    "PAPER_FPR_KEY",
    "OOD_KEYS",
    "fpr_at_id_tpr",
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


def fpr_at_id_tpr(scores: Tensor, labels: Tensor, tpr: float = 0.95) -> float:
    """
    The LogitNorm paper's FPR at 95% TPR, with **ID as the positive class**.

    Confidence is the negated outlier score. Thresholds are the distinct confidence values, from
    the highest down to the first one that keeps every ID sample; among them the one whose ID
    recall is closest to ``tpr`` is chosen (on a tie, the one with the higher recall), and the
    share of OOD samples at or above it is returned. This is the definition of the paper's
    ``test.py`` (Hendrycks' ``fpr_and_fdr_at_recall`` with ID scores as positives).

    :param scores: outlier scores of shape :math:`N`, larger means more likely OOD
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples
    :param tpr: share of ID samples to keep, in :math:`(0, 1]`
    :return: share of OOD samples accepted as ID, in :math:`[0, 1]`
    :raises ValueError: without ID or OOD samples, on NaN scores, or for ``tpr`` outside (0, 1]
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    scores, labels = _flat_scores(scores, labels)
    is_id = labels >= 0
    n_id = int(is_id.sum())
    n_ood = is_id.numel() - n_id
    if n_id == 0 or n_ood == 0:
        raise ValueError("the paper's FPR needs both ID (label >= 0) and OOD (label < 0) samples")

    confidence = -scores
    order = torch.argsort(confidence, descending=True, stable=True)
    confidence, is_id = confidence[order], is_id[order]
    # the last position of each distinct confidence value: one threshold per value
    last = torch.nonzero(confidence[1:] != confidence[:-1]).reshape(-1)
    last = torch.cat([last, torch.tensor([confidence.numel() - 1])])
    tps = torch.cumsum(is_id.to(torch.int64), 0)[last]
    fps = last + 1 - tps
    # thresholds up to the first one that keeps every ID sample
    end = int(torch.searchsorted(tps, torch.tensor([n_id]))[0])
    gap = (tps[: end + 1].to(torch.float64) / n_id - tpr).abs()
    # closest recall; among equal gaps the lowest threshold (highest recall)
    best = end - int(torch.argmin(gap.flip(0)))
    return float(fps[best]) / n_ood


def expected_calibration_error(
    logits: Tensor, labels: Tensor, n_bins: int = 15, t: float = 1.0
) -> float:
    """
    Expected calibration error of the softmax of ``logits / t``, as in the paper's code.

    .. math::
        \\mathrm{ECE} = \\sum_{b=1}^{B} \\frac{|S_b|}{N}
        \\Big| \\frac{1}{|S_b|}\\sum_{i \\in S_b} c_i - \\frac{1}{|S_b|}\\sum_{i \\in S_b}
        [\\hat y_i = y_i] \\Big|

    with :math:`c_i` the maximum softmax probability, :math:`\\hat y_i` its class and
    :math:`S_b` the samples with :math:`c_i \\in (\\frac{b-1}{B}, \\frac{b}{B}]`.

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
    """Closed-set accuracy of ``argmax(logits)`` on the samples with labels :math:`\\geq 0`."""
    labels = torch.as_tensor(labels).reshape(-1).to(logits.device)
    known = labels >= 0
    if not bool(known.any()):
        raise ValueError("accuracy needs ID samples (labels >= 0)")
    return float((logits.argmax(dim=1)[known] == labels[known]).to(torch.float64).mean())


def ood_metrics(
    scores: Tensor, labels: Tensor, predictions: Tensor | None = None
) -> Dict[str, float]:
    """
    pytorch-ood's :class:`~pytorch_ood.metrics.OODMetrics` (kept on the CPU) plus
    :data:`PAPER_FPR_KEY`.

    :param scores: outlier scores of shape :math:`N` (any device), larger means more OOD
    :param labels: labels of shape :math:`N`; labels :math:`< 0` mark OOD samples
    :param predictions: optional predicted classes of shape :math:`N`; adds ``ACC``
    :return: dict with the keys of :data:`OOD_KEYS` (and ``ACC`` with ``predictions``)
    """
    metrics = OODMetrics(device="cpu")
    labels = torch.as_tensor(labels)
    if predictions is None:
        metrics.update(scores, labels.to(scores.device))
    else:
        metrics.update(scores, labels.to(scores.device), predictions.to(scores.device))
    result = metrics.compute()
    result[PAPER_FPR_KEY] = fpr_at_id_tpr(scores, labels)
    return result
