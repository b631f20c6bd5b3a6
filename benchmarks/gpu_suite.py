"""Every GPU check of logitnorm-plugin in one command: at most 8 minutes on one H100/H200.

A benchmark and a smoke test, not a unit test. Six parts, each in its own process with its own
time budget, so that one part that fails, hangs or runs out of time still leaves the others'
figures (its error text and the tail of its log are recorded instead):

(a) ``train_throughput``: batch 128, WRN-40-2, the original LogitNorm code's loop (fp32, eager,
    torchvision augmentation on CPU workers) vs our :class:`~logitnorm_plugin.training.step.
    TrainStep` with the device's fast-path defaults; images/s of both and their ratio, the
    compile time (our first step) reported apart (``benchmarks/train_throughput.py``).
(b) ``fast_path_resume``: two short epochs of the ``paper`` recipe (WRN-40-2, SGD, batch 128,
    crop+flip on the device, bf16, channels_last, ``torch.compile`` with CUDA graphs) on
    CIFAR-shaped synthetic data, killed (SIGKILL) right after the first epoch's checkpoint and
    resumed: the resumed run must finish. The same with ``deterministic=True`` (compile off):
    the interrupted-and-resumed weights must equal those of an uninterrupted run, bit for bit.
(c) ``eval_throughput``: pytorch-ood's ``Benchmark.evaluate`` vs our engine
    (``benchmarks/eval_throughput.py``): wall times, ratio, the largest metric difference.
(d) ``bench``: the default digits comparison, ``logitnorm-ood bench --device cuda``, run as
    ``python -m logitnorm_plugin.cli bench``: its time and its table.
(e) ``ddp``: ``torchrun --nproc_per_node 1 -m logitnorm_plugin.cli train`` on CUDA (nccl; on
    the CPU in smoke mode 2 processes with gloo), plus a one-process nccl group with a
    DDP-wrapped training step in channels_last (one- and three-channel inputs) whose output
    must not contain DDP's "Grad strides do not match bucket view strides" warning.
(f) ``objective_step``: one training step of ELogitNorm, T2FNorm and cross-entropy against
    LogitNorm's (``benchmarks/objective_step.py``): WRN-40-2, batch 128, 10 and 100 classes,
    ms per step and the ratio to LogitNorm (goal: ELogitNorm within 1.1x), plus the class
    distances alone (Gram matrix vs the ``C x C x D`` differences). On CUDA with bf16 and
    channels_last but without ``torch.compile`` (eight compilations would not fit the budget;
    the objectives differ only outside the compiled forward pass). Last in the order: on a
    slow device it gets what the others leave (``--parts objective_step`` runs it alone).
(g) ``concurrent_training``: K = 1, 2, 4 trainings at once on the one device
    (``benchmarks/concurrent_training.py``: WRN-40-2, batch 128, our fast-path step per process),
    the aggregate images/s and the speed-up over K = 1: what ``bench --executor local
    --jobs-per-gpu K`` puts on one GPU (goal: >= 2x at K = 4); the default K stays 1 until it
    has run on a GPU.

Output: ``gpu_suite.json`` (device name, torch / CUDA / cuDNN versions, every figure of every
part, status, seconds, errors), ``gpu_suite.md`` (a short summary) and ``gpu_suite.log`` (all
parts' output) in ``--out`` (default ``benchmarks/results/gpu/``).

On a lent H100/H200 (a bare machine with torch, no network, Python 3.12; see
``/work/.library/device/``): everything but pytorch-ood is installed there (torch,
torchvision, numpy, scipy, scikit-learn, tqdm, matplotlib, typing-extensions), so one wheel
travels. Once, here, in the repository root (``.whl/`` is ignored by git)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl pytorch-ood==0.4.0

then the device call (the wrapper installs the wheel to /tmp/site, puts it and the checkout on
PYTHONPATH and runs this script with ``--device cuda --out $OUT``)::

    run(command="bash benchmarks/gpu_suite.sh $OUT", carry=[".whl"], timeout_s=540)

or spelled out::

    run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl"
            " && PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_suite.py"
            " --device cuda --out $OUT", carry=[".whl"], timeout_s=540)

The project is not installed there, so its entry points (the registry) do not exist: when
``logitnorm-plugin``'s metadata is missing, this script writes
``logitnorm_plugin-<version>.dist-info/{METADATA,entry_points.txt}`` from ``pyproject.toml``
into a scratch folder, puts it on ``sys.path`` and on the ``PYTHONPATH`` of every process it
starts; ``importlib.metadata`` then finds the entry points as if the package were installed.

``python benchmarks/gpu_suite.py --smoke --device cpu`` runs the same parts at toy sizes (a few
minutes on 2 CPU cores); ``tests/test_gpu_suite.py`` runs it in CI so this script never rots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent  # run as a script, HERE is sys.path[0]: train_throughput, eval_throughput

#: parts in the order they run, with their letter in the issue and the README
PARTS = {
    "train_throughput": "a",
    "eval_throughput": "c",
    "fast_path_resume": "b",
    "ddp": "e",
    "bench": "d",
    "objective_step": "f",
    "concurrent_training": "g",
}
#: seconds each part may take (the whole suite is also held to --budget)
BUDGETS = {
    "cuda": {"train_throughput": 140, "eval_throughput": 60, "fast_path_resume": 170,
             "ddp": 70, "bench": 120, "objective_step": 90, "concurrent_training": 120},
    "smoke": {"train_throughput": 60, "eval_throughput": 50, "fast_path_resume": 90,
              "ddp": 90, "bench": 90, "objective_step": 60, "concurrent_training": 90},
}
TOTAL_BUDGET = {"cuda": 480, "smoke": 360}
STRIDE_WARNING = "Grad strides do not match bucket view strides"
RESULT_PREFIX = "GPU-SUITE-RESULT "


# -- the registry without an installed package ------------------------------------------------


def ensure_entry_points(site: Path) -> Path | None:
    """Make ``logitnorm-plugin``'s entry points visible without installing it.

    If the distribution's metadata is found (an installed package), nothing is done and
    ``None`` is returned. Otherwise :func:`write_dist_info` writes its metadata into ``site``,
    ``site`` goes first on ``sys.path`` (``importlib.metadata`` scans it) and is returned, for
    the ``PYTHONPATH`` of child processes.
    """
    from importlib import metadata

    try:
        metadata.distribution("logitnorm-plugin")
        return None
    except metadata.PackageNotFoundError:
        pass
    write_dist_info(site, REPO / "pyproject.toml")
    sys.path.insert(0, str(site))
    import importlib

    importlib.invalidate_caches()
    return site


def write_dist_info(site: Path, pyproject: Path) -> Path:
    """``<site>/<name>-<version>.dist-info`` with the ``METADATA`` (name, version) and the
    ``entry_points.txt`` (every ``[project.entry-points.*]`` group and the console scripts)
    that installing ``pyproject``'s project would write; returns the folder."""
    try:
        import tomllib  # Python >= 3.11 (the device machines run 3.12)
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError("logitnorm-plugin is not installed and this Python has no tomllib "
                           "to read pyproject.toml: use Python >= 3.11 or pip install .") from exc

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name, version = project["name"], project["version"]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    groups = dict(project.get("entry-points", {}))
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    return info


