"""Rows for the OpenOOD v1.5 leaderboard (``zjysteven/OpenOOD``, branch ``leaderboard``).

``logitnorm-ood export RESULTS --format openood-leaderboard`` writes, under ``<out>/openood/``:

- ``results/<file>.csv``: one row per (training objective, detector) of the store in the
  leaderboard's columns (:data:`LEADERBOARD_COLUMNS`, the header of ``results/cifar10.csv``),
  OpenOOD's method names (:data:`OPENOOD_TRAINING`, :data:`OPENOOD_POSTPROCESSOR`), and values
  ``mean ± std`` in percent with two decimals: per model (seed) the unweighted mean AUROC over
  the benchmark's near (far) OOD sets, then mean and population standard deviation
  (``np.std``, ddof 0) over the models, as OpenOOD's ``scripts/eval_ood.py`` does;
- ``utils/papers.csv``: the ``Alias,Link`` lines of the aliases used that OpenOOD's
  ``utils/papers.csv`` lacks (:data:`OPENOOD_PAPER_ALIASES`);
- ``ood/<benchmark>/<training>_<arch>/<postprocessor>.csv``: per (training objective,
  detector) the table ``scripts/eval_ood.py --save-csv`` writes (rows: each near set,
  ``nearood``, each far set, ``farood``; columns :data:`EVAL_OOD_COLUMNS`), for the
  leaderboard issue template;
- ``provenance.json``: where the numbers come from.

Only stores that follow the v1.5 protocol are exported (:func:`protocol_problems`: an
``*_openood`` benchmark, the ``full`` protocol, OpenOOD's backbone, at least three seeds per
row); ``nonstandard=True`` writes the rows anyway, saying in ``Additional_Description`` which
benchmark, protocol, seeds and architecture they come from.

Hand-written CSV layout (not pandas): the two files are plain CSVs with fixed headers; the
standard library's :mod:`csv` writes them without adding a dependency.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin._core.atomic import write_text
from logitnorm_plugin._core.conventions import OPENOOD_FPR_KEY, canonical_name, safe_file_part
from logitnorm_plugin._core.errors import IncompatibleResultsError, UserError
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.reporting.export import csv_provenance
from logitnorm_plugin.store.aggregation import detector_group_of
from logitnorm_plugin.store.results import open_results

__all__ = [
    "EVAL_OOD_COLUMNS",
    "LEADERBOARD_COLUMNS",
    "LEADERBOARD_FILES",
    "NonStandardResultsError",
    "OPENOOD_POSTPROCESSOR",
    "OPENOOD_TRAINING",
    "LeaderboardRow",
    "format_mean_std",
    "leaderboard_rows",
    "protocol_problems",
    "write_leaderboard",
]

#: the header of the leaderboard's ``results/*.csv`` files
LEADERBOARD_COLUMNS = (
    "Training", "Postprocessor", "Near-OOD_AUROC", "Far-OOD_AUROC", "ID_Accuracy",
    "Outlier_Data", "Arch", "Additional_Description",
)

#: the columns of the per-dataset CSV of OpenOOD's ``scripts/eval_ood.py`` (after the index)
EVAL_OOD_COLUMNS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")

#: store metric behind each :data:`EVAL_OOD_COLUMNS` entry (``ACC`` is the ID accuracy)
_EVAL_OOD_METRICS = {"FPR@95": OPENOOD_FPR_KEY, "AUROC": "AUROC", "AUPR_IN": "AUPR-IN",
                     "AUPR_OUT": "AUPR-OUT", "ACC": "ACC"}

#: v1.5 benchmark -> (leaderboard file, OpenOOD's backbone as this package names it)
LEADERBOARD_FILES = {
    "cifar10_openood": ("cifar10.csv", "resnet18-32x32"),
    "cifar100_openood": ("cifar100.csv", "resnet18-32x32"),
    "imagenet200_openood": ("imagenet200_ood.csv", "resnet18"),
}

#: OOD set names where OpenOOD spells them differently (per benchmark)
_OPENOOD_SET_NAMES = {
    "cifar10_openood": {"textures": "texture"},
    "cifar100_openood": {"textures": "texture"},
}

#: this package's training objectives -> OpenOOD's ``Training`` spelling
OPENOOD_TRAINING = {
    "cross_entropy": "CrossEntropy", "logitnorm": "LogitNorm", "outlier_exposure": "OE",
    "vos": "VOS", "elogitnorm": "ELogitNorm", "t2fnorm": "T2FNorm",
}

#: objectives trained with auxiliary outlier data (``Outlier_Data`` = ``Yes``)
_OUTLIER_LOSSES = {"outlier_exposure", "energy_regularized", "entropic_open_set"}

#: detector registry names -> OpenOOD's ``Postprocessor`` spelling. This package's own
#: ``logitnorm`` detector (MSP of the normalised logits) is listed under the paper's alias.
OPENOOD_POSTPROCESSOR = {
    "msp": "MSP", "energy": "EBO", "odin": "ODIN", "maxlogit": "MLS",
    "temperature_scaling": "TempScale", "openmax": "OpenMax", "gradnorm": "GradNorm",
    "kl_matching": "KLM", "gen": "GEN", "mahalanobis": "MDS", "rmd": "RMDS", "knn": "KNN",
    "vim": "VIM", "react": "ReAct", "dice": "DICE", "ash": "ASH", "she": "SHE",
    "rankfeat": "RankFeat", "scale": "SCALE", "nci": "NCI", "fdbd": "fDBD",
    "nnguide": "NNGuide", "logitnorm": "LogitNorm", "t2fnorm": "T2FNorm",
}

#: this package's architecture names -> OpenOOD's ``Arch`` spelling
_OPENOOD_ARCH = {"resnet18-32x32": "ResNet18", "resnet18": "ResNet18", "resnet50": "ResNet50"}

#: aliases that OpenOOD's ``utils/papers.csv`` (branch ``leaderboard``) already lists, of those
#: this module writes; a row with another alias needs a ``papers.csv`` line
OPENOOD_PAPER_ALIASES = frozenset({
    "CrossEntropy", "MSP", "TempScale", "ODIN", "MDS", "RMDS", "EBO", "GradNorm", "ReAct",
    "MLS", "KLM", "VIM", "KNN", "DICE", "RankFeat", "ASH", "SHE", "GEN", "NNGuide", "SCALE",
    "fDBD", "NCI", "OpenMax", "LogitNorm", "OE", "VOS", "T2FNorm",
})

#: the papers of aliases this package adds (``papers.csv`` lines)
_PAPER_LINKS = {
    "LogitNorm": "https://proceedings.mlr.press/v162/wei22d.html",
    "ELogitNorm": "https://arxiv.org/abs/2504.11434",
}

_V15_PROTOCOL = "full"
_MIN_SEEDS = 3
_MISSING = "/"  # OpenOOD's placeholder for a value it does not have (e.g. ID_Accuracy)


class NonStandardResultsError(UserError, ValueError):
    """The store does not follow OpenOOD's v1.5 protocol (see :func:`protocol_problems`)."""


