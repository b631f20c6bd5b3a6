"""``logitnorm-ood bench``: train or load models, evaluate them, store, aggregate, write outputs.

With no arguments it runs the embedded offline default: ``cross_entropy`` and ``logitnorm``
trained on the scikit-learn digits with the ``digits`` recipe for seeds 0, 1, 2, evaluated with
``msp``, ``odin``, ``energy``, ``maxlogit`` and ``logitnorm`` on the ``digits`` benchmark.

Outputs under ``--out`` (default ``results/``):

- ``results.sqlite``: the result store (one row per model x detector x OOD set, committed as
  each cell completes; a rerun of the same command recomputes nothing that is finished);
- ``results.json`` / ``results.csv``: every row, plus (JSON) the aggregate, the provenance and
  the matched published numbers;
- ``table.md``: the table printed on stdout (mean +- std over seeds of the mean over OOD sets)
  and the per-dataset table;
- ``hist_<detector>.png``: ID vs OOD score histograms, cross-entropy beside LogitNorm (first
  seed);
- ``runs/``: the trained models (trainer run folders).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from logitnorm_plugin.atomic import write_json, write_text
from logitnorm_plugin.errors import UserError

__all__ = [
    "DEFAULTS",
    "cli_arguments",
    "cli_main",
    "run",
    "load_published",
    "match_published",
    "format_table",
]

#: the embedded default run
DEFAULTS = {
    "benchmark": "digits",
    "losses": ("cross_entropy", "logitnorm"),
    "detectors": ("msp", "odin", "energy", "maxlogit", "logitnorm"),
    "seeds": (0, 1, 2),
    "out": "results",
    "batch_size": 256,
}

#: markers of the README section that ``--update-readme`` rewrites
README_START = "<!-- logitnorm-ood bench: start -->"
README_END = "<!-- logitnorm-ood bench: end -->"

#: columns of the summary table (mean +- std over seeds of the mean over OOD sets)
TABLE_METRICS = ("AUROC", "FPR95TPR", "FPR95-ID95", "ACC")


def _split(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"] -> ["a", "b", "c"]``: lists may be given with commas or spaces."""
    out = []
    for value in values or ():
        out.extend(v.strip() for v in str(value).split(",") if v.strip())
    return out


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", default=DEFAULTS["benchmark"],
                        help="benchmark name (`logitnorm-ood list benchmarks`); default: digits")
    parser.add_argument("--models", nargs="+", metavar="SPEC",
                        help="evaluate these models instead of training: pytorch-ood registry "
                        "keys (e.g. wrn-40-2/cifar10/logitnorm/s0) or run folders written by "
                        "`logitnorm-ood train`")
    parser.add_argument("--losses", nargs="+", default=None,
                        help="training objectives to train and compare (default: "
                        "cross_entropy logitnorm)")
    parser.add_argument("--detectors", nargs="+", default=None,
                        help="detectors (default: msp odin energy maxlogit logitnorm)")
    parser.add_argument("--seeds", nargs="+", default=None,
                        help="training seeds (default: 0 1 2)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--out", default=DEFAULTS["out"], help="output folder (default: results)")
    parser.add_argument("--data-root", default=None,
                        help="data folder (default: $LOGITNORM_PLUGIN_DATA or "
                        "~/.cache/logitnorm-plugin/data)")
    parser.add_argument("--download", action="store_true",
                        help="download missing datasets (and registry weights of --models)")
    parser.add_argument("--force", action="store_true",
                        help="recompute cells that the store already has")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="evaluation batch size (default: 256)")
    parser.add_argument("--protocol", choices=("full", "paper"), default="full",
                        help="full OOD sets, or the LogitNorm paper's (OOD subsampled to ID/5, "
                        "10 seeded draws averaged)")
    parser.add_argument("--recipe", default=None,
                        help="training recipe (default: the dataset's, e.g. digits)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the recipe's number of epochs")
    parser.add_argument("--t", type=float, default=None,
                        help="LogitNorm temperature for training (default: the recipe's)")
    parser.add_argument("--t-from", metavar="JSON", default=None,
                        help="take the LogitNorm temperature from a recommended_t.json of "
                        "`logitnorm-ood tune-t`")
    parser.add_argument("--threads", default="auto",
                        help="torch CPU threads for the run: a number, or auto (default): 1 for "
                        "the digits benchmark on the CPU (its tiny models gain little from a "
                        "second thread and slow down many-fold when other processes compete "
                        "for the cores), else torch's default")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers for datasets without a tensor fast path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-plots", action="store_true", help="no histogram PNGs")
    parser.add_argument("--update-readme", metavar="PATH", default=None,
                        help="also write the table into PATH between the lines "
                        f"'{README_START}' and '{README_END}'")


