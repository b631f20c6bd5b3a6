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


def run(args) -> int:
    from logitnorm_plugin.reporting.bench_output import readme_section, update_readme
    from logitnorm_plugin.workflows.bench import run as run_bench
    from logitnorm_plugin.workflows.bench_request import BenchRequest

    # values first, before pytorch-ood loads: an argument error answers at once
    check_values(epochs=args.epochs, batch_size=args.batch_size, t=args.t,
                 seeds=_args.seeds(args.seeds) if args.seeds else (),
                 num_workers=args.num_workers, lock_timeout=args.lock_timeout)
    check_model_paths(_args.split(args.models))
    if args.update_readme:
        # fail before the run, not after it
        readme_section(Path(args.update_readme), args.readme_section)
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
    ))
    if args.update_readme:
        update_readme(args.update_readme, result["readme_markdown"], args.readme_section)
        print(f"updated {args.update_readme}")
    return 0
