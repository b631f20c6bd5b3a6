"""Which device a command runs on: one rule for ``train``, ``bench`` and ``tune-t``."""

import torch

from logitnorm_plugin.errors import UserError


def resolve_device(device=None) -> torch.device:
    """
    The device to use for a requested one.

    :param device: ``None`` or ``"auto"`` (CUDA when available, else the CPU), or anything
        :class:`torch.device` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a device)
    :return: the device
    :raises UserError: for a CUDA device on a machine without CUDA (before anything starts)
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here; use cpu")
    return resolved