def _device(name: str) -> str:
    from logitnorm_plugin.device import resolve_device

    return str(resolve_device(name))


def _threads(value: str) -> int | str:
    if value == "auto":
        return "auto"
    try:
        threads = int(value)
    except ValueError as exc:
        raise UserError(f"--threads takes a number or 'auto', got {value!r}") from exc
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    return threads


def _seeds(values) -> list[int]:
    seeds = []
    for v in _split(values):
        try:
            seeds.append(int(v))
        except ValueError as exc:
            raise UserError(f"--seeds takes integers, got {v!r}") from exc
    return seeds


def cli_main(args) -> int:
    if args.update_readme:
        _readme_section(Path(args.update_readme))  # fail before the run, not after it
    result = run(
        benchmark=args.benchmark,
        models=_split(args.models) or None,
        losses=_split(args.losses) or list(DEFAULTS["losses"]),
        detectors=_split(args.detectors) or list(DEFAULTS["detectors"]),
        seeds=_seeds(args.seeds) if args.seeds else list(DEFAULTS["seeds"]),
        device=_device(args.device),
        out=args.out,
        data_root=args.data_root,
        download=args.download,
        force=args.force,
        batch_size=args.batch_size,
        protocol=args.protocol,
        recipe=args.recipe,
        epochs=args.epochs,
        t=args.t,
        t_from=args.t_from,
        progress=not args.no_progress,
        plots=not args.no_plots,
        num_workers=args.num_workers,
        threads=_threads(args.threads),
        command=_command_line(),
    )
    if args.update_readme:
        update_readme(args.update_readme, result["markdown"])
        print(f"updated {args.update_readme}")
    return 0


def _readme_section(path: Path) -> tuple[str, int, int]:
    if not path.is_file():
        raise UserError(f"--update-readme: {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise UserError(
            f"--update-readme: {str(path)!r} needs the lines {README_START!r} and "
            f"{README_END!r} around the section to rewrite"
        )
    return text, start, end


def update_readme(path: str | Path, markdown: str) -> Path:
    """Replace the text between :data:`README_START` and :data:`README_END` in ``path`` with
    ``markdown`` (the markers stay), atomically.

    :raises UserError: if the file or a marker is missing
    """
    path = Path(path)
    text, start, end = _readme_section(path)
    # one heading level down: the section sits inside the README
    body = "\n".join("#" + line if line.startswith("#") else line
                     for line in markdown.strip().splitlines())
    new = text[: start + len(README_START)] + "\n\n" + body + "\n\n" + text[end:]
    return write_text(path, new)


def _command_line() -> str:
    """The command as typed (for table.md and the provenance record)."""
    import shlex

    if sys.argv and Path(sys.argv[0]).name == "logitnorm-ood":
        return " ".join(["logitnorm-ood", *map(shlex.quote, sys.argv[1:])])
    return "logitnorm-ood bench"


# -- published numbers -------------------------------------------------------------------------


def load_published() -> dict:
    """The published reference numbers shipped with the package (``published_numbers.json``)."""
    text = resources.files("logitnorm_plugin").joinpath("published_numbers.json").read_text(
        encoding="utf-8"
    )
    return json.loads(text)


def _norm(name) -> str | None:
    return None if name is None else str(name).strip().lower().replace("-", "_")


def match_published(
    benchmark: str, protocol: str, arch: str | None, loss: str | None,
    detector: str | None, published: Mapping | None = None,
) -> list[dict]:
    """Published entries for one table row: same benchmark, protocol (or any), architecture,
    training loss and detector (or any, for ID-only numbers). Nothing matches a model whose
    architecture is unknown."""
    published = published if published is not None else load_published()
    if arch is None or loss is None:
        return []
    found = []
    for entry in published.get("entries", []):
        if _norm(entry["benchmark"]) != _norm(benchmark):
            continue
        if entry.get("protocol") is not None and entry["protocol"] != protocol:
            continue
        if _norm(arch) not in {_norm(a) for a in entry.get("arch", [])}:
            continue
        if _norm(entry["loss"]) != _norm(loss):
            continue
        if entry.get("detector") is not None and _norm(entry["detector"]) != _norm(detector):
            continue
        found.append(entry)
    return found


# -- formatting --------------------------------------------------------------------------------


