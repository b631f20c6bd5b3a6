"""``logitnorm-ood bench``: a comparison benchmark with one command
(:func:`logitnorm_plugin.workflows.bench.run`)."""

import argparse
from pathlib import Path

from logitnorm_plugin._core.arg_checks import check_model_paths, check_values
from logitnorm_plugin.cli import _args
from logitnorm_plugin.reporting.bench_output import README_END, README_START
from logitnorm_plugin.workflows.bench_request import DEFAULTS

HELP = "run a comparison benchmark (default: digits, offline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", default=DEFAULTS["benchmark"],
                        help="benchmark name (`logitnorm-ood list benchmarks`); default: digits")
    parser.add_argument("--models", nargs="+", metavar="SPEC",
                        help="evaluate these models instead of training: pytorch-ood registry "
                        "keys (e.g. wrn-40-2/cifar10/logitnorm/s0) or run folders written by "
                        "`logitnorm-ood train`, each optionally named as LABEL=SPEC (default "
                        "label: the key, or the run folder's name where keys repeat)")
    parser.add_argument("--losses", nargs="+", default=None,
                        help="training objectives to train and compare (default: "
                        "cross_entropy logitnorm); those that need outliers (outlier_exposure, "
                        "energy_regularized) get --outliers")
    parser.add_argument("--outliers", default=None, metavar="NAME|FOLDER",
                        help="auxiliary outliers for the objectives that need them (default: "
                        "the dataset's named source: digits_jigsaw for the digits, "
                        "tinyimages300k for CIFAR)")
    parser.add_argument("--detectors", nargs="+", default=None,
                        help="detectors (default: msp odin energy maxlogit logitnorm), each "
                        "as NAME or NAME(KEY=VALUE, ...) for its settings, e.g. \"knn(k=5)\" "
                        "(quoted for the shell; the tables label it the same way); or all: "
                        "every registered detector the models can build")
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
                        help="recompute cells that the store already has, and retrain models "
                        "of --out/runs trained with other settings (their folders are moved "
                        "aside)")
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
    _args.add_threads(parser)
    parser.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                        help="when another bench uses --out: wait at most this long (default: "
                        "until it ends; 0: fail at once)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers for datasets without a tensor fast path")
    add_executor_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true",
                        help="a line per training epoch (default: a bar and one line per run)")
    parser.add_argument("--no-plots", action="store_true", help="no histogram PNGs")
    parser.add_argument("--update-readme", metavar="PATH", default=None,
                        help="also write the table into PATH between the lines "
                        f"'{README_START}' and '{README_END}'")
    parser.add_argument("--readme-section", metavar="NAME", default=None,
                        help="with --update-readme: the section between "
                        "'<!-- logitnorm-ood bench NAME: start -->' and its end line instead")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and its options (:mod:`logitnorm_plugin.workflows.executors`)."""
    group = parser.add_argument_group("where the jobs run")
    group.add_argument("--executor", choices=("inline", "local", "slurm"), default="inline",
                       help="inline (default): train and evaluate in this process; local: a "
                       "process pool on this machine (one GPU per worker); slurm: Slurm job "
                       "arrays through submitit (pip install \"logitnorm-plugin[cluster]\")")
    group.add_argument("--workers", type=int, default=None,
                       help="local: pool size (default: GPUs x --jobs-per-gpu, or the CPUs)")
    group.add_argument("--jobs-per-gpu", type=int, default=1, metavar="K",
                       help="local: K workers (jobs at once) on each GPU (default: 1)")
    group.add_argument("--slurm-partition", default=None, help="slurm: partition")
    group.add_argument("--slurm-time", type=int, default=None, metavar="MINUTES",
                       help="slurm: time limit per job in minutes (default: 60)")
    group.add_argument("--slurm-gpus", type=int, default=None, metavar="N",
                       help="slurm: GPUs per job")
    group.add_argument("--slurm-cpus", type=int, default=None, metavar="N",
                       help="slurm: CPUs per job")
    group.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N",
                       help="slurm: at most N jobs of an array at once")
    group.add_argument("--slurm-arg", action="append", default=None, metavar="KEY=VALUE",
                       help="slurm: any parameter of submitit's update_parameters (e.g. "
                       "slurm_account=abc, mem_gb=16); repeatable")
    group.add_argument("--no-wait", action="store_true",
                       help="slurm: submit and return; `logitnorm-ood gather OUT` writes the "
                       "tables when the jobs are done")


def executor_spec(args):
    """The :class:`~logitnorm_plugin.workflows.executors.ExecutorSpec` of the options, or
    ``None`` for inline."""
    slurm = {}
    for option, key in (("slurm_partition", "slurm_partition"), ("slurm_time", "timeout_min"),
                        ("slurm_gpus", "gpus_per_node"), ("slurm_cpus", "cpus_per_task"),
                        ("slurm_array_parallelism", "slurm_array_parallelism")):
        if getattr(args, option) is not None:
            slurm[key] = getattr(args, option)
    slurm.update(_args.key_values(args.slurm_arg, "--slurm-arg"))
    if args.executor == "inline" and not (slurm or args.no_wait or args.workers is not None
                                          or args.jobs_per_gpu != 1):
        return None
    from logitnorm_plugin.workflows.executors import ExecutorSpec

    return ExecutorSpec(args.executor, workers=args.workers, jobs_per_gpu=args.jobs_per_gpu,
                        wait=not args.no_wait, slurm=tuple(slurm.items()))


def run(args) -> int:
    from logitnorm_plugin.reporting.bench_output import readme_section, update_readme
    from logitnorm_plugin.workflows.bench_request import BenchRequest

    # values first, before pytorch-ood loads: an argument error answers at once
    check_values(epochs=args.epochs, batch_size=args.batch_size, t=args.t,
                 seeds=_args.seeds(args.seeds) if args.seeds else (),
                 num_workers=args.num_workers, lock_timeout=args.lock_timeout)
    check_model_paths(_args.split(args.models))
    if args.update_readme:
        # fail before the run, not after it
        readme_section(Path(args.update_readme), args.readme_section)
    from logitnorm_plugin.workflows.bench import run as run_bench  # torch: after the checks

    result = run_bench(BenchRequest(
        benchmark=args.benchmark,
        models=_args.split(args.models) or None,
        losses=_args.split(args.losses) or list(DEFAULTS["losses"]),
        detectors=_args.split(args.detectors) or list(DEFAULTS["detectors"]),
        seeds=_args.seeds(args.seeds) if args.seeds else list(DEFAULTS["seeds"]),
        device=args.device,
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
        progress=False if args.no_progress else ("epochs" if args.verbose else True),
        plots=not args.no_plots,
        num_workers=args.num_workers,
        threads=_args.threads(args.threads),
        command=_args.command_line("bench") or "logitnorm-ood bench",
        outliers=args.outliers,
        lock_timeout=args.lock_timeout,
    ), executor=executor_spec(args))
    if "submitted" in result:
        return 0
    if args.update_readme:
        update_readme(args.update_readme, result["readme_markdown"], args.readme_section)
        print(f"updated {args.update_readme}")
    return 0
