"""Export results and trained models in pytorch-ood's own forms.

``logitnorm-ood export RESULTS_DIR`` reads the result store of a ``logitnorm-ood bench`` folder
and writes the tables in four formats, each with its provenance (package versions, git commit,
device, seeds, dates):

- ``results_table.md`` (Markdown) and ``results_table.rst`` (reStructuredText grid tables, as in
  pytorch-ood's documentation and benchmark examples): one table per benchmark x training
  objective x scope, in **pytorch-ood's column layout**: the per-OOD-set table has
  ``Dataset | Detector | AUROC | AUTC | AUPR-IN | AUPR-OUT | FPR95TPR``, the summary table
  ``Detector | AUROC | AUTC | AUPR-IN | AUPR-OUT | FPR95TPR`` (mean over the OOD sets) sorted by
  AUROC ascending; values are percentages with two decimals. With several seeds a value is the
  mean over seeds (the standard deviation is in the CSV and JSON files).
- ``results_table.csv``: the same rows, flat, pytorch-ood's metric columns first and then this
  package's extras (the LogitNorm paper's ``FPR95-ID95``, ``ACC``, ``ECE``, near/far scopes,
  standard deviations); percentages with two decimals; a plain CSV (header line, then rows)
  that any CSV reader takes as it is. Its provenance is the sidecar
  ``results_table.provenance.json`` (:func:`csv_provenance`).
- ``results_table.json``: everything at full precision as fractions in [0, 1].

Each file identifies its tables (an HTML comment in Markdown, a comment in RST), so the tests
read every format back and compare it with the store.

``logitnorm-ood export --model RUN_DIR`` (a ``ModelEntry`` for pytorch-ood's model registry) is
:mod:`logitnorm_plugin.reporting.model_entry`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin._core.atomic import write_text
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.escape import comment_json, md_text, plain
from logitnorm_plugin._core.model_groups import group_of
from logitnorm_plugin._core.provenance import provenance_text
from logitnorm_plugin._core.tables import finite_json, is_missing, markdown_table, rst_grid_table
from logitnorm_plugin.store.results import open_results

__all__ = [
    "DOC_METRICS",
    "EXPORT_FORMAT_VERSION",
    "EXTRA_METRICS",
    "FORMATS",
    "csv_provenance",
    "export_results",
    "export_tables",
    "provenance_path",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_rst",
]

#: version of the files written here (JSON ``format_version``)
EXPORT_FORMAT_VERSION = 1

#: pytorch-ood's benchmark-table metric columns, in its order
DOC_METRICS = ("AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")

#: further per-row numbers this package adds after pytorch-ood's columns (CSV, JSON)
EXTRA_METRICS = ("FPR95-ID95", "ACC", "ECE")

#: formats of :func:`export_results`: suffix -> writer
FORMATS = ("md", "csv", "json", "rst")

_BY = ("Arch", "Loss", "Detector")
_SCOPE_DATASET = "dataset"
_SCOPE_MEAN = "mean"
TABLE_TAG = "logitnorm-plugin-table"


# -- the tables -------------------------------------------------------------------------------


def _table_id(table: Mapping[str, Any], scope: str) -> dict:
    return {
        "benchmark": table["benchmark"],
        "protocol": table["protocol"],
        "config_id": table["config_id"],
        "arch": table["arch"],
        "loss": table["loss"],
        "model": table.get("model", table["loss"]),
        "scope": scope,
    }


def export_tables(store) -> list[dict]:
    """The exported tables: one per benchmark configuration x (architecture, training loss).

    Values come from :meth:`ResultStore.aggregate
    <logitnorm_plugin.store.results.ResultStore.aggregate>`
    grouped by ``Arch``, ``Loss`` and ``Detector``: ``mean`` (each model's mean over the OOD
    sets, then mean and std over seeds, with near/far groups) and ``per_dataset`` (per OOD set,
    mean and std over seeds). ``mean`` is sorted by AUROC ascending and ``per_dataset`` by
    detector, then OOD set in benchmark order, as pytorch-ood's documentation does.

    :return: list of dicts with ``benchmark``, ``protocol``, ``config_id``, ``ood_names``,
        ``groups``, ``arch``, ``loss``, ``seeds``, ``mean`` and ``per_dataset``
    """
    tables = []
    for cfg_id in store.config_ids():
        rows = store.rows(config_id=cfg_id, with_ids=True)
        config = store.results_config(cfg_id, rows)
        mean = store.aggregate(cfg_id, by=_BY)
        per_dataset = store.aggregate(cfg_id, by=_BY, per_dataset=True)
        ood_order = {name: i for i, name in enumerate(config["ood_names"])}
        # one table per model configuration (aggregation's one rule: seeds only are averaged)
        models: dict[tuple, None] = {}
        detectors: dict[str, None] = {}
        for r in rows:
            models.setdefault((r.get("Arch"), r.get("Loss"), group_of(r)), None)
            detectors.setdefault(r.get("Detector"), None)
        det_order = {d: i for i, d in enumerate(detectors)}
        names = {e["model_group"]: e["Model"] for e in mean}
        shared = [m[:2] for m in models]
        for arch, loss, group in models:
            mine = [r for r in rows if group_of(r) == group]
            m = [e for e in mean if e["model_group"] == group]
            m.sort(key=lambda e: (_sort_value(e.get("AUROC")), det_order[e["Detector"]]))
            d = [e for e in per_dataset if e["model_group"] == group]
            d.sort(key=lambda e: (det_order[e["Detector"]], ood_order.get(e["Dataset"], 1e9)))
            tables.append({
                "benchmark": config.get("benchmark"),
                "protocol": config.get("protocol"),
                "config_id": cfg_id,
                "ood_names": list(config["ood_names"]),
                "groups": {g: list(v) for g, v in (config.get("groups") or {}).items()},
                "arch": arch,
                "loss": loss,
                "model": names.get(group, loss) if shared.count((arch, loss)) > 1 else loss,
                "model_group": group,
                "seeds": sorted({r["Seed"] for r in mine if r.get("Seed") is not None}),
                "models": len({r["model_id"] for r in mine}),
                "mean": m,
                "per_dataset": d,
            })
    return tables


def _sort_value(value) -> float:
    return float("inf") if is_missing(value) else float(value)


def _pct(value) -> str:
    """pytorch-ood's number format: percent, two decimals (no standard deviation)."""
    return "-" if is_missing(value) else f"{100 * float(value):.2f}"


