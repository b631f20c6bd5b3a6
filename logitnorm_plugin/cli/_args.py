"""Parsing helpers shared by the commands: lists, seeds, ``KEY=VALUE`` pairs, thread counts."""

from __future__ import annotations

import ast
from typing import Any, Dict, List, Sequence

from logitnorm_plugin._core.arg_checks import check_thread_count
from logitnorm_plugin._core.detector_text import split_outside_parentheses
from logitnorm_plugin._core.errors import UserError

__all__ = ["add_threads", "command_line", "key_values", "numbers", "seeds", "split", "threads"]


def split(values: Sequence[str] | str | None) -> List[str]:
    """``["a,b", "c"] -> ["a", "b", "c"]``: lists may be given with commas or spaces (commas
    inside parentheses, as in ``knn(k=5, p=2)``, stay)."""
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values or ():
        out.extend(split_outside_parentheses(str(value)))
    return out


def _each(values, convert, option: str, what: str) -> list:
    out = []
    for v in split(values):
        try:
            out.append(convert(v))
        except ValueError as exc:
            raise UserError(f"{option} takes {what}, got {v!r}") from exc
    return out


def seeds(values, option: str = "--seeds") -> List[int]:
    """Integer seeds from ``0 1 2`` or ``0,1,2`` (or a mix)."""
    return _each(values, int, option, "integers")


def numbers(values, option: str) -> List[float]:
    """Floats from ``0.01 0.04`` or ``0.01,0.04``."""
    return _each(values, float, option, "numbers")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def key_values(items: List[str] | None, option: str = "--loss-arg") -> Dict[str, Any]:
    """``["t=0.04", "reduction=mean"]`` -> ``{"t": 0.04, "reduction": "mean"}``.

    Values are Python literals where they parse as one (numbers, booleans, ``None``, quoted
    strings) and strings otherwise.

    :raises UserError: for an item without ``=``
    """
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} expects KEY=VALUE (e.g. t=0.04), got {item!r}")
        out[key.strip()] = _literal(value.strip())
    return out


def threads(value: str) -> int | str:
    """``--threads``: ``auto`` or a number from 1 to the CPU cores of this machine."""
    if value == "auto":
        return "auto"
    try:
        count = int(value)
    except ValueError as exc:
        raise UserError(f"--threads takes a number or 'auto', got {value!r}") from exc
    return check_thread_count(count)


def add_threads(parser) -> None:
    """The ``--threads`` option of ``train``, ``bench`` and ``tune-t`` (one rule:
    :func:`logitnorm_plugin._core.device.resolve_threads`)."""
    parser.add_argument("--threads", default="auto",
                        help="torch CPU threads: a number, or auto (default): 1 for the digits "
                        "on the CPU (their tiny models gain little from a second thread and "
                        "slow down several-fold when other processes compete for the cores), "
                        "else torch's default")


def command_line(name: str) -> str | None:
    """The command as typed, for result files (``logitnorm-ood <name> ...``); ``None`` when
    this process was not started as that command (e.g. ``main([...])`` from Python)."""
    import shlex
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == name:
        return shlex.join(["logitnorm-ood", *sys.argv[1:]])
    return None
