"""Which device a command runs on, and with how many CPU threads: one rule for ``train``,
``bench`` and ``tune-t``."""

import contextlib

import torch

from logitnorm_plugin._core.arg_checks import check_thread_count
from logitnorm_plugin._core.errors import UserError


def resolve_device(device=None) -> torch.device:
    """
    The device to use for a requested one.

    :param device: ``None`` or ``"auto"`` (CUDA when available, else the CPU), or anything
        :class:`torch.device` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a device)
    :return: the device
    :raises UserError: for a device this machine cannot run on (before anything starts): CUDA
        on a machine without CUDA, an index beyond its devices, another accelerator than the
        one this torch was built for and has here (``mps`` on Linux), or ``meta`` (a device
        without data: no model runs on it)
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available here; use cpu")
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None or accelerator.type != resolved.type:
        here = "cpu" if accelerator is None else f"cpu, {accelerator.type}"
        raise UserError(f"device {device!r} cannot run models here (devices of this machine: "
                        f"{here}); use one of them or auto")
    count = torch.accelerator.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise UserError(f"device {device!r} asked for, but this machine has {count} "
                        f"{resolved.type} device{'s' if count != 1 else ''} "
                        f"({resolved.type}:0 to {resolved.type}:{count - 1})")
    return resolved


#: datasets whose models are so small that one CPU thread is the fast choice
_ONE_THREAD_DATASETS = ("digits",)


def resolve_threads(threads, device, dataset=None) -> int | None:
    """
    torch's CPU threads for a command (``--threads`` of ``train``, ``bench`` and ``tune-t``).

    ``"auto"`` gives 1 for the digits on the CPU: their models are tiny, a second thread gains
    little and costs several-fold when other processes compete for the cores (measured on a
    2-core machine: README.md, "Speed benchmarks"); anything else keeps torch's default.

    :param threads: ``None`` (keep torch's setting), ``"auto"``, or a number from 1 to the
        CPU cores of this machine (:func:`~logitnorm_plugin._core.arg_checks.check_thread_count`)
    :param device: the device of the command (a :class:`torch.device` or anything
        :func:`resolve_device` accepts); threads matter on the CPU only, but a number is
        applied on any device (the host side runs on them too)
    :param dataset: the dataset or benchmark name of the command (``"digits"``, ...)
    :return: the thread count to set, or ``None`` to leave torch's setting alone
    :raises UserError: for anything else than ``None``, ``"auto"`` or such a number
    """
    if threads is None:
        return None
    if isinstance(threads, str) and threads.strip().lower() == "auto":
        on_cpu = resolve_device(device).type == "cpu"
        small = str(dataset).strip().lower() in _ONE_THREAD_DATASETS
        return 1 if on_cpu and small else None
    try:
        count = int(threads)
    except (TypeError, ValueError) as exc:
        raise UserError(f"threads must be a number >= 1 or 'auto', got {threads!r}") from exc
    if count < 1 or count != float(threads):
        raise UserError(f"threads must be a number >= 1 or 'auto', got {threads!r}")
    return check_thread_count(count)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run a block with ``torch.set_num_threads(count)`` and restore the previous setting
    afterwards; ``None`` changes nothing."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(previous)
