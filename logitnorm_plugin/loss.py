"""LogitNorm, the training objective: cross-entropy of L2-normalised, temperature-scaled logits.

One private core (:func:`_normalized_logits` and :func:`_masked_cross_entropy`) serves the
functional form :func:`logit_norm_loss`, the module :class:`LogitNormLoss` and the detector
:class:`~logitnorm_plugin.detector.LogitNormDetector`, so the formula exists once.

Differences from ``pytorch_ood.loss.LogitNorm`` (0.4.0), on purpose:

* default ``t=0.04`` instead of ``1.0`` (see :class:`LogitNormLoss`);
* OOD labels (``< 0``) are masked instead of dropped by boolean indexing: the value of the
  ``mean`` and ``sum`` reductions is the same, but nothing synchronises with the GPU, so a training
  step can be captured in a CUDA graph; ``reduction="none"`` keeps shape ``B`` (zeros at OOD
  positions), as the host's ``CrossEntropyLoss`` does, where the host's ``LogitNorm`` returns
  fewer rows; no warning is emitted (a warning would need that synchronisation);
* segmentation-shaped logits ``B x C x H x W`` with targets ``B x H x W`` (norm over ``C`` per
  pixel);
* the norm and the loss are computed in float32 under autocast, and float16 logits keep a
  finite gradient even when they are all zero (see :func:`_normalized_logits`);
* targets of any integer dtype are accepted (``int32``, ``uint8``, ...: cast to ``int64``, as
  ``torch.nn.functional.cross_entropy`` needs);
* ``t`` must be at least :data:`MIN_T` (``1e-6``), so every value stays finite in float32;
* invalid ``t``, shapes and labels raise ``ValueError`` naming the problem.
"""

import math

import torch
from pytorch_ood.api import LossInfo, Paper, Representation, Task
from torch import Tensor
from torch.nn import Module
from torch.nn import functional as F

from logitnorm_plugin._core.conventions import DEFAULT_T

#: added to the norm so that all-zero logits give finite values (the host and the original
#: code use the same constant)
EPS = 1e-7

#: the smallest accepted temperature. The normalised logits are bounded by ``1 / t`` and the
#: loss by about ``2 / t``, so with ``t >= 1e-6`` they stay below 1e7 in float32, and the
#: gradient (at most ``sqrt(2) / (t * EPS)``, about 1.4e13) stays finite too. A smaller ``t``
#: changes nothing useful: at ``t = 1e-6`` the softmax of the normalised logits is already
#: one-hot, while ``t = 1e-300`` becomes 0 in float32 and every value NaN. Values used in
#: practice are 0.001 to 1 (the paper: 0.04 for CIFAR-10, 0.0085 for CIFAR-100).
MIN_T = 1e-6

#: the paper, shared by the loss and the detector records
PAPER = Paper(
    title="Mitigating Neural Network Overconfidence with Logit Normalization",
    venue="ICML",
    year=2022,
    url="https://arxiv.org/abs/2205.09310",
    code="https://github.com/hongxin001/logitnorm_ood",
)

_REDUCTIONS = ("mean", "sum", "none")


