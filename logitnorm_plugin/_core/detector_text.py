"""One spelling of a detector with settings, on the command line and in Python:
``name(key=value, ...)``, e.g. ``knn(k=5)`` or ``fakeplug:logitnorm(t=0.1)``; the same text
the result tables use as the detector's label
(:func:`logitnorm_plugin._core.conventions.detector_label`). Values are Python literals (numbers,
booleans, ``None``, quoted strings, tuples); a bare word is a string (``ash(variant=ash_b)``).
Read with :mod:`ast`, never ``eval``. Torch-free.

Not-a-number and infinity, the words Python's ``float`` reads (any case), are read the same way
wherever they stand, bare, signed or in a tuple: ``inf``, ``+inf``, ``-inf`` and ``infinity``
are the float infinities (the labels write them back as ``inf``), and ``nan`` is refused here
with one line: no setting of a detector means NaN, and a NaN threshold or step gives scores
that are undefined or silently wrong. Where a setting must be finite, the detector's own
check, its failure when it runs, or the NaN-score check of the evaluation says so.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from logitnorm_plugin._core.errors import UsageError

__all__ = ["FORM", "parse_detector_text", "split_outside_parentheses"]

#: the documented form, for error messages
FORM = "NAME or NAME(KEY=VALUE, ...), e.g. knn(k=5)"

_TEXT = re.compile(r"^\s*([^()\s=]+)\s*(?:\((.*)\))?\s*$", re.S)


_INFINITY = ("inf", "infinity")


class _Numbers(ast.NodeTransformer):
    """``inf`` and ``infinity`` (any case) become the float infinity, wherever they stand;
    ``nan`` is refused."""

    def __init__(self, text: str):
        self.text = text

    def visit_Name(self, node: ast.Name) -> ast.AST:
        word = node.id.lower()
        if word == "nan":
            raise UsageError(f"detector {self.text!r}: {node.id} is not a value a detector "
                             "setting can take (NaN makes scores undefined); give a number")
        if word in _INFINITY:
            return ast.copy_location(ast.Constant(float("inf")), node)
        return node


def _value(node: ast.AST, text: str) -> Any:
    node = _Numbers(text).visit(node)
    if isinstance(node, ast.Name):
        return node.id  # a bare word: a string
    try:
        return ast.literal_eval(node)
    except ValueError as exc:
        raise UsageError(f"detector {text!r}: {ast.unparse(node)!r} is not a literal value; "
                         f"write {FORM}") from exc


def parse_detector_text(text: str) -> tuple[str, dict[str, Any]]:
    """``"knn(k=5)"`` -> ``("knn", {"k": 5})``; ``"msp"`` -> ``("msp", {})``.

    :raises UsageError: for text of another form (naming the documented one)
    """
    match = _TEXT.match(str(text))
    if not match:
        raise UsageError(f"cannot read the detector {text!r}: write {FORM}")
    name, inner = match.group(1), match.group(2)
    if ":" in name and "=" in name.rpartition(":")[2]:
        raise UsageError(f"cannot read the detector {text!r}: write {FORM}")
    if inner is None or not inner.strip():
        return name, {}
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
    except SyntaxError as exc:
        raise UsageError(f"cannot read the settings of the detector {text!r}: write "
                         f"{FORM}") from exc
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise UsageError(f"detector {text!r}: settings are KEY=VALUE pairs; write {FORM}")
    return name, {k.arg: _value(k.value, text) for k in call.keywords}


def split_outside_parentheses(text: str) -> list[str]:
    """``"msp,knn(k=5, p=2)"`` -> ``["msp", "knn(k=5, p=2)"]``: commas inside parentheses stay."""
    parts, depth, current = [], 0, []
    for char in str(text):
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += (char == "(") - (char == ")")
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]
