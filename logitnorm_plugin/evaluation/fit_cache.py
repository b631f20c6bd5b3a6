"""The training split's pass on disk: a rerun fits its detectors without a pass over it.

The engine fits every detector that needs it from one pass over the benchmark's training split
(ID samples only). :class:`FitCache` keeps that pass's tensors per (model weights, training
split, how the pass ran), in a folder ``fit-cache/`` (beside the result store in ``bench``):

- ``<key>.pt``: a dict of CPU tensors, ``labels`` (``N``, int64), ``logits`` (``N x K``) and,
  for a pass through the split, ``features`` (``N x D``) and, when a detector on the
  ``feature_maps`` layer needed them, ``maps`` (``N x C x H x W``); written atomically with
  :func:`logitnorm_plugin._core.atomic.torch_save`;
- ``<key>.json``: the format version, the configuration the key hashes (:func:`pass_config`:
  the weights' SHA-256, the benchmark's configuration, the training split's normalisation and
  size, the pass's path and device type), the SHA-256 of ``<key>.pt`` and each tensor's shape
  and dtype.

Before use, the ``.pt`` file's SHA-256 is checked against the ``.json`` file, the recorded
configuration against the expected one, and what ``torch.load(..., weights_only=True)`` returns
(plain tensors, nothing that runs code) against the recorded shapes and dtypes. A file that
fails is reported with a warning and recomputed; a missing or smaller entry (e.g. no ``maps``)
is recomputed silently. Cached tensors never choose a detector, a class or any code.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping

import torch
from torch import Tensor

from logitnorm_plugin._core.atomic import torch_save, write_json
from logitnorm_plugin._core.digests import bytes_sha256, config_hash, sha256_file

__all__ = ["FOLDER", "FORMAT", "FitCache", "pass_config"]

#: the cache's folder inside the folder given to :func:`logitnorm_plugin.evaluate`
FOLDER = "fit-cache"
#: version of the file layout; another version is never read
FORMAT = 1


def pass_config(weights: str, bench_config: Mapping[str, Any], mean, std, size: int | None,
                through: str, device: torch.device) -> Dict[str, Any]:
    """What identifies a training-split pass.

    :param weights: SHA-256 of the model's weights
        (:func:`~logitnorm_plugin._core.digests.state_dict_sha256`)
    :param bench_config: the benchmark's configuration (its OOD set names do not matter)
    :param mean: normalisation mean the split was read with (``None``: the benchmark's own)
    :param std: normalisation std, likewise
    :param size: number of samples of the training split (``None``: unknown)
    :param through: ``"model"`` (logits from ``model(x)``) or the split's kind
    :param device: where the pass ran (its type is part of the key)
    """
    train = {k: v for k, v in bench_config.items() if k != "ood_names"}
    return {
        "format": FORMAT,
        "weights": weights,
        "train": {**train, "mean": None if mean is None else [float(v) for v in mean],
                  "std": None if std is None else [float(v) for v in std],
                  "size": None if size is None else int(size)},
        "pass": {"through": through, "device": torch.device(device).type},
    }


def _normalised(config: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(config, sort_keys=True, default=repr))


class FitCache:
    """Training-split passes under ``folder / "fit-cache"`` (see the module docstring).

    :param folder: the folder holding the cache's folder, e.g. ``bench``'s ``--out``
    """

    def __init__(self, folder):
        self.folder = Path(folder) / FOLDER

    def paths(self, config: Mapping[str, Any]):
        """``(<key>.pt, <key>.json)`` of a configuration."""
        key = config_hash(config, length=32)
        return self.folder / f"{key}.pt", self.folder / f"{key}.json"

    def load(self, config: Mapping[str, Any], need: Iterable[str]) -> Dict[str, Tensor] | None:
        """The cached tensors of ``config`` (on the CPU) if they hold every name in ``need``
        and pass every check, else ``None``."""
        data_path, meta_path = self.paths(config)
        if not data_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            recorded = meta["tensors"]
            if meta["format"] != FORMAT or meta["config"] != _normalised(config):
                return self._refuse(meta_path, "was written for another configuration")
            if not set(need) <= set(recorded):
                return None  # computed again with more
            payload = data_path.read_bytes()
            if bytes_sha256(payload) != meta["sha256"]:
                return self._refuse(data_path, "does not match the SHA-256 in " + meta_path.name)
            tensors = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # any file that cannot be read is recomputed
            return self._refuse(data_path, f"cannot be read ({type(exc).__name__}: {exc})")
        if not self._valid(tensors, recorded):
            return self._refuse(data_path, "does not hold the tensors recorded in "
                                + meta_path.name)
        return tensors

    @staticmethod
    def _valid(tensors, recorded) -> bool:
        if not isinstance(tensors, dict) or set(tensors) != set(recorded):
            return False
        if not all(isinstance(t, Tensor) for t in tensors.values()):
            return False
        for name, t in tensors.items():
            if [list(t.shape), str(t.dtype)] != [recorded[name]["shape"],
                                                 recorded[name]["dtype"]]:
                return False
        labels = tensors.get("labels")
        n = labels.shape[0] if labels is not None and labels.dim() == 1 else None
        return (n is not None and labels.dtype == torch.int64
                and all(t.dim() >= 1 and t.shape[0] == n for t in tensors.values()))

    def _refuse(self, path: Path, why: str) -> None:
        warnings.warn(f"fit cache {path} {why}; the training split is forwarded again and the "
                      "file rewritten", UserWarning, stacklevel=3)
        return None

    def save(self, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Path:
        """Write ``tensors`` (moved to the CPU) for ``config``; returns the ``.pt`` path."""
        data_path, meta_path = self.paths(config)
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        torch_save(cpu, data_path)
        digest = sha256_file(data_path)
        write_json(meta_path, {
            "format": FORMAT,
            "config": _normalised(config),
            "sha256": digest,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                        for k, v in cpu.items()},
        })
        return data_path

    def fetch(self, config: Mapping[str, Any], need: Iterable[str],
              compute: Callable[[], Mapping[str, Tensor]], device) -> Dict[str, Tensor]:
        """The tensors of ``config``: read back if cached with every name in ``need``, else
        ``compute()``-d and written. ``maps`` stay on the CPU, the others go to ``device``."""
        data = self.load(config, need)
        if data is None:
            data = dict(compute())
            self.save(config, data)
        return {k: v if k == "maps" else v.to(device) for k, v in data.items()}
