"""ELogitNorm (Ding, Liu, Unger, Eilertsen, CVPR 2026): LogitNorm's normalisation replaced by an
instance-wise scale built from the distances to the decision boundaries; no hyperparameter.

The formula, re-derived from the paper's appendix and checked against the authors'
``elogitnorm_loss.py`` (``limchaos/ELogitNormOOD``): with the final layer's weights
:math:`W \\in \\mathbb{R}^{C \\times D}`, :math:`d_{ij} = \\lVert w_i - w_j \\rVert_2`
(:math:`d_{ii} := 1`), the predicted class :math:`k = \\arg\\max_j z_j` and

.. math::
    s(z) = \\frac{1}{C} \\sum_{j=1}^{C} \\frac{|z_j - z_k|}{d_{kj}},

the loss is the cross-entropy of :math:`z / s(z)`.

Where this implementation is more than the formula, on purpose:

* the pairwise distances come from the Gram matrix, ``|w_i|^2 + |w_j|^2 - 2 w_i . w_j``:
  ``C x C`` values from one ``C x D`` by ``D x C`` product, where the published code builds the
  ``C x C x D`` tensor of differences (for CIFAR-100's 100 classes and a 640-wide WRN, 6.4
  million values and their backward per step);
* ties in the maximum logit take the first maximal class, as ``torch.argmax`` and the
  published ``logits.max(dim=1)`` do (the value depends on the choice: the rows of ``d``
  differ);
* the cross-entropy is taken of :math:`(z - z_k) / s`, which is the same function as
  :math:`z / s` (cross-entropy does not change when every logit is shifted by the same
  amount), so values and gradients are the published ones, while large logits divided by a
  small scale do not overflow;
* :math:`s` is kept above :data:`SCALE_FLOOR` (and the floor of LogitNorm's ``_norm_floor``
  for float16 logits), and distances above :data:`DISTANCE_FLOOR`: all-equal logits (scale 0)
  give the finite loss :math:`\\log C` and a finite gradient, two identical class weights give
  a finite loss, where the published code divides by zero. Above the floors the values are
  exactly the formula's;
* scale and loss are computed in float32 (float64 for float64 inputs) whatever autocast says;
* OOD labels (``< 0``) are masked as in :mod:`logitnorm_plugin.loss`.

Recipe: the paper trains with OpenOOD v1.5's pipeline; the fork's
``configs/pipelines/train/train_elogitnorm.yml`` and ``openood/trainers/elogitnorm_trainer.py``
give SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, 100 epochs, per-iteration cosine
from 0.1 to 1e-6: this package's ``openood`` recipe, which ``logitnorm-ood train --loss
elogitnorm --recipe openood`` follows (the fork keeps OpenOOD's best-validation checkpoint
too).
"""

import torch
from pytorch_ood.api import LossInfo, Paper, Representation, Task
from torch import Tensor, nn

from logitnorm_plugin.loss import (
    _REDUCTIONS,
    EPS,
    _check_inputs,
    _masked_cross_entropy,
    _norm_floor,
)
from logitnorm_plugin.registry.split import missing_parts_error

#: the smallest instance scale used: all-equal logits have scale 0 (LogitNorm's ``EPS``)
SCALE_FLOOR = EPS

#: the smallest distance between two different classes' weights that is used
DISTANCE_FLOOR = 1e-12

PAPER = Paper(
    title="Enhancing Out-of-Distribution Detection with Extended Logit Normalization",
    venue="CVPR",
    year=2026,
    url="https://arxiv.org/abs/2504.11434",
    code="https://github.com/limchaos/ELogitNormOOD",
)


def class_distances(weight: Tensor) -> Tensor:
    """``C x C`` Euclidean distances between the rows of ``weight`` (``C x D``), the diagonal
    set to 1 and the other entries kept above :data:`DISTANCE_FLOOR`.

    Through the Gram matrix: ``O(C^2 D)`` work in one matrix product and ``C x C`` memory. The
    squared distances are clamped before the square root, so the gradient is finite everywhere
    (zero on the diagonal and where clamped)."""
    squares = weight.square().sum(dim=1)
    gram = weight @ weight.T
    d2 = (squares[:, None] + squares[None, :] - 2.0 * gram).clamp_min(DISTANCE_FLOOR**2)
    eye = torch.eye(weight.shape[0], dtype=torch.bool, device=weight.device)
    return torch.where(eye, torch.ones_like(d2), d2.sqrt())


