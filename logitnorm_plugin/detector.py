"""LogitNorm as a detector: maximum softmax probability of the normalised logits."""


import torch
from pytorch_ood.api import DetectorInfo, LogitsDetector, Task
from torch import Tensor
from torch.nn import Module

from logitnorm_plugin._core.conventions import DEFAULT_T
from logitnorm_plugin.loss import PAPER, _normalized_logits, check_temperature


class LogitNormDetector(LogitsDetector):
    """
    Scores inputs by the negative maximum softmax probability of the logits after LogitNorm's
    normalisation, the quantity the LogitNorm objective trains:

    .. math::
        s(x) = - \\max_k \\; \\mathrm{softmax}\\Big(\\frac{f(x)}{\\tau (\\lVert f(x) \\rVert_2
        + \\epsilon)}\\Big)_k

    Larger scores mean more likely OOD (pytorch-ood's convention). The normalisation is the one
    of :class:`~logitnorm_plugin.loss.LogitNormLoss` (the same private function), so detector
    and loss cannot drift apart. Plain MSP (``msp``) on the raw logits is what the paper reports;
    this detector is the normalised variant, useful beside it.

    The model is kept in the attribute ``model``, which pytorch-ood's ``Benchmark.evaluate``
    uses to share one forward pass among logits detectors. Nothing needs fitting.

    ``t`` is validated wherever it is set: in the constructor, by assignment
    (``detector.t = 0`` raises) and in :meth:`set_hyperparameters`; it must be a finite number
    :math:`\\geq 10^{-6}` (:data:`~logitnorm_plugin.loss.MIN_T`).
    """

    info = DetectorInfo(paper=PAPER, tasks={Task.CLASSIFICATION, Task.SEGMENTATION})

    #: the constructor parameter the evaluation engine sets to the temperature the model was
    #: trained with, when it is known (a run folder's card, a LogitNorm registry entry) and the
    #: caller did not give one
    training_t_parameter = "t"

    #: candidate temperatures for :class:`pytorch_ood.utils.GridSearch`: the grid of
    #: ``logitnorm-ood tune-t`` around the CIFAR-10 default 0.04, and 1.0 (no sharpening)
    hyperparameter_space = {"t": [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 1.0]}

    def __init__(self, model: Module | None, t: float = DEFAULT_T):
        """
        :param model: the classifier, mapping inputs to logits (may be ``None`` when only
            :meth:`predict_logits` is used)
        :param t: temperature :math:`\\tau \\geq 10^{-6}`, normally the one the model was
            trained with
        :raises ValueError: for a ``t`` that is not a finite number :math:`\\geq 10^{-6}`
        """
        super().__init__()
        self.model = model
        self.t = t

    @property
    def t(self) -> float:
        """The temperature :math:`\\tau`; assigning an invalid value raises ``ValueError``."""
        return self._t

    @t.setter
    def t(self, value: float) -> None:
        self._t = check_temperature(value)

    def set_hyperparameters(self, **kwargs) -> "LogitNormDetector":
        """Set ``t`` (validated, before anything is changed) for hyperparameter search."""
        if "t" in kwargs:
            kwargs["t"] = check_temperature(kwargs["t"])
        return super().set_hyperparameters(**kwargs)

    def predict_logits(self, logits: Tensor) -> Tensor:
        """
        :param logits: logits of shape :math:`B \\times C` (or :math:`B \\times C \\times H
            \\times W`)
        :return: outlier scores of shape :math:`B` (or :math:`B \\times H \\times W`)
        :raises ValueError: for logits with fewer than two dimensions
        """
        if logits.dim() < 2:
            raise ValueError(
                f"logits must have shape B x C (or B x C x H x W), got {tuple(logits.shape)}"
            )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probabilities = _normalized_logits(logits, self.t).softmax(dim=1)
        return -probabilities.max(dim=1).values