def child_env(site: Path | None, device: str) -> dict:
    """Environment of every process the suite starts: the same ``logitnorm_plugin`` and (if
    written) the same entry points as this one."""
    import logitnorm_plugin

    paths = [str(Path(logitnorm_plugin.__file__).resolve().parents[1])]
    if site is not None:
        paths.insert(0, str(site))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


# -- the parts (each runs in its own process) ----------------------------------------------------


class Part:
    """Figures of one part, written to its JSON file after every step (a part killed at its
    time limit keeps what it had measured)."""

    def __init__(self, name: str, args, path: Path):
        self.name, self.args, self.path = name, args, path
        self.figures: dict = {}
        self.work = Path(args.work) / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)  # the driver's child_env: same package, same registry

    def save(self, error: str | None = None) -> None:
        record = {"figures": self.figures}
        if error is not None:
            record["error"] = error
        self.path.write_text(json.dumps(record, indent=2, default=repr), encoding="utf-8")

    def child(self, argv, timeout: float, cwd=None) -> tuple[int, str]:
        """Run a child process (its own session: killed whole at the timeout)."""
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
            cwd=cwd or self.work, start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            out += f"\n[killed after {timeout:.0f} s]"
        print(out, flush=True)
        return proc.returncode, out


def part_train_throughput(part: Part) -> None:
    import train_throughput

    out = part.work / "train_throughput.json"
    argv = ["--device", part.args.device, "--json", str(out)]
    if part.args.smoke:
        argv += ["--batch-size", "32", "--steps", "2", "--rounds", "1", "--warmup", "2",
                 "--workers", "0", "--images", "64", "--arch-arg", "depth=10",
                 "--arch-arg", "widen_factor=1"]
    else:
        argv += ["--batch-size", "128", "--steps", "100", "--rounds", "3", "--warmup", "15"]
    train_throughput.main(argv)
    result = json.loads(out.read_text(encoding="utf-8"))
    keep = ("arch", "arch_kwargs", "batch_size", "steps", "rounds", "warmup", "workers",
            "original_style_images_per_s", "ours_images_per_s", "ratio",
            "ours_first_step_seconds", "ours_rest_of_warmup_seconds",
            "original_style_warmup_seconds", "ours_settings", "original_style_rounds",
            "ours_rounds", "paper_recipe_minutes_original_style", "paper_recipe_minutes_ours",
            "threads")
    part.figures.update({k: result[k] for k in keep if k in result})
    part.figures["compile_seconds"] = result["ours_first_step_seconds"]


