"""Numbers into text: the one percentage format, the one mean/std, the table writers.

Torch-free, used by ``bench``, ``tune-t``, ``export``, ``report`` and ``list``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from logitnorm_plugin._core.escape import md_cell, plain, rst_cell

__all__ = ["finite_json", "is_missing", "markdown_table", "mean_std", "pct", "plain_table",
           "plural", "rst_grid_table"]


def is_missing(value: Any) -> bool:
    """``None`` or a float NaN: a value no table shows as a number."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has neither),
    recursively through dicts, lists and tuples (which become lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the values that are not ``None``;
    ``(nan, nan)`` for none, and a NaN standard deviation for a single value (undefined: every
    table then shows the mean alone, never "± 0.00")."""
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return float("nan"), float("nan")
    if len(numbers) < 2:
        return numbers[0], float("nan")
    if not all(math.isfinite(v) for v in numbers):
        # a NaN metric (pytorch-ood's AUTC of constant scores) makes both undefined;
        # statistics.stdev cannot take one
        return math.fsum(numbers) / len(numbers), float("nan")
    return statistics.fmean(numbers), statistics.stdev(numbers)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 model"``, ``"2 models"``: a count and its noun (``many``: an irregular plural)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def pct(mean: Any, std: Any = None, decimals: int = 2) -> str:
    """A fraction as a percentage with ``decimals`` decimals (pytorch-ood's tables use two),
    ``"-"`` when missing, ``"mean ± std"`` when a standard deviation is given."""
    if is_missing(mean):
        return "-"
    text = f"{100 * float(mean):.{decimals}f}"
    if not is_missing(std):
        text += f" ± {100 * float(std):.{decimals}f}"
    return text


def _widths(header: Sequence[Any], body: Sequence[Sequence[Any]]) -> list[int]:
    return [max([len(str(h)), *(len(str(row[i])) for row in body)])
            for i, h in enumerate(header)]


def _cells(escape, header, body):
    return [escape(c) for c in header], [[escape(c) for c in row] for row in body]


def markdown_table(header: Sequence[Any], body: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table with padded columns; every cell through
    :func:`~logitnorm_plugin._core.escape.md_cell` (one line, no markup, ``|`` escaped)."""
    header, body = _cells(md_cell, header, body)
    widths = _widths(header, body)

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in body)])


def rst_grid_table(header: Sequence[Any], body: Sequence[Sequence[Any]]) -> str:
    """A reStructuredText grid table (the form of pytorch-ood's documentation); every cell
    through :func:`~logitnorm_plugin._core.escape.rst_cell`."""
    header, body = _cells(rst_cell, header, body)
    widths = _widths(header, body)

    def rule(char):
        return "+" + "+".join(char * (w + 2) for w in widths) + "+"

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [rule("-"), line(header), rule("=")]
    for row in body:
        out += [line(row), rule("-")]
    return "\n".join(out)


def plain_table(header: Sequence[Any], body: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces (for a terminal); every cell on one line
    (:func:`~logitnorm_plugin._core.escape.plain`)."""
    header, body = _cells(plain, header, body)
    widths = _widths(header, body)

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), *(line(row) for row in body)])
