"""One training step of each objective against LogitNorm's: ELogitNorm, T2FNorm, cross-entropy.

A benchmark, not a test. For every objective, a fresh copy of the same network (same initial
weights; T2FNorm puts a hook on its final layer, so no model is shared) trains with
:class:`logitnorm_plugin.training.step.TrainStep`, the step :func:`logitnorm_plugin.train` runs,
with the device's fast-path settings (on CUDA: bf16 autocast, channels_last, ``torch.compile``
of the forward pass), on synthetic CIFAR-shaped uint8 batches already on the device; each
objective is built with ``create_loss(name, model=model)``, as the trainer does. Rounds of
``--steps`` steps alternate between the objectives (so load changes hit all alike); the median
seconds per step of each and its ratio to LogitNorm's are reported. The issue's goal is
ELogitNorm's step within 1.1x of LogitNorm's at batch 128 on WRN-40-2.

It also times each objective's loss alone (forward and backward on ``B x C`` logits), and
ELogitNorm's pairwise class-weight distances alone, forward and backward, for
``C`` = 10 and 100 classes and the network's feature width ``D``: through the Gram matrix (what
:func:`logitnorm_plugin.successors.elogitnorm.class_distances` does) and through the
``C x C x D`` tensor of differences (the published code's way), to show which one CIFAR-100's
100 classes make expensive.

``benchmarks/gpu_suite.py`` runs this script as its part (f); ``--smoke`` is the CPU toy size
that its smoke test runs. Examples::

    python benchmarks/objective_step.py --smoke                       # CPU, seconds
    python benchmarks/objective_step.py --no-steps --num-classes 100  # losses only (CPU)
    python benchmarks/objective_step.py --device cuda --num-classes 100
"""

import argparse
import copy
import json
import statistics
import time

import torch

