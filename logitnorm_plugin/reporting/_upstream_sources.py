'''The files :mod:`logitnorm_plugin.reporting.upstream_patch` contributes to pytorch-ood, as
text in pytorch-ood's conventions (module docstring with ``autoclass``, ``info`` record with
its ``Paper``, ``t`` for the temperature, a functional form beside the class, ``unittest``
tests importing ``src.pytorch_ood``). Written for pytorch-ood, not imported here.'''

DETECTOR = r'''"""

..  autoclass:: pytorch_ood.detector.LogitNormDetector
    :members:
    :show-inheritance:
    :exclude-members: fit, fit_logits

..  autofunction:: pytorch_ood.detector.logitnorm.logitnorm_score
"""

import torch
from torch import Tensor
from torch.nn import Module

from ..api import DetectorInfo, LogitsDetector, Paper, Task

#: added to the norm, as in :func:`pytorch_ood.loss.logitnorm.logit_norm_loss`
EPS = 1e-7


def logitnorm_score(logits: Tensor, t: float = 1.0) -> Tensor:
    """
    Negative maximum softmax probability of the logits normalized to unit :math:`L_2`-norm
    and scaled by :math:`1/\\tau`, the quantity that
    :class:`LogitNorm <pytorch_ood.loss.LogitNorm>` trains:

    .. math::
        - \\max_y \\sigma_y \\Big( \\frac{f(x)}{\\tau (\\lVert f(x) \\rVert_2 + \\epsilon)} \\Big)

    with :math:`\\epsilon = 10^{-7}`; the norm is taken over the class dimension.

    :param logits: logits of shape :math:`B \\times C` (or :math:`B \\times C \\times H \\times W`)
    :param t: temperature :math:`\\tau > 0`
    :return: outlier scores of shape :math:`B` (or :math:`B \\times H \\times W`)
    """
    norm = torch.norm(logits, p=2, dim=1, keepdim=True) + EPS
    return -(logits / (t * norm)).softmax(dim=1).max(dim=1).values


class LogitNormDetector(LogitsDetector):
    """
    Detector for models trained with LogitNorm, from the paper *Mitigating Neural Network
    Overconfidence with Logit Normalization*.

    Scores an input by the negative maximum softmax probability of its normalized logits,
    the quantity the :class:`LogitNorm <pytorch_ood.loss.LogitNorm>` loss trains:

    .. math::
        - \\max_y \\sigma_y \\Big( \\frac{f(x)}{\\tau \\lVert f(x) \\rVert_2} \\Big)

    where :math:`\\sigma` is the softmax function, :math:`f(x)` are the logits and
    :math:`\\tau` is the temperature the model was trained with. The sign is flipped so that
    larger values indicate outliers. With :math:`\\tau = 1` and unnormalized logits this is
    :class:`MaxSoftmax <pytorch_ood.detector.MaxSoftmax>`; the paper itself reports MSP on the
    raw logits of LogitNorm-trained models, this detector is the normalized variant.

    Example:

    .. code-block:: python

        from pytorch_ood.detector import LogitNormDetector
        from pytorch_ood.model import load_model

        model = load_model("wrn-40-2/cifar10/logitnorm/s0")
        detector = LogitNormDetector(model, t=0.04)
        scores = detector(x)
    """

    info = DetectorInfo(
        paper=Paper(
            title="Mitigating Neural Network Overconfidence with Logit Normalization",
            venue="ICML",
            year=2022,
            url="https://arxiv.org/abs/2205.09310",
            code="https://github.com/hongxin001/logitnorm_ood",
        ),
        tasks={Task.CLASSIFICATION, Task.SEGMENTATION},
    )

    def __init__(self, model: Module, t: float = 1.0):
        """
        :param model: neural network to use. Can be ``None`` when using
            ``predict_logits(...)`` directly.
        :param t: temperature :math:`\\tau > 0`, the one the model was trained with
        """
        super(LogitNormDetector, self).__init__()
        if not t > 0:
            raise ValueError(f"t must be positive, got {t}")
        self.t = float(t)
        self.model = model

    def predict_logits(self, logits: Tensor) -> Tensor:
        """
        :param logits: logits of shape :math:`B \\times C`
            (or :math:`B \\times C \\times H \\times W`)
        :return: outlier scores of shape :math:`B` (or :math:`B \\times H \\times W`)
        """
        return logitnorm_score(logits, self.t)
'''

DETECTOR_MESSAGE = """detector: add LogitNormDetector (Wei et al., ICML 2022)

pytorch-ood has the LogitNorm loss and LogitNorm checkpoints, but no detector that scores
with the quantity the loss trains: the maximum softmax probability of the logits normalized
to unit L2 norm and scaled by 1/t. LogitNormDetector does, with its own info record (the
paper), classification and segmentation inputs, and the functional form logitnorm_score()
with the same epsilon as logit_norm_loss(), so detector and loss agree."""

