"""T2FNorm (Regmi et al., CVPR Workshops 2024): train-time feature normalisation.

During training the penultimate features are L2-normalised and divided by a temperature
:math:`\\tau` before the final layer; at test time they are only divided by :math:`\\tau`:

.. math::
    z_\\text{train} = W \\frac{f(x)}{\\tau \\lVert f(x) \\rVert_2} + b, \\qquad
    z_\\text{test} = W \\frac{f(x)}{\\tau} + b

The objective is the cross-entropy of :math:`z_\\text{train}`. Facts taken from OpenOOD v1.5
(``openood/networks/t2fnorm_net.py``: ``F.normalize(features, dim=-1) / tau`` in training,
``features / tau`` in evaluation; ``configs/pipelines/train/train_t2fnorm.yml``:
``tau: 0.1``, SGD lr 0.1, momentum 0.9, weight decay 5e-4, 100 epochs: the ``openood`` recipe).
``F.normalize``'s ``eps = 1e-12`` is kept.

**How it is built here.** T2FNorm changes the network, not the loss, yet it is registered as
an objective (``pytorch_ood.losses: t2fnorm``) so that ``train(loss="t2fnorm")`` and
``bench --losses ... t2fnorm`` need nothing else. :class:`T2FNormLoss` declares
``model_parts = ("head",)``; when built for a model (``create_loss("t2fnorm",
model=model)``, as the trainer does) it puts a forward pre-hook on that final layer which
transforms its input as above (normalised in training mode, divided by ``t`` in eval mode),
and its ``forward`` is the (OOD-masked) cross-entropy. The model's state dict is untouched, so
checkpoints, resume and DDP are those of the architecture.

**The trained model.** :meth:`T2FNormLoss.export_state`, called by the trainer on the weights
it writes to ``model.pt``, folds :math:`1/\\tau` into the final layer
(:math:`W' = W / \\tau`): the run folder then loads, through the package's ordinary loaders,
as the plain architecture whose forward is :math:`W' f(x) + b = W (f(x) / \\tau) + b`, the
test-time network, and whose split (``logitnorm_plugin.registry.split``) gives detectors the raw
penultimate features :math:`f(x)` with the final layer :math:`W'`, the linear map that gives
the model's logits from them. (``checkpoint.pt`` keeps the unfolded weights, for resume.)

**Scoring.** OpenOOD's ``T2FNormPostprocessor`` is the maximum softmax probability of the
test-time network (``softmax(forward_ood_inference(x)).max``), i.e. ``msp`` on the loaded
model: no separate detector is registered.

``t`` is this package's name for :math:`\\tau` (pytorch-ood's convention for temperatures);
its default is OpenOOD's 0.1, and the recipes' LogitNorm temperature never replaces it
(``recipe_t = False``).
"""

import math

import torch
from pytorch_ood.api import LossInfo, Paper, Representation, Task
from torch import Tensor, nn
from torch.nn import functional as F

from logitnorm_plugin.loss import _REDUCTIONS, _check_inputs, _masked_cross_entropy
from logitnorm_plugin.registry.split import missing_parts_error

#: OpenOOD v1.5 ``configs/pipelines/train/train_t2fnorm.yml``: ``trainer_args.tau``
PUBLISHED_T = 0.1

#: ``torch.nn.functional.normalize``'s default, which OpenOOD uses
NORMALIZE_EPS = 1e-12

PAPER = Paper(
    title="T2FNorm: Train-time Feature Normalization for OOD Detection in Image Classification",
    venue="CVPR Workshops",
    year=2024,
    url="https://arxiv.org/abs/2305.17797",
    code="https://github.com/Jingkang50/OpenOOD",
)


def t2fnorm_features(features: Tensor, t: float, training: bool) -> Tensor:
    """What the final layer sees: ``normalize(f) / t`` in training, ``f / t`` otherwise.

    The normalisation is computed in float32 (float64 if given) and cast back: under bf16
    autocast the norm of hundreds of features would lose digits.

    :param features: ``B x D`` penultimate features
    :param t: the temperature :math:`\\tau`
    :param training: the model's mode
    """
    if not training:
        return features / t
    dtype = features.dtype
    wide = features if dtype in (torch.float32, torch.float64) else features.float()
    return (F.normalize(wide, p=2.0, dim=-1, eps=NORMALIZE_EPS) / t).to(dtype)


