"""The configuration of a training run: one frozen, validated :class:`TrainConfig`.

:func:`resolve_config` builds it once from a named recipe
(:mod:`logitnorm_plugin.training.recipes`)
and the caller's overrides, checking every name and value before any data is read or any folder
is written: unknown names, conflicting temperatures (``--loss-arg t=...`` with ``--t-from``),
a ``recommended_t.json`` of another origin or dataset, arguments a loss or an architecture
rejects, an objective that needs auxiliary outliers without them or one that takes none with
them (:mod:`logitnorm_plugin.objectives`). The trainer writes it in full to ``config.json``, so
a run can be reproduced from that file alone, and compares it with the folder's on
``--resume``.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Dict, List, Tuple

from logitnorm_plugin._core.conventions import canonical_name, dataset_tag
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.data import OpenedDataset, open_dataset
from logitnorm_plugin.data.outliers import resolve_outlier_source
from logitnorm_plugin.objectives import needs_outliers, objective_values
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.registry.architectures import arch_display_name, arch_spec, resolve_class
from logitnorm_plugin.registry.split import build_loss, loss_parts
from logitnorm_plugin.training import recipes
from logitnorm_plugin.training.request import TrainRequest

__all__ = ["CONFIG_FORMAT", "OUTLIER_FIELDS", "Configured", "TrainConfig", "configure",
           "default_run_dir", "resolve_config"]

CONFIG_FORMAT = 1

#: largest seed numpy accepts
_MAX_SEED = 2**32 - 1

#: the configuration keys of auxiliary outliers (absent from a run without outliers)
OUTLIER_FIELDS = ("outliers", "outlier_ratio", "outlier_batch_size", "outlier_seed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(recipes.RecipeFields):
    """Every value a training run uses, except where and how fast it runs: the training
    choices of :class:`~logitnorm_plugin.training.recipes.RecipeFields` (the recipe's values
    with the run's overrides) plus what the run trains (dataset, architecture, loss and its
    temperature, seeds, precision, auxiliary outliers).

    Build it with :func:`configure` (or :func:`resolve_config`); :meth:`to_dict` is what
    ``config.json`` holds, in the same form and key order as ever, so the configuration
    hashes of existing run folders still match.
    """

    dataset: str
    num_classes: int
    in_channels: int
    preprocessing: Dict[str, List[float]]
    arch: str
    arch_class: str
    arch_kwargs: Dict[str, Any]
    loss: str
    loss_class: str
    loss_kwargs: Dict[str, Any]
    t: float | None
    t_source: str
    t_from: str | None
    recipe: str
    recipe_description: str
    # -- the recipe's choices come here in config.json (see to_dict) --
    split_seed: int
    seed: int
    amp: str | None
    eval_split: str = "test"
    #: auxiliary outliers (objectives with ``LossInfo.supervised``): the source (a name of
    #: :data:`~logitnorm_plugin.data.outliers.OUTLIER_SOURCES` or a folder), outliers per ID
    #: image, outlier images per step (global) and the seed of the source and its stream;
    #: all ``None`` for a run without outliers, and then left out of ``config.json``, so such
    #: a run's file is what it always was (a config without them means "no outliers")
    outliers: str | None = None
    outlier_ratio: float | None = None
    outlier_batch_size: int | None = None
    outlier_seed: int | None = None
    format: int = CONFIG_FORMAT

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
            0 <= self.seed <= _MAX_SEED
        ):
            raise UserError(f"the seed must be an integer in 0..{_MAX_SEED}, got {self.seed!r}")
        if self.eval_split not in ("test", "val"):
            raise UserError(f"eval_split must be 'test' or 'val', got {self.eval_split!r}")
        if self.eval_split == "val" and self.train_split != "train":
            raise UserError(
                "eval_split='val' needs train_split='train' (the val split is held out)"
            )
        _check_outlier_fields(self)

    def run_name(self) -> str:
        """What the run is called in progress output: ``train <loss>[ t=<t>] s<seed>``."""
        t = (self.loss_kwargs or {}).get("t")
        t_part = f" t={t:g}" if isinstance(t, (int, float)) else ""
        return f"train {self.loss}{t_part} s{self.seed}"

    def to_dict(self) -> Dict[str, Any]:
        """The configuration as plain JSON types (``config.json``): ``format`` first, what the
        run trains up to ``recipe_description``, the recipe's choices, then the rest."""
        values = dataclasses.asdict(self)
        if values["outliers"] is None:
            for key in OUTLIER_FIELDS:
                del values[key]
        choices = recipes.RecipeFields.names()
        own = [key for key in values if key not in choices and key != "format"]
        cut = own.index("recipe_description") + 1
        order = ["format", *own[:cut], *choices, *own[cut:]]
        return {key: values[key] for key in order}