UNIT_TEST = '''import unittest

import torch
from torch import nn

from src.pytorch_ood.detector import LogitNormDetector, MaxSoftmax
from src.pytorch_ood.detector.logitnorm import logitnorm_score


def _by_formula(logits, t):
    # -max_y softmax(f(x) / (t * (||f(x)||_2 + 1e-7)))_y, written out per sample
    out = []
    for z in logits:
        scaled = z / (t * (z.pow(2).sum().sqrt() + 1e-7))
        p = scaled.exp() / scaled.exp().sum()
        out.append(-p.max())
    return torch.stack(out)


class TestLogitNormDetector(unittest.TestCase):
    """
    Tests for the LogitNorm detector
    """

    def setUp(self) -> None:
        torch.manual_seed(0)

    def test_scores_follow_the_formula(self):
        logits = torch.randn(64, 10, dtype=torch.float64) * 5
        for t in (0.04, 0.5, 1.0):
            detector = LogitNormDetector(model=None, t=t)
            torch.testing.assert_close(detector.predict_logits(logits), _by_formula(logits, t))
            torch.testing.assert_close(logitnorm_score(logits, t), _by_formula(logits, t))

    def test_is_msp_of_the_normalized_logits(self):
        logits = torch.randn(32, 5)
        norm = logits.norm(p=2, dim=1, keepdim=True) + 1e-7
        detector = LogitNormDetector(model=None, t=0.1)
        expected = MaxSoftmax(model=None, t=0.1).predict_logits(logits / norm)
        torch.testing.assert_close(detector.predict_logits(logits), expected)

    def test_invariant_to_the_scale_of_the_logits(self):
        logits = torch.randn(16, 7, dtype=torch.float64)
        detector = LogitNormDetector(model=None, t=0.04)
        torch.testing.assert_close(
            detector.predict_logits(logits), detector.predict_logits(logits * 100.0)
        )

    def test_classification_input(self):
        model = nn.Linear(10, 3).eval()
        detector = LogitNormDetector(model, t=0.04)
        x = torch.randn(128, 10)
        scores = detector(x)
        self.assertEqual(scores.shape, (128,))
        torch.testing.assert_close(scores, _by_formula(model(x).detach(), 0.04))
        # larger score = more likely OOD: bounded by -1 (one-hot) and -1/C (uniform)
        self.assertTrue(((scores >= -1) & (scores <= -1 / 3 + 1e-6)).all())

    def test_segmentation_input(self):
        """
        Tests input map for semantic segmentation: every pixel is scored like a sample
        """
        logits = torch.randn(2, 4, 8, 8)
        detector = LogitNormDetector(model=None, t=0.5)
        scores = detector.predict_logits(logits)
        self.assertEqual(scores.shape, (2, 8, 8))
        per_pixel = logits.permute(0, 2, 3, 1).reshape(-1, 4)
        torch.testing.assert_close(scores.reshape(-1), _by_formula(per_pixel, 0.5))

    def test_rejects_non_positive_temperature(self):
        for t in (0.0, -1.0):
            with self.assertRaises(ValueError):
                LogitNormDetector(model=None, t=t)
'''

TEST_MESSAGE = """tests: LogitNormDetector against its formula, in the info contract

tests/detectors/test_logitnorm.py checks the score against the formula written out per
sample, against MaxSoftmax of the normalized logits, its invariance to the scale of the
logits, classification and per-pixel segmentation outputs and the temperature check. The
detector claims segmentation, so its builder joins SEGMENTATION_DETECTORS in
tests/test_info.py; it is a classification detector, so it joins the all-detectors smoke
test."""

DOCS = """LogitNorm
=========

Detector for models trained with the :class:`LogitNorm <pytorch_ood.loss.LogitNorm>` loss
(Wei et al., *Mitigating Neural Network Overconfidence with Logit Normalization*, ICML 2022,
https://arxiv.org/abs/2205.09310). It scores an input by the negative maximum softmax
probability of its logits after LogitNorm's normalization, with the temperature the model
was trained with:

.. math::
    s(x) = - \\max_y \\sigma_y \\Big( \\frac{f(x)}{\\tau \\lVert f(x) \\rVert_2} \\Big)

Larger scores indicate outliers. The score does not depend on the scale of the logits, only
on their direction.

.. code-block:: python

    from pytorch_ood.detector import LogitNormDetector
    from pytorch_ood.model import load_model

    model = load_model("wrn-40-2/cifar10/logitnorm/s0")
    detector = LogitNormDetector(model, t=0.04)
    scores = detector(x)

..  autoclass:: pytorch_ood.detector.LogitNormDetector
    :members:
    :show-inheritance:
    :exclude-members: fit, fit_logits

..  autofunction:: pytorch_ood.detector.logitnorm.logitnorm_score
"""

DOCS_MESSAGE = """docs: LogitNorm detector page

The formula, an example with the LogitNorm checkpoints of the model registry, and the API of
LogitNormDetector and logitnorm_score()."""