def _check_t(t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"T2FNorm temperature t must be a finite number > 0, got {t!r}")
    return float(t)


class T2FNormLoss(nn.Module):
    """
    T2FNorm from *T2FNorm: Train-time Feature Normalization for OOD Detection in Image
    Classification* (Regmi et al., CVPR Workshops 2024): cross-entropy of the logits of
    L2-normalised penultimate features divided by :math:`\\tau`,

    .. math::
        \\mathcal{L}(x, y) = - \\log \\operatorname{softmax}\\Big(W \\frac{f(x)}{\\tau
        \\lVert f(x) \\rVert_2} + b\\Big)_y

    Building it for a model transforms that model's final layer (see the module
    documentation); the logits it is then called with are already those of the normalised
    features, so its ``forward`` is the cross-entropy (OOD labels ``< 0`` masked, as in
    :mod:`logitnorm_plugin.loss`). :meth:`export_state` turns the trained weights into the
    test-time network. Call :meth:`remove` to take the transformation off the model.
    """

    info = LossInfo(
        paper=PAPER,
        tasks={Task.CLASSIFICATION},
        inputs={Representation.LOGITS},
        supervised=False,
    )

    #: what :func:`logitnorm_plugin.registry.split.build_loss` binds: the final ``nn.Linear``
    model_parts = ("head",)

    #: the recipes' LogitNorm temperature is not T2FNorm's: the default above stays
    recipe_t = False

    def __init__(self, head: nn.Linear | None = None, t: float = PUBLISHED_T,
                 reduction: str = "mean"):
        """
        :param head: the model's final ``nn.Linear``; a forward pre-hook is put on it
        :param t: the temperature :math:`\\tau > 0` (OpenOOD: 0.1)
        :param reduction: ``mean``, ``sum`` or ``none``
        :raises MissingModelPartsError: without ``head``
        :raises ValueError: for an invalid ``t``, ``head`` or ``reduction``
        """
        super().__init__()
        self.t = _check_t(t)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if head is None:
            raise missing_parts_error(type(self), ["head"])
        if not isinstance(head, nn.Linear):
            raise ValueError(f"head must be the final nn.Linear, got {type(head).__name__}")
        self.reduction = reduction
        self._head = (head,)  # a tuple: the model owns the layer
        self._hook = head.register_forward_pre_hook(self._transform)

    @property
    def head(self) -> nn.Linear:
        """The bound final layer."""
        return self._head[0]

    def _transform(self, module: nn.Module, args):
        return (t2fnorm_features(args[0], self.t, module.training),) + tuple(args[1:])

    def remove(self) -> None:
        """Take the feature transformation off the final layer."""
        self._hook.remove()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """
        :param logits: ``B x C`` logits of the bound model in training mode
        :param target: ``B`` labels; labels :math:`< 0` are ignored
        :return: the loss
        """
        _check_inputs(logits, target)
        if target.dtype != torch.int64:
            target = target.long()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            wide = logits if logits.dtype == torch.float64 else logits.float()
            return _masked_cross_entropy(wide, target, self.reduction)

    def export_state(self, model: nn.Module, state: dict) -> dict:
        """The test-time weights of ``model`` from its trained ``state`` (a state dict):
        the bound layer's weight divided by ``t``, everything else unchanged.

        :param model: the trained model (the one whose ``head`` is bound; DDP and compile
            wrappers are fine, the layer is found by identity)
        :param state: ``model``'s state dict (e.g. on the CPU)
        :raises ValueError: when the bound layer is not part of ``model``
        """
        names = [name for name, module in model.named_modules() if module is self.head]
        if not names:
            raise ValueError("the final layer bound by T2FNormLoss is not part of this model")
        prefix = names[0].split(".")
        # a DDP / compile wrapper adds a prefix that the unwrapped state dict does not have
        for start in range(len(prefix) + 1):
            key = ".".join(prefix[start:] + ["weight"])
            if key in state:
                out = dict(state)
                out[key] = state[key] / self.t
                return out
        raise ValueError(f"no weight of the final layer '{names[0]}' in the state dict")

    def extra_repr(self) -> str:
        return f"t={self.t}, reduction={self.reduction!r}"