def _pct(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = f"{100 * mean:.2f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {100 * std:.2f}"
    return text


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in body)) if body else len(str(h))
              for i, h in enumerate(header)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])


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
        row += [_pct(entry.get(m), entry.get(f"{m}_std")) for m in metrics]
        row += [_pct(entry.get(c), entry.get(f"{c}_std")) for c in group_cols]
        if has_pub:
            refs = []
            for p in (published or {}).get(tuple(entry.get(b) for b in by), []):
                mark = notes.setdefault(p["source"], len(notes) + 1)
                scope = "" if p["scope"] in ("mean", "id") else f"{p['scope']} "
                refs.append(f"{scope}{p['metric']} {_pct(p['value'], p.get('std'))} [{mark}]")
            row.append("; ".join(refs) or "-")
        body.append(row)
    text = _markdown(header, body)
    if notes:
        sources = sources or {}
        text += "\n\n" + "\n".join(
            f"[{n}] {sources.get(s, s)}" for s, n in sorted(notes.items(), key=lambda x: x[1])
        )
    return text


def format_per_dataset(aggregate: Sequence[Mapping[str, Any]], by: Sequence[str]) -> str:
    """Per-OOD-set table: AUROC and both FPR95s, mean ± std over seeds, in percent."""
    header = [*by, "Dataset", "AUROC", "FPR95TPR", "FPR95-ID95"]
    body = [
        [str(e.get(b)) for b in by] + [str(e.get("Dataset"))]
        + [_pct(e.get(m), e.get(f"{m}_std")) for m in ("AUROC", "FPR95TPR", "FPR95-ID95")]
        for e in aggregate
    ]
    return _markdown(header, body)


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    from logitnorm_plugin.evaluate import ROW_KEYS

    keys = list(ROW_KEYS) + sorted({k for r in rows for k in r} - set(ROW_KEYS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in keys})
    return buffer.getvalue()


# -- models ------------------------------------------------------------------------------------


#: what bench asked the trainer for, kept in each run folder it trains
REQUEST_FILE = "bench_request.json"


def _trained_spec(
    loss: str, seed: int, dataset: str, out: Path, device: str, recipe, epochs, t, t_from,
    data_root, download, progress,
):
    """Train ``loss`` x ``seed`` into ``out/runs/`` and describe the model as a spec.

    A run folder that already holds a finished model trained for the same request is reused
    as it is (nothing is rewritten); an unfinished one is resumed; one trained with other
    settings is an error (:class:`~logitnorm_plugin.errors.ConfigMismatchError`)."""
    from logitnorm_plugin.evaluate import _run_spec
    from logitnorm_plugin.train import CARD_FILE, train

    run_dir = out / "runs" / f"{dataset}-{loss}-s{seed}"
    loss_kwargs = {"t": t} if t is not None and loss == "logitnorm" else None
    t_from = str(Path(t_from).resolve()) if t_from is not None and loss == "logitnorm" else None
    request = {"dataset": dataset, "loss": loss, "loss_kwargs": loss_kwargs, "recipe": recipe,
               "epochs": epochs, "seed": seed, "t_from": t_from}
    if t_from is not None and Path(t_from).is_file():
        # a rewritten recommendation is another request
        request["t_from_sha256"] = hashlib.sha256(Path(t_from).read_bytes()).hexdigest()
    request_path = run_dir / REQUEST_FILE
    reuse = (
        (run_dir / CARD_FILE).is_file()
        and request_path.is_file()
        and json.loads(request_path.read_text(encoding="utf-8")) == request
    )
    if not reuse:
        train(
            dataset=dataset, loss=loss, loss_kwargs=loss_kwargs, recipe=recipe, epochs=epochs,
            seed=seed, device=device, out=run_dir, resume=True, data_root=data_root,
            download=download, progress=progress, t_from=t_from,
        )
        write_json(request_path, request)
    spec = _run_spec(str(run_dir))
    spec.extra["trained_now"] = not reuse
    spec.label = f"{loss}/s{seed}"
    spec.loss, spec.seed = loss, seed
    return spec


# -- the run -----------------------------------------------------------------------------------