@dataclass(frozen=True)
class LeaderboardRow:
    """One (benchmark configuration, architecture, training objective, detector) of a store:
    per model (seed) the values the leaderboard averages."""

    benchmark: str
    protocol: str
    config_id: str
    arch: str
    loss: str
    detector: str
    seeds: tuple
    near: tuple  # per model: mean AUROC over the near sets (fraction), or () without groups
    far: tuple
    accuracy: tuple  # per model: ID accuracy (fraction); () if unknown
    per_set: Mapping[str, Mapping[str, tuple]]  # OOD set -> metric -> per-model values
    near_names: tuple
    far_names: tuple

    def csv_row(self, nonstandard: bool) -> dict:
        """The leaderboard row (strings, in :data:`LEADERBOARD_COLUMNS`)."""
        return {
            "Training": training_alias(self.loss),
            "Postprocessor": postprocessor_alias(self.detector),
            "Near-OOD_AUROC": format_mean_std(self.near),
            "Far-OOD_AUROC": format_mean_std(self.far),
            "ID_Accuracy": format_mean_std(self.accuracy),
            "Outlier_Data": "Yes" if canonical_name(self.loss) in _OUTLIER_LOSSES else "No",
            "Arch": _OPENOOD_ARCH.get(str(self.arch), str(self.arch)),
            "Additional_Description": self.description(nonstandard),
        }

    def description(self, nonstandard: bool) -> str:
        seeds = " ".join(str(s) for s in self.seeds)
        text = f"logitnorm-plugin; {len(self.seeds)} seeds ({seeds})"
        if nonstandard:
            text = (f"NONSTANDARD (not OpenOOD v1.5): benchmark {self.benchmark}; protocol "
                    f"{self.protocol}; arch {self.arch}; {len(self.seeds)} seeds ({seeds})")
            if not self.near_names:
                text += "; no near/far groups"
        return text


