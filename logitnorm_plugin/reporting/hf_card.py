"""A trained model as a Hugging Face model repository folder.

``logitnorm-ood export --model RUN --hf-card DIR [--results RESULTS]`` writes into ``DIR``:

- ``README.md``: the model card. Its metadata and ``model-index`` are built by
  ``huggingface_hub`` (:class:`~huggingface_hub.ModelCardData` with one
  :class:`~huggingface_hub.EvalResult` per value; nothing hand-written in YAML): the training
  run's ID accuracy, and with ``--results`` every stored value of this model (found in the store
  by its weights' fingerprint): per benchmark, detector and OOD set the AUROC, FPR at 95% TPR in
  both conventions under their own names (pytorch-ood's ``FPR95TPR``, OOD positive; the
  LogitNorm paper's ``FPR95-ID95``, ID positive) and the ID accuracy. Values are fractions in
  [0, 1] exactly as stored. ``huggingface_hub.ModelCard.load`` reads them back.
- the weights under a file name that ``torch.hub`` checks on download
  (``<key with - for />-<first 8 hex digits of the SHA-256>.pt``);
- ``model.json`` (the run's model card) and ``provenance.json`` (the training run's provenance
  and, with ``--results``, the evaluation's).

Requires the ``hub`` extra (``pip install logitnorm-plugin[hub]``).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.atomic import atomic_write, write_text
from logitnorm_plugin._core.conventions import PAPER_FPR_KEY
from logitnorm_plugin._core.errors import ModelIntegrityError, UserError
from logitnorm_plugin._core.escape import md_text
from logitnorm_plugin.evaluation.specs import resolve_model
from logitnorm_plugin.reporting import model_entry as upstream
from logitnorm_plugin.store.results import open_results
from logitnorm_plugin.training import runs

__all__ = ["CARD_METRICS", "hf_weights_name", "model_index", "write_hf_card"]

#: store metric -> (model-index ``type``, ``name``) of the exported values
CARD_METRICS = {
    "AUROC": ("auroc", "AUROC"),
    "FPR95TPR": ("fpr95tpr", "FPR95TPR (pytorch-ood: OOD positive, FPR at 95% TPR)"),
    PAPER_FPR_KEY: ("fpr95-id95", "FPR95-ID95 (LogitNorm paper: ID positive, share of OOD "
                                  "accepted at 95% ID TPR)"),
}

_TASK = "image-classification"  # a Hub task id, so the Hub parses the model-index
_OOD_TASK_NAME = "Out-of-distribution detection"


def _hub():
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - the [hub] extra is not installed
        raise UserError(
            "--hf-card needs huggingface_hub: pip install 'logitnorm-plugin[hub]'"
        ) from exc
    return huggingface_hub


def hf_weights_name(key: str, sha256: str) -> str:
    """``<key, / as ->-<sha256[:8]>.pt``: the hash prefix after the last ``-`` is what
    ``torch.hub`` compares with the file's SHA-256 (``check_hash=True``); a key whose parts
    would be read as the hash instead falls back to ``model-<sha256[:8]>.pt``."""
    import torch.hub

    name = f"{key.replace('/', '-')}-{sha256[:8]}.pt"
    found = torch.hub.HASH_REGEX.search(name)
    if found is None or found.group(1) != sha256[:8]:
        name = f"model-{sha256[:8]}.pt"
    return name


def _store_values(results, run_dir) -> tuple[list[dict], dict]:
    """The stored rows of this run's model (by its weights' fingerprint) and the store's
    provenance summary of them."""

    model_id = resolve_model(str(run_dir)).model_id()
    with open_results(results) as store:
        rows = store.rows(model_ids=[model_id], with_ids=True)
        if not rows:
            raise UserError(
                f"{results} holds no results of the model in {run_dir} (weights fingerprint "
                f"{model_id}); bench it with `logitnorm-ood bench --models {run_dir}` first"
            )
        summary = store.provenance_summary(rows)
    return rows, summary


def model_index(card: Mapping[str, Any], rows: list[dict] | None = None) -> list:
    """The :class:`~huggingface_hub.EvalResult` list of a run's card and its stored rows."""
    hub = _hub()
    results = []
    accuracy = (card.get("metrics") or {}).get("final_accuracy")
    if accuracy is not None:
        results.append(hub.EvalResult(
            task_type=_TASK, task_name="Image classification (training run)",
            dataset_type=str(card.get("dataset")), dataset_name=f"{card.get('dataset')} test",
            dataset_split="test", metric_type="accuracy", metric_value=float(accuracy),
            metric_name="Accuracy (kept epoch, training run)",
        ))
    seen_acc = set()
    for r in rows or []:
        benchmark, protocol = str(r.get("Benchmark")), str(r.get("Protocol"))
        detector = str(r["Detector"])
        args = {"benchmark": benchmark, "protocol": protocol, "detector": detector,
                "group": r.get("Group")}
        for metric, (mtype, mname) in CARD_METRICS.items():
            value = r.get(metric)
            if value is None or not math.isfinite(float(value)):
                continue  # a model-index value is a number
            results.append(hub.EvalResult(
                task_type=_TASK, task_name=f"{_OOD_TASK_NAME} ({detector})",
                dataset_type=str(r["Dataset"]), dataset_name=f"{r['Dataset']} (OOD) vs "
                f"{card.get('dataset')} (ID), {benchmark}", dataset_config=benchmark,
                dataset_split="test", metric_type=mtype, metric_value=float(value),
                metric_name=mname, metric_config=detector, metric_args=args,
            ))
        if r.get("ACC") is not None and (benchmark, protocol) not in seen_acc:
            seen_acc.add((benchmark, protocol))
            results.append(hub.EvalResult(
                task_type=_TASK, task_name="Image classification (ID test set)",
                dataset_type=str(card.get("dataset")),
                dataset_name=f"{card.get('dataset')} (ID), {benchmark}",
                dataset_config=benchmark, dataset_split="test", metric_type="accuracy",
                metric_value=float(r["ACC"]), metric_name="ID accuracy",
                metric_args={"benchmark": benchmark, "protocol": protocol},
            ))
    return results


