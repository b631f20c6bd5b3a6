"""Split a classifier into the parts that pytorch-ood's feature-based detectors take.

Detector constructors name the parts of a model: ``model`` (inputs -> ``B x K`` logits),
``encoder`` (inputs -> ``B x D`` penultimate features), ``head`` or ``w``/``b`` (the final
``nn.Linear``) and ``backbone`` (inputs -> ``B x C x H x W``, reshaped by ASH, ReAct, SCALE, VRA
or RankFeat before their ``head`` gives logits). :func:`split_model` finds the parts,
:func:`build_detector` (called by ``create_detector``) fills a constructor. Models known:

1. **The split protocol**, which any model can declare: a method ``features(x) -> B x D`` and
   the final ``nn.Linear`` as attribute ``head`` or ``fc``, with ``head(features(x)) ==
   model(x)``; optionally ``feature_maps(x) -> B x C x H x W`` and ``forward_feature_maps(maps)
   -> B x K``. ``DigitsCNN``, ``ResNet18CIFAR``, pytorch-ood's WideResNet and ResNets have it.
2. An ``nn.Sequential`` ending in an ``nn.Linear``.
3. timm-style models: ``forward_features``, ``forward_head(x, pre_logits=True)`` and
   ``get_classifier()`` returning an ``nn.Linear``.
4. torchvision ResNets (``conv1`` ... ``layer4``, ``avgpool``, ``fc``).
5. A final ``nn.Linear`` in ``classifier``, ``fc``, ``head`` or ``heads`` (or last in that
   ``nn.Sequential``; torchvision VGG, MobileNet, DenseNet, ...): the features are its input,
   caught by a pre-hook in an ordinary forward pass; right if the model returns its output as
   is (:meth:`ModelParts.check` verifies). Maps are known with ``features`` and ``avgpool``
   modules and a ``classifier`` on flat vectors (VGG, AlexNet, MobileNetV3, EfficientNet).

Feature-map detectors act on the keyword ``layer``: ``"penultimate"`` (pooled features as
``B x D x 1 x 1``, then the Linear: where ASH, ReAct, SCALE, VRA are published and OpenOOD
applies them) or ``"feature_maps"`` (maps before global pooling, then pooling and the Linear:
RankFeat's). :data:`PUBLISHED_DEFAULTS` has each host's default layer and hyperparameters with
their source; keyword arguments win.
"""

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from logitnorm_plugin._core.errors import MissingModelPartsError, UnsupportedModelError

#: the layers feature-map detectors can act on, see the module docstring
LAYERS = ("penultimate", "feature_maps")


def vim_dimension(feature_dim: int) -> int:
    """ViM's principal-space dimension: 1000 for ``D >= 2048``, 512 for ``D >= 768`` (official
    code), ``D // 2`` below (OpenOOD's 256 for the 512-D CIFAR ResNet-18)."""
    return 1000 if feature_dim >= 2048 else 512 if feature_dim >= 768 else max(1, feature_dim // 2)


#: host class name -> constructor defaults (a callable gets the feature dimension ``D``), the
#: ``layer`` of feature-map detectors and the ``source``. Subclasses inherit their host's entry.
PUBLISHED_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "ASH": {"variant": "ash-s", "percentile": 0.90, "layer": "penultimate",
            "source": "ASH code (andrijazz/ash) config/cifar10_config.yml ash_s@90 after the last "
                      "avgpool (README); OpenOOD ash.yml percentile 90"},
    "DICE": {"p": 0.90, "source": "DICE code (deeplearning-wisc/dice) demo-cifar.sh --p 90; "
                                  "OpenOOD dice.yml p 90"},
    "KNN": {"k": 50, "source": "KNN paper (Sun et al. 2022) k=50 for CIFAR-10; OpenOOD knn.yml"},
    "NCI": {"alpha": 1e-4, "source": "OpenOOD v1.5 nci.yml alpha 0.0001"},
    "NNGuide": {"k": 10, "source": "NNGuide code (roomo7time/nnguide) detector/nnguide.yaml"},
    "RankFeat": {"layer": "feature_maps", "source": "RankFeat paper; OpenOOD rankfeat "
                                                    "postprocessor: last block's feature maps"},
    "ReAct": {"percentile": 0.90, "layer": "penultimate",
              "source": "ReAct paper (Sun et al. 2021) p=90 on the penultimate layer; OpenOOD"},
    "SCALE": {"percentile": 0.85, "layer": "penultimate",
              "source": "SCALE code (kai422/SCALE) scale.yml percentile 85, pooled features"},
    "ViM": {"d": vim_dimension, "source": "ViM code (haoqiwang/vim) benchmark.py: 1000 if "
                                          "D >= 2048 else 512; OpenOOD vim.yml 256 for D=512"},
    "VRA": {"lower_percentile": 0.10, "upper_percentile": 0.90, "layer": "penultimate",
            "source": "OpenOOD v1.5 vra.yml percentile_low 10, percentile_high 90, penultimate"},
}


