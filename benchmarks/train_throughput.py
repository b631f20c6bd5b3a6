"""Training throughput: a loop in the original LogitNorm code's style vs our trainer's step.

A benchmark, not a test. In one process, on synthetic CIFAR-shaped uint8 data (no download),
with the same architecture, initial weights, loss and batch size, it times

(a) the original code's loop: fp32, eager, torchvision transforms (``RandomCrop(32,
    padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``) on PIL images in
    a CPU ``DataLoader`` with worker processes, ``.to(device)`` per batch, and the running loss
    read with ``float(loss)`` every step, as that code does;
(b) :class:`logitnorm_plugin.training.step.TrainStep`, the step :func:`logitnorm_plugin.train`
    runs, with the settings ``train`` would pick on the device (or the ones forced by the
    switches below): data set on the device as uint8, augmentation on the device, no
    per-step synchronisation.

It prints images/s of both, their ratio, and what that means for the paper recipe (200 epochs
of the 50,000 CIFAR-10 training images). Warm-up steps (and compilation) are excluded from the
rates and reported apart: the first step of our path (where ``torch.compile`` compiles) and the
rest of the warm-up (CUDA-graph recording, autotuning). ``benchmarks/gpu_suite.py`` runs this
script as its part (a).

Examples::

    python benchmarks/train_throughput.py --steps 5                 # CPU
    python benchmarks/train_throughput.py --device cuda --steps 200  # GPU (H100: the target
                                                                     # is >= 3x at batch 128)
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PILImages(torch.utils.data.Dataset):
    """HWC uint8 arrays served as PIL images through torchvision transforms (the usual
    CIFAR pipeline)."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class OriginalLoop:
    """The original code's loop (fp32, eager, CPU DataLoader + PIL transforms)."""

    def __init__(self, model, loss_fn, images_hwc, labels, mean, std, device, args):
        import torchvision.transforms as T

        transform = T.Compose([
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])
        self.loader = torch.utils.data.DataLoader(
            _PILImages(images_hwc, labels, transform),
            batch_size=args.batch_size, shuffle=True, drop_last=True,
            num_workers=args.workers, pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
        )
        self.model, self.loss_fn, self.device = model, loss_fn, device
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.batches = self._cycle()
        self.loss_avg = 0.0
        model.train()

    def _cycle(self):
        while True:
            yield from self.loader

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, waiting for the loader included."""
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(self.batches)
            x, y = x.to(self.device), y.to(self.device)
            loss = self.loss_fn(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            # the original reads the running loss every step (a host synchronisation)
            self.loss_avg = self.loss_avg * 0.8 + float(loss.detach()) * 0.2
        _sync(self.device)
        return time.perf_counter() - start


class OurLoop:
    """:class:`~logitnorm_plugin.training.step.TrainStep` with the settings train() would use."""

    def __init__(self, model, loss_fn, images_nchw, labels, mean, std, device, args):
        from logitnorm_plugin.data import ImageTensors
        from logitnorm_plugin.training.augment import DeviceAugment
        from logitnorm_plugin.training.step import TrainStep, fast_path_defaults

        fast = fast_path_defaults(device, amp=args.amp, compile=args.compile,
                                  channels_last=args.channels_last)
        self.data = ImageTensors(images_nchw, labels, mean, std, "synthetic").to(device)
        if fast["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
            **({"fused": True} if device.type == "cuda" else {}),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        fmt = torch.channels_last if fast["channels_last"] else torch.contiguous_format
        self.step = TrainStep(
            model, loss_fn, opt, normalize=self.data.normalize,
            augment=DeviceAugment(4, True, device, seed=0, memory_format=fmt),
            amp_dtype=fast["amp_dtype"], channels_last=fast["channels_last"],
            compile_mode=fast["compile_mode"], scaler=None, scheduler=sched,
        )
        self.settings = fast
        self.device, self.batch = device, args.batch_size
        self.gen = torch.Generator().manual_seed(0)
        self.perm, self.pos = None, len(self.data)
        model.train()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps (batch gathering on the device included)."""
        n, b = len(self.data), self.batch
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            if self.pos + b > n:  # a new epoch: one permutation, moved once
                self.perm = torch.randperm(n, generator=self.gen).to(self.device)
                self.pos = 0
            idx = self.perm[self.pos : self.pos + b]
            self.pos += b
            self.step(self.data.images.index_select(0, idx), self.data.labels.index_select(0, idx))
        _sync(self.device)
        return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per path and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating timed rounds (a, b, a, b, ...); the median is reported")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default: 2 on CPU, 15 on CUDA for compile)")
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--arch-arg", action="append", default=[], metavar="KEY=INT",
                   help="architecture override, e.g. depth=10 (smaller toy models)")
    p.add_argument("--loss", default="logitnorm", help="a registered loss name")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the original-style loop (the original used 4)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--images", type=int, default=None,
                   help="synthetic set size (default: 16 batches, cycled)")
    for name in ("amp", "compile", "channels-last"):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"force {name} on/off for our path (default: train()'s choice)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    from logitnorm_plugin import create_loss
    from logitnorm_plugin._core.device import resolve_device
    from logitnorm_plugin._core.errors import UserError
    from logitnorm_plugin._core.provenance import device_name, package_versions
    from logitnorm_plugin.data import dataset_meta
    from logitnorm_plugin.registry.architectures import build_model

    try:  # a CUDA device without CUDA: one line, not a traceback from deep in torch
        device = resolve_device(args.device)
    except UserError as exc:
        p.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup is None:
        args.warmup = 15 if device.type == "cuda" else 2
    args.warmup = max(1, args.warmup)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both paths, as the original code sets it
    meta = dataset_meta("cifar10")
    n = args.images or args.batch_size * 16
    rng = np.random.default_rng(0)
    images_hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    images_nchw = torch.from_numpy(images_hwc.transpose(0, 3, 1, 2).copy())

    torch.manual_seed(0)
    arch_kwargs = {k: int(v) for k, v in (a.split("=", 1) for a in args.arch_arg)}
    base = build_model(args.arch, num_classes=10, in_channels=3, **arch_kwargs)
    loss_kwargs = {"t": 0.04} if args.loss == "logitnorm" else {}

    torch.manual_seed(1)
    # each path its own copy, and its own loss bound to it (ELogitNorm, T2FNorm bind the head)
    model_a, model_b = copy.deepcopy(base).to(device), copy.deepcopy(base).to(device)
    loop_a = OriginalLoop(model_a, create_loss(args.loss, model=model_a, **loss_kwargs),
                          images_hwc, labels, meta["mean"], meta["std"], device, args)
    loop_b = OurLoop(model_b, create_loss(args.loss, model=model_b, **loss_kwargs),
                     images_nchw, torch.from_numpy(labels), meta["mean"], meta["std"], device,
                     args)
    # warm-up (worker start, cudnn autotuning, compilation), then interleaved timed rounds so
    # that load changes on a shared machine hit both paths alike
    warmup_a = loop_a.run(args.warmup)
    first_step_b = loop_b.run(1)  # compilation happens in the first call
    rest_b = loop_b.run(args.warmup - 1) if args.warmup > 1 else 0.0
    rates_a, rates_b = [], []
    for _ in range(args.rounds):
        rates_a.append(args.steps * args.batch_size / loop_a.run(args.steps))
        rates_b.append(args.steps * args.batch_size / loop_b.run(args.steps))
    ips_a, ips_b = statistics.median(rates_a), statistics.median(rates_b)
    stats = loop_b.step.collect()
    assert stats["loss"] == stats["loss"], "non-finite loss in the benchmark"
    settings = {**loop_b.settings, "amp_dtype": str(loop_b.settings["amp_dtype"]),
                "compile_mode": loop_b.step.compile_mode}

    epoch_images, epochs = 50_000, 200
    result = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "arch_kwargs": arch_kwargs,
        "loss": args.loss,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "original_style_rounds": rates_a,
        "ours_rounds": rates_b,
        "warmup": args.warmup,
        "workers": args.workers,
        "original_style_images_per_s": ips_a,
        "ours_images_per_s": ips_b,
        "ratio": ips_b / ips_a,
        "original_style_warmup_seconds": warmup_a,
        "ours_first_step_seconds": first_step_b,
        "ours_rest_of_warmup_seconds": rest_b,
        "ours_settings": settings,
        "paper_recipe_minutes_original_style": epoch_images * epochs / ips_a / 60,
        "paper_recipe_minutes_ours": epoch_images * epochs / ips_b / 60,
        "versions": package_versions(),
    }
    print(f"device: {result['device']}, torch threads {result['threads']}, {args.arch}, "
          f"loss {args.loss}, batch {args.batch_size}, median of {args.rounds} alternating "
          f"rounds of {args.steps} steps after {args.warmup} warm-up steps")
    minutes_a = result["paper_recipe_minutes_original_style"]
    minutes_b = result["paper_recipe_minutes_ours"]
    print(f"(a) original style (fp32, eager, torchvision + DataLoader x{args.workers}): "
          f"{ips_a:10.1f} img/s -> 200 CIFAR-10 epochs in {minutes_a:.1f} min")
    print(f"(b) ours (TrainStep: {settings}): "
          f"{ips_b:10.1f} img/s -> 200 CIFAR-10 epochs in {minutes_b:.1f} min")
    print(f"ratio ours / original: {result['ratio']:.2f}x")
    print(f"not in the rates: our first step (compilation) {first_step_b:.1f} s, the other "
          f"{args.warmup - 1} warm-up steps {rest_b:.1f} s; original-style warm-up "
          f"{warmup_a:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
