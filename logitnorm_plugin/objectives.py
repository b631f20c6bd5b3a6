"""Objectives trained with auxiliary outliers: which need them, the published batch composition
and loss weights, the mixed-batch loss without host synchronisation, and the outlier stream.

Which objective needs outliers
    pytorch-ood's own metadata says it: :class:`pytorch_ood.api.LossInfo` ``supervised`` is
    documented as "whether the objective takes example outliers (targets < 0, e.g. auxiliary
    OOD data) during training". The trainer reads that field of the registered class
    (:func:`needs_outliers`): an objective with ``supervised=True`` (``outlier_exposure``,
    ``energy_regularized``, ``entropic_open_set``) is refused without outliers, one with
    ``supervised=False`` (``cross_entropy``, ``logitnorm``) is refused when outliers are
    given, so no run is silently something other than what its name says. A third-party loss
    opts in by declaring ``supervised=True`` in its ``info``.

Published values (:data:`PUBLISHED`, keyed by the registered class)
    - ``OutlierExposureLoss``: Hendrycks, Mazeika & Dietterich, *Deep Anomaly Detection with
      Outlier Exposure*, ICLR 2019; their CIFAR code (github.com/hendrycks/outlier-exposure,
      ``CIFAR/oe_scratch.py`` and ``oe_tune.py``): ID batch 128 (``--batch_size``), outlier
      batch 256 (``--oe_batch_size``), i.e. 2 outliers per ID image; loss
      ``CE(ID) + 0.5 * mean over outliers of (logsumexp(z) - mean(z))``, each term averaged
      over its own images. pytorch-ood's default ``alpha`` is the same 0.5.
    - ``EnergyRegularizedLoss``: Liu, Wang, Owens & Li, *Energy-based Out-of-distribution
      Detection*, NeurIPS 2020; their code (github.com/wetliu/energy_ood, ``CIFAR/train.py``):
      ID batch 128, outlier batch 256, ``m_in = -25``, ``m_out = -7`` (the argument defaults),
      weight 0.1; loss ``CE(ID) + 0.1 * (mean_ID relu(E - m_in)^2 + mean_out relu(m_out -
      E)^2)`` with ``E = -logsumexp(z)``. pytorch-ood's defaults are the same values. (The
      repository's ``run.sh`` fine-tunes with other margins, -23/-5 for CIFAR-10 and -27/-5
      for CIFAR-100; the table keeps the argument defaults of ``train.py``.)
    - other objectives that need outliers (``entropic_open_set``, third-party ones): one
      outlier per ID image (:data:`DEFAULT_RATIO`), the trainer's choice, no published value.

    Both papers concatenate the ID and the outlier batch and run one forward pass (BatchNorm
    sees both), as the trainer does. They fine-tune or train from scratch with their own
    schedules; the trainer applies the run's recipe (``digits``, ``paper`` ...).

The mixed batch
    ID rows first, then the outlier rows (labels ``-1``). :func:`mixed_batch_loss` computes
    the two published objectives above by static slicing (``logits[:n]`` / ``logits[n:]``,
    shapes only), so the step never waits for the device, exactly as the published code;
    pytorch-ood's classes mask by label values (``contains_unknown(...)``, boolean indexing),
    which synchronises every step. Its ``OutlierExposureLoss`` with ``reduction="mean"`` also
    averages over the whole mixed batch, i.e. ``(n CE + m alpha OE) / (n + m)``, which is not
    the published weighting; the sync-free form here is the published one and equals the mean
    of pytorch-ood's per-sample terms (``reduction="none"``) over each group. Any other
    objective (or another reduction) is called as it is on the mixed batch with labels ``-1``
    for the outliers.

The outlier stream
    :class:`OutlierStream`: the outlier images of step ``s`` are positions
    ``s * m .. (s + 1) * m - 1`` of an endless sequence of seeded permutations of the outlier
    set (permutation ``k`` is a pure function of ``(seed, k)``). So the stream depends only on
    the seed and the global step: a resumed run draws exactly the outliers the uninterrupted
    run would have drawn, with no state in the checkpoint, and under DDP rank ``r`` takes its
    share of each step's positions as the ID batch is sharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.rng import hash64

__all__ = ["DEFAULT_RATIO", "PUBLISHED", "OutlierObjective", "OutlierStream", "class_key",
           "mixed_batch_loss", "needs_outliers", "objective_values"]

#: outliers per ID image for an objective that needs outliers but has no published value here
DEFAULT_RATIO = 1.0


@dataclass(frozen=True)
class OutlierObjective:
    """How a published objective mixes outliers into a step.

    :param ratio: outlier images per ID image in a step (outlier batch / ID batch)
    :param loss_kwargs: the published loss weights as ``(argument, value)`` pairs of the class
    :param source: where the values come from
    """

    ratio: float
    loss_kwargs: Tuple[Tuple[str, Any], ...]
    source: str


_OE_SOURCE = (
    "Hendrycks et al., ICLR 2019 (arXiv:1812.04606); github.com/hendrycks/outlier-exposure "
    "CIFAR/oe_scratch.py: batch_size 128, oe_batch_size 256, OE weight 0.5"
)
_ENERGY_SOURCE = (
    "Liu et al., NeurIPS 2020 (arXiv:2010.03759); github.com/wetliu/energy_ood CIFAR/train.py: "
    "batch_size 128, oe_batch_size 256, m_in -25, m_out -7, weight 0.1"
)

#: published values, keyed by ``module.qualname`` of the registered class
PUBLISHED: Dict[str, OutlierObjective] = {
    "pytorch_ood.loss.oe.OutlierExposureLoss": OutlierObjective(
        2.0, (("alpha", 0.5),), _OE_SOURCE
    ),
    "pytorch_ood.loss.energy.EnergyRegularizedLoss": OutlierObjective(
        2.0, (("alpha", 0.1), ("margin_in", -25.0), ("margin_out", -7.0)), _ENERGY_SOURCE
    ),
}


def class_key(cls: type) -> str:
    """``module.qualname`` of a class (how :data:`PUBLISHED` and ``config.json`` name it)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def needs_outliers(cls: type) -> bool:
    """Whether the objective ``cls`` is trained with auxiliary outliers: its
    ``info.supervised`` (pytorch-ood's :class:`~pytorch_ood.api.LossInfo`); ``False`` for a
    class without ``info``."""
    return bool(getattr(getattr(cls, "info", None), "supervised", False))