def _title(table: Mapping[str, Any], scope: str) -> str:
    name = table.get("model") or table["loss"]
    who = f"{name} ({table['arch']})" if table.get("arch") else str(name)
    seeds = table.get("seeds") or []
    over = f"mean over {len(seeds)} seeds" if len(seeds) > 1 else (
        f"seed {seeds[0]}" if seeds else "one model")
    if scope == _SCOPE_MEAN:
        return f"{who}: mean over {len(table['ood_names'])} OOD sets, {over}"
    return f"{who}: per OOD set, {over}"


def _doc_rows(table: Mapping[str, Any], scope: str) -> tuple[list[str], list[list[str]]]:
    if scope == _SCOPE_MEAN:
        header = ["Detector", *DOC_METRICS]
        body = [[str(e["Detector"]), *(_pct(e.get(m)) for m in DOC_METRICS)]
                for e in table["mean"]]
    else:
        header = ["Dataset", "Detector", *DOC_METRICS]
        body = [[str(e["Dataset"]), str(e["Detector"]), *(_pct(e.get(m)) for m in DOC_METRICS)]
                for e in table["per_dataset"]]
    return header, body


def _heading(table: Mapping[str, Any]) -> str:
    return f"Benchmark {table['benchmark']}, protocol {table['protocol']}"


_NOTE = (
    "Values in % (two decimals), pytorch-ood's metrics and conventions: OOD is the positive "
    "class; FPR95TPR is the share of ID samples flagged as OOD at the threshold that detects "
    "95% of the OOD samples (not the LogitNorm paper's FPR95, which is FPR95-ID95 in the CSV "
    "and JSON files)."
)