def part_eval_throughput(part: Part) -> None:
    import eval_throughput

    argv = ["--device", part.args.device]
    if part.args.smoke:
        # 64 ID (= training) images: KNN's published k=50 needs more than 50
        argv += ["--n-id", "64", "--n-ood", "8", "--batch-size", "16", "--depth", "10",
                 "--widen-factor", "1"]
    else:
        argv += ["--n-id", "5120", "--n-ood", "1024", "--batch-size", "256"]
    part.figures.update(eval_throughput.main(argv))


def part_fast_path_resume(part: Part) -> None:
    smoke = part.args.smoke
    base = {"device": part.args.device, "epochs": 2,
            "n_train": 256 if smoke else 5120, "n_test": 64 if smoke else 1024,
            "batch_size": 64 if smoke else None,
            "arch_kwargs": {"depth": 10, "widen_factor": 1} if smoke else None}
    fast_dir, det_dir, ref_dir = (part.work / n for n in ("fast", "deterministic", "reference"))
    budget = BUDGETS["smoke" if smoke else "cuda"]["fast_path_resume"]
    # the two runs to kill, each in its own process; the uninterrupted reference meanwhile here
    killed = _start_workers(part, {
        "fast_interrupted": dict(base, deterministic=False, kill_after=1, resume=False,
                                 out=str(fast_dir)),
        "deterministic_interrupted": dict(base, deterministic=True, kill_after=1, resume=False,
                                          out=str(det_dir)),
    })
    reference = _timed(worker_train, dict(base, deterministic=True, resume=False,
                                          out=str(ref_dir)))
    killed = _wait_workers(killed, timeout=budget * 0.6)
    at_kill = {name: _checkpoint_epoch(d) for name, d in
               (("fast", fast_dir), ("deterministic", det_dir))}
    part.figures["killed"] = {name: {"returncode": r["returncode"], "seconds": r["seconds"],
                                     "checkpoint_epoch": at_kill[name.split("_")[0]]}
                              for name, r in killed.items()}
    part.save()
    # the resumed runs (a new process is not needed: they read everything from the folder)
    fast = _timed(worker_train, dict(base, deterministic=False, resume=True, out=str(fast_dir)))
    part.figures["fast"] = {
        "killed_with": killed["fast_interrupted"]["returncode"],
        "checkpoint_epoch_at_kill": at_kill["fast"],
        "resumed_from_epoch": fast.get("resumed_from_epoch"),
        "epochs_done": len(fast.get("metrics", [])),
        "finished": bool(fast.get("metrics")) and len(fast["metrics"]) == 2,
        "final_accuracy": fast.get("final_accuracy"),
        "runtime": fast.get("runtime"),
        "train_images_per_second": [m.get("train_images_per_second")
                                    for m in fast.get("metrics", [])],
        "seconds": {"interrupted": killed["fast_interrupted"]["seconds"],
                    "resumed": fast["seconds"]},
    }
    part.save()
    resumed = _timed(worker_train, dict(base, deterministic=True, resume=True,
                                        out=str(det_dir)))
    part.figures["deterministic"] = {
        "killed_with": killed["deterministic_interrupted"]["returncode"],
        "checkpoint_epoch_at_kill": at_kill["deterministic"],
        "resumed_from_epoch": resumed.get("resumed_from_epoch"),
        **_compare_weights(ref_dir / "model.pt", det_dir / "model.pt"),
        "seconds": {"uninterrupted": reference["seconds"],
                    "interrupted": killed["deterministic_interrupted"]["seconds"],
                    "resumed": resumed["seconds"]},
    }
    problems = []
    for name, r in killed.items():
        if r["returncode"] != -signal.SIGKILL or at_kill[name.split("_")[0]] != 1:
            problems.append(f"{name} was not killed after epoch 1 (exit {r['returncode']}): "
                            + _tail(r["output"], 600))
    if not part.figures["fast"]["finished"] or fast.get("resumed_from_epoch") != 1:
        problems.append("the resumed fast-path run did not finish from epoch 1")
    if not part.figures["deterministic"]["equal"]:
        problems.append("deterministic interrupted+resumed weights differ from the "
                        "uninterrupted run's")
    if problems:
        raise RuntimeError("; ".join(problems))