OBJECTIVES = ("logitnorm", "elogitnorm", "t2fnorm", "cross_entropy")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_loop(name, base, device, args, images, labels):
    """A callable running ``n`` training steps of objective ``name``; the step object."""
    from logitnorm_plugin import create_loss
    from logitnorm_plugin.training.step import TrainStep, fast_path_defaults

    fast = fast_path_defaults(device, amp=args.amp, compile=args.compile)
    model = copy.deepcopy(base).to(device)
    if fast["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    kwargs = {"t": 0.04} if name == "logitnorm" else {}
    loss = create_loss(name, model=model, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                          **({"fused": True} if device.type == "cuda" else {}))
    mean = torch.tensor([125.3, 123.0, 113.9], device=device).view(1, 3, 1, 1)
    std = torch.tensor([63.0, 62.1, 66.7], device=device).view(1, 3, 1, 1)
    step = TrainStep(model, loss, opt, normalize=lambda x: (x.float() - mean) / std,
                     amp_dtype=fast["amp_dtype"], channels_last=fast["channels_last"],
                     compile_mode=fast["compile_mode"])
    model.train()

    def run(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for i in range(n):
            j = i % images.shape[0]
            step(images[j], labels[j])
        _sync(device)
        return time.perf_counter() - start

    return run, step


def _loss_timings(names, base, device, batch_size, num_classes, repeats):
    """Milliseconds of forward + backward of each objective's loss alone on ``B x C`` logits
    (the head bound where the objective needs it; T2FNorm's cost is in its hook, not here)."""
    from logitnorm_plugin import create_loss

    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch_size, num_classes, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    out = {}
    for name in names:
        model = copy.deepcopy(base).to(device)
        loss = create_loss(name, model=model, **({"t": 0.04} if name == "logitnorm" else {}))
        for _ in range(3):
            loss(z, y).backward()
        rounds = []
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                loss(z, y).backward()
            _sync(device)
            rounds.append(1000 * (time.perf_counter() - start) / repeats)
        out[name] = statistics.median(rounds)
    return out


def _distance_timings(num_classes, dim, device, repeats):
    """Milliseconds of forward + backward of the class distances, Gram vs C x C x D."""
    from logitnorm_plugin.successors.elogitnorm import class_distances

    def broadcast(w):
        d = (w[:, None, :] - w[None, :, :]).norm(dim=2)
        return d + torch.eye(w.shape[0], device=w.device, dtype=w.dtype)

    w = torch.randn(num_classes, dim, device=device, requires_grad=True)
    out = {}
    for label, fn in (("gram", class_distances), ("broadcast", broadcast)):
        for _ in range(2):  # warm-up
            fn(w).sum().backward()
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(w).sum().backward()
        _sync(device)
        out[f"distances_{label}_ms"] = 1000 * (time.perf_counter() - start) / repeats
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="timed steps per objective and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default: 2 on CPU, 15 on CUDA for compile)")
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--arch-arg", action="append", default=[], metavar="KEY=INT")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    for name in ("amp", "compile"):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"force {name} on/off (default: train()'s choice for the device)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on the CPU, where other processes share "
                   "the cores; unchanged on CUDA)")
    p.add_argument("--no-steps", action="store_true",
                   help="time the losses and the distances only, not the training steps")
    p.add_argument("--smoke", action="store_true",
                   help="toy sizes for the CPU: WRN-10-1, batch 16, 2 steps, 1 round")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.steps, args.rounds, args.warmup = 16, 2, 1, 1
        args.arch_arg = ["depth=10", "widen_factor=1"] + args.arch_arg
    if "logitnorm" not in args.objectives:
        args.objectives = ["logitnorm"] + list(args.objectives)

    from logitnorm_plugin._core.provenance import device_name
    from logitnorm_plugin.registry.architectures import build_model
    from logitnorm_plugin.registry.split import split_model

    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.warmup is None:
        args.warmup = 15 if device.type == "cuda" else 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, args.batch_size, 3, 32, 32), generator=g,
                           dtype=torch.uint8).to(device)
    labels = torch.randint(0, args.num_classes, (4, args.batch_size), generator=g).to(device)
    torch.manual_seed(0)
    arch_kwargs = {k: int(v) for k, v in (a.split("=", 1) for a in args.arch_arg)}
    base = build_model(args.arch, num_classes=args.num_classes, in_channels=3, **arch_kwargs)
    feature_dim = split_model(base).head.in_features

    loops, first = {}, {}
    for name in [] if args.no_steps else args.objectives:
        loops[name] = _step_loop(name, base, device, args, images, labels)
        first[name] = loops[name][0](1)  # compilation happens here
        loops[name][0](max(0, args.warmup - 1))
    per_step = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, (run, _) in loops.items():
            per_step[name].append(run(args.steps) / args.steps)
    median = {name: statistics.median(v) for name, v in per_step.items()}
    median = median or {"logitnorm": float("nan")}
    for name, (_, step) in loops.items():
        loss = step.collect()["loss"]
        assert loss == loss, f"non-finite loss of {name} in the benchmark"

    repeats = 3 if args.smoke else 50
    result = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "arch": args.arch, "arch_kwargs": arch_kwargs, "feature_dim": feature_dim,
        "num_classes": args.num_classes, "batch_size": args.batch_size,
        "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
        "settings": {n: {"amp_dtype": str(s.amp_dtype), "compile_mode": s.compile_mode}
                     for n, (_, s) in loops.items()},
        "step_ms": {n: 1000 * v for n, v in median.items()},
        "step_ms_rounds": {n: [1000 * x for x in v] for n, v in per_step.items()},
        "first_step_s": first,
        "ratio_to_logitnorm": {n: v / median["logitnorm"] for n, v in median.items()},
        "loss_only_ms": _loss_timings(args.objectives, base, device, args.batch_size,
                                      args.num_classes, repeats),
        "distances": {str(c): _distance_timings(c, feature_dim, device, repeats)
                      for c in (10, 100)},
    }
    print(f"device: {result['device']}, {args.arch} {arch_kwargs}, {args.num_classes} classes, "
          f"batch {args.batch_size}, {torch.get_num_threads()} thread(s)"
          + ("" if args.no_steps else f", median of {args.rounds} rounds of {args.steps} steps"))
    for name in loops:
        print(f"  {name:14s} {result['step_ms'][name]:9.2f} ms/step  "
              f"{result['ratio_to_logitnorm'][name]:.3f}x LogitNorm")
    print("  losses alone (forward + backward): " + ", ".join(
        f"{n} {v:.3f} ms" for n, v in result["loss_only_ms"].items()))
    for c, d in result["distances"].items():
        print(f"  distances C={c:>3s} D={feature_dim}: Gram {d['distances_gram_ms']:.3f} ms, "
              f"C x C x D {d['distances_broadcast_ms']:.3f} ms (forward + backward)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