def published_defaults(cls: type) -> Dict[str, Any]:
    """The :data:`PUBLISHED_DEFAULTS` entry of ``cls`` or its pytorch-ood base (or ``{}``)."""
    for klass in getattr(cls, "__mro__", ()):
        if klass.__module__.startswith("pytorch_ood.") and klass.__name__ in PUBLISHED_DEFAULTS:
            return dict(PUBLISHED_DEFAULTS[klass.__name__])
    return {}


class _Fn(nn.Module):
    """``fn`` as a module holding the module it calls (or whose method it is), so that
    ``Detector.to`` moves it."""

    def __init__(self, fn: Callable[[Tensor], Tensor], owner, description: str):
        super().__init__()
        owner = owner if isinstance(owner, nn.Module) else getattr(owner, "__self__", None)
        self.owner = owner if isinstance(owner, nn.Module) else None
        self._fn, self._description = fn, description

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self._description


class _LinearInput(nn.Module):
    """The input of ``head`` during an ordinary forward pass of ``model``."""

    def __init__(self, model: nn.Module, head: nn.Linear):
        super().__init__()
        self.model, self._head = model, (head,)  # a tuple: not registered twice

    def forward(self, x: Tensor) -> Tensor:
        seen = []
        hook = self._head[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            self.model(x)
        finally:
            hook.remove()
        if len(seen) != 1:
            raise UnsupportedModelError(f"the final nn.Linear of {type(self.model).__name__} "
                                        f"ran {len(seen)} times, expected once")
        return seen[0]


@dataclass(frozen=True)
class ModelParts:
    """A classifier in pytorch-ood's terms; see the module docstring.

    :param model: the classifier
    :param encoder: inputs -> ``B x D`` penultimate features
    :param head: the final ``nn.Linear``, ``head(encoder(x)) == model(x)``
    :param backbone: inputs -> ``B x C x H x W`` maps before global pooling, or ``None``
    :param backbone_head: maps -> ``B x K`` logits (pooling + head), or ``None``
    :param kind: which rule recognised the model
    """

    model: Any
    encoder: Callable[[Tensor], Tensor]
    head: nn.Linear
    backbone: Callable[[Tensor], Tensor] | None = None
    backbone_head: Callable[[Tensor], Tensor] | None = None
    kind: str = ""

    @property
    def w(self) -> Tensor:
        """Weights of the final layer, ``K x D``."""
        return self.head.weight

    @property
    def b(self) -> Tensor:
        """Bias of the final layer, ``K`` (zeros if it has none)."""
        bias = self.head.bias
        return bias if bias is not None else self.head.weight.new_zeros(self.head.out_features)

    def layer(self, name: str = "penultimate") -> Tuple[Callable, Callable]:
        """``(backbone, head)`` for feature-map detectors acting on layer ``name``."""
        if name == "penultimate":
            encoder, head = self.encoder, self.head
            return (_Fn(lambda x: encoder(x)[:, :, None, None], encoder, "features as 1x1"),
                    _Fn(lambda z: head(z.flatten(1)), head, "flatten + final Linear"))
        if name == "feature_maps":
            if self.backbone is None:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} ({self.kind}) has no feature maps: declare "
                    "feature_maps(x) and forward_feature_maps(maps), or use layer='penultimate'")
            return self.backbone, self.backbone_head
        raise ValueError(f"unknown layer {name!r}, expected one of {LAYERS}")

    def check(self, x: Tensor, atol: float = 1e-5) -> "ModelParts":
        """Verify on a batch ``x`` that every path gives ``model(x)`` (call in eval mode).

        :raises UnsupportedModelError: naming the path that differs"""
        with torch.no_grad():
            expected = self.model(x)
            paths = {"head(encoder(x))": self.head(self.encoder(x))}
            for name in LAYERS if self.backbone is not None else LAYERS[:1]:
                backbone, head = self.layer(name)
                paths[f"the {name} path"] = head(backbone(x))
        for what, got in paths.items():
            if got.shape != expected.shape or not torch.allclose(got, expected, atol, atol):
                name = type(self.model).__name__
                raise UnsupportedModelError(f"{what} differs from model(x) for {name} "
                                            f"({self.kind}): declare the split protocol")
        return self