def part_bench(part: Part) -> None:
    out = part.work / "results"
    argv = [sys.executable, "-m", "logitnorm_plugin.cli", "bench", "--device", part.args.device,
            "--out", str(out)]
    if part.args.smoke:
        argv += ["--seeds", "0", "--epochs", "1"]
    budget = BUDGETS["smoke" if part.args.smoke else "cuda"]["bench"]
    start = time.perf_counter()
    code, output = part.child(argv, timeout=budget - 5)
    part.figures.update({"command": " ".join(argv[1:]), "returncode": code,
                         "seconds": time.perf_counter() - start})
    if code != 0:
        raise RuntimeError(f"bench exited with {code}: {_tail(output, 1500)}")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    part.figures["bench_seconds"] = results.get("seconds")
    part.figures["torch_threads"] = results.get("provenance", {}).get("config", {}).get(
        "torch_threads")
    part.figures["table"] = [
        {k: e.get(k) for k in ("Loss", "Detector", "Seeds", "AUROC", "AUROC_std", "FPR95TPR",
                               "FPR95-ID95", "ACC")}
        for e in results.get("aggregate", [])
    ]


def part_ddp(part: Part) -> None:
    import torch

    device = part.args.device
    cuda = device.startswith("cuda")
    nproc = max(1, min(torch.cuda.device_count(), 2)) if cuda else 2
    out = part.work / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m", "logitnorm_plugin.cli", "train", "--dataset", "digits", "--loss",
            "cross_entropy", "--epochs", "1" if part.args.smoke else "2", "--device",
            "cuda" if cuda else "cpu", "--quiet",
            "--out", str(out)]
    if not cuda:
        argv += ["--arch-arg", "width=8"]
    budget = BUDGETS["smoke" if part.args.smoke else "cuda"]["ddp"]
    start = time.perf_counter()
    code, output = part.child(argv, timeout=budget * 0.6)
    config = {}
    if (out / "config.json").is_file():
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    summary = [line for line in output.splitlines() if "final accuracy" in line]
    part.figures["torchrun"] = {
        "nproc_per_node": nproc, "backend": "nccl" if cuda else "gloo", "returncode": code,
        "seconds": time.perf_counter() - start,
        "world_size": config.get("runtime", {}).get("world_size"),
        "compile_mode": config.get("runtime", {}).get("compile_mode"),
        "summary": summary[-1] if summary else None,
        "grad_stride_warning": STRIDE_WARNING in output,
    }
    part.save()
    start = time.perf_counter()
    with _captured_stderr() as captured:
        try:
            result, code2 = worker_ddp_step({"device": device}, emit=False), 0
        except Exception as exc:  # recorded, and the part fails below
            result, code2 = {"error": f"{type(exc).__name__}: {exc}"}, 1
    output2 = captured["text"]
    print(output2, flush=True)
    part.figures["ddp_step"] = {**result, "returncode": code2,
                                "seconds": time.perf_counter() - start,
                                "grad_stride_warning": STRIDE_WARNING in output2}
    problems = []
    if code != 0:
        problems.append(f"torchrun train exited with {code}: {_tail(output, 1200)}")
    if code2 != 0:
        problems.append(f"the DDP step check exited with {code2}: {_tail(output2, 1200)}")
    if STRIDE_WARNING in output + output2:
        problems.append(f"DDP printed '{STRIDE_WARNING}'")
    if problems:
        raise RuntimeError("; ".join(problems))


