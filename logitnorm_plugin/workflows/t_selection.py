"""The rule that picks the LogitNorm temperature from validation numbers, and its table.

Torch-free: :func:`summarize` averages the per-(t, seed) validation results over seeds,
:func:`select_t` applies a :class:`SelectionRule` to them, :func:`format_table` writes the
Markdown table of a ``recommended_t.json`` record. :mod:`logitnorm_plugin.workflows.tune_t`
produces those results (``logitnorm-ood tune-t``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

from logitnorm_plugin._core.conventions import PAPER_FPR_KEY
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.tables import mean_std, pct

#: the paper-style grid (log-spaced around the published 0.01 / 0.04 / 0.0085)
DEFAULT_GRID = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
#: seed of the validation noise; the benchmarks generate their test-time noise from small seeds
#: (0, 1, 2, ... = the evaluation seed), so these images are never the ones tested on
VALIDATION_NOISE_SEED = 7_340_033

__all__ = [
    "significance",
    "DEFAULT_GRID",
    "METRICS",
    "SUMMARY_METRICS",
    "VALIDATION_NOISE_SEED",
    "SelectionRule",
    "edge_warnings",
    "format_table",
    "select_t",
    "summarize",
    "t_text",
]

METRICS = {
    PAPER_FPR_KEY: (
        "FPR95 in the LogitNorm paper's convention (ID positive): the share of validation "
        "noise images accepted as ID at the MSP threshold that keeps 95% of the ID validation "
        "images"
    ),
    "FPR95TPR": (
        "FPR95TPR in pytorch-ood's convention (OOD positive): the share of ID validation images "
        "flagged as OOD at the MSP threshold that detects 95% of the validation noise images"
    ),
}
_TIE = 1e-9  # means closer than this count as equal (float noise of averaging)


# -- the rule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionRule:
    """How the temperature is chosen from the per-value means over seeds.

    Among the grid values with results for every seed and no diverged run, keep those whose
    mean validation accuracy is at least ``best - acc_margin``; among them choose the lowest
    mean ``metric``; ties (within 1e-9) go to the higher mean validation AUROC, then to the
    smaller ``t``.

    :param acc_margin: accuracy margin as a fraction (0.01 = 1 percentage point)
    :param metric: ``"FPR95-ID95"`` (the paper's convention) or ``"FPR95TPR"`` (pytorch-ood's)
    """

    acc_margin: float = 0.01
    metric: str = PAPER_FPR_KEY

    def __post_init__(self):
        if self.metric not in METRICS:
            raise UserError(
                f"unknown selection metric {self.metric!r}; use one of {list(METRICS)}"
            )
        if not (0.0 <= float(self.acc_margin) < 1.0):
            raise UserError(f"acc_margin must be a fraction in [0, 1), got {self.acc_margin}")

    def describe(self) -> str:
        """The rule in one sentence (printed and written to ``recommended_t.json``)."""
        return (
            "Among the grid values whose mean validation accuracy (over seeds) is within "
            f"{100 * self.acc_margin:g} percentage point(s) of the best mean validation accuracy, "
            f"choose the one with the lowest mean validation {self.metric} (MSP, ID validation "
            "split vs seeded Gaussian noise); ties (within 1e-9) go to the higher mean "
            "validation AUROC, then to the smaller t. Grid values with a diverged run are "
            "excluded."
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "text": self.describe(),
            "acc_margin": float(self.acc_margin),
            "acc_margin_unit": "fraction of validation accuracy (0.01 = 1 percentage point)",
            "metric": self.metric,
            "metric_convention": METRICS[self.metric],
            "tie_break": ["higher mean validation AUROC", "smaller t"],
            "excluded": "grid values where a seed diverged (non-finite loss)",
        }




SUMMARY_METRICS = ("ACC", PAPER_FPR_KEY, "FPR95TPR", "AUROC")


def summarize(points: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> List[Dict[str, Any]]:
    """Per grid value: means and sample standard deviations over seeds.

    :param points: one record per (t, seed) with ``t``, ``seed``, ``status`` (``"ok"`` or
        ``"diverged"``) and, when ok, the metrics ``ACC``, ``FPR95-ID95``, ``FPR95TPR``,
        ``AUROC``
    :param seeds: the seeds every value must have
    :return: one dict per ``t`` (ascending) with ``t``, ``status`` (``"ok"``, ``"diverged"``
        or ``"incomplete"``), ``seeds`` and ``<metric>`` / ``<metric>_std`` for ok values
    """
    by_t: Dict[float, List[Mapping[str, Any]]] = {}
    for p in points:
        by_t.setdefault(float(p["t"]), []).append(p)
    out = []
    for t in sorted(by_t):
        rows = sorted(by_t[t], key=lambda p: p["seed"])
        entry: Dict[str, Any] = {"t": t, "seeds": [int(p["seed"]) for p in rows]}
        if any(p["status"] != "ok" for p in rows):
            entry["status"] = "diverged"
        elif sorted(entry["seeds"]) != sorted(int(s) for s in seeds):
            entry["status"] = "incomplete"
        else:
            entry["status"] = "ok"
            for metric in SUMMARY_METRICS:
                entry[metric], entry[f"{metric}_std"] = mean_std([p[metric] for p in rows])
        out.append(entry)
    return out


def select_t(summary: Sequence[Mapping[str, Any]], rule: SelectionRule = SelectionRule()):
    """Apply ``rule`` to the output of :func:`summarize`.

    :return: ``(chosen_t, eligible_ts)``
    :raises UserError: if no grid value has complete, finite results
    """
    usable = [s for s in summary if s["status"] == "ok"]
    if not usable:
        raise UserError(
            "no grid value has results for every seed without divergence; widen the grid or "
            "lower the learning rate"
        )
    best = max(s["ACC"] for s in usable)
    eligible = [s for s in usable if s["ACC"] >= best - rule.acc_margin - _TIE]
    # round away float noise so that equal means tie and the stated tie-breaks decide
    chosen = min(
        eligible,
        key=lambda s: (round(s[rule.metric] / _TIE), -round(s["AUROC"] / _TIE), s["t"]),
    )
    return float(chosen["t"]), [float(s["t"]) for s in eligible]


def significance(summary: Sequence[Mapping[str, Any]], chosen: float,
                 rule: SelectionRule = SelectionRule()) -> Dict[str, Any]:
    """Whether the choice of :func:`select_t` stands out from the seed noise.

    A candidate (an eligible grid value) is *within the seed spread* of the chosen one when
    their mean ``rule.metric`` differ by at most the larger of their two sample standard
    deviations over seeds. With other candidates there, the choice among them is not
    significant: the record says which of them tie with it in that sense and which criterion of
    the rule picked it (the lowest mean, or a tie-break).

    :return: ``within_spread`` (the t values, the chosen one included), ``significant``
        (``None`` with one seed: no spread to compare with), ``decided_by`` and ``text``
    """
    eligible = [s for s in summary if s.get("status") == "ok" and s.get("eligible", True)]
    best = next(s for s in eligible if float(s["t"]) == chosen)
    metric = rule.metric

    def spread(s):
        value = s.get(f"{metric}_std")
        return None if value is None or value != value else float(value)  # NaN: one seed

    if spread(best) is None:
        return {"within_spread": [chosen], "significant": None, "decided_by": None,
                "text": f"one seed: no seed spread to tell whether t = {t_text(chosen)} is "
                        "better than its neighbours; run more seeds to know"}
    within = [s for s in eligible if abs(s[metric] - best[metric])
              <= max(spread(best), spread(s) or 0.0) + _TIE]
    others = [s for s in within if s is not best]
    tied = [s for s in others if round(s[metric] / _TIE) == round(best[metric] / _TIE)]
    if not tied:
        decided_by = f"the lowest mean {metric}"
    elif all(round(s["AUROC"] / _TIE) != round(best["AUROC"] / _TIE) for s in tied):
        decided_by = "the tie-break: higher mean validation AUROC"
    else:
        decided_by = "the tie-break: smaller t"
    ts = [float(s["t"]) for s in within]
    if not others:
        text = (f"t = {t_text(chosen)} is the only candidate within the seed spread "
                f"(± {100 * spread(best):.2f}) of its mean {metric}")
    else:
        text = (f"not significant: t = {', '.join(t_text(t) for t in ts)} are within the seed "
                f"spread (± {100 * spread(best):.2f} points) of the chosen t's mean {metric}; "
                f"the choice among them was made by {decided_by}, not by a difference larger "
                "than the noise")
    return {"within_spread": ts, "significant": not others, "decided_by": decided_by,
            "text": text}


def t_text(t: float) -> str:
    return f"{t:g}"


def edge_warnings(chosen: float, grid: Sequence[float]) -> List[str]:
    """A choice at the end of the grid may be the grid's limit rather than the data's answer."""
    if len(grid) < 2:
        return []
    if chosen == max(grid):
        return [f"chosen t = {t_text(chosen)} is the largest value of the grid: a larger t may "
                "do better under the same rule; extend the grid upwards (finished points are "
                "reused)"]
    if chosen == min(grid):
        return [f"chosen t = {t_text(chosen)} is the smallest value of the grid: a smaller t "
                "may do better under the same rule; extend the grid downwards (finished points "
                "are reused)"]
    return []


# -- output -----------------------------------------------------------------------------------


#: how the table names the objective whose temperature was tuned
_LOSS_TITLES = {"logitnorm": "LogitNorm", "t2fnorm": "T2FNorm"}


def format_table(record: Mapping[str, Any]) -> str:
    """The per-value results of a ``recommended_t.json`` record as a Markdown table (with the
    rule and the chosen t below it)."""
    metric = record["rule"]["metric"]
    n_seeds = len(record["seeds"])
    header = ["t", "seeds", "val ACC %", f"val {PAPER_FPR_KEY} % (paper)",
              "val FPR95TPR % (pytorch-ood)", "val AUROC %", "within margin", "chosen"]
    lines = [
        f"{_LOSS_TITLES.get(record.get('loss', 'logitnorm'), record.get('loss'))} "
        f"temperature on {record['dataset']} / {record['arch']}: MSP, ID validation "
        f"split ({record['validation']['id']['n']} images) vs Gaussian noise "
        f"({record['validation']['ood']['n']} images, seed {record['validation']['ood']['seed']})"
        f"; {record['training']['epochs']} epochs of the '{record['training']['recipe']}' "
        f"recipe per run; "
        + (f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed (no std)")
        + f". Selection metric: {metric}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for s in record["results"]:
        if s["status"] != "ok":
            cells = [t_text(s["t"]), str(len(s["seeds"])), s["status"], "-", "-", "-", "no", ""]
        else:
            cells = [
                t_text(s["t"]), str(len(s["seeds"])), pct(s["ACC"], s["ACC_std"]),
                pct(s[PAPER_FPR_KEY], s[f"{PAPER_FPR_KEY}_std"]),
                pct(s["FPR95TPR"], s["FPR95TPR_std"]), pct(s["AUROC"], s["AUROC_std"]),
                "yes" if s.get("eligible") else "no", "**chosen**" if s.get("chosen") else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Rule: {record['rule']['text']}", "",
              f"Chosen t = {t_text(record['chosen_t'])}"]
    if record.get("significance"):
        lines.append(f"Significance: {record['significance']['text']}.")
    lines += [f"Warning: {w}" for w in record.get("warnings", [])]
    return "\n".join(lines) + "\n"