#: what :func:`configure` returns: the configuration, the loss class and the opened dataset
#: (picklable for a registered dataset: a job can carry it to another process)
Configured = Tuple[TrainConfig, type, OpenedDataset]


def _loss_identity(loss) -> Tuple[str, type]:
    """``(name recorded in the config, class)`` of a loss name or class."""

    cls = registry.get_loss_class(loss)
    if isinstance(loss, str):
        return canonical_name(loss.rpartition(":")[2]), cls
    return f"{cls.__module__}:{cls.__qualname__}", cls


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<dataset>-<arch>-<loss>-s<seed>``: where a run goes when no folder is named."""
    loss = config.loss.rpartition(":")[2].lower()
    return Path("runs") / f"{dataset_tag(config.dataset)}-{config.arch}-{loss}-s{config.seed}"


def resolve_config(dataset: str = "digits", arch: str | None = None, loss="logitnorm",
                   **options) -> Tuple[TrainConfig, type]:
    """The configuration of a run and the loss class, every name and value checked: the
    keyword form of :func:`configure`.

    :param options: the configuration options of :func:`logitnorm_plugin.training.loop.train`
        (``loss_kwargs``, ``recipe``, ``epochs``, ``batch_size``, ``lr``, ``seed``,
        ``t_from``, ``arch_kwargs``, ``eval_split``, ``outliers``, ``outlier_ratio``,
        ``outlier_seed``), ``amp`` as the autocast dtype name recorded in the config
        (``"bf16"``, ``"fp16"``, ``None``), and other recipe fields, e.g. ``momentum=0.0``
    """
    request = TrainRequest.of(dataset=dataset, arch=arch, loss=loss, **options)
    config, loss_cls, _ = configure(request, amp=request.amp)
    return config, loss_cls


def configure(request: TrainRequest, amp: str | None = None) -> Configured:
    """The configuration of ``request``'s run, the loss class and the opened dataset, every
    name and value checked before any data is read.

    The dataset name is read and resolved once here
    (:func:`~logitnorm_plugin.data.open_dataset`); the trainer loads its splits from the
    returned :class:`~logitnorm_plugin.data.OpenedDataset` (an image folder's training
    images are decoded once).

    Values left ``None`` come from the recipe (default: ``digits`` for the digits, ``paper``
    otherwise). The temperature follows :func:`logitnorm_plugin.training.recipes.resolve_t`.
    Auxiliary outliers (``request.outliers``, for an objective that needs them) get the
    objective's published ratio and loss weights unless given (see
    :mod:`logitnorm_plugin.objectives`); their seed defaults to the run's.

    :param request: the run (only its configuration part is read here)
    :param amp: autocast dtype name recorded in the config (``"bf16"``, ``"fp16"``, ``None``)
    :raises UnknownNameError: unknown recipe, loss, architecture, dataset or outlier source
    :raises UserError: conflicting or invalid arguments, an objective that needs outliers
        without ``outliers`` or one that takes none with them
    """
    dataset, recipe, seed = request.dataset, request.recipe, request.seed
    outliers, outlier_ratio = request.outliers, request.outlier_ratio
    outlier_seed = request.outlier_seed
    key = canonical_name(dataset)  # the name read once: the rest goes by the opened dataset
    rec = recipes.get_recipe(recipe if recipe is not None else recipes.recipe_for_key(key))
    loss_name, loss_cls = _loss_identity(request.loss)
    published = _outlier_objective(loss_cls, loss_name, outliers, outlier_ratio, outlier_seed)
    opened = open_dataset(dataset, key)
    meta = opened.meta
    arch_name = arch_display_name(request.arch or rec.arch)
    kwargs = dict(rec.arch_kwargs) if arch_name == rec.arch else {}
    kwargs.update(request.arch_kwargs or {})
    arch_class, resolved_arch_kwargs = arch_spec(
        arch_name, meta["num_classes"], meta["in_channels"], **kwargs
    )
    try:
        inspect.signature(resolve_class(arch_class)).bind(**resolved_arch_kwargs)
    except TypeError as exc:
        raise UserError(
            f"architecture '{arch_name}' rejects the arguments {resolved_arch_kwargs}: {exc}"
        ) from exc

    loss_kwargs = dict(request.loss_kwargs or {})
    if published is not None:  # the published loss weights, unless given
        loss_kwargs = {**dict(published.loss_kwargs), **loss_kwargs}
    choice = recipes.resolve_t(loss_cls, loss_name, loss_kwargs, request.t_from, rec,
                               opened.tag)
    if choice.t is not None:
        loss_kwargs["t"] = choice.t
    elif recipes.own_t(loss_cls) and "t" not in loss_kwargs:  # recorded, not implied
        loss_kwargs["t"] = float(inspect.signature(loss_cls).parameters["t"].default)
    # build it once now: bad arguments fail here with a clear message (an objective that needs
    # model parts gets them from a stand-in Linear with the dataset's number of classes)
    from torch import nn  # lazy, like data and models above: this module stays torch-free


    try:
        stand_in = None
        if loss_parts(loss_cls):
            stand_in = nn.Sequential(nn.Flatten(), nn.Linear(1, int(meta["num_classes"])))
        build_loss(loss_cls, stand_in, **loss_kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"loss '{loss_name}' rejects the arguments {loss_kwargs}: {exc}") from exc

    # the recipe's choices, with the run's overrides (checked again as one record below)
    values = {**rec.choices(), **request.overrides}
    for key in ("epochs", "batch_size", "lr"):
        if getattr(request, key) is not None:
            values[key] = getattr(request, key)
    config = TrainConfig(
        dataset=opened.key,
        num_classes=int(meta["num_classes"]),
        in_channels=int(meta["in_channels"]),
        preprocessing={
            "mean": [float(v) for v in meta["mean"]],
            "std": [float(v) for v in meta["std"]],
            "size": [int(v) for v in meta["size"]],
        },
        arch=arch_name,
        arch_class=arch_class,
        arch_kwargs=resolved_arch_kwargs,
        loss=loss_name,
        loss_class=f"{loss_cls.__module__}.{loss_cls.__qualname__}",
        loss_kwargs=loss_kwargs,
        t=choice.t,
        t_source=choice.source,
        t_from=choice.path,
        recipe=rec.name,
        recipe_description=rec.description,
        **recipes.RecipeFields.coerce(values),
        split_seed=0,
        seed=seed,
        amp=amp,
        eval_split=request.eval_split,
        **_outlier_values(published, outliers, outlier_ratio, outlier_seed, dataset,
                          int(values["batch_size"]), seed),
    )
    return config, loss_cls, opened


# -- auxiliary outliers --------------------------------------------------------------------------


def _outlier_objective(loss_cls, loss_name, outliers, ratio, outlier_seed):
    """The objective's published outlier values when it needs outliers (``None`` when it
    takes none); refuses a mismatch before anything is read."""

    if needs_outliers(loss_cls):
        if outliers is None:
            raise UserError(
                f"loss '{loss_name}' is trained with auxiliary outliers (LossInfo.supervised) "
                "and none were given: pass --outliers NAME|FOLDER (the digits: --outliers "
                "digits_jigsaw; see `logitnorm-ood list losses`)"
            )
        return objective_values(loss_cls)
    if outliers is not None or ratio is not None or outlier_seed is not None:
        raise UserError(
            f"loss '{loss_name}' takes no outliers (LossInfo.supervised is false); drop "
            "--outliers, or train an objective that uses them (e.g. outlier_exposure)"
        )
    return None


def _outlier_values(published, outliers, ratio, outlier_seed, dataset, batch_size, seed):
    if published is None:
        return {}

    ratio = published.ratio if ratio is None else ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise UserError(f"the outlier ratio must be a number > 0, got {ratio!r}")
    return {
        "outliers": resolve_outlier_source(outliers, dataset),
        "outlier_ratio": float(ratio),
        "outlier_batch_size": max(1, int(round(float(ratio) * batch_size))),
        "outlier_seed": seed if outlier_seed is None else outlier_seed,
    }


def _check_outlier_fields(config: TrainConfig) -> None:
    if config.outliers is None:
        if any(getattr(config, k) is not None for k in OUTLIER_FIELDS):
            raise UserError("outlier settings without an outlier source")
        return
    seed = config.outlier_seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise UserError(f"the outlier seed must be an integer in 0..{_MAX_SEED}, got {seed!r}")
    if not (config.outlier_ratio or 0) > 0 or not (config.outlier_batch_size or 0) >= 1:
        raise UserError("the outlier ratio must be > 0 and the outlier batch size >= 1")
