"""Evaluation throughput: pytorch-ood's ``Benchmark.evaluate`` vs ``logitnorm_plugin.evaluate``.

A benchmark, not a test. In one process, on synthetic 32 x 32 data (an ID set, which is also the
training split, and six OOD sets) and a WRN-40-2 (``pytorch_ood.model.WideResNet``, random
weights, eval mode), it runs two suites, each the host against our engine with the same model,
data, batch size and detectors, and prints both wall times, their ratio, and the largest
absolute difference between the two results over every metric of every (detector, OOD set)
row:

1. ``logits``: msp, energy, maxlogit, logitnorm and odin (ODIN with the data's ``norm_std``).
   The host forwards the ID set once per OOD set (and ODIN's two forwards + one backward again
   for each); the engine forwards each set once and lets ODIN reuse that forward pass.
2. ``features``: msp, energy, odin, mahalanobis, knn, vim, react and ash. The host is what a
   pytorch-ood user writes: each detector built by hand from the WRN's own parts (published
   defaults of :mod:`logitnorm_plugin.registry.split`), each that needs it fitted with its own
   ``fit(loader)`` (one pass over the training split each), then ``Benchmark.evaluate`` (which
   shares logits and pooled features per OOD set, but forwards the ID set again for every OOD
   set, and runs ReAct, ASH and ODIN with their own passes). The engine fits every detector
   from one training-split pass and scores every detector from one pass per dataset.

The ID size defaults to a multiple of the batch size, so that the host's concatenated
ID + OOD batches hold the same samples as ours and the logits are bitwise equal on the CPU.

Usage::

    python benchmarks/eval_throughput.py                  # CPU, 1 thread, small sizes (~3 min)
    python benchmarks/eval_throughput.py --suite features --threads 0   # torch's threads
    python benchmarks/eval_throughput.py --device cuda --n-id 10000 --n-ood 2000 --batch-size 256
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import torch
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.model import WideResNet

from logitnorm_plugin._core.device import resolve_device
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.data import ImageTensors
from logitnorm_plugin.detector import LogitNormDetector
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.specs import ModelSpec
from logitnorm_plugin.registry.entry_points import get_detector_class
from logitnorm_plugin.registry.split import published_defaults

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
OOD_NAMES = ["set1", "set2", "set3", "set4", "set5", "set6"]
METRICS = ("AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")
SUITES = {
    "logits": ["msp", "energy", "maxlogit", "logitnorm", "odin"],
    "features": ["msp", "energy", "odin", "mahalanobis", "knn", "vim", "react", "ash"],
}


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


def host_detector(name: str, model):
    """Detector ``name`` built by hand (:func:`by_hand`; ODIN with the data's ``norm_std``)."""
    if name == "logitnorm":
        return LogitNormDetector(model)
    return by_hand(get_detector_class(name), model, norm_std=list(STD))


def by_hand(cls, model, **logits_kwargs):
    """``cls`` built by hand as pytorch-ood's documentation builds it, with the published
    defaults: the model for logits detectors (with those of ``logits_kwargs`` that ``cls``
    takes), the model's own ``features`` / ``feature_maps`` / ``forward_feature_maps`` and
    ``fc`` (pytorch-ood's WRN, the package's DigitsCNN) for feature-based ones. Written without
    the package's split, on purpose: it is what the split and the engine are checked against
    (here and in ``tests/host_detectors.py``)."""
    params = inspect.signature(cls).parameters
    if not {"encoder", "backbone"} & set(params):
        return cls(model, **{k: v for k, v in logits_kwargs.items() if k in params})
    defaults = published_defaults(cls)
    kwargs = {k: v(model.fc.in_features) if callable(v) else v
              for k, v in defaults.items() if k in params}
    if "backbone" in params and defaults.get("layer", "penultimate") == "penultimate":
        kwargs["backbone"] = lambda x: model.features(x)[:, :, None, None]
        kwargs["head"] = lambda z: model.fc(z.flatten(1))
    elif "backbone" in params:
        kwargs["backbone"], kwargs["head"] = model.feature_maps, model.forward_feature_maps
    else:
        own = {"encoder": model.features, "head": model.fc, "w": model.fc.weight,
               "b": model.fc.bias}
        kwargs.update({k: v for k, v in own.items() if k in params})
    return cls(**kwargs)


def compare(suite: str, model, bench, device, batch_size: int, sync) -> dict:
    """One suite: the host's detectors fitted (each with its own ``fit``) and evaluated by
    ``Benchmark.evaluate``, then our engine; times, their ratio, the largest difference."""
    names = SUITES[suite]
    seen = []  # samples through the network's first convolution: forward passes, any route
    hook = model.conv1.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    sync()
    start = time.perf_counter()
    detectors = [host_detector(n, model) for n in names]
    for detector in detectors:
        if detector.requires_fit:
            detector.to(device).fit(torch.utils.data.DataLoader(bench.train_set(),
                                                                batch_size=batch_size))
    host = bench.evaluate(detectors, loader_kwargs={"batch_size": batch_size},
                          device=str(device))
    sync()
    host_s = time.perf_counter() - start
    host_forwards, seen[:] = sum(seen), []
    host_names = {type(d).__name__: n for d, n in zip(detectors, names)}

    spec = ModelSpec(label="wrn-40-2", model=model, mean=MEAN, std=STD)
    start = time.perf_counter()
    ours = evaluate([spec], bench, detectors=names, device=device, batch_size=batch_size,
                    progress=False)
    sync()
    ours_s = time.perf_counter() - start
    ours_forwards = sum(seen)
    hook.remove()

    by_cell = {(r["Detector"], r["Dataset"]): r for r in ours}
    diff, worst = 0.0, None
    for h in host:
        r = by_cell[(host_names[h["Detector"]], h["Dataset"])]
        for key in METRICS + (("ACC",) if "ACC" in h else ()):
            d = abs(float(h[key]) - float(r[key]))
            if d > diff:
                diff, worst = d, f"{host_names[h['Detector']]} {h['Dataset']} {key}"
    return {"suite": suite, "detectors": names, "pytorch_ood_seconds": round(host_s, 3),
            "logitnorm_plugin_seconds": round(ours_s, 3), "speedup": round(host_s / ours_s, 2),
            "max_metric_difference": diff, "largest_difference_at": worst,
            "rows_compared": len(host), "pytorch_ood_forward_samples": host_forwards,
            "logitnorm_plugin_forward_samples": ours_forwards}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-id", type=int, default=128,
                        help="ID images, also the training split (default 128)")
    parser.add_argument("--n-ood", type=int, default=64, help="images per OOD set (default 64)")
    parser.add_argument("--suite", choices=["logits", "features", "both"], default="both")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on the CPU, where tiny batches "
                             "run faster on one thread of a shared machine; 0: torch's own)")
    parser.add_argument("--depth", type=int, default=40, help="WideResNet depth (default 40)")
    parser.add_argument("--widen-factor", type=int, default=2,
                        help="WideResNet width (default 2; smaller for toy runs)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--exact-fp32", action="store_true",
                        help="CUDA: no TF32 in convolutions and matrix products, deterministic "
                             "cuDNN algorithms (tells rounding apart from real differences)")
    args = parser.parse_args(argv)
    try:  # a CUDA device without CUDA: one line, not a traceback from deep in torch
        device = resolve_device(args.device)
    except UserError as exc:
        parser.error(str(exc))
    if args.exact_fp32:
        torch.backends.cudnn.allow_tf32 = False  # torch's default is True for convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    threads = args.threads if args.threads is not None else 1 if device.type == "cpu" else 0
    if threads:
        torch.set_num_threads(threads)

    torch.manual_seed(0)
    model = WideResNet(num_classes=10, depth=args.depth, widen_factor=args.widen_factor,
                       drop_rate=0.3).to(device).eval()
    bench = SyntheticBenchmark(args.n_id, args.n_ood)
    with torch.no_grad():  # warm-up: kernel selection, allocator, lazy init
        model(bench.id_set.normalize(bench.id_set.images[: args.batch_size]).to(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": f"WRN-{args.depth}-{args.widen_factor}",
        "torch_threads": torch.get_num_threads(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "batch_size": args.batch_size,
        "n_id": args.n_id,
        "n_ood_per_set": args.n_ood,
        "ood_sets": len(OOD_NAMES),
        "images": args.n_id + len(OOD_NAMES) * args.n_ood,
        "suites": [],
    }
    print(f"device {result['device_name']} ({torch.get_num_threads()} threads), "
          f"{result['model']}, batch {args.batch_size}, ID (= training split) {args.n_id} + 6 x "
          f"{args.n_ood} OOD")
    for suite in (["logits", "features"] if args.suite == "both" else [args.suite]):
        figures = compare(suite, model, bench, device, args.batch_size, sync)
        result["suites"].append(figures)
        print(f"\n{suite}: {', '.join(figures['detectors'])}")
        print(f"pytorch-ood (fit + Benchmark.evaluate) : {figures['pytorch_ood_seconds']:8.2f} s")
        print(f"logitnorm_plugin.evaluate              : "
              f"{figures['logitnorm_plugin_seconds']:8.2f} s")
        print(f"speed-up                               : {figures['speedup']:8.2f} x")
        host_n, ours_n = (figures["pytorch_ood_forward_samples"],
                          figures["logitnorm_plugin_forward_samples"])
        print(f"samples forwarded (host / ours)        : {host_n} / {ours_n} = "
              f"{host_n / ours_n:.2f} x")
        print(f"largest metric difference              : {figures['max_metric_difference']:.3g}"
              f" ({figures['largest_difference_at']}) over {figures['rows_compared']} rows x "
              f"{len(METRICS)} metrics (+ ACC where the host reports it)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