def part_objective_step(part: Part) -> None:
    import objective_step

    classes = (10,) if part.args.smoke else (10, 100)
    for num_classes in classes:
        out = part.work / f"objective_step_c{num_classes}.json"
        argv = ["--device", part.args.device, "--json", str(out), "--num-classes",
                str(num_classes)]
        argv += ["--smoke"] if part.args.smoke else ["--batch-size", "128", "--steps", "30",
                                                     "--rounds", "3", "--no-compile"]
        objective_step.main(argv)
        part.figures[f"c{num_classes}"] = json.loads(out.read_text(encoding="utf-8"))


def part_concurrent_training(part: Part) -> None:
    """K = 1, 2, 4 trainings at once on the one device (what ``bench --executor local
    --jobs-per-gpu K`` does): the aggregate images/s and the speed-up over K = 1."""
    import concurrent_training

    out = part.work / "concurrent_training.json"
    argv = ["--device", part.args.device, "--json", str(out)]
    argv += (["--ks", "1", "2", "--steps", "2", "--warmup", "1", "--arch-arg", "depth=10"]
             if part.args.smoke else ["--ks", "1", "2", "4", "--steps", "100"])
    concurrent_training.main(argv)
    record = json.loads(out.read_text(encoding="utf-8"))
    part.figures["runs"] = record["runs"]
    part.figures["speedup"] = {str(r["k"]): r["speedup"] for r in record["runs"]}


PART_FUNCTIONS = {
    "train_throughput": part_train_throughput,
    "eval_throughput": part_eval_throughput,
    "fast_path_resume": part_fast_path_resume,
    "bench": part_bench,
    "ddp": part_ddp,
    "objective_step": part_objective_step,
    "concurrent_training": part_concurrent_training,
}


# -- worker processes of the parts ---------------------------------------------------------------


def _install_synthetic_cifar(n_train: int, n_test: int) -> None:
    """CIFAR-10 as class-coloured noise (32 x 32 x 3 uint8) in place of the files on disk, for
    this process: ``logitnorm_plugin.data.cifar.load_cifar`` is replaced, nothing else."""
    import torch

    import logitnorm_plugin.data.cifar as cifar
    from logitnorm_plugin.data import DATASETS, ImageTensors

    colours = torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 160 + 40

    def load_cifar(which, train, root=None, download=False):
        n = n_train if train else n_test
        g = torch.Generator().manual_seed(1 if train else 2)
        labels = torch.randint(0, 10, (n,), generator=g)
        images = (colours[labels] + torch.randn(n, 3, 32, 32, generator=g) * 40).clamp(0, 255)
        meta = DATASETS[which]
        return ImageTensors(images.to(torch.uint8), labels, meta.mean, meta.std, which,
                            [str(i) for i in range(10)])

    cifar.load_cifar = load_cifar


