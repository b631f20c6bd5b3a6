"""Evaluation throughput: pytorch-ood's ``Benchmark.evaluate`` vs ``logitnorm_plugin.evaluate``.

A benchmark, not a test. In one process, on synthetic 32 x 32 data (an ID set and six OOD
sets) and a WRN-40-2 (``pytorch_ood.model.WideResNet``, random weights, eval mode), it runs

1. pytorch-ood's ``Benchmark.evaluate`` with the detectors msp, energy, maxlogit, logitnorm and
   odin (ODIN with the data's ``norm_std``), at the given batch size;
2. our engine with the same detectors, model, data and batch size;

and prints both wall times, their ratio, and the largest absolute difference between the two
results over every metric of every (detector, OOD set) row. The host forwards the ID set once
per OOD set (and ODIN's two forwards + one backward again for each); the engine forwards each
set once and lets ODIN reuse that forward pass.

The ID size defaults to a multiple of the batch size, so that the host's concatenated
ID + OOD batches hold the same samples as ours and the logits are bitwise equal on the CPU.

Usage::

    python benchmarks/eval_throughput.py                  # CPU, small sizes (~1-2 min, 2 cores)
    python benchmarks/eval_throughput.py --device cuda --n-id 10000 --n-ood 2000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.detector import ODIN, EnergyBased, MaxLogit, MaxSoftmax
from pytorch_ood.model import WideResNet

from logitnorm_plugin.data import ImageTensors
from logitnorm_plugin.detector import LogitNormDetector
from logitnorm_plugin.evaluation import evaluate
from logitnorm_plugin.specs import ModelSpec

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
OOD_NAMES = ["set1", "set2", "set3", "set4", "set5", "set6"]
# host class names -> our registry names
HOST_NAMES = {
    "MaxSoftmax": "msp",
    "EnergyBased": "energy",
    "MaxLogit": "maxlogit",
    "LogitNormDetector": "logitnorm",
    "ODIN": "odin",
}
METRICS = ("AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")


class SyntheticBenchmark(Benchmark):
    """In-memory ID set (10 classes) and six OOD sets of 32 x 32 uint8 images."""

    def __init__(self, n_id: int, n_ood: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        # class-dependent mean colour, so a random network still separates something
        labels = torch.randint(0, 10, (n_id,), generator=g)
        base = torch.rand(10, 3, 1, 1, generator=g)[labels] * 160 + 40
        images = (base + torch.randn(n_id, 3, 32, 32, generator=g) * 30).clamp(0, 255)
        self.id_set = ImageTensors(images.to(torch.uint8), labels, MEAN, STD, "id")
        self.oods = []
        for i, name in enumerate(OOD_NAMES):
            scale = 20 + 15 * i
            x = (torch.rand(n_ood, 3, 1, 1, generator=g) * 255
                 + torch.randn(n_ood, 3, 32, 32, generator=g) * scale).clamp(0, 255)
            self.oods.append(
                ImageTensors(x.to(torch.uint8), torch.full((n_ood,), -1), MEAN, STD, name)
            )
        self.ood_names = list(OOD_NAMES)

    def train_set(self):
        return self.id_set

    def test_sets(self, known=True, unknown=True):
        if known and unknown:
            return [self.id_set + ood for ood in self.oods]
        if known:
            return [self.id_set]
        if unknown:
            return list(self.oods)
        raise ValueError("known or unknown must be true")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-id", type=int, default=128, help="ID images (default 128)")
    parser.add_argument("--n-ood", type=int, default=64, help="images per OOD set (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--depth", type=int, default=40, help="WideResNet depth (default 40)")
    parser.add_argument("--widen-factor", type=int, default=2,
                        help="WideResNet width (default 2; smaller for toy runs)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = WideResNet(num_classes=10, depth=args.depth, widen_factor=args.widen_factor,
                       drop_rate=0.3).to(device).eval()
    bench = SyntheticBenchmark(args.n_id, args.n_ood)
    with torch.no_grad():  # warm-up: kernel selection, allocator, lazy init
        model(bench.id_set.normalize(bench.id_set.images[: args.batch_size]).to(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    detectors = [
        MaxSoftmax(model), EnergyBased(model), MaxLogit(model), LogitNormDetector(model),
        ODIN(model, norm_std=list(STD)),
    ]
    sync()
    start = time.perf_counter()
    host = bench.evaluate(detectors, loader_kwargs={"batch_size": args.batch_size},
                          device=str(device))
    sync()
    host_s = time.perf_counter() - start

    spec = ModelSpec(label="wrn-40-2", model=model, mean=MEAN, std=STD)
    start = time.perf_counter()
    ours = evaluate(
        [spec], bench, detectors=["msp", "energy", "maxlogit", "logitnorm", "odin"],
        device=device, batch_size=args.batch_size, progress=False,
    )
    sync()
    ours_s = time.perf_counter() - start

    by_cell = {(r["Detector"], r["Dataset"]): r for r in ours}
    diff = 0.0
    for h in host:
        r = by_cell[(HOST_NAMES[h["Detector"]], h["Dataset"])]
        for key in METRICS + (("ACC",) if "ACC" in h else ()):
            diff = max(diff, abs(float(h[key]) - float(r[key])))
    n_images = args.n_id + len(OOD_NAMES) * args.n_ood
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": f"WRN-{args.depth}-{args.widen_factor}",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "n_id": args.n_id,
        "n_ood_per_set": args.n_ood,
        "ood_sets": len(OOD_NAMES),
        "pytorch_ood_seconds": round(host_s, 3),
        "logitnorm_plugin_seconds": round(ours_s, 3),
        "speedup": round(host_s / ours_s, 2),
        "max_metric_difference": diff,
        "rows_compared": len(host),
        "images": n_images,
    }
    print(
        f"device {result['device_name']} ({torch.get_num_threads()} threads), "
        f"{result['model']}, "
        f"batch {args.batch_size}, ID {args.n_id} + 6 x {args.n_ood} OOD, detectors msp, "
        "energy, maxlogit, logitnorm, odin"
    )
    print(f"pytorch-ood Benchmark.evaluate : {host_s:8.2f} s")
    print(f"logitnorm_plugin.evaluate      : {ours_s:8.2f} s")
    print(f"speed-up                       : {host_s / ours_s:8.2f} x")
    print(f"largest metric difference      : {diff:.3g} over {len(host)} rows x {len(METRICS)}"
          " metrics (+ ACC where the host reports it)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
