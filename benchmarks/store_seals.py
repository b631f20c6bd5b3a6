"""What checking the result store's seals costs: time to read a store of N cells and their
per-sample scores, as ``export`` and ``report`` read it.

A benchmark, not a test. Builds a real store with the package (``--models`` models x
``--detectors`` detectors x ``--datasets`` OOD sets, one run, one configuration, a score vector
of ``--samples`` float32 values per (model, detector, set) including ID), then times, best of
``--repeat``:

- ``open+rows``: open the folder as ``export`` does and read every cell, the configuration
  and the provenance summary;
- ``aggregate``: the configuration's table (SQL GROUP BY over checked cells);
- ``scores``: read every score vector (``ResultStore.scores``), and the same blobs read with
  a bare ``SELECT data`` (no seal) for comparison;
- ``force open``: ``ResultStore(path, replace_incompatible=True)`` (every seal checked);
- ``first open``: sealing a store written before the records were sealed (seal columns of
  configs/runs/scores dropped), where this version has them.

Runs on any version of the package with the same API (to compare before and after a change).
Prints one JSON object.

Usage::

    python benchmarks/store_seals.py --models 10 --detectors 5 --datasets 6 --samples 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from logitnorm_plugin._core import provenance
from logitnorm_plugin.store.results import STORE_FILE, ResultStore, open_results


def build(path: Path, models: int, detectors: int, datasets: int, samples: int) -> int:
    names = [f"ood{i}" for i in range(datasets)]
    generator = torch.Generator().manual_seed(0)
    with ResultStore(path) as store:
        store.register_config("cfg", {"benchmark": "toy", "protocol": "full",
                                      "ood_names": names, "groups": {"near": names[:1]}})
        run = store.start_run(provenance.collect(device="cpu"))
        for m in range(models):
            for d in range(detectors):
                for i, name in enumerate(names):
                    store.put({"Model": f"m{m}", "Loss": "logitnorm", "Seed": m,
                               "Detector": f"det{d}", "Dataset": name, "Benchmark": "toy",
                               "Protocol": "full", "AUROC": 0.5 + i / 100, "FPR95TPR": 0.4,
                               "AUPR-IN": 0.6, "AUPR-OUT": 0.7, "ACC": 0.9, "ECE": 0.02},
                              model_id=f"w{m}", config_id="cfg", detector_id=f"det{d}",
                              run_id=run)
                for name in ("ID", *names):
                    store.put_scores(f"w{m}", "cfg", f"det{d}", name,
                                     torch.rand(samples, generator=generator))
    return models * detectors * datasets


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--detectors", type=int, default=5)
    parser.add_argument("--datasets", type=int, default=6)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="store_seals."))
    try:
        path = folder / STORE_FILE
        start = time.perf_counter()
        cells = build(path, args.models, args.detectors, args.datasets, args.samples)
        out = {"cells": cells, "score_vectors": args.models * args.detectors
               * (args.datasets + 1), "samples": args.samples,
               "build_s": round(time.perf_counter() - start, 3)}
        keys = sqlite3.connect(path).execute(
            "SELECT model_id, config_id, detector_id, dataset FROM scores").fetchall()

        def read_rows():
            with open_results(folder) as store:
                store.rows(with_ids=True)
                store.config("cfg")
                store.provenance_summary()

        def read_scores():
            with ResultStore(path) as store:
                for key in keys:
                    store.scores(*key)

        def bare_scores():
            db = sqlite3.connect(path)
            for key in keys:
                (data,) = db.execute("SELECT data FROM scores WHERE model_id = ? AND "
                                     "config_id = ? AND detector_id = ? AND dataset = ?",
                                     key).fetchone()
                torch.frombuffer(bytearray(data), dtype=torch.float32)
            db.close()

        def aggregate():
            with ResultStore(path) as store:
                store.aggregate("cfg")

        def force_open():
            ResultStore(path, replace_incompatible=True).close()

        out["open+rows_s"] = round(best(read_rows, args.repeat), 4)
        out["aggregate_s"] = round(best(aggregate, args.repeat), 4)
        out["scores_s"] = round(best(read_scores, args.repeat), 4)
        out["bare_select_scores_s"] = round(best(bare_scores, args.repeat), 4)
        out["force_open_s"] = round(best(force_open, args.repeat), 4)
        db = sqlite3.connect(path)
        columns = {r[1] for r in db.execute("PRAGMA table_info(scores)")}
        if "seal" in columns:  # a version that seals the records: their first sealing
            times = []
            for _ in range(args.repeat):
                copy = folder / "old" / STORE_FILE
                copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(path, copy)
                with sqlite3.connect(copy) as old:
                    for table in ("configs", "runs", "scores"):
                        old.execute(f"ALTER TABLE {table} DROP COLUMN seal")
                    old.execute("DELETE FROM meta WHERE key = 'records_sealed'")
                old.close()
                start = time.perf_counter()
                ResultStore(copy).close()
                times.append(time.perf_counter() - start)
                shutil.rmtree(copy.parent)
            out["first_open_sealing_s"] = round(min(times), 4)
        db.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
