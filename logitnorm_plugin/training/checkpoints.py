"""Training checkpoints that carry their own digest, and the choice of what ``--resume`` reads.

``checkpoint.pt`` is an ordinary ``torch.save`` dict of tensors and plain values (``format``
2), written atomically after every epoch, with one more key: ``content_sha256``, the
:func:`~logitnorm_plugin._core.digests.content_sha256` of everything else in it. :func:`load` reads
it with ``torch.load(..., weights_only=True)`` and recomputes the digest; a checkpoint whose
bytes changed after it was written (a flipped bit, a torn copy) is refused, never resumed.

When a new checkpoint replaces the previous one, the previous one is kept as
``checkpoint.prev.pt`` (a hard link taken before the write and renamed only after it, so at
every moment ``checkpoint.pt`` is whole and ``checkpoint.prev.pt`` is whole or absent). The
fallback policy of :func:`load_for_resume`:

- ``checkpoint.pt`` intact: resume from it;
- ``checkpoint.pt`` damaged (unreadable, or its digest does not match) or missing, and
  ``checkpoint.prev.pt`` intact: resume from the previous epoch, saying so on stderr (one
  line naming both files); the damaged file is overwritten by the next checkpoint, and the
  intact one stays until a newer one is in place;
- neither intact: :class:`~logitnorm_plugin._core.errors.ModelIntegrityError` naming the file;
- a file holding Python objects other than tensors and plain values (which ``weights_only``
  refuses: it may be hostile) or another format: an error, never a fallback.

When a run finishes, ``checkpoint.prev.pt`` is removed (``checkpoint.pt`` stays, as the state
of the last epoch).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

from logitnorm_plugin._core import atomic
from logitnorm_plugin._core.digests import content_sha256
from logitnorm_plugin._core.errors import (
    ModelIntegrityError,
    UntrustedFileError,
    UserError,
    one_line,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "DIGEST_KEY",
    "PREVIOUS_CHECKPOINT_FILE",
    "discard_previous",
    "load",
    "load_for_resume",
    "load_weights_only",
    "refusal_reason",
    "save",
]

CHECKPOINT_FORMAT = 2
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
#: the key of a checkpoint that holds the digest of the rest of it
DIGEST_KEY = "content_sha256"

PathLike = Union[str, os.PathLike]

_REFUSED = re.compile(r"(Trying to load unsupported GLOBAL \S+|Unsupported global: \S+|"
                      r"GLOBAL \S+ was not an allowed global)")


def refusal_reason(exc: BaseException) -> str | None:
    """What ``torch.load(..., weights_only=True)`` refused to unpickle (e.g.
    ``"Trying to load unsupported GLOBAL posix.system"``), or ``None`` if ``exc`` is another
    failure. Torch's own advice to retry with ``weights_only=False`` is dropped: here that
    would run whatever the file holds."""
    if type(exc).__name__ != "UnpicklingError":
        return None
    found = _REFUSED.search(str(exc))
    return found.group(1).rstrip(".,") if found else None


def load_weights_only(path: PathLike, what: str, advice: str = "", map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)``, its failures as one-line errors naming the file
    as ``what`` (``"checkpoint"``, ``"weights file"``).

    :param advice: appended to the refusal's message (``"; train into another --out folder"``)
    :raises UntrustedFileError: it holds Python objects other than tensors and plain values
    :raises ModelIntegrityError: it cannot be read (damaged, or not written by ``torch.save``)
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        refused = refusal_reason(exc)
        if refused:
            raise UntrustedFileError(
                f"{str(path)!r} is not a {what} of this trainer: it holds Python objects that "
                f"are not tensors or plain values ({refused}), which this package never "
                f"unpickles; it may be hostile. Do not load it by other means{advice}"
            ) from exc
        raise ModelIntegrityError(
            f"cannot read the {what} {str(path)!r}: it is damaged or was not written by this "
            f"trainer ({type(exc).__name__}: {one_line(exc, 160)})"
        ) from exc


def save(run_dir: PathLike, state: Dict[str, Any], keep_previous: bool = True) -> Path:
    """Write ``checkpoint.pt`` atomically with its digest; the checkpoint it replaces becomes
    ``checkpoint.prev.pt`` once the new one is in place.

    :param state: plain types and tensors only
    :param keep_previous: keep the replaced checkpoint (``False`` after resuming from
        ``checkpoint.prev.pt``: the damaged ``checkpoint.pt`` must not become the fallback)
    """
    run_dir = Path(run_dir)
    ckpt = {"format": CHECKPOINT_FORMAT, **state}
    ckpt[DIGEST_KEY] = content_sha256(ckpt)
    current = run_dir / CHECKPOINT_FILE
    hold = None
    if keep_previous and current.is_file():
        hold = atomic.temporary_path(run_dir / PREVIOUS_CHECKPOINT_FILE)
        try:
            os.link(current, hold)
        except OSError:  # no hard links on this file system: a copy
            shutil.copyfile(current, hold)
    try:
        atomic.torch_save(ckpt, current)
    except BaseException:
        if hold is not None:
            with contextlib.suppress(OSError):
                os.unlink(hold)
        raise
    if hold is not None:
        os.replace(hold, run_dir / PREVIOUS_CHECKPOINT_FILE)
    return current


def discard_previous(run_dir: PathLike) -> None:
    """Remove ``checkpoint.prev.pt`` (a finished run keeps only ``checkpoint.pt``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(run_dir) / PREVIOUS_CHECKPOINT_FILE)