def _method(model, name: str):
    value = getattr(model, name, None)
    return value if callable(value) and not isinstance(value, nn.Module) else None


def _final_linear(model) -> Tuple[str | None, nn.Linear | None]:
    for attr in ("classifier", "fc", "head", "heads"):
        module = getattr(model, attr, None)
        if isinstance(module, nn.Sequential) and len(module):
            module = module[-1]
        if isinstance(module, nn.Linear):
            return attr, module
    return None, None


def _timm_maps(model, x: Tensor) -> Tensor:
    out = model.forward_features(x)
    if out.dim() != 4:
        raise UnsupportedModelError(f"{type(model).__name__}.forward_features gave "
                                    f"{tuple(out.shape)}, no maps: use layer='penultimate'")
    return out


def split_model(model) -> ModelParts:
    """Split ``model`` into encoder, final Linear and (where known) backbone.

    :param model: a classifier mapping inputs to ``B x K`` logits
    :raises UnsupportedModelError: naming what the model lacks and how to declare it
    """
    features = _method(model, "features")
    heads = [getattr(model, a, None) for a in ("head", "fc")]
    head = next((h for h in heads if isinstance(h, nn.Linear)), None)
    maps, maps_head = _method(model, "feature_maps"), _method(model, "forward_feature_maps")
    if features is not None and head is not None:
        both = maps is not None and maps_head is not None
        return ModelParts(model, features, head, maps if both else None,
                          maps_head if both else None, "split protocol")
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        return ModelParts(model, model[:-1], model[-1], kind="nn.Sequential")
    timm = [_method(model, m) for m in ("forward_features", "forward_head", "get_classifier")]
    if all(timm) and isinstance(model.get_classifier(), nn.Linear):
        encoder = _Fn(lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
                      model, "forward_head(forward_features(x), pre_logits=True)")
        return ModelParts(model, encoder, model.get_classifier(),
                          _Fn(lambda x: _timm_maps(model, x), model, "forward_features"),
                          model.forward_head,
                          "timm-style")
    stages = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
    if all(isinstance(getattr(model, s, None), nn.Module) for s in stages) and isinstance(
        getattr(model, "fc", None), nn.Linear
    ):
        def resnet_maps(x):
            x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            return model.layer4(model.layer3(model.layer2(model.layer1(x))))

        pool = _Fn(lambda m: torch.flatten(model.avgpool(m), 1), model, "avgpool + flatten")
        return ModelParts(model, _Fn(lambda x: pool(resnet_maps(x)), model, "resnet features"),
                          model.fc, _Fn(resnet_maps, model, "conv1 ... layer4"),
                          _Fn(lambda m: model.fc(pool(m)), model, "avgpool + fc"),
                          "torchvision ResNet")
    attr, linear = _final_linear(model)
    if linear is not None and isinstance(model, nn.Module):
        backbone = backbone_head = None
        classifier = getattr(model, "classifier", None)
        first = classifier[0] if isinstance(classifier, nn.Sequential) else classifier
        maps = [getattr(model, m, None) for m in ("features", "avgpool")]
        flat = attr == "classifier" and isinstance(first, (nn.Linear, nn.Dropout))
        if flat and all(isinstance(m, nn.Module) for m in maps):
            backbone = model.features
            backbone_head = _Fn(lambda m: classifier(torch.flatten(model.avgpool(m), 1)), model,
                                "avgpool + flatten + classifier")
        return ModelParts(model, _LinearInput(model, linear), linear, backbone, backbone_head,
                          f"final nn.Linear in `{attr}`")
    missing = ["method `features(x)`"] if features is None else []
    missing += ["final nn.Linear in `head`, `fc` or `classifier`"] if head is None else []
    missing += ["timm-style `forward_features`/`forward_head`/`get_classifier`"]
    raise UnsupportedModelError(
        f"Cannot split {type(model).__name__} into encoder and head for feature-based detectors: "
        f"it has no {'; no '.join(missing)}. Declare the split protocol on the model: a method "
        "`features(x)` returning the B x D penultimate features and the final nn.Linear as "
        "attribute `head` (or `fc`), with head(features(x)) == model(x); for ASH, ReAct, SCALE, "
        "VRA and RankFeat on feature maps also `feature_maps(x)` -> B x C x H x W and "
        "`forward_feature_maps(maps)` -> logits. Or pass encoder=/head=/w=/b=/backbone= yourself."
    )


