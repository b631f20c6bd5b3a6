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

``logitnorm-ood export --model RUN_DIR`` prints a ready-to-paste ``ModelEntry(...)`` for
``pytorch_ood/model/registry.py`` built from a trainer run folder's model card; the snippet is
checked by building the real :class:`pytorch_ood.model.registry.ModelEntry` from it before it is
printed. The download URL is an explicit placeholder (``https://FILL-IN/...``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from logitnorm_plugin import runs
from logitnorm_plugin.conventions import REGISTRY_LOSS_NAMES
from logitnorm_plugin.errors import ModelIntegrityError, UserError
from logitnorm_plugin.provenance import provenance_text
from logitnorm_plugin.store import open_results
from logitnorm_plugin.tables import finite_json, is_missing, markdown_table, rst_grid_table

__all__ = [
    "DOC_METRICS",
    "EXPORT_FORMAT_VERSION",
    "EXTRA_METRICS",
    "FORMATS",
    "URL_PLACEHOLDER",
    "build_model_entry",
    "check_entry",
    "copy_weights",
    "csv_provenance",
    "export_results",
    "export_tables",
    "model_entry_snippet",
    "provenance_path",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_rst",
    "upstream_key",
]

#: version of the files written here (JSON ``format_version``)
EXPORT_FORMAT_VERSION = 1

#: pytorch-ood's benchmark-table metric columns, in its order
DOC_METRICS = ("AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")

#: further per-row numbers this package adds after pytorch-ood's columns (CSV, JSON)
EXTRA_METRICS = ("FPR95-ID95", "ACC", "ECE")

#: formats of :func:`export_results`: suffix -> writer
FORMATS = ("md", "csv", "json", "rst")

#: how the URL of an exported model entry starts until the weights are uploaded
URL_PLACEHOLDER = "https://FILL-IN"

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
        "scope": scope,
    }


def export_tables(store) -> list[dict]:
    """The exported tables: one per benchmark configuration x (architecture, training loss).

    Values come from :meth:`ResultStore.aggregate <logitnorm_plugin.store.ResultStore.aggregate>`
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
        models: dict[tuple, None] = {}
        detectors: dict[str, None] = {}
        for r in rows:
            models.setdefault((r.get("Arch"), r.get("Loss")), None)
            detectors.setdefault(r.get("Detector"), None)
        det_order = {d: i for i, d in enumerate(detectors)}
        for arch, loss in models:
            mine = [r for r in rows if (r.get("Arch"), r.get("Loss")) == (arch, loss)]
            m = [e for e in mean if (e["Arch"], e["Loss"]) == (arch, loss)]
            m.sort(key=lambda e: (_sort_value(e.get("AUROC")), det_order[e["Detector"]]))
            d = [e for e in per_dataset if (e["Arch"], e["Loss"]) == (arch, loss)]
            d.sort(key=lambda e: (det_order[e["Detector"]], ood_order.get(e["Dataset"], 1e9)))
            tables.append({
                "benchmark": config.get("benchmark"),
                "protocol": config.get("protocol"),
                "config_id": cfg_id,
                "ood_names": list(config["ood_names"]),
                "groups": {g: list(v) for g, v in (config.get("groups") or {}).items()},
                "arch": arch,
                "loss": loss,
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
    who = f"{table['loss']} ({table['arch']})" if table.get("arch") else str(table["loss"])
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
            parts.append(f"## {current}")
            parts.append("OOD sets: " + ", ".join(table["ood_names"]) + ".")
        for scope in (_SCOPE_MEAN, _SCOPE_DATASET):
            header, body = _doc_rows(table, scope)
            parts.append(f"### {_title(table, scope)}")
            tag = json.dumps(_table_id(table, scope), sort_keys=True)
            parts.append(f"<!-- {TABLE_TAG} {tag} -->\n" + markdown_table(header, body))
    return "\n\n".join(parts) + "\n"


def _rst_heading(text: str, char: str) -> str:
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
            parts.append("OOD sets: " + ", ".join(table["ood_names"]) + ".")
        for scope in (_SCOPE_MEAN, _SCOPE_DATASET):
            header, body = _doc_rows(table, scope)
            parts.append(_rst_heading(_title(table, scope), "~"))
            tag = json.dumps(_table_id(table, scope), sort_keys=True)
            parts.append(f".. {TABLE_TAG} {tag}")
            parts.append(rst_grid_table(header, body))
    return "\n\n".join(parts) + "\n"


#: CSV columns: identification, pytorch-ood's metrics, then this package's extras
CSV_KEYS = ("Benchmark", "Protocol", "Arch", "Loss", "Scope", "Dataset", "Detector")


def _csv_columns() -> list[str]:
    metrics = [*DOC_METRICS, *EXTRA_METRICS]
    return [*CSV_KEYS, *metrics, "Seeds", *(f"{m}_std" for m in metrics)]


def _csv_records(tables: Sequence[Mapping[str, Any]]) -> list[dict]:
    metrics = [*DOC_METRICS, *EXTRA_METRICS]
    records = []
    for t in tables:
        base = {"Benchmark": t["benchmark"], "Protocol": t["protocol"], "Arch": t["arch"],
                "Loss": t["loss"]}
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
    from logitnorm_plugin.atomic import write_text

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


# -- model entries for pytorch-ood's registry ---------------------------------------------------


def _upstream_loss(loss: str) -> str:
    """pytorch-ood's registry spelling of a training method (``cross_entropy`` ->
    ``crossentropy``), from the engine's table of registry names."""
    inverse = {ours: theirs for theirs, ours in REGISTRY_LOSS_NAMES.items()}
    return inverse.get(loss, loss)