def load(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint of :func:`save` with ``weights_only=True`` and verify its digest.

    :return: the checkpoint without its digest
    :raises ModelIntegrityError: unreadable, or its content differs from its digest (damaged)
    :raises UntrustedFileError: it holds Python objects other than tensors and plain values
    :raises UserError: not a checkpoint of this trainer, or of an older format
    """
    path = Path(path)
    ckpt = load_weights_only(path, "checkpoint", "; train into another --out folder")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        older = " (an older format without a digest)" if found == 1 else ""
        raise UserError(
            f"cannot read the checkpoint {str(path)!r}: not a checkpoint of this version of "
            f"the trainer (format {found!r}{older}, this version writes "
            f"{CHECKPOINT_FORMAT}); train into another --out folder"
        )
    stored = ckpt.pop(DIGEST_KEY, None)
    actual = content_sha256(ckpt)
    if stored != actual:
        raise ModelIntegrityError(
            f"cannot read the checkpoint {str(path)!r}: it is damaged (its content has SHA-256 "
            f"{actual[:16]}..., it was written with {str(stored)[:16]}...)"
        )
    return ckpt


def load_for_resume(run_dir: PathLike, say: Callable[[str], None] | None = None
                    ) -> Tuple[Dict[str, Any] | None, bool]:
    """The newest intact checkpoint of a run folder, following the module's fallback policy.

    :param say: called with one line when ``checkpoint.prev.pt`` is used instead
    :return: ``(checkpoint or None, whether it is checkpoint.pt)``; ``(None, True)`` when the
        folder holds no checkpoint
    :raises ModelIntegrityError: checkpoints exist, none is intact
    :raises UntrustedFileError: a checkpoint holds objects ``weights_only`` refuses
    """
    run_dir = Path(run_dir)
    current, previous = run_dir / CHECKPOINT_FILE, run_dir / PREVIOUS_CHECKPOINT_FILE
    if not current.is_file() and not previous.is_file():
        return None, True
    problem = f"{str(current)!r} is missing"
    if current.is_file():
        try:
            return load(current), True
        except ModelIntegrityError as exc:
            if not previous.is_file():
                raise ModelIntegrityError(
                    f"{exc}; there is no intact {PREVIOUS_CHECKPOINT_FILE} to fall back to: "
                    "train into another --out folder"
                ) from exc
            problem = str(exc)
    try:
        ckpt = load(previous)
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(
            f"{problem}; and the previous checkpoint is not usable either: {exc}. Train into "
            "another --out folder"
        ) from exc
    if say is not None:
        say(f"{problem}; resuming from {str(previous)!r} (epoch {ckpt.get('epoch')}) instead")
    return ckpt, False
