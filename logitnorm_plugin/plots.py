"""Plots as PNG files (matplotlib, Agg canvas: no display and no global backend switch).

A plain module of functions, one per figure; each takes data (never a folder to read) and a
target path and returns the path it wrote. Below the training layer: the trainer draws its
run's logit-norm curve with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from logitnorm_plugin._core.atomic import atomic_write
from logitnorm_plugin._core.conventions import PAPER_FPR_KEY
from logitnorm_plugin._core.tables import is_missing, plural
from logitnorm_plugin.metrics import expected_calibration_error

__all__ = ["plot_logit_norms", "run_label"]

PathLike = Union[str, os.PathLike]


def _figure(width: float = 6.4, height: float = 4.2):
    """A figure on its own Agg canvas (leaves pyplot's state and backend alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _bar(std) -> float:
    """An error bar in percent; none (0) where the standard deviation is undefined (one seed)."""
    return 0.0 if is_missing(std) else 100 * float(std)


def _save(fig, path: PathLike) -> Path:
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def run_label(config: Mapping) -> str:
    """A short legend label of a run from its ``config.json`` record: loss, temperature, seed."""
    loss = str(config.get("loss", "?")).rpartition(":")[2]
    t = config.get("t")
    label = f"{loss} (t={t:g})" if isinstance(t, (int, float)) else loss
    return f"{label}, s{config.get('seed', '?')}"


def plot_logit_norms(
    histories: Sequence[Sequence[Mapping]],
    out: PathLike,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    band: bool = True,
) -> Path:
    """The mean L2 norm of the logits on the ID test set over epochs, one line per run.

    The LogitNorm paper's motivating figure: under cross-entropy the norm grows while training
    pushes the softmax towards one-hot outputs. LogitNorm's loss does not depend on the norm,
    so nothing drives it up; its level is set by the first steps and weight decay (on the
    digits it settles higher than cross-entropy's, and stays flat).

    The per-epoch records come in as data (the trainer has them in memory; a report reads them
    with :func:`logitnorm_plugin.training.runs.read_metrics`), so drawing never reads a folder.

    :param histories: per run, its per-epoch records (``epoch``, ``logit_norm_mean``,
        ``logit_norm_std``), as in a run folder's ``metrics.jsonl``
    :param out: the PNG to write
    :param labels: legend labels (default: ``run 1``, ``run 2``, ...)
    :param title: figure title
    :param band: shade mean +- one standard deviation over the test images
    :return: the written path
    """
    if not histories:
        raise ValueError("plot_logit_norms needs at least one run")
    if labels is not None and len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} runs")
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, records in enumerate(histories):
        epochs = [r["epoch"] for r in records]
        mean = [r["logit_norm_mean"] for r in records]
        std = [r["logit_norm_std"] for r in records]
        label = labels[i] if labels is not None else f"run {i + 1}"
        (line,) = ax.plot(epochs, mean, marker="o" if len(epochs) <= 30 else None,
                          markersize=3, label=label)
        if band:
            ax.fill_between(
                epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                color=line.get_color(), alpha=0.15, linewidth=0,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean logit L2 norm (ID test set)")
    ax.set_title(title or "Logit norm during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out)


# -- evaluation figures (logitnorm_plugin.workflows.bench) ----------------------------------------

__all__ += ["histogram_scale", "score_histograms", "reliability_diagram"]


#: share of scores within 1e-3 of -1 from which negated max-softmax scores count as saturated
_SATURATED = 0.25


def histogram_scale(values):
    """The x axis that shows a score distribution: the scores themselves, or, for negated
    max-softmax scores (MSP: in [-1, 0]) of which many are saturated at -1 (a confident model),
    ``log10(1 - MSP)``, which spreads the spike at -1 over decades and keeps the order (larger =
    more OOD).

    :param values: the finite scores of the figure
    :return: ``(axis label, transform or None)``
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if values.size and values.min() >= -1.0 and values.max() <= 0.0 and (
            np.mean(values < -1.0 + 1e-3) >= _SATURATED):
        return "log10(1 - MSP)", lambda v: np.log10(np.clip(1.0 + v, 1e-12, None))
    return "outlier score", None


def score_histograms(
    panels,
    out: PathLike,
    title: str | None = None,
    bins: int = 40,
    id_name: str = "ID",
) -> Path:
    """Histograms of outlier scores, ID against each OOD set, one panel per model.

    With one panel per training objective (e.g. cross-entropy beside LogitNorm) it shows
    how far apart the two distributions lie; all panels of a figure share the bin edges so
    their shapes can be compared. Larger scores mean more likely OOD (pytorch-ood's convention).

    :param panels: ``{panel title: {dataset name: 1-D scores}}``; each panel must hold
        ``id_name`` (the ID test set) and at least one OOD set
    :param out: the PNG to write
    :param title: figure title
    :param bins: number of bins
    :param id_name: key of the ID scores in each panel
    :return: the written path
    """

    if not panels:
        raise ValueError("score_histograms needs at least one panel")
    arrays = {
        p: {d: np.asarray(v, dtype=np.float64).reshape(-1) for d, v in sets.items()}
        for p, sets in panels.items()
    }
    for p, sets in arrays.items():
        if id_name not in sets or len(sets) < 2:
            raise ValueError(f"panel {p!r} needs '{id_name}' scores and at least one OOD set")
    values = np.concatenate([v for sets in arrays.values() for v in sets.values()])
    values = values[np.isfinite(values)]
    scale, transform = histogram_scale(values)
    if transform is not None:
        arrays = {p: {d: transform(v) for d, v in sets.items()} for p, sets in arrays.items()}
        values = transform(values)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    n = len(arrays)
    fig = _figure(width=4.6 * n, height=3.6)
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, (panel, sets) in zip(axes, arrays.items()):
        ax.hist(sets[id_name], bins=edges, density=True, color="black", alpha=0.35,
                label=f"{id_name} (n={sets[id_name].size})")
        for name, v in sets.items():
            if name != id_name:
                ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.4,
                        label=f"{name} (n={v.size})")
        ax.set_title(str(panel))
        ax.set_xlabel(f"{scale} (larger = more OOD)")
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def reliability_diagram(
    curves,
    out: PathLike,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Reliability diagram: accuracy against confidence in equal-width bins, one line per model,
    with each model's ECE (the bins of :func:`logitnorm_plugin.metrics.expected_calibration_error`)
    in the legend.

    :param curves: ``{label: (logits N x C, labels N)}`` of the ID test set
    :param out: the PNG to write
    :param n_bins: number of equal-width confidence bins on ``(0, 1]``
    :param title: figure title
    :return: the written path
    """


    if not curves:
        raise ValueError("reliability_diagram needs at least one model")
    fig = _figure(width=5.0, height=4.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    edges = torch.linspace(0, 1, n_bins + 1)
    for label, (logits, labels) in curves.items():
        logits = torch.as_tensor(logits).detach().float().cpu()
        labels = torch.as_tensor(labels).detach().reshape(-1).cpu()
        confidence, prediction = logits.softmax(dim=1).max(dim=1)
        correct = prediction.eq(labels).double()
        xs, ys = [], []
        for lower, upper in zip(edges[:-1], edges[1:]):
            in_bin = (confidence > lower) & (confidence <= upper)
            if bool(in_bin.any()):
                xs.append(float(confidence[in_bin].double().mean()))
                ys.append(float(correct[in_bin].mean()))
        ece = expected_calibration_error(logits, labels, n_bins=n_bins)
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{label} (ECE {100 * ece:.2f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Reliability on the ID test set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out)


# -- temperature tuning (logitnorm_plugin.workflows.tune_t) ---------------------------------------

__all__ += ["plot_t_tuning"]


def plot_t_tuning(record, out: PathLike, title: str | None = None) -> Path:
    """Validation accuracy and validation FPR95 against the LogitNorm temperature (log x axis).

    Two panels sharing the t axis, mean +- std over seeds as error bars; the grid values the
    rule kept (accuracy within its margin) are filled markers, the chosen t is a vertical line.

    :param record: a ``recommended_t.json`` record of
        :func:`logitnorm_plugin.workflows.tune_t.tune_t`
    :param out: the PNG to write
    :param title: figure title (default: dataset, architecture and chosen t)
    :return: the written path
    """

    ok = [r for r in record["results"] if r.get("status") == "ok"]
    if not ok:
        raise ValueError("plot_t_tuning needs at least one grid value with results")
    ts = [r["t"] for r in ok]
    metric = record["rule"]["metric"]
    other = "FPR95TPR" if metric == PAPER_FPR_KEY else PAPER_FPR_KEY
    fig = _figure(width=6.4, height=5.6)
    top = fig.add_subplot(2, 1, 1)
    bottom = fig.add_subplot(2, 1, 2, sharex=top)
    top.errorbar(ts, [100 * r["ACC"] for r in ok], yerr=[_bar(r.get("ACC_std")) for r in ok],
                 marker="o", capsize=3, color="C0", label="validation accuracy")
    best = max(r["ACC"] for r in ok)
    margin = float(record["rule"]["acc_margin"])
    top.axhspan(100 * (best - margin), 100 * best, color="C0", alpha=0.1,
                label=f"within {100 * margin:g} pp of the best")
    for key, style, color in ((metric, "-", "C3"), (other, "--", "C1")):
        label = f"{key} ({'paper' if key == PAPER_FPR_KEY else 'pytorch-ood'})"
        if key == metric:
            label += ", minimised"
        bottom.errorbar(ts, [100 * r[key] for r in ok],
                        yerr=[_bar(r.get(f"{key}_std")) for r in ok], marker="o",
                        linestyle=style, capsize=3, color=color, label=label)
    kept = [r for r in ok if r.get("eligible")]
    bottom.scatter([r["t"] for r in kept], [100 * r[metric] for r in kept], s=60,
                   facecolors="none", edgecolors="k", zorder=3, label="within the accuracy margin")
    chosen = record["chosen_t"]
    for ax in (top, bottom):
        ax.axvline(chosen, color="k", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    top.set_ylabel("val accuracy (%)")
    top.tick_params(labelbottom=False)
    bottom.set_ylabel("val FPR95 vs Gaussian noise (%)")
    bottom.set_xlabel(f"temperature t (chosen: {chosen:g})")
    bottom.set_xticks(ts)
    bottom.set_xticklabels([f"{t:g}" for t in ts])
    bottom.minorticks_off()
    top.set_title(title or (
        f"LogitNorm t on {record.get('dataset', '?')} / {record.get('arch', '?')} "
        f"(MSP, {plural(len(record.get('seeds', [])), 'seed')}): t = {chosen:g}"
    ))
    return _save(fig, out)