def training_alias(loss: str) -> str:
    """OpenOOD's name of a training objective (unknown ones as they are)."""
    return OPENOOD_TRAINING.get(canonical_name(loss), str(loss))


def postprocessor_alias(label: str) -> str:
    """OpenOOD's name of a detector label; a label's parameters (``logitnorm(t=1)``) or
    distinguishing tag (``msp [x]``) stay attached to the alias."""
    label = str(label)
    cut = min((i for i in (label.find("("), label.find(" [")) if i > 0), default=len(label))
    head, rest = label[:cut], label[cut:]
    return OPENOOD_POSTPROCESSOR.get(canonical_name(head), head) + rest


def format_mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` of fractions, in percent with two decimals; ``std`` is the population
    standard deviation (``np.std``), as OpenOOD's ``eval_ood.py``; ``/`` for no values."""
    if not values:
        return _MISSING
    percent = np.asarray(values, dtype=np.float64) * 100
    return f"{np.mean(percent):.2f} \u00b1 {np.std(percent):.2f}"


def _openood_set(benchmark: str, name: str) -> str:
    return _OPENOOD_SET_NAMES.get(benchmark, {}).get(name, name)


def _model_rows(rows: Sequence[Mapping[str, Any]]) -> dict:
    """(arch, loss, detector group) -> model_id -> rows."""
    table: dict[tuple, dict[str, list]] = {}
    for r in rows:
        key = (r.get("Arch"), r.get("Loss"), detector_group_of(r))
        table.setdefault(key, {}).setdefault(r["model_id"], []).append(r)
    return table


def _mean(values) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _group_row(config: Mapping[str, Any], cfg_id: str, models: Mapping[str, list]
               ) -> LeaderboardRow:
    groups = config.get("groups") or {}
    near_names = tuple(groups.get("near") or ())
    far_names = tuple(groups.get("far") or ())
    first = next(iter(models.values()))[0]
    seeds = [m[0].get("Seed") for m in models.values()]
    shared = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if shared:
        raise IncompatibleResultsError(
            f"{len(models)} different models of {first.get('Loss')} ({first.get('Arch')}) "
            f"share seed {shared[0]} in {config.get('benchmark')}: they are different "
            "configurations, not seeds of one; export them from separate results folders"
        )
    order = sorted(models, key=lambda m: (models[m][0].get("Seed") is None,
                                          models[m][0].get("Seed") or 0))
    near, far, acc = [], [], []
    per_set: dict[str, dict[str, list]] = {}
    for model_id in order:
        by_set = {r["Dataset"]: r for r in models[model_id]}
        for names, out in ((near_names, near), (far_names, far)):
            if not names:
                continue
            missing = [n for n in names if n not in by_set]
            if missing:
                raise IncompatibleResultsError(
                    f"model {by_set[next(iter(by_set))].get('Model')} has no result on "
                    f"{missing} in {config.get('benchmark')}: finish the bench run first"
                )
            out.append(_mean([by_set[n]["AUROC"] for n in names]))
        accuracy = next(iter(by_set.values())).get("ACC")
        if accuracy is not None:
            acc.append(float(accuracy))
        for name, r in by_set.items():
            for column, metric in _EVAL_OOD_METRICS.items():
                per_set.setdefault(name, {}).setdefault(column, []).append(r.get(metric))
    return LeaderboardRow(
        benchmark=str(config.get("benchmark")), protocol=str(config.get("protocol")),
        config_id=cfg_id, arch=first.get("Arch"), loss=first.get("Loss"),
        detector=first.get("Detector"),
        seeds=tuple(models[m][0].get("Seed") for m in order),
        near=tuple(near), far=tuple(far), accuracy=tuple(acc) if len(acc) == len(order) else (),
        per_set={n: {c: tuple(v) for c, v in m.items()} for n, m in per_set.items()},
        near_names=near_names, far_names=far_names,
    )


def leaderboard_rows(store) -> list[LeaderboardRow]:
    """The rows of every (benchmark configuration, architecture, training objective, detector)
    of an open :class:`~logitnorm_plugin.store.results.ResultStore`, in the store's order."""
    out = []
    for cfg_id in store.config_ids():
        rows = store.rows(config_id=cfg_id, with_ids=True)
        config = store.results_config(cfg_id, rows)
        for models in _model_rows(rows).values():
            out.append(_group_row(config, cfg_id, models))
    return out


def protocol_problems(rows: Sequence[LeaderboardRow]) -> list[str]:
    """Why rows are not OpenOOD v1.5 results (empty if they are): an ``*_openood``
    benchmark, the ``full`` protocol, OpenOOD's backbone for the benchmark and at least
    three seeds per row."""
    problems: dict[str, None] = {}
    for r in rows:
        if r.benchmark not in LEADERBOARD_FILES:
            problems[f"benchmark {r.benchmark} is not an OpenOOD v1.5 benchmark "
                     f"({', '.join(LEADERBOARD_FILES)})"] = None
            continue
        if r.protocol != _V15_PROTOCOL:
            problems[f"protocol {r.protocol} (v1.5 evaluates the full OOD sets: "
                     f"--protocol {_V15_PROTOCOL})"] = None
        arch = LEADERBOARD_FILES[r.benchmark][1]
        if r.arch != arch:
            problems[f"architecture {r.arch} on {r.benchmark} (OpenOOD's is {arch})"] = None
        if len(r.seeds) < _MIN_SEEDS:
            problems[f"{training_alias(r.loss)} has {len(r.seeds)} seed(s) "
                     f"(v1.5 needs {_MIN_SEEDS})"] = None
    return list(problems)


def _csv_text(header: Sequence[str], records: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(rec)
    return buffer.getvalue()


def eval_ood_table(row: LeaderboardRow) -> str:
    """The CSV OpenOOD's ``scripts/eval_ood.py --save-csv`` writes for one model (its seeds):
    an unnamed index column (OOD sets, ``nearood``, ``farood``) and :data:`EVAL_OOD_COLUMNS`,
    each cell ``mean ± std`` over seeds; a summary row is, per seed, the mean over its sets."""
    header = ["", *EVAL_OOD_COLUMNS]
    records = []

    def record(name, values_of):
        rec = {"": name}
        for column in EVAL_OOD_COLUMNS:
            values = values_of(column)
            rec[column] = format_mean_std(values) if all(
                v is not None for v in values) else _MISSING
        return rec

    grouped = [(row.near_names, "nearood"), (row.far_names, "farood")]
    if not row.near_names and not row.far_names:
        grouped = [(tuple(row.per_set), None)]
    for names, summary in grouped:
        for name in names:
            records.append(record(_openood_set(row.benchmark, name),
                                  lambda c, n=name: row.per_set[n][c]))
        if summary is not None:
            def summary_values(column, names=names):
                per_seed = zip(*(row.per_set[n][column] for n in names))
                return [None if None in v else _mean(v) for v in per_seed]
            records.append(record(summary, summary_values))
    return _csv_text(header, records)


def _paper_link(alias: str, kind: str, name: str) -> str:
    """The paper of an alias: this package's table, else the registered class's ``info``."""

    if alias in _PAPER_LINKS:
        return _PAPER_LINKS[alias]
    get = registry.get_loss_class if kind == "loss" else registry.get_detector_class
    try:
        paper = getattr(get(name).info, "paper", None)
    except (UserError, AttributeError):
        paper = None
    return paper.url if paper is not None else f"FILL-IN (the paper of {name})"


def _papers_lines(rows: Sequence[LeaderboardRow]) -> list[dict]:
    """``Alias,Link`` lines of the aliases in ``rows`` that OpenOOD's papers.csv lacks."""
    wanted: dict[str, tuple] = {}
    for r in rows:
        head = str(r.detector).split("(")[0].split(" [")[0]
        wanted.setdefault(training_alias(r.loss), ("loss", str(r.loss)))
        wanted.setdefault(postprocessor_alias(r.detector), ("detector", head))
    return [{"Alias": alias, "Link": _paper_link(alias, kind, name)}
            for alias, (kind, name) in wanted.items() if alias not in OPENOOD_PAPER_ALIASES]


def write_leaderboard(results_dir, out=None, nonstandard: bool = False) -> dict[str, list]:
    """Write the leaderboard files of a results folder under ``<out>/openood/``.

    :param results_dir: folder written by ``logitnorm-ood bench`` (or its ``results.sqlite``)
    :param out: output folder (default: ``<results_dir>/export``)
    :param nonstandard: write rows of a store that does not follow the v1.5 protocol, marked
        as such in ``Additional_Description``
    :return: ``{"results": [...], "papers": [...], "eval_ood": [...], "provenance": [...]}``
        (written paths)
    :raises NonStandardResultsError: for a store outside the v1.5 protocol without
        ``nonstandard``
    """

    out = out if out is None else out_path(out)  # "" is refused, not taken as "."
    with open_results(results_dir) as store:
        rows = leaderboard_rows(store)
        provenance = store.provenance_summary()
    problems = protocol_problems(rows)
    if problems and not nonstandard:
        raise NonStandardResultsError(
            "not an OpenOOD v1.5 result, the leaderboard would refuse it: "
            + "; ".join(problems) + " (--nonstandard writes the rows anyway, marked as such)"
        )
    base = Path(results_dir)
    root = Path(out) if out is not None else (base if base.is_dir() else base.parent) / "export"
    root = root / "openood"
    by_file: dict[str, list[LeaderboardRow]] = {}
    for r in rows:
        name = LEADERBOARD_FILES.get(r.benchmark, (f"{safe_file_part(r.benchmark)}.csv",))[0]
        by_file.setdefault(name, []).append(r)
    written: dict[str, list] = {"results": [], "papers": [], "eval_ood": [], "provenance": []}
    for name, members in by_file.items():
        keys = [(training_alias(r.loss), postprocessor_alias(r.detector), r.arch)
                for r in members]
        twice = [k for k in keys if keys.count(k) > 1]
        if twice:
            raise IncompatibleResultsError(
                f"{name}: two configurations of one benchmark give the row {twice[0][:2]} "
                "twice; export them from separate results folders"
            )
        text = _csv_text(LEADERBOARD_COLUMNS, [r.csv_row(bool(problems)) for r in members])
        written["results"].append(write_text(root / "results" / name, text))
    written["papers"].append(write_text(root / "utils" / "papers.csv",
                                        _csv_text(("Alias", "Link"), _papers_lines(rows))))
    for r in rows:
        folder = safe_file_part(f"{training_alias(r.loss)}_{r.arch}")
        stem = safe_file_part(postprocessor_alias(r.detector).lower())
        path = root / "ood" / safe_file_part(r.benchmark) / folder / f"{stem}.csv"
        if path in written["eval_ood"]:  # a second configuration of one benchmark
            path = path.with_name(f"{stem}-{r.config_id[:8]}.csv")
        written["eval_ood"].append(write_text(path, eval_ood_table(r)))
    written["provenance"].append(write_text(
        root / "provenance.json", csv_provenance(provenance, "results/*.csv, ood/**/*.csv")))
    return written