def objective_values(cls: type) -> OutlierObjective:
    """The published values of an objective that needs outliers, or the trainer's default
    (:data:`DEFAULT_RATIO`, no loss weights) for one without a table entry."""
    found = PUBLISHED.get(class_key(cls))
    if found is not None:
        return found
    return OutlierObjective(
        DEFAULT_RATIO, (), "no published ratio known to logitnorm-plugin: one outlier per ID "
        "image (the trainer's default); set it with outlier_ratio"
    )


# -- the loss of a mixed batch -----------------------------------------------------------------


def _published_form(loss_fn) -> Callable[[Tensor, Tensor], Tensor] | None:
    try:
        from pytorch_ood.loss import EnergyRegularizedLoss, OutlierExposureLoss
    except ImportError:  # pragma: no cover - pytorch-ood is a dependency
        return None
    if getattr(loss_fn, "reduction", None) != "mean":
        return None
    if type(loss_fn) is OutlierExposureLoss:
        alpha = float(loss_fn.alpha)

        def outlier_exposure(logits: Tensor, labels: Tensor) -> Tensor:
            n = labels.shape[0]
            out = logits[n:]
            uniform_ce = (torch.logsumexp(out, dim=1) - out.mean(dim=1)).mean()
            return F.cross_entropy(logits[:n], labels) + alpha * uniform_ce

        return outlier_exposure
    if type(loss_fn) is EnergyRegularizedLoss:
        alpha, m_in, m_out = float(loss_fn.alpha), float(loss_fn.m_in), float(loss_fn.m_out)

        def energy_regularized(logits: Tensor, labels: Tensor) -> Tensor:
            n = labels.shape[0]
            energy = -torch.logsumexp(logits, dim=1)
            hinge = (energy[:n] - m_in).relu().pow(2).mean()
            hinge = hinge + (m_out - energy[n:]).relu().pow(2).mean()
            return F.cross_entropy(logits[:n], labels) + alpha * hinge

        return energy_regularized
    return None


