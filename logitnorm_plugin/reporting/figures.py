"""The figures of ``logitnorm-ood report``, and the run folders they are drawn from.

Each function takes one benchmark configuration of the result store as
:mod:`logitnorm_plugin.reporting.report` indexes it (its rows, models, detectors, OOD names and
model ids) and writes PNGs with :mod:`logitnorm_plugin.plots`: score histograms from the per-sample
scores kept in the store, reliability diagrams from ID logits recomputed with the stored models,
logit-norm curves from the training runs. What cannot be drawn is explained in ``notes``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from logitnorm_plugin._core.conventions import ID_DATASET
from logitnorm_plugin._core.digests import state_dict_sha256
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.path_errors import path_error_message
from logitnorm_plugin._core.tables import is_missing, markdown_table, mean_std
from logitnorm_plugin.evaluation.specs import resolve_benchmark, resolve_model
from logitnorm_plugin.metrics import expected_calibration_error
from logitnorm_plugin.plots import (
    plot_logit_norms,
    reliability_diagram,
    run_label,
    score_histograms,
)
from logitnorm_plugin.registry.hub import registry_weights_path
from logitnorm_plugin.training.runs import load_trained, read_config, read_metrics

__all__ = ["find_runs", "histograms", "logit_norms", "match_runs", "reliability"]

_log = logging.getLogger(__name__)


def _skip(notes: list[str], text: str) -> None:
    """A run folder left out of the report: a note in it, and a warning now."""
    notes.append(text)
    _log.warning("%s", text)


def find_runs(results_dir, extra: Sequence = (), notes: list[str] | None = None) -> list[Path]:
    """Trainer run folders (holding ``model.json``) under ``RESULTS_DIR/runs`` and ``extra``
    (each a run folder or a folder of run folders); an ``extra`` that is neither is skipped
    with a note in ``notes`` and a warning."""
    found: dict[Path, None] = {}
    bases = [Path(results_dir) / "runs", *(Path(e) for e in extra)]
    for i, base in enumerate(bases):
        if (base / "model.json").is_file():
            found.setdefault(base.resolve(), None)
        elif base.is_dir():
            for child in sorted(base.iterdir()):
                if (child / "model.json").is_file():
                    found.setdefault(child.resolve(), None)
        elif i and notes is not None:
            _skip(notes, f"run folder {str(base)!r} skipped: no such folder")
    return list(found)


def match_runs(runs: Sequence[Path], model_ids: set[str], notes: list[str]) -> dict[str, Path]:
    """Stored model id -> run folder, by the fingerprint of the run's weights. A folder whose
    model card, weights, ``config.json`` or ``metrics.jsonl`` cannot be read is skipped with a
    note and a warning naming it and why; the others are reported."""

    matched = {}
    for run in runs:
        try:
            model = load_trained(run)
            read_config(run), read_metrics(run)  # what the figures read of it
        except (UserError, OSError) as exc:
            if not isinstance(exc, UserError) and path_error_message(exc) is None:
                raise  # not the folder's fault: a bug to report
            _skip(notes, f"run folder {run} skipped: {path_error_message(exc) or exc}")
            continue
        model_id = "weights:" + state_dict_sha256(model)
        if model_id in model_ids:
            matched[model_id] = run
    return matched


def histograms(store, cfg, out: Path, notes: list[str]) -> list[tuple[str, Path]]:

    detector_ids = {(r["model_id"], r["Detector"]): r["detector_id"] for r in cfg.rows}
    figures = []
    for det in cfg.detectors:
        panels = {}
        for m in cfg.models:
            for model_id in cfg.model_ids(m):
                det_id = detector_ids.get((model_id, det))
                if det_id is None:
                    continue
                id_scores = store.scores(model_id, cfg.cfg_id, det_id, ID_DATASET)
                if id_scores is None:
                    continue
                sets = {"ID": id_scores.numpy()}
                for name in cfg.ood_names:
                    values = store.scores(model_id, cfg.cfg_id, det_id, name)
                    if values is not None:
                        sets[name] = values.numpy()
                if len(sets) > 1:
                    seed = next((r.get("Seed") for r in cfg.rows if r["model_id"] == model_id),
                                None)
                    label = cfg.label(m) + (f", seed {seed}" if seed is not None else "")
                    panels[label] = sets
                    break
        if panels:
            path = out / f"hist_{_safe(cfg.cfg_id)}_{_safe(det)}.png"
            score_histograms(panels, path,
                             title=f"{cfg.benchmark}: {det} outlier scores, ID vs OOD")
            figures.append((det, path))
    if not figures:
        notes.append(
            f"{cfg.benchmark}: no score histograms: the store keeps no per-sample scores for "
            "this configuration (`logitnorm-ood bench` keeps them for the first seed of each "
            "objective)"
        )
    return figures


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))


def _registry_model(model_id: str):
    """A pytorch-ood registry model whose weights are already in the torch hub cache."""
    if not model_id.startswith("pytorch-ood:"):
        return None
    key = model_id.split(":")[1]
    from pytorch_ood.model import registry


    try:
        entry = registry.get_model_info(key)
    except ValueError:
        return None
    return key if registry_weights_path(entry).is_file() else None


def _id_logits(model, dataset, device: str, batch_size: int):
    import torch
    from torch.utils.data import DataLoader

    logits, labels = [], []
    model = model.to(device).eval()
    if hasattr(dataset, "batches"):
        batches = dataset.batches(batch_size, device=device)
    else:
        batches = ((x.to(device), y) for x, y in DataLoader(dataset, batch_size=batch_size))
    with torch.no_grad():
        for x, y in batches:
            logits.append(model(x).float().cpu())
            labels.append(torch.as_tensor(y).reshape(-1).cpu())
    return torch.cat(logits), torch.cat(labels)


def reliability(cfg, runs: Mapping[str, Path], out: Path, data_root, device: str,
                 batch_size: int, notes: list[str]) -> tuple[Path | None, list[str]]:
    """Reliability diagram of the first seed of each objective, from ID logits recomputed with
    the stored model on the benchmark's ID test set; the recomputed ECE is checked against the
    stored one."""

    chosen = []
    for m in cfg.models:
        for model_id in cfg.model_ids(m):
            source = runs.get(model_id) or _registry_model(model_id)
            if source is not None:
                chosen.append((m, model_id, source))
                break
    if not chosen:
        notes.append(
            f"{cfg.benchmark}: no reliability diagram: none of the stored models was found as a "
            "run folder (pass them with --runs) or in the torch hub cache"
        )
        return None, []
    try:
        bench = resolve_benchmark(
            cfg.benchmark, data_root=data_root, download=False,
            seed=cfg.config.get("seed", 0), **(cfg.config.get("kwargs") or {}),
        )
    except (UserError, TypeError) as exc:
        notes.append(f"{cfg.benchmark}: no reliability diagram: the benchmark's ID test set "
                     f"is not available ({exc})")
        return None, []
    curves, lines = {}, []
    for m, model_id, source in chosen:
        spec = resolve_model(str(source))
        id_set = bench.sets(spec.mean, spec.std)[0]
        logits, labels = _id_logits(spec.get_model(), id_set, device, batch_size)
        ece = expected_calibration_error(logits, labels)
        stored = next((r.get("ECE") for r in cfg.rows if r["model_id"] == model_id), None)
        seed = next((r.get("Seed") for r in cfg.rows if r["model_id"] == model_id), None)
        label = cfg.label(m) + (f", seed {seed}" if seed is not None else "")
        curves[label] = (logits, labels)
        check = ""
        if not is_missing(stored):
            check = ("matches the stored ECE" if abs(ece - stored) <= 1e-4 else
                     f"DIFFERS from the stored ECE {100 * stored:.2f}% (other device or data?)")
        lines.append(f"{label}: ECE {100 * ece:.2f}% recomputed from {len(labels)} ID test "
                     f"images, {check}".rstrip(", "))
    path = out / f"reliability_{_safe(cfg.cfg_id)}.png"
    reliability_diagram(curves, path, title=f"{cfg.benchmark}: reliability on the ID test set")
    return path, lines


def logit_norms(cfg, runs: Mapping[str, Path], out: Path,
                 notes: list[str]) -> tuple[Path | None, str | None]:
    ordered = [(m, runs[i]) for m in cfg.models for i in cfg.model_ids(m) if i in runs]
    if not ordered:
        notes.append(f"{cfg.benchmark}: no logit-norm curves: no run folder of the stored "
                     "models was found (pass them with --runs)")
        return None, None
    path = out / f"logit_norm_{_safe(cfg.cfg_id)}.png"
    plot_logit_norms([read_metrics(r) for _, r in ordered], path,
                     labels=[run_label(read_config(r)) for _, r in ordered],
                     title=f"{cfg.benchmark}: mean logit L2 norm on the ID test set")
    rows = []
    for m in cfg.models:
        records = [read_metrics(r) for mm, r in ordered if mm == m]
        records = [r for r in records if r]
        if not records:
            continue
        first = [r[0]["logit_norm_mean"] for r in records]
        last = [r[-1]["logit_norm_mean"] for r in records]
        epochs = sorted({len(r) for r in records})
        rows.append([cfg.label(m), len(records), ", ".join(map(str, epochs)),
                     _mean_std_text(first), _mean_std_text(last)])
    # markdown_table escapes the labels, which come from files (_core.escape)
    return path, markdown_table(["Model", "Runs", "Epochs", "first epoch", "last epoch"], rows)


def _mean_std_text(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {std:.2f}"


