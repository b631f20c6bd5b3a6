"""pytorch-ood's model registry: entries by key, their weights cached by torch.hub, loaded
offline when the file is in place.

A registry key such as ``wrn-40-2/cifar10/logitnorm/s0`` names weights that pytorch-ood
downloads to ``$TORCH_HOME/hub/checkpoints/<file name>``; a file placed there by hand is used
without network. Nothing here downloads unless asked to.
"""

from __future__ import annotations

from pathlib import Path

import torch

from logitnorm_plugin._core.errors import (
    CorruptDataError,
    MissingDataError,
    UnknownNameError,
    closest_match,
)

__all__ = ["load_registry_weights", "registry_entry", "registry_weights_path"]


def registry_entry(key: str):
    """The ``ModelEntry`` of a registry key.

    :raises UnknownNameError: for an unknown key (with the closest one) or a key without seed
        that names several entries (listing them)
    """
    from pytorch_ood.model import registry

    try:
        return registry.get_model_info(key)
    except ValueError as exc:
        known = registry.list_models()
        if "ambiguous" in str(exc):
            raise UnknownNameError(
                "model", key, [k for k in known if k.startswith(key + "/")], closest=None,
            ) from exc
        raise UnknownNameError("model", key, known, closest_match(key, known)) from exc


def registry_weights_path(entry) -> Path:
    """Where torch.hub keeps a pytorch-ood registry entry's weights
    (``$TORCH_HOME/hub/checkpoints/<file name>``); a file placed there is used offline."""
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name


def load_registry_weights(entry, download: bool):
    """Load a registry entry's model; offline without the cached file is a clear error.

    :raises MissingDataError: the file is not cached and ``download`` is false, or the
        download failed (no network; a file whose hash differs): names the URL and where to put
        the file by hand
    :raises CorruptDataError: the cached file cannot be loaded (names it; remove or replace it)
    """
    from pytorch_ood.model import registry

    cached = registry_weights_path(entry)
    was_cached = cached.is_file()
    if not was_cached and not download:
        raise MissingDataError(
            f"The weights of '{entry.key}' are not cached: expected {cached}. To get them, "
            f"pass --download (download=True), or download {entry.url} to that path."
        )
    try:
        return registry.load_model(entry.key, map_location="cpu")
    except Exception as exc:
        if was_cached:  # torch.load or load_state_dict of the file on disk failed
            raise CorruptDataError(
                f"The cached weights of '{entry.key}' at {cached} cannot be loaded "
                f"({type(exc).__name__}: {exc}); remove that file and run again with "
                f"--download (download=True), or replace it with a good copy of {entry.url}."
            ) from exc
        if isinstance(exc, OSError) or "invalid hash value" in str(exc):
            raise MissingDataError(  # URLError, connection errors, torch.hub's hash check
                f"Downloading the weights of '{entry.key}' from {entry.url} failed ({exc}). "
                f"To get them by hand: download that file where there is network access and "
                f"place it at {cached}, then run again."
            ) from exc
        raise