def run(
    benchmark: str = DEFAULTS["benchmark"],
    models: Sequence[str] | None = None,
    losses: Sequence[str] = DEFAULTS["losses"],
    detectors: Sequence[str] = DEFAULTS["detectors"],
    seeds: Sequence[int] = DEFAULTS["seeds"],
    device: str = "cpu",
    out: str | Path = DEFAULTS["out"],
    data_root: str | None = None,
    download: bool = False,
    force: bool = False,
    batch_size: int = DEFAULTS["batch_size"],
    protocol: str = "full",
    recipe: str | None = None,
    epochs: int | None = None,
    t: float | None = None,
    t_from: str | None = None,
    progress: bool = True,
    plots: bool = True,
    num_workers: int = 0,
    threads: int | str | None = None,
    command: str | None = None,
    stdout=None,
) -> dict:
    """Run a comparison and write its outputs; what ``logitnorm-ood bench`` does.

    ``threads`` sets torch's CPU threads for the run (restored afterwards): a number, ``"auto"``
    (1 for the digits benchmark on the CPU, else unchanged) or ``None`` (unchanged). The other
    parameters are the command-line options of the same names.

    :return: dict with ``rows``, ``aggregate``, ``table`` and ``markdown`` (the table alone and
        the whole ``table.md``), ``config_id``, ``out``, ``seconds`` and ``plots``
    """
    import torch

    if threads == "auto":
        on_cpu = torch.device(device).type == "cpu"
        threads = 1 if on_cpu and str(benchmark).lower() == "digits" else None
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(
            benchmark, models, losses, detectors, seeds, device, out, data_root, download, force,
            batch_size, protocol, recipe, epochs, t, t_from, progress, plots, num_workers,
            command, stdout,
        )
    finally:
        torch.set_num_threads(previous)