def build_detector(cls: type, model, **kwargs):
    """Build detector class ``cls`` for ``model``.

    A constructor that takes neither ``encoder`` nor ``backbone`` gets ``cls(model, **kwargs)``,
    as before. Otherwise its ``encoder``, ``head``, ``w``, ``b`` and ``backbone`` come from
    :func:`split_model`, its other arguments from :data:`PUBLISHED_DEFAULTS`; ``kwargs`` win.

    :param cls: a detector class, e.g. ``pytorch_ood.detector.ViM``
    :param model: the classifier (may be ``None`` if ``kwargs`` give every part)
    :param kwargs: constructor arguments, and for feature-map detectors ``layer`` (one of
        :data:`LAYERS`)
    """
    params = inspect.signature(cls).parameters
    if "encoder" not in params and "backbone" not in params:
        return cls(model, **kwargs)
    defaults = published_defaults(cls)
    maps = "backbone" in params
    layer = kwargs.pop("layer", defaults.get("layer", "penultimate")) if maps else None
    args, parts = {**{k: v for k, v in defaults.items() if k in params}, **kwargs}, None
    missing = [p for p in ("encoder", "backbone", "head", "w", "b") if p in params]
    missing = [p for p in missing if p not in args]
    if missing:
        parts = split_model(model)
        if maps:
            fill = dict(zip(("backbone", "head"), parts.layer(layer)))
        else:
            fill = {"encoder": parts.encoder, "head": parts.head, "w": parts.w, "b": parts.b}
        args.update({p: fill[p] for p in missing if p in fill})
    for key, value in args.items():
        if key not in kwargs and callable(value) and value is defaults.get(key):
            dim = args["w"] if "w" in args else (parts or split_model(model)).w
            args[key] = value(dim.shape[-1])
    return cls(**args)


# -- losses that need parts of the model -----------------------------------------------------

#: the parts a loss may declare in its class attribute ``model_parts`` (attributes of
#: :class:`ModelParts`); :func:`build_loss` passes each as the keyword argument of that name
LOSS_PARTS = ("encoder", "head", "w", "b", "backbone")


def unwrap_model(model):
    """The module inside DDP / ``nn.DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, however nested; anything else is returned as it is.

    ``OptimizedModule`` is recognised by its class name: importing ``torch._dynamo`` to test
    ``isinstance`` would cost seconds on every call."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(
                getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def loss_parts(cls: type) -> Tuple[str, ...]:
    """The model parts that loss class ``cls`` declares (``model_parts``; ``()`` if none).

    :raises ValueError: for a declared name outside :data:`LOSS_PARTS`"""
    parts = tuple(getattr(cls, "model_parts", ()) or ())
    unknown = [p for p in parts if p not in LOSS_PARTS]
    if unknown:
        raise ValueError(f"{getattr(cls, '__name__', cls)}.model_parts names {unknown}; the "
                         f"parts a loss can take are {LOSS_PARTS}")
    return parts


def missing_parts_error(cls: type, missing) -> MissingModelPartsError:
    """The one error for a loss built without the model parts it declares."""
    name = getattr(cls, "__name__", str(cls))
    missing = list(missing)
    return MissingModelPartsError(
        f"{name} needs the model's {' and '.join(missing)} (declared in {name}.model_parts): "
        f"build it with create_loss(..., model=model), which takes "
        f"{'them' if len(missing) > 1 else 'it'} from the model's split "
        f"(logitnorm_plugin.registry.split.split_model), or pass {missing[0]}=... yourself"
    )


def build_loss(cls: type, model=None, **kwargs):
    """Build loss class ``cls``, binding the model parts it declares.

    A loss declares what it needs as a class attribute ``model_parts`` (names from
    :data:`LOSS_PARTS`, e.g. ``("head",)``) and takes each as a keyword argument of the same
    name. The parts not given in ``kwargs`` come from :func:`split_model` of ``model``,
    unwrapped from DDP / ``torch.compile`` first (:func:`unwrap_model`). A loss that declares
    nothing is built as ``cls(**kwargs)`` whatever ``model`` is, so a trainer can always pass
    its model without asking which loss it trains.

    :param cls: a loss class
    :param model: the classifier being trained, or ``None``
    :param kwargs: constructor arguments; a part given here wins over the split's
    :raises MissingModelPartsError: a declared part is neither in ``kwargs`` nor obtainable
        because ``model`` is ``None``
    :raises UnsupportedModelError: ``model`` cannot be split
    """
    missing = [p for p in loss_parts(cls) if kwargs.get(p) is None]
    if missing:
        if model is None:
            raise missing_parts_error(cls, missing)
        parts = split_model(unwrap_model(model))
        kwargs.update({p: getattr(parts, p) for p in missing})
    return cls(**kwargs)
