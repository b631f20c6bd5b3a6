"""SHA-256 digests of files, of JSON documents and of checkpoint contents.

- :func:`sha256_file`: the bytes of a file (``model.pt`` in its model card);
- :func:`json_sha256`: a JSON document in canonical form (keys sorted, no spaces, UTF-8), so a
  model card can carry the digest of its own content (``card_sha256``: the digest of the card
  without that field);
- :func:`content_sha256`: a nested structure of dicts, lists, tuples, plain values and tensors
  as ``torch.load(..., weights_only=True)`` returns it: keys, types, dtypes, shapes and the
  bytes of every tensor, in a canonical order. A checkpoint stores it inside itself, so a
  changed byte anywhere in its tensors or values is found on loading, while the file stays an
  ordinary ``torch.save`` dict.

A digest finds files that were changed after they were written (a bad disk, a bad copy, an
edit); it does not stop anybody who can rewrite a file from rewriting its digest too. What
makes a hostile file harmless is that nothing in it is executed: see
:func:`logitnorm_plugin.registry.architectures.resolve_class` and ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Union

__all__ = [
    "bytes_sha256", "config_hash", "content_sha256", "json_sha256", "parts_sha256",
    "sha256_file", "state_dict_sha256",
]

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes in memory."""
    return hashlib.sha256(data).hexdigest()


def parts_sha256(parts: Iterable[str]) -> str:
    """Hex SHA-256 of text parts in order (the same as of their concatenation)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()


def config_hash(config: Any, length: int = 16) -> str:
    """Short stable SHA-256 of a JSON-like configuration (keys sorted; other objects by
    ``repr``). The one hash behind configuration ids, store keys and run-folder suffixes."""
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def state_dict_sha256(model) -> str:
    """SHA-256 of a model's class and state dict (names, dtypes, shapes and bytes): the
    identity of a model given as an object, in store keys and the fit cache."""
    import torch  # lazy: this module stays torch-free for the commands that only hash files

    digest = hashlib.sha256()
    cls = type(model)
    digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def canonical_json(obj: Any) -> bytes:
    """``obj`` as canonical JSON bytes (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def json_sha256(obj: Any) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def _update(digest, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}|".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _update(digest, key)
            _update(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}|".encode())
        for item in obj:
            _update(digest, item)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        digest.update(f"S{len(data)}|".encode() + data)
    elif isinstance(obj, (bytes, bytearray)):
        digest.update(f"B{len(obj)}|".encode() + bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float)):
        digest.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:  # dtypes, devices and other small values weights_only unpickles
        digest.update(f"R{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}|".encode())


def content_sha256(obj: Any) -> str:
    """Hex SHA-256 of a nested structure of dicts, lists, tuples, plain values and tensors
    (keys in a canonical order; a tuple and a list with the same items are equal)."""
    digest = hashlib.sha256()
    _update(digest, obj)
    return digest.hexdigest()