def _body(card: Mapping[str, Any], key: str, weights_name: str, rows) -> str:
    lines = [
        f"# {key}",
        "",
        md_text(card.get("description") or ""),  # the card's text is data (_core.escape)
        "",
        md_text(f"Training objective: `{card.get('loss')}`"
                + (f" (t={card['t']:g})" if card.get("t") is not None else "")
                + f", recipe `{card.get('recipe')}`, seed `{card.get('seed')}`. Architecture "
                f"`{card.get('arch_class')}` with `{json.dumps(card.get('arch_kwargs'))}`."),
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "state = torch.hub.load_state_dict_from_url(",
        f'    "https://huggingface.co/<user>/<repository>/resolve/main/{weights_name}",',
        "    check_hash=True,",
        ")",
        "```",
        "",
        f"`{weights_name}` ends in the first hex digits of its SHA-256 "
        f"(`{card.get('sha256')}`), which `torch.hub` checks.",
        "",
        "## Evaluation",
        "",
        "The card's `model-index` metadata holds the values"
        + (" of the training run and of `logitnorm-ood bench` (fractions in [0, 1]; "
           "FPR95TPR treats OOD as positive, FPR95-ID95 is the LogitNorm paper's FPR95)."
           if rows else " of the training run."),
        "",
        "## Provenance",
        "",
        "See `provenance.json` (package versions, git commit, device, dates) and `model.json` "
        "(the training run's model card).",
    ]
    return "\n".join(lines) + "\n"


def write_hf_card(run_dir, out_dir, results=None, key: str | None = None) -> dict[str, Path]:
    """Write a Hugging Face model repository folder for a trainer run.

    :param run_dir: a run folder written by ``logitnorm-ood train``
    :param out_dir: the folder to write (created)
    :param results: a results folder of ``logitnorm-ood bench`` holding this model's results
    :param key: the model's name (default: its pytorch-ood registry key ``arch/dataset/loss/seed``)
    :return: ``readme``, ``weights``, ``card`` and ``provenance`` -> written path
    :raises ModelIntegrityError: if the weights do not match the run's card
    :raises UserError: without ``huggingface_hub``, or if ``results`` holds nothing of this model
    """

    hub = _hub()
    weights, card = runs.verified_weights(run_dir)
    runs.load_trained(run_dir)  # export only what loads (closed table, shapes, card values)
    key = upstream.check_key(key) if key else upstream.upstream_key(card)
    rows, evaluation = _store_values(results, run_dir) if results is not None else (None, None)
    data = hub.ModelCardData(
        model_name=key,
        library_name="pytorch",
        tags=["pytorch-ood", "logitnorm-plugin", "out-of-distribution-detection",
              str(card.get("loss"))],
        eval_results=model_index(card, rows),
    )
    out = Path(out_dir)
    name = hf_weights_name(key, card["sha256"])
    readme = hub.ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(card, key, name, rows)}")
    written = {"readme": write_text(out / "README.md", str(readme))}
    with open(weights, "rb") as src:
        written["weights"] = atomic_write(out / name, lambda f: shutil.copyfileobj(src, f))
    if runs.sha256_file(written["weights"]) != card["sha256"]:
        raise ModelIntegrityError(f"copy of {weights} does not match its SHA-256")
    written["card"] = write_text(out / runs.CARD_FILE,
                                 json.dumps(runs.read_card(run_dir), indent=2) + "\n")
    written["provenance"] = write_text(out / "provenance.json", json.dumps({
        "training": card.get("provenance"),
        "evaluation": evaluation,
        "weights": {"file": name, "sha256": card["sha256"]},
    }, indent=2, default=repr) + "\n")
    return written
