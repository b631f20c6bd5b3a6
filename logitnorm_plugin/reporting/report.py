"""``logitnorm-ood report RESULTS_DIR``: one Markdown report with PNGs from a results folder.

The report checks the LogitNorm paper's claims on the user's own runs:

- **ID accuracy and calibration** per training objective (ACC, ECE), with the change against
  cross-entropy;
- a **summary** per detector (mean over the OOD sets): the paper's FPR95 (``FPR95-ID95``, ID
  kept at 95%), pytorch-ood's ``FPR95TPR``, AUROC, AUPR-IN, AUPR-OUT, and the change against
  cross-entropy;
- the **paper-style table** per detector: per OOD set FPR95 / AUROC / AUPR (``AUPR-ID-AP``:
  average precision, ID positive, as the paper's code), cross-entropy beside LogitNorm
  (beside every other objective in the store) with the change, then the mean over the OOD
  sets and the near/far averages where the benchmark defines groups;
- **published numbers beside ours**, with their sources, where benchmark, protocol,
  architecture, objective and detector match (``published_numbers.json``);
- figures: **histograms** of ID vs OOD scores (from the per-sample scores kept in the store),
  **reliability diagrams** with ECE (ID logits recomputed from the trained models) and the
  **logit-norm curves** of the training runs.

Every number of the tables comes from
:meth:`ResultStore.aggregate <logitnorm_plugin.store.results.ResultStore.aggregate>` over the
stored
cells (mean and sample std over seeds of each model's value). Each table is preceded by an HTML
comment recording, per row and column, which cells it summarises, and ``report.json`` holds
every value at full precision with the same identification, so each row can be traced back to
the store.

Run folders are found where ``logitnorm-ood bench`` puts them (``RESULTS_DIR/runs``) or given
with ``--runs``; a run belongs to a stored model when its weights have the model's fingerprint
(:func:`logitnorm_plugin._core.digests.state_dict_sha256`, the store's model id).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin._core.atomic import write_json, write_text
from logitnorm_plugin._core.conventions import canonical_name
from logitnorm_plugin._core.device import resolve_device
from logitnorm_plugin._core.escape import comment_json, md_cell, md_text
from logitnorm_plugin._core.model_groups import group_of
from logitnorm_plugin._core.provenance import provenance_text
from logitnorm_plugin._core.tables import finite_json, is_missing, pct
from logitnorm_plugin.reporting import figures as report_figures
from logitnorm_plugin.store.published import load_published, match_published
from logitnorm_plugin.store.results import open_results

__all__ = [
    "REPORT_FILE",
    "REPORT_JSON",
    "BASELINE",
    "PAPER_METRICS",
    "Report",
    "write_report",
]

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"

#: the objective every other one is compared with
BASELINE = "cross_entropy"

#: the paper's table: (stored metric, column title, better direction)
PAPER_METRICS = (("FPR95-ID95", "FPR95", "↓"), ("AUROC", "AUROC", "↑"),
                 ("AUPR-ID-AP", "AUPR", "↑"))

#: the summary table's metrics
SUMMARY_METRICS = (
    ("FPR95-ID95", "FPR95", "↓"), ("FPR95TPR", "FPR95TPR", "↓"), ("AUROC", "AUROC", "↑"),
    ("AUPR-IN", "AUPR-IN", "↑"), ("AUPR-OUT", "AUPR-OUT", "↑"),
)

_BY = ("Arch", "Loss", "Detector")
REPORT_TAG = "logitnorm-plugin-report"


@dataclass
class Report:
    """What :func:`write_report` wrote.

    :param path: the Markdown report
    :param json_path: every table value at full precision with its cell identification
    :param figures: the PNGs
    :param notes: what could not be shown, and why
    """

    path: Path
    json_path: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- numbers ------------------------------------------------------------------------------------


_bad = is_missing


def _fmt(mean, std=None, seeds: int = 1) -> str:
    """A mean in percent, with ± std only where there are several seeds."""
    return pct(mean, std if seeds > 1 else None)


def _fmt_delta(value, base) -> str:
    if _bad(value) or _bad(base):
        return "-"
    return f"{100 * (float(value) - float(base)):+.2f}"


class _Config:
    """One benchmark configuration of the store, with its aggregates indexed for look-up."""

    def __init__(self, store, cfg_id: str, baseline: str):
        self.cfg_id = cfg_id
        self.rows = store.rows(config_id=cfg_id, with_ids=True)
        self.config = store.results_config(cfg_id, self.rows)
        self.benchmark = self.config.get("benchmark")
        self.protocol = self.config.get("protocol")
        self.ood_names = list(self.config["ood_names"])
        groups = self.config.get("groups") or {}
        order = [g for g in ("near", "far") if g in groups] + [
            g for g in groups if g not in ("near", "far")]
        self.groups = {g: list(groups[g]) for g in order}
        # one model = one configuration (everything but the seed: aggregation's one rule)
        mean = store.aggregate(cfg_id, by=_BY)
        self.mean = {(e["model_group"], e["Detector"]): e for e in mean}
        self.names = {e["model_group"]: e["Model"] for e in mean}
        self.per_dataset = {
            (e["model_group"], e["Detector"], e["Dataset"]): e
            for e in store.aggregate(cfg_id, by=_BY, per_dataset=True)
        }
        models: dict[tuple, None] = {}
        detectors: dict[str, None] = {}
        for r in self.rows:
            models.setdefault((r.get("Arch"), r.get("Loss"), group_of(r)), None)
            detectors.setdefault(r["Detector"], None)
        self.detectors = list(detectors)
        # baseline first, the others in stored order
        self.baseline = next(
            (m for m in models if canonical_name(m[1]) == canonical_name(baseline)), None
        )
        self.models = ([self.baseline] if self.baseline else []) + [
            m for m in models if m != self.baseline
        ]
        self.multi_arch = len({m[0] for m in self.models}) > 1
        counts: dict[tuple, int] = {}
        for m in self.models:
            counts[m[:2]] = counts.get(m[:2], 0) + 1
        self.shared_loss = {key for key, n in counts.items() if n > 1}

    def label(self, model) -> str:
        """The loss, or the configuration's label where a loss has several."""
        arch, loss, group = model
        name = str(self.names.get(group, loss)) if model[:2] in self.shared_loss else str(loss)
        return f"{name} ({arch})" if self.multi_arch and arch else name

    def entry(self, spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
        key = (spec["group"], spec["detector"])
        if spec.get("scope", "mean") == "dataset":
            return self.per_dataset.get((*key, spec["dataset"]))
        return self.mean.get(key)

    def value(self, spec: Mapping[str, Any]) -> tuple[Any, Any, int]:
        """``(mean, std, seeds)`` of one metric at one scope."""
        entry = self.entry(spec)
        if entry is None:
            return None, None, 0
        scope, metric = spec.get("scope", "mean"), spec["metric"]
        key = metric if scope in ("mean", "dataset") else f"{scope}/{metric}"
        return entry.get(key), entry.get(f"{key}_std"), int(entry.get("Seeds") or 0)

    def model_ids(self, model) -> list[str]:
        """Stored models of one configuration, ordered by seed."""
        ids: dict[str, Any] = {}
        for r in self.rows:
            if group_of(r) == model[2]:
                ids.setdefault(r["model_id"], r.get("Seed"))
        return sorted(ids, key=lambda m: (ids[m] is None, ids[m] if ids[m] is not None else 0))


# -- tables -------------------------------------------------------------------------------------


def _cell(cfg: _Config, spec: Mapping[str, Any], published: Mapping | None) -> tuple[str, Any]:
    """Text and full-precision value of one table cell."""
    kind = spec["kind"]
    if kind == "value":
        mean, std, seeds = cfg.value(spec)
        return _fmt(mean, std, seeds), {"mean": mean, "std": std, "seeds": seeds}
    if kind == "delta":
        base = {**spec, "arch": spec["baseline"][0], "loss": spec["baseline"][1],
                "group": spec["baseline"][2]}
        value, base_value = cfg.value(spec)[0], cfg.value(base)[0]
        delta = None if _bad(value) or _bad(base_value) else value - base_value
        return _fmt_delta(value, base_value), {"delta": delta}
    if kind == "seeds":
        return str(cfg.value(spec)[2]), {"seeds": cfg.value(spec)[2]}
    if kind == "published":
        entry = published or {}
        text = _fmt(entry.get("value"), entry.get("std"), 2 if entry.get("std") else 1)
        return text, {"value": entry.get("value"), "std": entry.get("std"),
                      "source": entry.get("source")}
    raise ValueError(f"unknown cell kind {kind!r}")


def _table(cfg: _Config, name: str, columns: Sequence[Mapping[str, Any]],
           rows: Sequence[Mapping[str, Any]], record: dict) -> str:
    """A Markdown table with a tag comment naming the cells each row and column summarise.

    ``columns``: dicts with ``header`` and ``kind`` (``label``: text from the row; ``value``,
    ``delta``, ``seeds``, ``published``) plus spec fields overriding the row's. ``rows``: dicts
    with ``labels`` (texts of the label columns), ``spec`` (arch, loss, detector, scope,
    dataset, metric) and, for published rows, ``published``.
    """
    header = [c["header"] for c in columns]
    body = []
    for row in rows:
        labels = iter(row["labels"])
        cells = []
        for col in columns:
            if col["kind"] == "label":
                cells.append(str(next(labels)))
                continue
            spec = {**row["spec"], **{k: v for k, v in col.items() if k != "header"}}
            if spec["kind"] == "delta" and ([spec["arch"], spec["loss"], spec["group"]]
                                            == spec["baseline"]):
                cells.append("")  # the baseline against itself
                continue
            text, value = _cell(cfg, spec, row.get("published"))
            cells.append(text)
            record["cells"].append({"table": name, "config_id": cfg.cfg_id,
                                    "row": list(row["labels"]), "column": col["header"],
                                    **finite_json(spec), **finite_json(value)})
        body.append(cells)
    tag = {"table": name, "config_id": cfg.cfg_id}
    record["tables"].append({
        **tag,
        "columns": [finite_json(c) for c in columns],
        "rows": [finite_json({**r["spec"], **({"published": r["published"]}
                                            if r.get("published") else {})}) for r in rows],
    })
    # labels, names and headers come from the store, i.e. from files (_core.escape)
    header = [md_cell(h) for h in header]
    body = [[md_cell(c) for c in r] for r in body]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    lines = [f"<!-- {REPORT_TAG} {comment_json(json.dumps(tag, ensure_ascii=False))} -->",
             line(header),
             "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in body)]
    return "\n".join(lines)


def _model_spec(model, **extra) -> dict:
    return {"arch": model[0], "loss": model[1], "group": model[2], **extra}


def _id_table(cfg: _Config, record: dict) -> str:
    det = cfg.detectors[0]  # ACC and ECE are per model: the same on every detector's rows
    columns = [{"header": "Model", "kind": "label"},
               {"header": "Seeds", "kind": "seeds", "metric": "ACC"},
               {"header": "ACC ↑", "kind": "value", "metric": "ACC"},
               {"header": "ECE ↓", "kind": "value", "metric": "ECE"}]
    if cfg.baseline:
        columns += [{"header": f"Δ ACC vs {cfg.label(cfg.baseline)}", "kind": "delta",
                     "metric": "ACC", "baseline": list(cfg.baseline)},
                    {"header": f"Δ ECE vs {cfg.label(cfg.baseline)}", "kind": "delta",
                     "metric": "ECE", "baseline": list(cfg.baseline)}]
    rows = [{"labels": [cfg.label(m)], "spec": _model_spec(m, detector=det, scope="mean")}
            for m in cfg.models]
    return _table(cfg, "id", columns, rows, record)


def _summary_table(cfg: _Config, record: dict) -> str:
    columns = [{"header": "Detector", "kind": "label"}, {"header": "Model", "kind": "label"},
               {"header": "Seeds", "kind": "seeds", "metric": "AUROC"}]
    columns += [{"header": f"{title} {arrow}", "kind": "value", "metric": m}
                for m, title, arrow in SUMMARY_METRICS]
    if cfg.baseline:
        columns += [{"header": f"Δ {title}", "kind": "delta", "metric": m,
                     "baseline": list(cfg.baseline)}
                    for m, title, _ in SUMMARY_METRICS if m in ("FPR95-ID95", "AUROC")]
    rows = [{"labels": [det, cfg.label(m)], "spec": _model_spec(m, detector=det, scope="mean")}
            for det in cfg.detectors for m in cfg.models]
    return _table(cfg, "summary", columns, rows, record)


def _paper_table(cfg: _Config, detector: str, record: dict) -> str:
    columns: list[dict] = [{"header": "OOD set", "kind": "label"}]
    for metric, title, arrow in PAPER_METRICS:
        for m in cfg.models:
            columns.append({"header": f"{title} {arrow} {cfg.label(m)}", "kind": "value",
                            "metric": metric, "arch": m[0], "loss": m[1],
                            "group": m[2]})
        for m in cfg.models:
            if m != cfg.baseline and cfg.baseline:
                columns.append({"header": f"Δ {title} {cfg.label(m)}", "kind": "delta",
                                "metric": metric, "arch": m[0], "loss": m[1],
                                "group": m[2], "baseline": list(cfg.baseline)})
    rows = [{"labels": [d], "spec": {"detector": detector, "scope": "dataset", "dataset": d}}
            for d in cfg.ood_names]
    rows.append({"labels": [f"**mean** ({len(cfg.ood_names)} sets)"],
                 "spec": {"detector": detector, "scope": "mean"}})
    for g, names in cfg.groups.items():
        rows.append({"labels": [f"**{g}** ({', '.join(names)})"],
                     "spec": {"detector": detector, "scope": g}})
    return _table(cfg, f"paper:{detector}", columns, rows, record)


def _published_table(cfg: _Config, record: dict) -> tuple[str | None, list[str]]:
    published = load_published()
    rows = []
    used: dict[str, int] = {}
    for det in cfg.detectors:
        for m in cfg.models:
            for p in match_published(cfg.benchmark, cfg.protocol, m[0], m[1], det, published):
                scope = p.get("scope", "mean")
                spec = _model_spec(m, detector=det, scope="mean" if scope == "id" else scope,
                                   metric=p["metric"])
                if spec["scope"] not in ("mean", *cfg.groups):
                    continue
                mark = used.setdefault(p["source"], len(used) + 1)
                rows.append({"labels": [cfg.label(m), det, scope, p["metric"], f"[{mark}]"],
                             "spec": spec, "published": p})
    # an ID-only number (detector None) matches every detector: keep it once
    seen, unique = set(), []
    for r in rows:
        key = (r["labels"][0], r["labels"][2], r["labels"][3], r["published"]["value"],
               r["published"]["source"]) if r["published"].get("detector") is None else id(r)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if not unique:
        return None, []
    columns = [{"header": "Model", "kind": "label"}, {"header": "Detector", "kind": "label"},
               {"header": "Scope", "kind": "label"}, {"header": "Metric", "kind": "label"},
               {"header": "Ours", "kind": "value"}, {"header": "Published", "kind": "published"},
               {"header": "Source", "kind": "label"}]
    sources = published.get("sources", {})
    notes = [f"[{n}] {sources.get(s, s)}" for s, n in sorted(used.items(), key=lambda x: x[1])]
    return _table(cfg, "published", columns, unique, record), notes


# -- the report ---------------------------------------------------------------------------------


_CONVENTIONS = (
    "Values in % (mean ± sample standard deviation over seeds; each seed's value over several "
    "OOD sets is its mean over them). **FPR95** is the LogitNorm paper's (ID is the positive "
    "class: share of OOD accepted when 95% of the ID test set is kept, key `FPR95-ID95`); "
    "**FPR95TPR** is pytorch-ood's (OOD positive: share of ID flagged when 95% of OOD is "
    "detected); the two are not interchangeable. **AUPR** in the paper-style tables is the "
    "paper's: average precision with ID positive (scikit-learn's `average_precision_score`, "
    "key `AUPR-ID-AP`); **AUPR-IN** in the summary is pytorch-ood's trapezoidal area, a "
    "different number. Δ is the change against the baseline "
    "objective in percentage points (negative is better for FPR95 and ECE)."
)


def _glance(cfg: _Config) -> list[str]:
    """One line per (objective, detector) with the headline changes against the baseline."""
    if cfg.baseline is None:
        return []
    out = []
    for m in cfg.models:
        if m == cfg.baseline:
            continue
        for det in cfg.detectors:
            spec = _model_spec(m, detector=det, scope="mean")
            base = _model_spec(cfg.baseline, detector=det, scope="mean")
            parts = []
            for metric, title in (("FPR95-ID95", "FPR95"), ("AUROC", "AUROC")):
                a = cfg.value({**spec, "metric": metric})[0]
                b = cfg.value({**base, "metric": metric})[0]
                parts.append(f"{title} {_fmt(b)} → {_fmt(a)} ({_fmt_delta(a, b)})")
            out.append(md_text(f"- {cfg.label(m)} vs {cfg.label(cfg.baseline)}, `{det}`: "
                               + "; ".join(parts)))
        a = cfg.value(_model_spec(m, detector=cfg.detectors[0], metric="ECE"))[0]
        b = cfg.value(_model_spec(cfg.baseline, detector=cfg.detectors[0], metric="ECE"))[0]
        out.append(md_text(f"- {cfg.label(m)} vs {cfg.label(cfg.baseline)}, calibration: ECE "
                           f"{_fmt(b)} → {_fmt(a)} ({_fmt_delta(a, b)})"))
    return out


def write_report(
    results_dir,
    out=None,
    runs: Sequence = (),
    baseline: str = BASELINE,
    data_root=None,
    device: str = "cpu",
    batch_size: int = 512,
    figures: bool = True,
) -> Report:
    """Write ``report.md``, ``report.json`` and the PNGs of a results folder.

    :param results_dir: folder written by ``logitnorm-ood bench`` (or its ``results.sqlite``)
    :param out: output folder (default: ``<results_dir>/report``)
    :param runs: more run folders (or folders of run folders) than ``<results_dir>/runs``
    :param baseline: the objective the others are compared with
    :param data_root: data folder of the benchmark (reliability diagrams recompute ID logits)
    :param device: where the ID logits are recomputed (``"cpu"``, ``"cuda"``, ``"auto"``, ...)
    :param batch_size: batch size of that pass
    :param figures: draw the PNGs (tables only when false)
    :raises IncompatibleResultsError: for a missing, empty or incompatible results folder
    """

    out = out if out is None else out_path(out)  # "" is refused, not taken as "."
    device = str(resolve_device(device))
    base = Path(results_dir)
    folder = base if base.is_dir() else base.parent
    out = Path(out) if out is not None else folder / "report"
    record: dict[str, list] = {"tables": [], "cells": []}
    notes: list[str] = []
    written: list[Path] = []
    with open_results(results_dir) as store:
        out.mkdir(parents=True, exist_ok=True)  # only once the results are known to be there
        provenance = store.provenance_summary()
        configs = [_Config(store, c, baseline) for c in store.config_ids()]
        run_map: dict[str, Path] = {}
        if figures:
            all_ids = {r["model_id"] for c in configs for r in c.rows}
            # run folders named by the stored rows (bench --models RUN ...), then the others
            stored = {r["Run"]: None for c in configs for r in c.rows
                      if r.get("Run") and Path(r["Run"]).is_dir()}
            found = report_figures.find_runs(folder, [*runs, *stored], notes)
            run_map = report_figures.match_runs(found, all_ids, notes)
        parts = [
            "# LogitNorm against cross-entropy: report",
            f"Results folder: `{md_text(folder)}`. " + provenance_text(provenance),
            _CONVENTIONS,
        ]
        for cfg in configs:
            parts.append(md_text(f"## Benchmark `{cfg.benchmark}`, protocol `{cfg.protocol}`"))
            groups = "".join(f"; {g}: {', '.join(v)}" for g, v in cfg.groups.items())
            parts.append(md_text(
                f"OOD sets: {', '.join(cfg.ood_names)}{groups}. Objectives: "
                f"{', '.join(cfg.label(m) for m in cfg.models)}; detectors: "
                f"{', '.join(cfg.detectors)}. Configuration `{cfg.cfg_id}`."
            ))
            if cfg.baseline is None:
                parts.append(f"No `{baseline}` models in this configuration: no Δ columns.")
            glance = _glance(cfg)
            if glance:
                parts += ["### At a glance (mean over the OOD sets)", "\n".join(glance)]
            parts += ["### ID accuracy and calibration", _id_table(cfg, record)]
            parts += ["### Summary per detector (mean over the OOD sets)",
                      _summary_table(cfg, record)]
            parts.append("### Per OOD set (the paper's table)")
            for det in cfg.detectors:
                parts += [f"#### Detector `{md_text(det)}`", _paper_table(cfg, det, record)]
            parts.append("### Published numbers beside ours")
            table, sources = _published_table(cfg, record)
            if table is None:
                parts.append(
                    f"No published number matches benchmark `{cfg.benchmark}` with protocol "
                    f"`{cfg.protocol}` and these architectures, objectives and detectors "
                    "(the reference numbers cover the LogitNorm paper's CIFAR protocol with "
                    "WRN-40-2 and the OpenOOD v1.5 leaderboard; see published_numbers.json)."
                )
            else:
                parts += [table, "Sources:\n\n" + "\n".join(f"- {s}" for s in sources)]
            if figures:
                parts.append("### Figures")
                for det, path in report_figures.histograms(store, cfg, out, notes):
                    written.append(path)
                    parts.append(f"ID vs OOD scores, `{md_text(det)}` (first seed of each "
                                 f"objective; larger = more OOD):\n\n![{md_text(det)} scores]"
                                 f"({path.name})")
                path, lines = report_figures.reliability(cfg, run_map, out, data_root, device,
                                                         batch_size, notes)
                if path is not None:
                    written.append(path)
                    parts.append("Reliability diagram (ID test set, 15 equal-width bins):\n\n"
                                 f"![reliability]({path.name})\n\n"
                                 + "\n".join(f"- {md_text(line)}" for line in lines))
                path, table = report_figures.logit_norms(cfg, run_map, out, notes)
                if path is not None:
                    written.append(path)
                    parts.append("Logit norm during training (mean L2 norm of the logits on "
                                 f"the ID test set, per epoch):\n\n![logit norm]({path.name})"
                                 f"\n\n{table}")
        if notes:
            parts += ["## Not shown", "\n".join(f"- {md_text(n)}" for n in notes)]
        parts.append(f"Regenerate with `logitnorm-ood report {folder}`.")
    path = write_text(out / REPORT_FILE, "\n\n".join(parts) + "\n")
    json_path = write_json(out / REPORT_JSON, {
        "format": "logitnorm-plugin-report", "format_version": 1,
        "results_dir": str(folder), "provenance": provenance,
        "tables": finite_json(record["tables"]), "cells": finite_json(record["cells"]),
        "figures": [p.name for p in written], "notes": notes,
    })
    return Report(path=path, json_path=json_path, figures=written, notes=notes)
