"""K concurrent trainings on one device: the aggregate training throughput at K = 1, 2, 4.

A benchmark, not a test. For each K it starts K processes, each our training step
(:class:`logitnorm_plugin.training.step.TrainStep` through ``benchmarks/train_throughput.py``'s
``OurLoop``: data on the device, augmentation there, the device's fast-path defaults) on
CIFAR-shaped synthetic data with WRN-40-2 at batch 128; every process warms up (compilation
included), waits until all K are ready, then runs the same number of timed steps. The aggregate
rate is all images stepped over the span from the first start to the last end; the speed-up
is that rate over K = 1's. This is what ``bench --executor local --jobs-per-gpu K`` puts on one
GPU; the figures decide its default (``--jobs-per-gpu 1`` until a GPU measurement says more).

Usage::

    python benchmarks/concurrent_training.py --device cuda               # K = 1 2 4, WRN-40-2
    python benchmarks/concurrent_training.py --device cpu --ks 1 2 --steps 2 --arch-arg depth=10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args) -> int:
    """One training process: warm up, say ready, wait for the start, time the steps."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from train_throughput import OurLoop

    from logitnorm_plugin import create_loss
    from logitnorm_plugin.data import dataset_meta
    from logitnorm_plugin.registry.architectures import build_model

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    meta = dataset_meta("cifar10")
    n = args.batch_size * 16
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, size=n).astype(np.int64))
    arch_kwargs = {k: int(v) for k, v in (a.split("=", 1) for a in args.arch_arg)}
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, in_channels=3, **arch_kwargs).to(device)
    loop_args = argparse.Namespace(batch_size=args.batch_size, amp=None, compile=None,
                                   channels_last=None, workers=0)
    loop = OurLoop(model, create_loss("logitnorm", t=0.04), images, labels, meta["mean"],
                   meta["std"], device, loop_args)
    loop.run(args.warmup)
    folder = Path(args.sync)
    (folder / f"ready-{os.getpid()}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    start = time.time()
    seconds = loop.run(args.steps)
    print(json.dumps({"start": start, "end": start + seconds,
                      "images": args.steps * args.batch_size}), flush=True)
    return 0


def run_k(args, k: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"concurrent-{k}-"))
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--sync", str(folder),
            "--device", args.device, "--batch-size", str(args.batch_size), "--steps",
            str(args.steps), "--warmup", str(args.warmup), "--arch", args.arch]
    for item in args.arch_arg:
        argv += ["--arch-arg", item]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    while len(list(folder.glob("ready-*"))) < k:
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(f"K={k}: a training process failed")
        time.sleep(0.05)
    (folder / "go").touch()
    runs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    images = sum(r["images"] for r in runs)
    return {"k": k, "seconds": span, "images": images, "images_per_s": images / span,
            "per_process_images_per_s": [r["images"] / (r["end"] - r["start"]) for r in runs]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps (compilation)")
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--arch-arg", action="append", default=[], metavar="KEY=INT")
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sys.exit(child(args))
    results = [run_k(args, k) for k in args.ks]
    base = results[0]["images_per_s"]
    for r in results:
        r["speedup"] = r["images_per_s"] / base
        print(f"K={r['k']}: {r['images_per_s']:10.1f} img/s aggregate, {r['speedup']:.2f}x "
              f"K={results[0]['k']}")
    record = {"device": args.device, "arch": args.arch, "batch_size": args.batch_size,
              "steps": args.steps, "runs": results}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
