"""Readers of the files ``logitnorm-ood export`` and ``logitnorm-ood report`` write.

Test code: the tests read each exported format and each report table back and compare every
number with the result store. Written against the files' documented layout, not the writers'
code.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from logitnorm_plugin._core.errors import IncompatibleResultsError
from logitnorm_plugin._core.escape import md_cell_text
from logitnorm_plugin.reporting.export import (
    DOC_METRICS,
    EXPORT_FORMAT_VERSION,
    EXTRA_METRICS,
    TABLE_TAG,
)
from logitnorm_plugin.reporting.report import REPORT_TAG


def _cells(line: str, markdown: bool = True) -> list[str]:
    """The cells of a table line: split at the pipes that are not escaped (``\\|``), each
    unescaped as ``_core.escape`` documents (Markdown: also the HTML entities)."""
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    if markdown:
        return [md_cell_text(c.strip()) for c in cells]
    return [re.sub(r"\\([\\|])", r"\1", c.strip()) for c in cells]


def _number(text: str):
    text = text.strip()
    if text in ("", "-"):
        return None
    return float(text) / 100.0


def _records(meta: Mapping[str, Any], header: Sequence[str], body) -> list[dict]:
    out = []
    for cells in body:
        rec = {"benchmark": meta["benchmark"], "protocol": meta["protocol"],
               "config_id": meta["config_id"], "arch": meta["arch"], "loss": meta["loss"],
               "scope": meta["scope"]}
        for name, cell in zip(header, cells):
            rec[name] = _number(cell) if name in DOC_METRICS else cell.strip()
        rec.setdefault("Dataset", None)
        out.append(rec)
    return out


def parse_markdown(text: str) -> list[dict]:
    """Records of a Markdown file written by ``export.to_markdown``: one per table row with the
    table's identity (``benchmark``, ``protocol``, ``config_id``, ``arch``, ``loss``,
    ``scope``), ``Dataset``, ``Detector`` and the metrics as fractions."""
    records = []
    lines = text.splitlines()
    i = 0
    pattern = re.compile(rf"^<!-- {TABLE_TAG} (\{{.*\}}) -->$")
    while i < len(lines):
        match = pattern.match(lines[i].strip())
        i += 1
        if not match:
            continue
        meta = json.loads(match.group(1))
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append(_cells(lines[i]))
            i += 1
        header, body = block[0], block[2:]
        records += _records(meta, header, body)
    return records


def parse_rst(text: str) -> list[dict]:
    """Records of a reStructuredText file written by ``export.to_rst`` (as
    :func:`parse_markdown`)."""
    records = []
    lines = text.splitlines()
    i = 0
    prefix = f".. {TABLE_TAG} "
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith(prefix):
            continue
        meta = json.loads(line[len(prefix):])
        while i < len(lines) and not lines[i].startswith("+"):
            i += 1
        rows = []
        header = None
        while i < len(lines) and (lines[i].startswith("+") or lines[i].startswith("|")):
            if lines[i].startswith("|"):
                rows.append(_cells(lines[i], markdown=False))
            elif lines[i].startswith("+=") and header is None:
                header = rows.pop()
            i += 1
        records += _records(meta, header, rows)
    return records


def parse_csv(text: str, sidecar: str | None = None) -> tuple[list[dict], dict]:
    """Rows of a CSV file written by ``export.to_csv`` (metrics as fractions, ``None`` for blank)
    and its provenance, read from the sidecar ``<stem>.provenance.json`` text (``{}`` without
    one). The CSV itself must be plain: a header line, then rows, no comment lines."""
    provenance = {}
    if sidecar is not None:
        doc = json.loads(sidecar)
        if doc.get("format") != "logitnorm-plugin-export-provenance":
            raise IncompatibleResultsError("not the provenance sidecar of a logitnorm-plugin CSV")
        provenance = doc["provenance"]
    data_lines = text.splitlines()
    if any(line.startswith("#") for line in data_lines):
        raise AssertionError("the exported CSV has comment lines; CSV readers take them as rows")
    rows = []
    metrics = {*DOC_METRICS, *EXTRA_METRICS}
    for rec in csv.DictReader(io.StringIO("\n".join(data_lines))):
        row: dict[str, Any] = {}
        for key, value in rec.items():
            base = key[:-4] if key.endswith("_std") else key
            if base in metrics:
                row[key] = _number(value)
            elif key == "Seeds":
                row[key] = int(value) if value else None
            else:
                row[key] = value or None
        rows.append(row)
    return rows, provenance


def parse_json(text: str) -> dict:
    """A JSON file written by ``export.to_json``; refuses other formats and versions."""
    doc = json.loads(text)
    if doc.get("format") != "logitnorm-plugin-export":
        raise IncompatibleResultsError("not a logitnorm-plugin export (no 'format' field)")
    if doc.get("format_version") != EXPORT_FORMAT_VERSION:
        raise IncompatibleResultsError(
            f"export format version {doc.get('format_version')}; this version reads "
            f"{EXPORT_FORMAT_VERSION}"
        )
    return doc


def parse_report_tables(text: str, report_json: Mapping[str, Any] | None = None) -> list[dict]:
    """The tables of a report: dicts with ``table``, ``config_id``, ``header`` and ``cells`` (the
    row texts); with the report's ``report.json`` content also ``columns`` and ``rows``: the
    specification of what each column and row summarises."""
    specs = {(t["table"], t["config_id"]): t for t in (report_json or {}).get("tables", [])}
    tables = []
    lines = text.splitlines()
    prefix = f"<!-- {REPORT_TAG} "
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line.startswith(prefix):
            continue
        tag = json.loads(line[len(prefix):-len(" -->")])
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append(_cells(lines[i]))
            i += 1
        spec = specs.get((tag["table"], tag["config_id"]), {})
        tables.append({**spec, **tag, "header": block[0], "cells": block[2:]})
    return tables
