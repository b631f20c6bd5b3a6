"""LogitNorm for pytorch-ood.

The public surface is listed once in ``__all__``. Attributes are imported on first use, so
``import logitnorm_plugin`` does not pull in torch until something needs it.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the method
    "LogitNormLoss": "logitnorm_plugin.loss",
    "logit_norm_loss": "logitnorm_plugin.loss",
    "LogitNormDetector": "logitnorm_plugin.detector",
    # names -> objects
    "list_losses": "logitnorm_plugin.registry.entry_points",
    "list_detectors": "logitnorm_plugin.registry.entry_points",
    "list_benchmarks": "logitnorm_plugin.registry.entry_points",
    "get_loss_class": "logitnorm_plugin.registry.entry_points",
    "get_detector_class": "logitnorm_plugin.registry.entry_points",
    "get_benchmark_class": "logitnorm_plugin.registry.entry_points",
    "create_loss": "logitnorm_plugin.registry.entry_points",
    "create_detector": "logitnorm_plugin.registry.entry_points",
    "get_benchmark": "logitnorm_plugin.registry.entry_points",
    "refresh": "logitnorm_plugin.registry.entry_points",
    # training, evaluation, tuning
    "train": "logitnorm_plugin.training.loop",
    "TrainConfig": "logitnorm_plugin.training.config",
    "Recipe": "logitnorm_plugin.training.recipes",
    "load_trained": "logitnorm_plugin.training.runs",
    "evaluate": "logitnorm_plugin.evaluation.engine",
    "ModelSpec": "logitnorm_plugin.evaluation.specs",
    "ResultStore": "logitnorm_plugin.store.results",
    "tune_t": "logitnorm_plugin.workflows.tune_t",
    # the base of every error a user can act on
    "UserError": "logitnorm_plugin._core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'logitnorm_plugin' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + __all__)