def _run(
    benchmark, models, losses, detectors, seeds, device, out, data_root, download, force,
    batch_size, protocol, recipe, epochs, t, t_from, progress, plots, num_workers, command,
    stdout,
) -> dict:
    from logitnorm_plugin import provenance
    from logitnorm_plugin.evaluate import (
        _parse_detectors,
        config_id,
        evaluate,
        evaluation_config,
        resolve_benchmark,
        resolve_model,
    )
    from logitnorm_plugin.registry import get_loss_class
    from logitnorm_plugin.store import ResultStore

    stdout = stdout or sys.stdout
    start = time.perf_counter()
    out = Path(out)
    # check names and data first: a typo or missing data fails before any training
    requests = _parse_detectors(detectors)
    if not models:
        if not losses or not seeds:
            raise UserError("name at least one loss and one seed (or --models)")
        for loss in losses:
            get_loss_class(loss)
    bench = resolve_benchmark(benchmark, data_root=data_root, download=download, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    dataset = getattr(bench.benchmark, "dataset", None) or bench.name

    if models:
        specs = [resolve_model(m, download=download) for m in models]
    else:
        specs = [
            _trained_spec(loss, seed, dataset, out, device, recipe, epochs, t, t_from,
                          data_root, download, progress)
            for loss in losses for seed in seeds
        ]
    trained_now = sum(bool(s.extra.get("trained_now")) for s in specs)

    first_seed = {}
    for s in specs:
        first_seed.setdefault(s.loss, s.label)
    record = provenance.collect(
        device=device,
        config={
            "command": command, "benchmark": bench.name, "protocol": protocol,
            "models": [s.label for s in specs], "detectors": list(detectors),
            "batch_size": batch_size, "torch_threads": _torch_threads(),
        },
    )
    run_config = evaluation_config(bench, protocol)
    cfg = config_id(run_config)
    model_ids = [s.model_id() for s in specs]
    with ResultStore(out / "results.sqlite") as store:
        cells_before = 0 if force else sum(len(store.cells(m, cfg)) for m in model_ids)
        rows = evaluate(
            specs, bench, detectors=detectors, device=device, batch_size=batch_size,
            store=store, force=force, progress=progress, protocol=protocol,
            keep_scores=(lambda s: first_seed.get(s.loss) == s.label) if plots else False,
            provenance=record, num_workers=num_workers,
        )
        archs = {s.arch for s in specs}
        by = ("Arch", "Loss", "Detector") if len(archs) > 1 else ("Loss", "Detector")
        names = [r.name for r in requests]
        summary = _ordered(
            store.aggregate(cfg, model_ids=model_ids, by=by, detectors=names), specs, names, by
        )
        per_dataset = _ordered(
            store.aggregate(cfg, model_ids=model_ids, by=by, per_dataset=True, detectors=names),
            specs, names, by, bench.ood_names,
        )
        hist = _histograms(store, specs, detectors, bench, cfg, out, first_seed) if plots else []

    published = load_published()
    arch_of = {s.loss: s.arch for s in specs}
    matched = {}
    for entry in summary:
        arch = entry.get("Arch", arch_of.get(entry.get("Loss")) if len(archs) == 1 else None)
        matched[tuple(entry.get(b) for b in by)] = match_published(
            bench.name, protocol, arch, entry.get("Loss"), entry.get("Detector"), published
        )
    groups = list(bench.groups)
    table = format_table(summary, by, groups, matched, published.get("sources"))
    seconds = time.perf_counter() - start
    title = (
        f"Benchmark `{bench.name}` (protocol {protocol}), {len(specs)} models, "
        f"detectors {', '.join(detectors)}; values in %, mean ± std over seeds of the mean "
        f"over {len(bench.ood_names)} OOD sets ({', '.join(bench.ood_names)}). FPR95TPR: "
        "pytorch-ood's (OOD positive, ID flagged at 95% OOD detected); FPR95-ID95: the "
        "LogitNorm paper's (OOD accepted at 95% ID kept). ACC: ID test accuracy."
    )
    temperatures = sorted({s.t for s in specs if s.loss == "logitnorm" and s.t is not None})
    if temperatures:
        title += " LogitNorm models trained with t = " + ", ".join(f"{t:g}" for t in temperatures)
        title += "."
    md = "\n\n".join([
        f"# logitnorm-ood bench: {bench.name}",
        title,
        table,
        "## Per OOD set",
        format_per_dataset(per_dataset, by),
        f"Command: `{command or 'logitnorm-ood bench'}`; device {provenance.device_name(device)}"
        f", torch threads: {_torch_threads()}; run time {seconds:.1f} s after interpreter "
        "start-up; "
        + (f"{len(specs)} models given with --models" if models else
           f"{trained_now} of {len(specs)} models trained in this run, "
           f"{len(specs) - trained_now} reused from runs/")
        + f"; {len(rows) - cells_before} of {len(rows)} cells computed in this run, the "
        "others read from results.sqlite.",
    ]) + "\n"
    print(title + "\n\n" + table, file=stdout)
    write_text(out / "table.md", md)
    write_text(out / "results.csv", _csv(rows))
    write_json(out / "results.json", {
        "benchmark": bench.name,
        "config_id": cfg,
        "config": run_config,
        "provenance": record,
        "rows": rows,
        "aggregate": summary,
        "aggregate_per_dataset": per_dataset,
        "published": [p for v in matched.values() for p in v],
        "plots": [str(p.name) for p in hist],
        "seconds": seconds,
    }, default=repr)
    print(f"\nwrote {out}/ (results.sqlite, results.json, results.csv, table.md"
          + (", " + ", ".join(p.name for p in hist) if hist else "")
          + f") in {seconds:.1f} s", file=stdout)
    return {"rows": rows, "aggregate": summary, "table": table, "markdown": md,
            "config_id": cfg, "out": out, "seconds": seconds, "plots": hist}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _ordered(entries, specs, detectors, by, datasets=()):
    """Aggregate rows in the order asked for: losses (or archs) as the models came, detectors
    as named, OOD sets as the benchmark lists them."""
    first = {}
    for i, spec in enumerate(specs):
        first.setdefault(("Arch", spec.arch), i)
        first.setdefault(("Loss", spec.loss), i)
    dataset_index = {d: i for i, d in enumerate(datasets)}

    def key(entry):
        parts = [first.get((b, entry.get(b)), len(specs)) for b in by if b in ("Arch", "Loss")]
        det = entry.get("Detector")
        parts.append(detectors.index(det) if det in detectors else len(detectors))
        parts.append(dataset_index.get(entry.get("Dataset"), 0))
        return parts

    return sorted(entries, key=key)


def _histograms(store, specs, detectors, bench, cfg, out: Path, first_seed) -> list[Path]:
    """One PNG per detector: ID vs OOD scores of the first seed of each loss, side by side."""
    try:
        from logitnorm_plugin.plots import score_histograms
    except ImportError:  # plots module not available: no figures, results are unaffected
        return []
    from logitnorm_plugin.evaluate import _auto_kwargs, _parse_detectors

    chosen = [s for s in specs if first_seed.get(s.loss) == s.label]
    if not chosen:
        return []
    paths = []
    for request in _parse_detectors(detectors):
        panels = {}
        for spec in chosen:
            std = spec.std if spec.std is not None else bench.std
            key = request.key(_auto_kwargs(request, spec, std))
            sets = {}
            for dataset in ["ID", *bench.ood_names]:
                values = store.scores(spec.model_id(), cfg, key, dataset)
                if values is not None:
                    sets[dataset] = values.numpy()
            if "ID" in sets and len(sets) > 1:
                panels[spec.label] = sets
        if panels:
            path = out / f"hist_{request.name}.png"
            score_histograms(panels, path, title=f"{bench.name}: {request.name} outlier scores")
            paths.append(path)
    return paths
