"""What ``logitnorm-ood bench`` writes: the summary and per-OOD-set tables, the CSV of every
row, and the README section that ``--update-readme`` rewrites.

Torch-free: numbers in, text out (percentages with two decimals, mean ± std over seeds, the
published numbers beside ours with their sources).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.atomic import write_text
from logitnorm_plugin._core.conventions import ID_KEYS, OOD_KEYS, ROW_KEYS
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.escape import md_text, without_markers
from logitnorm_plugin._core.model_groups import CONFIG_FIELD
from logitnorm_plugin._core.tables import markdown_table, pct

__all__ = [
    "README_END",
    "README_START",
    "TABLE_METRICS",
    "format_per_dataset",
    "format_table",
    "readme_markers",
    "readme_section",
    "rows_csv",
    "update_readme",
]

#: markers of the README section that ``--update-readme`` rewrites
README_START = "<!-- logitnorm-ood bench: start -->"
README_END = "<!-- logitnorm-ood bench: end -->"

#: columns of the summary table (mean +- std over seeds of the mean over OOD sets)
TABLE_METRICS = ("AUROC", "FPR95TPR", "FPR95-ID95", "ACC")


# -- README section ----------------------------------------------------------------------------


def readme_markers(section: str | None = None) -> tuple[str, str]:
    """The lines around a README section that ``--update-readme`` rewrites: the default one
    (:data:`README_START`, :data:`README_END`) or a named one
    (``<!-- logitnorm-ood bench NAME: start -->``)."""
    if not section:
        return README_START, README_END
    return (f"<!-- logitnorm-ood bench {section}: start -->",
            f"<!-- logitnorm-ood bench {section}: end -->")


def readme_section(path: Path, section: str | None = None) -> tuple[str, int, int]:
    """The text of ``path`` and the positions of a section's markers in it.

    :raises UserError: if the file or a marker is missing
    """
    begin, finish = readme_markers(section)
    if not path.is_file():
        raise UserError(f"--update-readme: {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    start, end = text.find(begin), text.find(finish)
    if start < 0 or end < start:
        raise UserError(
            f"--update-readme: {str(path)!r} needs the lines {begin!r} and {finish!r} around "
            "the section to rewrite"
        )
    return text, start, end


def update_readme(path: str | Path, markdown: str, section: str | None = None) -> Path:
    """Replace the text between a section's markers (:func:`readme_markers`) in ``path`` with
    ``markdown`` (the markers stay), atomically.

    :raises UserError: if the file or a marker is missing
    """
    path = Path(path)
    text, start, end = readme_section(path, section)
    # one heading level down: the section sits inside the README
    body = "\n".join("#" + line if line.startswith("#") else line
                     for line in markdown.strip().splitlines())
    # the tables escape what came from files (_core.escape); the section's own markers are
    # neutralised here as well, so nothing can end the section early
    body = without_markers(body, (*readme_markers(section), README_START, README_END))
    begin = readme_markers(section)[0]
    new = text[: start + len(begin)] + "\n\n" + body + "\n\n" + text[end:]
    return write_text(path, new)


# -- formatting --------------------------------------------------------------------------------


def format_table(
    aggregate: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    groups: Sequence[str] = (),
    published: Mapping[tuple, list[dict]] | None = None,
    sources: Mapping[str, str] | None = None,
) -> str:
    """The summary table as Markdown: one row per ``by`` group, values in percent as
    mean ± std over seeds, near/far columns for grouped benchmarks, and a ``Published`` column
    with matched reference numbers (footnoted with their source)."""
    metrics = list(TABLE_METRICS)
    group_cols = [f"{g}/AUROC" for g in groups]
    header = [*by, "Seeds", *metrics, *group_cols]
    has_pub = bool(published) and any(published.values())
    if has_pub:
        header.append("Published")
    notes: dict[str, int] = {}
    body = []
    for entry in aggregate:
        row = [str(entry.get(b)) for b in by] + [str(entry.get("Seeds", ""))]
        row += [pct(entry.get(m), entry.get(f"{m}_std")) for m in metrics]
        row += [pct(entry.get(c), entry.get(f"{c}_std")) for c in group_cols]
        if has_pub:
            refs = []
            for p in (published or {}).get(tuple(entry.get(b) for b in by), []):
                mark = notes.setdefault(p["source"], len(notes) + 1)
                scope = "" if p["scope"] in ("mean", "id") else f"{p['scope']} "
                refs.append(f"{scope}{p['metric']} {pct(p['value'], p.get('std'))} [{mark}]")
            row.append("; ".join(refs) or "-")
        body.append(row)
    text = markdown_table(header, body)
    if notes:
        sources = sources or {}
        text += "\n\n" + "\n".join(
            md_text(f"[{n}] {sources.get(s, s)}")
            for s, n in sorted(notes.items(), key=lambda x: x[1])
        )
    return text


def format_per_dataset(aggregate: Sequence[Mapping[str, Any]], by: Sequence[str]) -> str:
    """Per-OOD-set table: AUROC and both FPR95s, mean ± std over seeds, in percent."""
    header = [*by, "Dataset", "AUROC", "FPR95TPR", "FPR95-ID95"]
    body = [
        [str(e.get(b)) for b in by] + [str(e.get("Dataset"))]
        + [pct(e.get(m), e.get(f"{m}_std")) for m in ("AUROC", "FPR95TPR", "FPR95-ID95")]
        for e in aggregate
    ]
    return markdown_table(header, body)


#: the unit of the metric columns of results.csv
FRACTION_UNIT = "(fraction)"


def rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every result row as CSV: the row keys in table order, then any further keys (the model
    configuration as its group key only: the whole of it is in results.json). Metric columns
    say their unit: ``AUROC (fraction)``."""
    keys = list(ROW_KEYS) + sorted({k for r in rows for k in r} - set(ROW_KEYS)
                                   - {CONFIG_FIELD})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    # the unit in the header: fractions here, percent in export's results_table.csv
    writer.writerow({k: f"{k} {FRACTION_UNIT}" if k in OOD_KEYS + ID_KEYS else k
                     for k in keys})
    for r in rows:
        writer.writerow({k: r.get(k) for k in keys})
    return buffer.getvalue()