def elogitnorm_scale(logits: Tensor, weight: Tensor) -> Tensor:
    """The instance-wise scale :math:`s(z)` of the module docstring, ``B x 1`` (unfloored).

    :param logits: ``B x C``
    :param weight: ``C x D`` final-layer weights
    """
    distances = class_distances(weight)
    predicted = logits.argmax(dim=1)  # the first maximal class on ties
    top = logits.gather(1, predicted[:, None])
    gaps = (logits - top).abs()
    return (gaps / distances.index_select(0, predicted)).mean(dim=1, keepdim=True)


def elogitnorm_loss(logits: Tensor, target: Tensor, weight: Tensor,
                    reduction: str = "mean") -> Tensor:
    """
    Functional form of :class:`ELogitNormLoss`.

    :param logits: ``B x C`` logits
    :param target: ``B`` integer labels; labels :math:`< 0` (OOD) are ignored
    :param weight: ``C x D`` weights of the final layer that produced ``logits``
    :param reduction: ``mean`` (over ID samples), ``sum`` or ``none`` (shape ``B``)
    :return: the loss, float32 (float64 for float64 inputs)
    :raises ValueError: for an unknown reduction, mismatched shapes or invalid labels
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _check_inputs(logits, target)
    if logits.dim() != 2:
        raise ValueError(f"ELogitNorm takes logits of shape B x C, got {tuple(logits.shape)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] != logits.shape[1]:
        raise ValueError(
            f"weight must be the C x D final-layer weights for {logits.shape[1]} classes, got "
            f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}"
        )
    if target.dtype != torch.int64:
        target = target.long()  # cross_entropy takes int64 class indices only
    floor = max(SCALE_FLOOR, _norm_floor(logits.dtype, 1.0))
    with torch.autocast(device_type=logits.device.type, enabled=False):
        dtype = torch.float64 if torch.float64 in (logits.dtype, weight.dtype) else torch.float32
        z, w = logits.to(dtype), weight.to(dtype)
        scale = elogitnorm_scale(z, w).clamp_min(floor)
        shifted = z - z.max(dim=1, keepdim=True).values.detach()
        return _masked_cross_entropy(shifted / scale, target, reduction)


class ELogitNormLoss(nn.Module):
    """
    ELogitNorm from *Enhancing Out-of-Distribution Detection with Extended Logit
    Normalization* (Ding et al., CVPR 2026): cross-entropy of the logits divided by their
    mean distance to the decision boundaries of the predicted class,

    .. math::
        \\mathcal{L}(x, y) = - \\log \\frac{\\exp(z_y / s(z))}{\\sum_c \\exp(z_c / s(z))},
        \\qquad s(z) = \\frac{1}{C} \\sum_j \\frac{|z_j - z_k|}{\\lVert w_k - w_j \\rVert_2},
        \\quad k = \\arg\\max_j z_j

    (the :math:`j = k` term is 0). It needs the final layer of the model being trained: it
    declares ``model_parts = ("head",)``, so ``create_loss("elogitnorm", model=model)`` (and
    the trainer) bind it from the model's split; then it is called as ``loss(logits,
    target)`` like every other objective. See the module documentation for the floors, ties
    and the recipe.
    """

    info = LossInfo(
        paper=PAPER,
        tasks={Task.CLASSIFICATION},
        inputs={Representation.LOGITS},
        supervised=False,
    )

    #: what :func:`logitnorm_plugin.registry.split.build_loss` binds: the final ``nn.Linear``
    model_parts = ("head",)

    def __init__(self, head: nn.Linear | None = None, reduction: str = "mean"):
        """
        :param head: the model's final ``nn.Linear`` (its ``weight`` is read at every call,
            so the loss follows training)
        :param reduction: ``mean``, ``sum`` or ``none``
        :raises MissingModelPartsError: without ``head``
        :raises ValueError: for a ``head`` that is not an ``nn.Linear`` or an invalid
            ``reduction``
        """
        super().__init__()
        if head is None:
            raise missing_parts_error(type(self), ["head"])
        if not isinstance(head, nn.Linear):
            raise ValueError(f"head must be the final nn.Linear, got {type(head).__name__}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self._head = (head,)  # a tuple: the model owns the layer, the loss only reads it
        self.reduction = reduction

    @property
    def head(self) -> nn.Linear:
        """The bound final layer."""
        return self._head[0]

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """
        :param logits: ``B x C`` logits of the model whose final layer is bound
        :param target: ``B`` labels; labels :math:`< 0` are ignored
        :return: the loss
        """
        return elogitnorm_loss(logits, target, self.head.weight, self.reduction)

    def extra_repr(self) -> str:
        head = self.head
        return (f"head=Linear({head.in_features}, {head.out_features}), "
                f"reduction={self.reduction!r}")