def mixed_batch_loss(loss_fn: Callable) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(logits, labels)`` for a batch whose first ``len(labels)`` rows are the ID images
    (``labels`` in ``0 .. C-1``) and whose other rows are outliers.

    The published objectives of :data:`PUBLISHED` (with ``reduction="mean"``) are computed
    without host synchronisation in their published form (see the module doc); any other
    objective is called on the mixed batch with the label ``-1`` for every outlier row.
    """
    published = _published_form(loss_fn)
    if published is not None:
        return published

    def as_called(logits: Tensor, labels: Tensor) -> Tensor:
        ood = labels.new_full((logits.shape[0] - labels.shape[0],), -1)
        return loss_fn(logits, torch.cat([labels, ood]))

    return as_called


# -- the stream of outlier batches -------------------------------------------------------------

# : where the hash of an outlier permutation's seed starts
# (:func:`~logitnorm_plugin._core.rng.hash64`)
_STREAM_CODE = 0x2545F4914F6CDD1D


class OutlierStream:
    """The outlier images of every training step: a pure function of the seed and the global
    step (see the module doc). The images stay on their device; per epoch the indices are
    computed on the CPU and copied once, so drawing a batch never waits for the device.

    :param images: ``N x C x H x W`` uint8 outlier images (on the training device)
    :param batch_size: outlier images per step, over all processes
    :param seed: seed of the permutations
    :param rank: this process's rank
    :param world_size: number of processes
    :raises UserError: for an empty set or a batch not divisible by the processes
    """

    def __init__(self, images: Tensor, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(images) < 1:
            raise UserError("the outlier set has no images")
        if batch_size < 1 or batch_size % world_size:
            raise UserError(
                f"outlier batch size {batch_size} (global) must be >= 1 and divisible by the "
                f"{world_size} processes"
            )
        self.images = images
        self.count, self.batch_size, self.seed = len(images), int(batch_size), int(seed)
        self.local = self.batch_size // world_size
        self.rank = int(rank)
        self._perms: Dict[int, Tensor] = {}
        self._epoch = torch.empty(0, dtype=torch.int64, device=images.device)

    def permutation(self, k: int) -> Tensor:
        """Permutation ``k`` of the outlier indices (CPU, int64)."""
        if k not in self._perms:
            g = torch.Generator().manual_seed(hash64(_STREAM_CODE, self.seed, k, 0x0E) >> 1)
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[k] = torch.randperm(self.count, generator=g)
        return self._perms[k]

    def indices(self, first_step: int, steps: int) -> Tensor:
        """Indices into the outlier set of this process for ``steps`` steps from global step
        ``first_step``: ``steps x local`` (CPU, int64)."""
        step = torch.arange(first_step, first_step + steps, dtype=torch.int64).view(-1, 1)
        pos = step * self.batch_size + self.rank * self.local + torch.arange(self.local)
        cycle, within = pos // self.count, pos % self.count
        out = torch.empty_like(pos)
        for k in torch.unique(cycle).tolist():
            mask = cycle == k
            out[mask] = self.permutation(int(k))[within[mask]]
        return out

    def start_epoch(self, first_step: int, steps: int) -> None:
        """Prepare the batches of ``steps`` steps from global step ``first_step``."""
        self._epoch = self.indices(first_step, steps).to(self.images.device)

    def batch(self, i: int) -> Tensor:
        """The uint8 outlier batch of step ``i`` of the epoch (``local x C x H x W``)."""
        return self.images.index_select(0, self._epoch[i])