def upstream_key(card: Mapping[str, Any]) -> str:
    """The registry key ``arch/dataset/loss/seed`` with pytorch-ood's method names."""
    parts = [card["arch"], card["dataset"], _upstream_loss(card["loss"])]
    if card.get("seed"):
        parts.append(card["seed"])
    return "/".join(parts)


def _upload_name(sha256: str) -> str:
    # torch.hub's check_hash reads the hash prefix after the last '-' of the URL's file name
    return f"model-{sha256[:16]}.pt"


def _py(value) -> str:
    """Python source of a JSON-like value (floats with repr, so they round-trip exactly)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value) if isinstance(value, str) else repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_py(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_py(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} into a ModelEntry")


def _py_wrapped(text: str, indent: int, width: int) -> str:
    """A string literal split into implicitly concatenated pieces of at most ``width``
    characters (as pytorch-ood's registry writes long descriptions)."""
    import textwrap

    pieces = textwrap.wrap(text, width - 3, drop_whitespace=False,
                           break_on_hyphens=False) or [""]
    if len(pieces) == 1:
        return _py(text)
    return ("\n" + " " * indent).join(_py(p) for p in pieces)


def _description(card: Mapping[str, Any]) -> str:
    text = str(card.get("description") or "").strip()
    recipe, t = card.get("recipe"), card.get("t")
    additions = []
    if recipe and f"'{recipe}'" not in text and f"recipe {recipe}" not in text:
        additions.append(f"recipe '{recipe}'")
    if t is not None and f"t={t:g}" not in text:
        additions.append(f"t={t:g}")
    if additions:
        text = (text + " " if text else "") + "Trained with " + ", ".join(additions) + "."
    return text


def model_entry_snippet(run_dir, key: str | None = None, url: str | None = None) -> str:
    """Python source of a ``ModelEntry(...)`` for ``pytorch_ood/model/registry.py``.

    Built from the run folder's model card after checking the weights' SHA-256 against it.
    The key follows pytorch-ood's convention ``arch/dataset/loss/seed`` with its method names
    (``crossentropy``, ``logitnorm``, ``oe``, ...); the URL, unless given, is the placeholder
    ``https://FILL-IN/<key>/model-<sha256[:16]>.pt`` (upload the weights under a file name that
    ends in ``-<first hex digits of the hash>.pt``, which torch.hub checks on download).

    :param run_dir: a run folder written by ``logitnorm-ood train`` (or its ``model.json``)
    :param key: registry key to use instead of the derived one
    :param url: the download URL, once known
    :return: the snippet (a Python expression, with comments)
    :raises ModelIntegrityError: if ``model.pt`` does not match the card's hash
    """
    path = Path(run_dir)
    card = runs.read_card(path)
    card_dir = path if path.is_dir() else path.parent
    weights = card_dir / card.get("file", runs.MODEL_FILE)
    if not weights.is_file():
        raise UserError(f"the model card in {str(card_dir)!r} names {str(weights)!r}, missing")
    digest = runs.sha256_file(weights)
    if digest != card["sha256"]:
        raise ModelIntegrityError(
            f"{str(weights)!r} has SHA-256 {digest}, but its model card records "
            f"{card['sha256']}; refusing to export it"
        )
    key = key or upstream_key(card)
    placeholder = url is None
    url = url or f"{URL_PLACEHOLDER}/{key}/{_upload_name(digest)}"
    pre = card.get("preprocessing")
    metrics = {k: float(card["metrics"][k]) for k in ("final_accuracy", "best_accuracy")
               if k in (card.get("metrics") or {})}
    lines = [
        f"# {key}: exported by logitnorm-plugin from {card_dir.name}/model.json",
    ]
    if placeholder:
        lines.append(
            f"# FILL IN the url: upload {weights.name} as {_upload_name(digest)} and put its "
            "download URL below"
        )
    if not str(card["arch_class"]).startswith("pytorch_ood."):
        lines.append(
            f"# NOTE: arch_class {card['arch_class']} is not part of pytorch-ood: loading needs "
            "logitnorm-plugin installed, or the class added to pytorch_ood.model"
        )
    lines += [
        "ModelEntry(",
        f"    key={_py(key)},",
        f"    arch={_py(card.get('arch'))},",
        f"    dataset={_py(card.get('dataset'))},",
        f"    loss={_py(_upstream_loss(card['loss']) if card.get('loss') else None)},",
        f"    seed={_py(card.get('seed'))},",
        f"    arch_class={_py(card['arch_class'])},",
        f"    arch_kwargs={_py(dict(card['arch_kwargs']))},",
        f"    url={_py(url)},{'  # FILL IN' if placeholder else ''}",
        f"    sha256={_py(digest)},",
    ]
    if pre:
        lines.append(
            f"    preprocessing=ImagePreprocessing(mean={_py(list(pre['mean']))}, "
            f"std={_py(list(pre['std']))}, size={_py(list(pre['size']))}),"
        )
    lines += [
        f"    metrics={_py(metrics)},",
        f"    source={_py(card.get('source'))},",
        f"    description={_py_wrapped(_description(card), 8, 99 - 16)},",
        ")",
    ]
    return "\n".join(lines) + "\n"


def build_model_entry(snippet: str):
    """Evaluate a snippet of :func:`model_entry_snippet` into pytorch-ood's real ``ModelEntry``
    (in a namespace holding only ``ModelEntry`` and ``ImagePreprocessing``)."""
    from pytorch_ood.model.registry import ImagePreprocessing, ModelEntry

    namespace = {"__builtins__": {}, "ModelEntry": ModelEntry,
                 "ImagePreprocessing": ImagePreprocessing}
    entry = eval(compile(snippet, "<ModelEntry snippet>", "eval"), namespace)  # noqa: S307
    if not isinstance(entry, ModelEntry):
        raise ValueError("the snippet does not evaluate to a ModelEntry")
    return entry


def check_entry(entry, run_dir) -> None:
    """The entry built from the snippet agrees with the card (a safety net before printing)."""
    card = runs.read_card(run_dir)
    problems = []
    if entry.sha256 != card["sha256"]:
        problems.append("sha256")
    if entry.arch_class != card["arch_class"] or dict(entry.arch_kwargs) != card["arch_kwargs"]:
        problems.append("architecture")
    pre = card.get("preprocessing")
    if pre and (list(entry.preprocessing.mean) != list(pre["mean"])
                or list(entry.preprocessing.std) != list(pre["std"])
                or list(entry.preprocessing.size) != list(pre["size"])):
        problems.append("preprocessing")
    if problems:  # pragma: no cover - would be a bug in model_entry_snippet
        raise RuntimeError(f"exported ModelEntry differs from the card in {problems}")


def copy_weights(run_dir, dest, key: str | None = None) -> Path:
    """Copy a run's ``model.pt`` to ``dest/<key>/model-<sha256[:16]>.pt``, the upload layout
    that the placeholder URL of :func:`model_entry_snippet` assumes."""
    path = Path(run_dir)
    card = runs.read_card(path)
    card_dir = path if path.is_dir() else path.parent
    key = key or upstream_key(card)
    target = Path(dest) / key / _upload_name(card["sha256"])
    target.parent.mkdir(parents=True, exist_ok=True)
    from logitnorm_plugin.atomic import atomic_write

    source = card_dir / card.get("file", runs.MODEL_FILE)
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))
    if runs.sha256_file(target) != card["sha256"]:
        raise ModelIntegrityError(f"copy of {source} to {target} does not match its hash")
    return target


