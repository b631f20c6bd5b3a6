"""The evaluation protocols: ``full`` (every OOD sample) and the LogitNorm paper's.

The paper's code scores each OOD set on a fifth of the ID test size (2,000 images for CIFAR)
and averages 10 draws. Here the draws are seeded index sets over scores already computed, so
the ``paper`` protocol costs no extra forward pass.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from logitnorm_plugin._core.errors import UndefinedScoresError
from logitnorm_plugin.data import paper_ood_size, subsample_ood
from logitnorm_plugin.metrics import ood_metrics

__all__ = ["check_defined", "paper_subsample_indices", "protocol_metrics"]


def check_defined(scores: Tensor, detector: str, where: str, model: str) -> None:
    """The rule for scores that are not numbers: NaN is an error naming the detector, the
    dataset and the model; +inf and -inf are scores (the most and the least OOD).

    :param where: the dataset, as the message names it (``"the OOD set 'svhn'"``)
    :raises UndefinedScoresError: for NaN scores
    """
    undefined = int(torch.isnan(scores).sum())
    if undefined:
        raise UndefinedScoresError(
            f"the detector {detector} gave {undefined} NaN scores of {scores.numel()} on "
            f"{where} with the model {model!r}: its settings or the model's weights make "
            "them undefined; change them or leave the detector out"
        )


def paper_subsample_indices(
    n_ood: int, n_id: int, repetitions: int = 10, seed: int = 0
) -> List[Tensor]:
    """The LogitNorm paper's OOD subsampling: ``repetitions`` seeded draws of ``n_id // 5`` OOD
    samples each (2,000 for a 10,000-image ID test set), from
    :func:`logitnorm_plugin.data.subsample_ood` (a pure function of its arguments).

    :return: one int64 index tensor per repetition
    """

    k = max(1, paper_ood_size(n_id))
    return [torch.from_numpy(i) for i in subsample_ood(n_ood, k, repeats=repetitions, seed=seed)]


def protocol_metrics(
    id_scores: Tensor,
    id_labels: Tensor,
    ood_scores: Tensor,
    ood_labels: Tensor,
    subsets: List[Tensor] | None,
) -> Dict[str, float]:
    """pytorch-ood's metrics and ours (:func:`logitnorm_plugin.metrics.ood_metrics`) of one
    (detector, OOD set): on every sample (``subsets`` is ``None``, the ``full`` protocol), or
    averaged over the paper's draws of OOD samples (``subsets`` from
    :func:`paper_subsample_indices`)."""
    if subsets is None:
        return ood_metrics(torch.cat([id_scores, ood_scores]), torch.cat([id_labels, ood_labels]))
    runs = []
    for idx in subsets:
        idx_dev = idx.to(ood_scores.device)
        runs.append(
            ood_metrics(
                torch.cat([id_scores, ood_scores[idx_dev]]),
                torch.cat([id_labels, ood_labels[idx]]),
            )
        )
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