def to_markdown(tables: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """The tables as Markdown, each preceded by a heading and an HTML comment identifying it
    (read back by :func:`parse_markdown`)."""
    parts = ["# Results in pytorch-ood's table layout", provenance_text(provenance), _NOTE]
    current = None
    for table in tables:
        if _heading(table) != current:
            current = _heading(table)
            parts.append(f"## {md_text(current)}")
            parts.append("OOD sets: " + md_text(", ".join(table["ood_names"])) + ".")
        for scope in (_SCOPE_MEAN, _SCOPE_DATASET):
            header, body = _doc_rows(table, scope)
            parts.append(f"### {md_text(_title(table, scope))}")
            tag = comment_json(json.dumps(_table_id(table, scope), sort_keys=True))
            parts.append(f"<!-- {TABLE_TAG} {tag} -->\n" + markdown_table(header, body))
    return "\n\n".join(parts) + "\n"


def _rst_heading(text: str, char: str) -> str:
    text = plain(text)
    return f"{text}\n{char * len(text)}"


def to_rst(tables: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """The tables as reStructuredText grid tables (the form of pytorch-ood's docs), each
    preceded by a comment identifying it (read back by :func:`parse_rst`)."""
    parts = [_rst_heading("Results in pytorch-ood's table layout", "="),
             provenance_text(provenance), _NOTE]
    current = None
    for table in tables:
        if _heading(table) != current:
            current = _heading(table)
            parts.append(_rst_heading(current, "-"))
            parts.append("OOD sets: " + plain(", ".join(table["ood_names"])) + ".")
        for scope in (_SCOPE_MEAN, _SCOPE_DATASET):
            header, body = _doc_rows(table, scope)
            parts.append(_rst_heading(_title(table, scope), "~"))
            tag = plain(json.dumps(_table_id(table, scope), sort_keys=True))
            parts.append(f".. {TABLE_TAG} {tag}")
            parts.append(rst_grid_table(header, body))
    return "\n\n".join(parts) + "\n"


#: CSV columns: identification, pytorch-ood's metrics, then this package's extras
CSV_KEYS = ("Benchmark", "Protocol", "Arch", "Loss", "Model", "Scope", "Dataset", "Detector")


def _csv_columns() -> list[str]:
    metrics = [*DOC_METRICS, *EXTRA_METRICS]
    return [*CSV_KEYS, *metrics, "Seeds", *(f"{m}_std" for m in metrics)]


def _csv_records(tables: Sequence[Mapping[str, Any]]) -> list[dict]:
    metrics = [*DOC_METRICS, *EXTRA_METRICS]
    records = []
    for t in tables:
        base = {"Benchmark": t["benchmark"], "Protocol": t["protocol"], "Arch": t["arch"],
                "Loss": t["loss"], "Model": t.get("model", t["loss"])}
        for e in t["mean"]:
            rec = {**base, "Scope": _SCOPE_MEAN, "Dataset": "", "Detector": e["Detector"],
                   "Seeds": e.get("Seeds")}
            for m in metrics:
                rec[m], rec[f"{m}_std"] = _pct(e.get(m)), _pct(e.get(f"{m}_std"))
            records.append(rec)
            for g in t["groups"]:
                rec = {**base, "Scope": g, "Dataset": "", "Detector": e["Detector"],
                       "Seeds": e.get("Seeds")}
                for m in DOC_METRICS + ("FPR95-ID95",):
                    rec[m] = _pct(e.get(f"{g}/{m}"))
                    rec[f"{m}_std"] = _pct(e.get(f"{g}/{m}_std"))
                records.append(rec)
        for e in t["per_dataset"]:
            rec = {**base, "Scope": _SCOPE_DATASET, "Dataset": e["Dataset"],
                   "Detector": e["Detector"], "Seeds": e.get("Seeds")}
            for m in metrics:
                rec[m], rec[f"{m}_std"] = _pct(e.get(m)), _pct(e.get(f"{m}_std"))
            records.append(rec)
    return records


def to_csv(tables: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """One flat CSV: a row per (benchmark, arch, loss, scope, dataset, detector); percentages
    with two decimals; nothing but the header and the rows (the provenance goes to the sidecar
    of :func:`csv_provenance`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_csv_columns(), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for rec in _csv_records(tables):
        writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return buffer.getvalue()


def csv_provenance(provenance: Mapping[str, Any], csv_name: str) -> str:
    """The sidecar JSON of a CSV export (``<stem>.provenance.json``): which file it describes,
    the provenance record and text, and the units and conventions of the values."""
    doc = {
        "format": "logitnorm-plugin-export-provenance",
        "format_version": EXPORT_FORMAT_VERSION,
        "describes": csv_name,
        "units": "percent, two decimals",
        "note": _NOTE,
        "provenance_text": provenance_text(provenance),
        "provenance": provenance,
    }
    return json.dumps(finite_json(doc), indent=2, sort_keys=False) + "\n"


def provenance_path(csv_path) -> Path:
    """Where the provenance of an exported CSV lies: ``results_table.csv`` ->
    ``results_table.provenance.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}.provenance.json")


def to_json(tables: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """Everything at full precision (fractions in [0, 1]; NaN as ``null``)."""
    doc = {
        "format": "logitnorm-plugin-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "units": "fraction",
        "doc_columns": {"mean": ["Detector", *DOC_METRICS],
                        "per_dataset": ["Dataset", "Detector", *DOC_METRICS]},
        "extra_metrics": list(EXTRA_METRICS),
        "provenance": provenance,
        "provenance_text": provenance_text(provenance),
        "tables": tables,
    }
    return json.dumps(finite_json(doc), indent=2) + "\n"


_WRITERS = {"md": to_markdown, "csv": to_csv, "json": to_json, "rst": to_rst}


def export_results(results_dir, out=None, formats: Sequence[str] = FORMATS,
                   stem: str = "results_table") -> dict[str, Path]:
    """Write the tables of a results folder in the given formats.

    :param results_dir: folder written by ``logitnorm-ood bench`` (or its ``results.sqlite``)
    :param out: output folder (default: ``<results_dir>/export``)
    :param formats: any of ``md``, ``csv``, ``json``, ``rst``
    :param stem: file name without suffix
    :return: format -> written path (a CSV comes with its provenance sidecar, see
        :func:`provenance_path`)
    :raises IncompatibleResultsError: for a missing, empty or incompatible results folder
    """

    out = out if out is None else out_path(out)  # "" is refused, not taken as "."
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    with open_results(results_dir) as store:
        tables = export_tables(store)
        provenance = store.provenance_summary()
    base = Path(results_dir)
    if out is None:
        out = (base if base.is_dir() else base.parent) / "export"
    out = Path(out)
    written = {}
    for fmt in formats:
        written[fmt] = write_text(out / f"{stem}.{fmt}", _WRITERS[fmt](tables, provenance))
        if fmt == "csv":
            write_text(provenance_path(written[fmt]),
                       csv_provenance(provenance, written[fmt].name))
    return written