def worker_train(spec: dict, emit: bool = True) -> dict:
    """One ``paper``-recipe run on synthetic CIFAR-10; SIGKILLs itself after the checkpoint of
    epoch ``kill_after`` (the hard way: no clean-up, as a crash or a kill would)."""
    import torch

    if spec["device"] == "cpu":
        torch.set_num_threads(1)
    if spec["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _install_synthetic_cifar(spec["n_train"], spec["n_test"])
    from logitnorm_plugin.training.loop import train

    def callback(record):
        if spec.get("kill_after") and record["epoch"] >= spec["kill_after"]:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(
        dataset="cifar10", recipe="paper", loss="logitnorm", epochs=spec["epochs"], seed=0,
        device=spec["device"], out=spec["out"], resume=spec["resume"],
        deterministic=spec["deterministic"], progress=True, arch_kwargs=spec["arch_kwargs"],
        batch_size=spec["batch_size"], callback=callback,
    )
    summary = {
        "resumed_from_epoch": result.resumed_from_epoch,
        "metrics": result.metrics,
        "final_accuracy": result.card["metrics"]["final_accuracy"],
        "runtime": result.card.get("runtime"),
    }
    if emit:
        print(RESULT_PREFIX + json.dumps(summary, default=repr), flush=True)
    return summary


def worker_ddp_step(spec: dict, emit: bool = True) -> dict:
    """A one-process group (nccl on CUDA, gloo on the CPU) and a few DDP-wrapped training
    steps in channels_last with one- and three-channel inputs; DDP's stride warning, if any,
    goes to this process's output."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from logitnorm_plugin.loss import LogitNormLoss
    from logitnorm_plugin.registry.architectures import build_model
    from logitnorm_plugin.training.augment import DeviceAugment
    from logitnorm_plugin.training.step import TrainStep, fast_path_defaults

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device.index or 0)
    backend = "nccl" if cuda else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        check = torch.arange(4.0, device=device)
        dist.all_reduce(check)
        fast = fast_path_defaults(device, compile=False, channels_last=True)
        steps = {}
        for name, arch, channels, size, kwargs in (
            ("digits-cnn, 1 channel", "digits-cnn", 1, 8, {"width": 8}),
            ("wrn-10-1, 3 channels", "wrn-40-2", 3, 32, {"depth": 10, "widen_factor": 1}),
        ):
            torch.manual_seed(0)
            model = build_model(arch, num_classes=10, in_channels=channels, **kwargs)
            model = model.to(device).to(memory_format=torch.channels_last)
            ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if cuda else None)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            step = TrainStep(
                model, LogitNormLoss(t=0.04), opt, normalize=lambda x: x.float() / 255,
                augment=DeviceAugment(1, True, device, seed=0,
                                      memory_format=torch.channels_last),
                amp_dtype=fast["amp_dtype"], channels_last=True, forward_module=ddp,
            )
            images = torch.randint(0, 256, (16, channels, size, size), dtype=torch.uint8,
                                   device=device)
            labels = torch.randint(0, 10, (16,), device=device)
            for _ in range(3):
                step(images, labels)
            stats = step.collect()
            grads_match = all(p.grad is None or p.grad.stride() == p.stride()
                              for p in model.parameters())
            steps[name] = {"loss": stats["loss"], "grad_strides_match_params": grads_match}
        result = {"backend": backend, "all_reduce": check.tolist(), "world_size": 1,
                  "amp": str(fast["amp_dtype"]), "steps": steps}
        if emit:
            print(RESULT_PREFIX + json.dumps(result), flush=True)
        return result
    finally:
        dist.destroy_process_group()


WORKERS = {"train": worker_train, "ddp_step": worker_ddp_step}


# -- helpers -------------------------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _tail(text: str, n: int) -> str:
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def _result_line(output: str) -> dict:
    for line in reversed((output or "").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {}


def _start_workers(part: Part, specs: dict) -> dict:
    """Start one train worker process per spec (one GPU has room for all)."""
    procs = {}
    for name, spec in specs.items():
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "train", "--spec",
                json.dumps(spec)]
        procs[name] = (time.perf_counter(), subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=part.env,
            cwd=part.work, start_new_session=True))
    return procs


def _wait_workers(procs: dict, timeout: float) -> dict:
    deadline = time.perf_counter() + timeout
    results = {}
    for name, (start, proc) in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            out += f"\n[killed after {timeout:.0f} s]"
        print(f"--- worker {name} (exit {proc.returncode}) ---\n{out}", flush=True)
        results[name] = {**_result_line(out), "returncode": proc.returncode,
                         "seconds": time.perf_counter() - start, "output": out}
    return results


def _timed(function, spec: dict) -> dict:
    start = time.perf_counter()
    print(f"--- in this process: {function.__name__} {json.dumps(spec)}", flush=True)
    result = function(spec, emit=False)
    return {**result, "seconds": time.perf_counter() - start}


class _captured_stderr:
    """Everything written to file descriptor 2 inside the block (Python warnings and the C++
    warnings of torch's own threads alike), as ``captured["text"]``."""

    def __enter__(self):
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        self.result = {"text": ""}
        return self.result

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.result["text"] = self.file.read().decode("utf-8", "replace")
        self.file.close()
        return False


def _checkpoint_epoch(folder: Path) -> int | None:
    import torch

    path = folder / "checkpoint.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _compare_weights(a: Path, b: Path) -> dict:
    import torch

    if not (a.is_file() and b.is_file()):
        return {"equal": False, "missing": [str(p) for p in (a, b) if not p.is_file()]}
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    diff = 0.0
    equal = sa.keys() == sb.keys()
    for k in sa:
        if k not in sb:
            continue
        equal = equal and torch.equal(sa[k], sb[k])
        if sa[k].is_floating_point():
            diff = max(diff, float((sa[k].double() - sb[k].double()).abs().max()))
    return {"equal": bool(equal), "max_abs_difference": diff, "tensors": len(sa)}


def environment(device: str) -> dict:
    """Device name and the versions the figures depend on."""
    import torch

    from logitnorm_plugin._core.provenance import git_commit, package_versions

    env = {
        "device": device,
        "device_name": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "git_commit": git_commit(REPO),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update({
            "device_name": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_count": torch.cuda.device_count(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        })
    return env


# -- the driver ----------------------------------------------------------------------------------


def run_suite(args) -> dict:
    kind = "smoke" if args.smoke else "cuda"
    total = float(args.budget or TOTAL_BUDGET[kind])
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    site = ensure_entry_points(work / "site")
    env = child_env(site, args.device)
    record = {
        "suite": "logitnorm-plugin GPU suite", "format_version": 1, "smoke": bool(args.smoke),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_seconds": total, "entry_points": "installed" if site is None else
        f"materialised from pyproject.toml into {site}",
        **environment(args.device), "parts": {},
    }
    names = [p for p in PARTS if not args.parts or p in args.parts]
    log = []
    for name in names:
        left = total - (time.perf_counter() - started) - 5
        budget = min(BUDGETS[kind][name], left)
        entry = {"letter": PARTS[name], "budget_seconds": round(budget, 1)}
        if budget < 10:
            entry.update(status="skipped", error="no time left in the suite's budget",
                         figures={}, seconds=0.0)
            record["parts"][name] = entry
            continue
        print(f"== ({PARTS[name]}) {name}: up to {budget:.0f} s", flush=True)
        part_json = work / f"{name}.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--device",
                args.device, "--work", str(work), "--part-json", str(part_json)]
        if args.smoke:
            argv.append("--smoke")
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True, cwd=work)
        try:
            output, _ = proc.communicate(timeout=budget)
            status = "ok" if proc.returncode == 0 else "error"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            output, _ = proc.communicate()
            status = "timeout"
        seconds = time.perf_counter() - start
        saved = json.loads(part_json.read_text(encoding="utf-8")) if part_json.is_file() else {}
        error = saved.get("error")
        if status == "timeout":
            error = f"timed out after {budget:.0f} s" + (f"; {error}" if error else "")
        elif status == "error" and not error:
            error = f"exit status {proc.returncode}: {_tail(output, 1500)}"
        entry.update(status=status, seconds=round(seconds, 1), figures=saved.get("figures", {}),
                     error=error, log_tail=_tail(output, 3000))
        record["parts"][name] = entry
        log.append(f"===== ({PARTS[name]}) {name}: {status} in {seconds:.1f} s =====\n{output}")
        print(f"== ({PARTS[name]}) {name}: {status} in {seconds:.1f} s"
              + (f": {error}" if error else ""), flush=True)
        _write(out, record, log)  # after every part: a killed suite keeps what it has
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["ok"] = all(p["status"] == "ok" for p in record["parts"].values())
    _write(out, record, log)
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return record


def _write(out: Path, record: dict, log: list) -> None:
    (out / "gpu_suite.json").write_text(json.dumps(record, indent=2, default=repr) + "\n",
                                        encoding="utf-8")
    (out / "gpu_suite.md").write_text(summary(record), encoding="utf-8")
    (out / "gpu_suite.log").write_text("\n".join(log) + "\n", encoding="utf-8")


def _num(value, fmt="{:,.1f}") -> str:
    return "-" if not isinstance(value, (int, float)) else fmt.format(value)


def _headline(name: str, f: dict) -> str:
    if not f:
        return ""
    if name == "train_throughput":
        return (f"original-style {_num(f.get('original_style_images_per_s'))} img/s, ours "
                f"{_num(f.get('ours_images_per_s'))} img/s, ratio {_num(f.get('ratio'), '{:.2f}')}"
                f"x; compile (first step) {_num(f.get('compile_seconds'))} s")
    if name == "eval_throughput":
        return "; ".join(
            f"{s.get('suite')}: host {_num(s.get('pytorch_ood_seconds'), '{:.2f}')} s, ours "
            f"{_num(s.get('logitnorm_plugin_seconds'), '{:.2f}')} s, ratio "
            f"{_num(s.get('speedup'), '{:.2f}')}x, max metric difference "
            f"{_num(s.get('max_metric_difference'), '{:.2g}')}"
            for s in f.get("suites", [])
        )
    if name == "fast_path_resume":
        fast, det = f.get("fast", {}), f.get("deterministic", {})
        ips = [v for v in fast.get("train_images_per_second", []) if v]
        return (f"fast path killed ({fast.get('killed_with')}) after epoch "
                f"{fast.get('checkpoint_epoch_at_kill')}, resumed from epoch "
                f"{fast.get('resumed_from_epoch')}, finished: {fast.get('finished')}"
                + (f", epoch {len(ips)} at {_num(ips[-1])} img/s" if ips else "")
                + f"; deterministic resume equals uninterrupted: {det.get('equal')}")
    if name == "bench":
        rows = f.get("table", [])
        msp = next((r for r in rows if r.get("Loss") == "logitnorm"
                    and r.get("Detector") == "logitnorm"), None)
        return (f"{_num(f.get('seconds'))} s, {len(rows)} table rows"
                + (f"; logitnorm/logitnorm AUROC {_num(100 * msp['AUROC'], '{:.2f}')}"
                   if msp and isinstance(msp.get("AUROC"), float) else ""))
    if name == "objective_step":
        return "; ".join(
            f"{c[1:]} classes: " + ", ".join(
                f"{n} {_num(v, '{:.2f}')}x" for n, v in r.get("ratio_to_logitnorm", {}).items()
                if n != "logitnorm")
            + f" of LogitNorm's {_num(r.get('step_ms', {}).get('logitnorm'), '{:.1f}')} ms/step"
            for c, r in f.items())
    if name == "concurrent_training":
        return "; ".join(f"K={r.get('k')}: {_num(r.get('images_per_s'), '{:.0f}')} img/s "
                         f"({_num(r.get('speedup'), '{:.2f}')}x)" for r in f.get("runs", []))
    if name == "ddp":
        run, step = f.get("torchrun", {}), f.get("ddp_step", {})
        return (f"torchrun x{run.get('nproc_per_node')} ({run.get('backend')}) exit "
                f"{run.get('returncode')}; one-process {step.get('backend')} DDP step exit "
                f"{step.get('returncode')}; stride warning: "
                f"{bool(run.get('grad_stride_warning') or step.get('grad_stride_warning'))}")
    return ""


def summary(record: dict) -> str:
    """The Markdown summary: device and versions, one line per part, the errors."""
    lines = [
        f"# GPU suite: {record.get('device_name')}" + (" (smoke)" if record.get("smoke") else ""),
        "",
        f"torch {record.get('torch')}, CUDA {record.get('cuda')}, cuDNN {record.get('cudnn')}, "
        f"Python {record.get('python')}; logitnorm-plugin "
        f"{(record.get('versions') or {}).get('logitnorm-plugin')}, pytorch-ood "
        f"{(record.get('versions') or {}).get('pytorch-ood')}; git "
        f"{record.get('git_commit') or 'unknown'}; {record.get('started_utc')}; "
        f"{_num(record.get('seconds'))} s of a {_num(record.get('budget_seconds'), '{:.0f}')} s "
        "budget.",
        "",
        "| part | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, p in record.get("parts", {}).items():
        lines.append(f"| ({p['letter']}) {name} | {p['status']} | {_num(p.get('seconds'))} | "
                     f"{_headline(name, p.get('figures') or {})} |")
    errors = [(n, p["error"]) for n, p in record.get("parts", {}).items() if p.get("error")]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {n}: {e}" for n, e in errors]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu"),
                        help="folder of gpu_suite.json, .md and .log")
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes (CPU: a few minutes); what CI runs")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=None,
                        help="run only these parts")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole suite (default 480; smoke 300)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    # internal: one part, or one worker process of a part
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--part-json", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        WORKERS[args.worker](json.loads(args.spec))
        return 0
    if args.part:
        part = Part(args.part, args, Path(args.part_json))
        try:
            PART_FUNCTIONS[args.part](part)
        except BaseException as exc:  # the figures so far, and why it stopped
            traceback.print_exc()
            part.save(error=f"{type(exc).__name__}: {exc}")
            return 1
        part.save()
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: CUDA is not available here; use --device cpu (with --smoke)",
                  file=sys.stderr)
            return 2
    record = run_suite(args)
    print(summary(record))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