def check_temperature(t) -> float:
    """Return ``t`` as a float, or raise ``ValueError`` if it is not a finite number
    ``>= MIN_T`` (``1e-6``; see :data:`MIN_T` for why)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ValueError(f"temperature t must be a positive number, got {t!r}")
    t = float(t)
    if not math.isfinite(t) or t < MIN_T:
        raise ValueError(
            f"temperature t must be finite and > 0, at least {MIN_T:g} (typical values: 0.001 "
            f"to 1), got {t:g}"
        )
    return t


def _norm_floor(dtype: torch.dtype, t: float) -> float:
    """The smallest norm used for logits of ``dtype``: ``2 / (t * largest finite value)``.

    The gradient of the normalisation with respect to the logits is at most
    ``1 / (t * norm)`` times that of the loss, whose per-sample gradient with respect to the
    normalised logits has an L2 norm of at most ``sqrt(2)``. The gradient is computed in
    float32 and cast back to the logits' dtype; clamping the norm here keeps it below
    ``sqrt(2) / 2`` times the largest finite value of that dtype. For float16 (largest value
    65504) and ``t = 0.04`` the floor is 7.6e-4: without it all-zero float16 logits get an
    infinite gradient (``1 / (t * EPS) = 2.5e8``). For bfloat16, float32 and float64 the floor
    is below 1e-36 and changes nothing.
    """
    return 2.0 / (t * torch.finfo(dtype).max)


def _normalized_logits(logits: Tensor, t: float) -> Tensor:
    """``logits / (t * (max(||logits||_2, floor) + EPS))``, the norm taken over the class
    dimension 1.

    Computed in float32 (or float64 if given) whatever autocast says: under bf16 the norm of
    hundreds of logits loses too many digits. ``floor`` (:func:`_norm_floor`) depends on the
    dtype of the logits given: it keeps the gradient finite when cast back to float16 and is
    negligible otherwise; logits whose norm is above it get exactly the paper's formula.
    """
    floor = _norm_floor(logits.dtype, t)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    norm = torch.linalg.vector_norm(logits, ord=2, dim=1, keepdim=True)
    return logits / (t * (norm.clamp_min(floor) + EPS))


def _check_inputs(logits: Tensor, target: Tensor) -> None:
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise ValueError("logits and target must be tensors")
    if logits.dim() < 2:
        raise ValueError(
            f"logits must have shape B x C (or B x C x H x W), got {tuple(logits.shape)}"
        )
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} for logits of shape {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class labels, got dtype {target.dtype}")
    # Reading label values synchronises with an accelerator and breaks CUDA-graph capture, so
    # the range is checked where it is free: on CPU, outside torch.compile (where it would be a
    # graph break). On a GPU, cross_entropy's own device assertion catches it, and the trainer
    # checks its dataset's labels once before training.
    if target.device.type == "cpu" and target.numel() > 0 and not torch.compiler.is_compiling():
        num_classes = logits.shape[1]
        largest = int(target.max())
        if largest >= num_classes:
            raise ValueError(
                f"target contains label {largest}, but logits have only {num_classes} classes "
                f"(valid labels: 0..{num_classes - 1}, or < 0 for OOD samples, which are ignored)"
            )


def _masked_cross_entropy(logits: Tensor, target: Tensor, reduction: str) -> Tensor:
    """Cross-entropy over samples with ``target >= 0``; OOD samples (``< 0``) contribute 0.

    ``mean`` divides by the number of ID samples, which equals dropping the OOD samples first;
    a batch without ID samples gives 0 (connected to the graph), as in pytorch-ood.
    """
    known = target >= 0
    per_sample = F.cross_entropy(logits, torch.where(known, target, 0), reduction="none")
    per_sample = per_sample * known
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / known.sum().clamp(min=1)


def logit_norm_loss(
    logits: Tensor, target: Tensor, t: float = DEFAULT_T, reduction: str = "mean"
) -> Tensor:
    """
    Functional form of :class:`LogitNormLoss`.

    :param logits: logits of shape :math:`B \\times C` or :math:`B \\times C \\times H \\times W`
    :param target: labels of shape :math:`B` or :math:`B \\times H \\times W`, any integer
        dtype (cast to ``int64``); labels :math:`< 0` (OOD) are ignored
    :param t: temperature :math:`\\tau \\geq 10^{-6}` (:data:`MIN_T`)
    :param reduction: ``mean`` (over ID samples), ``sum`` or ``none`` (shape of ``target``,
        zero at OOD positions)
    :return: the loss, float32 (float64 for float64 logits)
    :raises ValueError: for a ``t`` below :data:`MIN_T` or not finite, an unknown reduction,
        mismatched shapes, non-integer labels or labels :math:`\\geq C`
    """
    t = check_temperature(t)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _check_inputs(logits, target)
    if target.dtype != torch.int64:
        target = target.long()  # cross_entropy takes int64 class indices only
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _masked_cross_entropy(_normalized_logits(logits, t), target, reduction)


class LogitNormLoss(Module):
    """
    LogitNorm from *Mitigating Neural Network Overconfidence with Logit Normalization*
    (Wei et al., ICML 2022): cross-entropy of the logits divided by :math:`\\tau` times their
    L2 norm,

    .. math::
        \\mathcal{L}(x, y) = - \\log
        \\frac{\\exp\\big(f_y(x) / (\\tau \\lVert f(x) \\rVert_2)\\big)}
        {\\sum_{k=1}^{C} \\exp\\big(f_k(x) / (\\tau \\lVert f(x) \\rVert_2)\\big)}

    The norm gets :math:`\\epsilon = 10^{-7}` added, as in the original code and in pytorch-ood,
    so all-zero logits give a finite loss and gradient (in float16 too: there the norm is also
    kept above a small floor, see ``_norm_floor``). The result equals
    ``pytorch_ood.loss.logit_norm_loss`` and the authors' formula to float32 precision (tested).

    The default :math:`\\tau = 0.04` differs from pytorch-ood's ``t=1.0``: 0.04 is the value the
    first author uses for CIFAR-10 (OpenOOD's LogitNorm config) and the one pytorch-ood's own
    registry weights (``wrn-40-2/cifar10/logitnorm/*``) were trained with, while at
    :math:`\\tau = 1` the normalised logits lie in :math:`[-1, 1]`, so no softmax output
    can become confident (for 10 classes the largest reachable probability is about 0.24) and
    the model underfits. The best value is
    data dependent (the author recommends 0.0085 for CIFAR-100): tune it with
    ``logitnorm-ood tune-t``.

    See the module documentation for how OOD labels, segmentation shapes and autocast are
    handled.
    """

    info = LossInfo(
        paper=PAPER,
        tasks={Task.CLASSIFICATION, Task.SEGMENTATION},
        inputs={Representation.LOGITS},
        supervised=False,
    )

    def __init__(self, t: float = DEFAULT_T, reduction: str | None = "mean"):
        """
        :param t: temperature :math:`\\tau \\geq 10^{-6}` (:data:`MIN_T`)
        :param reduction: ``mean``, ``sum`` or ``none``
        :raises ValueError: for an invalid ``t`` or ``reduction``
        """
        super().__init__()
        self.t = check_temperature(t)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """
        :param logits: logits of shape :math:`B \\times C` or
            :math:`B \\times C \\times H \\times W`
        :param target: labels of shape :math:`B` or :math:`B \\times H \\times W`;
            labels :math:`< 0` are ignored
        :return: the loss
        """
        return logit_norm_loss(logits, target, self.t, self.reduction)

    def extra_repr(self) -> str:
        return f"t={self.t}, reduction={self.reduction!r}"
