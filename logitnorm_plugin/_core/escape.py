"""Text taken from files, made safe for the documents this package writes.

The rule: **text that comes from a file (a model card's ``loss``, ``arch``, ``description``;
a label or a detector name stored in a result store; a plugin's paper) is data, never markup.**
Wherever it is written into Markdown, reStructuredText, HTML comments or a terminal table it
goes through one of these functions, so it stays inside its cell, line or comment:

- no line breaks or other control characters survive (:func:`plain`): a newline cannot start
  a new table row, a heading, or the text after a README section's end marker;
- in Markdown (:func:`md_text`, :func:`md_cell`) ``&``, ``<`` and ``>`` become HTML entities,
  so no tag, no HTML comment and no generated-section marker (``<!-- ... -->``) can be formed;
  in a table cell ``|`` becomes ``\\|`` (and a backslash before it is kept literal), so a
  cell cannot add columns;
- inside an HTML comment (:func:`comment_json`) a JSON value has ``<``, ``>`` and ``&`` written
  as ``\\u003c`` ..., so the text cannot close the comment (``-->``);
- a generated section's body never contains its own markers (:func:`without_markers`), even
  when a caller forgot one of the above.

:func:`md_cell_text` is the inverse of :func:`md_cell` for readers of the tables written here.
Hand-written: :mod:`html` does the entities; no kept library knows Markdown table cells.
Torch-free.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable

__all__ = ["comment_json", "md_cell", "md_cell_text", "md_text", "plain", "rst_cell",
           "without_markers"]

# C0/C1 controls, DEL, and the Unicode line and paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]+")


def plain(text: Any) -> str:
    """``text`` on one line: every run of control characters (newlines, tabs, escapes,
    Unicode line separators) becomes one space."""
    return _CONTROL.sub(" ", str(text))


def md_text(text: Any) -> str:
    """``text`` for a line of Markdown (a heading, a paragraph): one line, HTML escaped."""
    return html.escape(plain(text), quote=False)


def md_cell(text: Any) -> str:
    """``text`` for a cell of a Markdown pipe table: :func:`md_text`, then ``\\`` -> ``\\\\``
    and ``|`` -> ``\\|``."""
    return md_text(text).replace("\\", "\\\\").replace("|", "\\|")


def md_cell_text(cell: str) -> str:
    """The text a cell written by :func:`md_cell` holds (the inverse, for readers)."""
    return html.unescape(re.sub(r"\\([\\|])", r"\1", cell))


def rst_cell(text: Any) -> str:
    """``text`` for a cell of a reStructuredText grid table: one line, ``|`` escaped."""
    return plain(text).replace("\\", "\\\\").replace("|", "\\|")


def comment_json(value: str) -> str:
    """A JSON text (e.g. ``json.dumps(tag)``) safe inside an HTML comment: ``<``, ``>``, ``&``
    written as JSON escapes, which ``json.loads`` reads back unchanged."""
    return (value.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def without_markers(body: str, markers: Iterable[str]) -> str:
    """``body`` with every occurrence of the ``markers`` (a generated section's start and end
    lines) made harmless (``<`` written as ``&lt;``)."""
    for marker in markers:
        body = body.replace(marker, marker.replace("<", "&lt;"))
    return body
