"""The digits grid inline, through ``--executor slurm`` and through ``--executor local``:
wall times, their ratios to inline, and whether every cell is the inline one.

A benchmark, not a test. Each executor runs the same ``logitnorm-ood bench`` command (the
default digits grid: cross_entropy and logitnorm x seeds 0 1 2 x msp odin energy maxlogit
logitnorm, CPU) in a fresh output folder, timed from the command's start to its exit (models
trained, cells evaluated and merged, tables written). Slurm needs ``sbatch`` on PATH (a real
cluster; ``--start-local-slurm`` starts the tests' single-node one, as root, and stops it
after). Writes ``grid_overhead.json`` into ``--out``.

Usage::

    python benchmarks/grid_overhead.py --start-local-slurm           # default grid
    python benchmarks/grid_overhead.py --epochs 1 --seeds 0 --executors slurm
    python benchmarks/grid_overhead.py --device cuda --executors local --jobs-per-gpu 1 2 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _local_slurm():
    spec = importlib.util.spec_from_file_location("slurm_cluster",
                                                  REPO / "tests" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(args, executor: str, out: Path, jobs_per_gpu: int | None = None
           ) -> tuple[float, dict]:
    script = Path(sys.executable).parent / "logitnorm-ood"
    command = [str(script), "bench", "--out", str(out), "--no-progress", "--no-plots",
               "--device", args.device, "--executor", executor]
    if jobs_per_gpu is not None:
        command += ["--jobs-per-gpu", str(jobs_per_gpu)]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    if args.seeds:
        command += ["--seeds", *args.seeds]
    if executor == "slurm" and args.partition:
        command += ["--slurm-partition", args.partition]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{executor}: exit {done.returncode}\n{done.stderr[-3000:]}")
    rows = json.loads((out / "results.json").read_text())["rows"]
    return seconds, {(r["Model"], r["Detector"], r["Dataset"]): r for r in rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", nargs="+", default=["slurm", "local"],
                        choices=("slurm", "local"))
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seeds", nargs="+", default=None, help="default: 0 1 2")
    parser.add_argument("--partition", default=None, help="Slurm partition")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--jobs-per-gpu", type=int, nargs="+", default=None, metavar="K",
                        help="on a GPU: run the local pool once per K (--jobs-per-gpu K)")
    parser.add_argument("--start-local-slurm", action="store_true",
                        help="start the tests' single-node Slurm for the run (root)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    cluster = None
    if args.start_local_slurm and "slurm" in args.executors:
        cluster = _local_slurm().LocalSlurm(Path(tempfile.mkdtemp(prefix="slurm-")))
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
    work = Path(tempfile.mkdtemp(prefix="grid-overhead-"))
    try:
        inline_s, reference = _bench(args, "inline", work / "inline")
        record = {"inline_s": inline_s, "cells": len(reference), "cpus": os.cpu_count(),
                  "epochs": args.epochs, "seeds": args.seeds, "executors": {}}
        print(f"inline: {inline_s:.1f} s, {len(reference)} cells")
        runs = [(e, None) for e in args.executors if e != "local" or not args.jobs_per_gpu]
        if "local" in args.executors and args.jobs_per_gpu:
            runs += [("local", k) for k in args.jobs_per_gpu]
        for executor, k in runs:
            name = executor if k is None else f"local-k{k}"
            seconds, cells = _bench(args, executor, work / name, k)
            same = cells.keys() == reference.keys() and all(
                {k: v for k, v in cells[key].items()} == reference[key] for key in cells)
            record["executors"][name] = {"seconds": seconds, "ratio": seconds / inline_s,
                                         "same_cells": same}
            print(f"{name}: {seconds:.1f} s, {seconds / inline_s:.2f} x inline, "
                  f"cells {'equal to' if same else 'DIFFERENT from'} inline")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid_overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(e["same_cells"] for e in record["executors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
