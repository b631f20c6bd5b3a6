"""``logitnorm-ood tune-t``: choose the LogitNorm temperature on Gaussian-noise validation
(:func:`lp.tune_t`)."""

import argparse
from pathlib import Path

from logitnorm_plugin._core.arg_checks import check_counts, check_values
from logitnorm_plugin._core.conventions import PAPER_FPR_KEY
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.cli import _args
from logitnorm_plugin.cli.bench import add_executor_arguments, executor_spec
from logitnorm_plugin.workflows.t_selection import (
    DEFAULT_GRID,
    METRICS,
    VALIDATION_NOISE_SEED,
    t_text,
)

HELP = "choose the LogitNorm temperature on Gaussian noise"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "example: logitnorm-ood tune-t --dataset digits --grid 0.005,0.01,0.02,0.04,0.08,0.16 "
        "--seeds 0,1,2 --out tune-t/digits --device cpu; then logitnorm-ood train --t-from "
        "tune-t/digits/recommended_t.json"
    )
    parser.add_argument("--dataset", default="digits",
                        help="digits (default, offline), cifar10, cifar100 or an image-folder "
                        "path")
    parser.add_argument("--arch", default=None, help="architecture (default: the recipe's)")
    parser.add_argument("--loss", default="logitnorm",
                        help="objective whose temperature t is tuned (default logitnorm; "
                        "t2fnorm: its tau)")
    parser.add_argument("--recipe", default=None,
                        help="trainer recipe (default: digits for the digits, paper otherwise)")
    parser.add_argument("--grid", nargs="+", default=[",".join(t_text(t) for t in DEFAULT_GRID)],
                        metavar="T", help="temperatures, comma- or space-separated (default: "
                        + ",".join(t_text(t) for t in DEFAULT_GRID) + ")")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default: the recipe's; multistep milestones are "
                        "scaled to it)")
    parser.add_argument("--seeds", nargs="+", default=["0"], metavar="SEED",
                        help="training seeds, comma- or space-separated: 0,1,2 or 0 1 2 "
                        "(default 0)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--acc-margin", type=float, default=0.01,
                        help="accuracy margin of the rule as a fraction (default 0.01 = 1 "
                        "percentage point)")
    parser.add_argument("--metric", choices=list(METRICS), default=PAPER_FPR_KEY,
                        help="validation FPR95 the rule minimises (default: the paper's, "
                        "%(default)s)")
    parser.add_argument("--noise-n", type=int, default=None,
                        help="validation noise images (default: max(1000, validation size))")
    parser.add_argument("--noise-seed", type=int, default=VALIDATION_NOISE_SEED,
                        help="seed of the validation noise (default %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default tune-t/<dataset>)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--data-root", default=None, help="folder with the datasets")
    parser.add_argument("--download", action="store_true", help="download missing data")
    parser.add_argument("--jobs", type=int, default=1,
                        help="grid points trained at once in worker processes (default 1)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA, off on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each run (default: on for CUDA, off on CPU)")
    parser.add_argument("--force", action="store_true",
                        help="recompute points already in the store")
    _args.add_threads(parser)
    add_executor_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    tag = Path(str(args.dataset)).name.lower() or "dataset"
    out = args.out if args.out is not None else str(Path("tune-t") / tag)
    grid = _args.numbers(args.grid, "--grid")
    if not grid:
        raise UserError(f"--grid must be numbers, got {' '.join(args.grid)!r}")
    # values first, before torch loads: an argument error answers at once
    check_values(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 seeds=_args.seeds(args.seeds))
    check_counts(noise_n=args.noise_n, jobs=args.jobs)
    from logitnorm_plugin.workflows.tune_t import tune_t  # torch: after the checks

    tune_t(
        dataset=args.dataset, arch=args.arch, grid=grid,
        epochs=args.epochs, seeds=_args.seeds(args.seeds), out=out, device=args.device,
        recipe=args.recipe, batch_size=args.batch_size, lr=args.lr,
        acc_margin=args.acc_margin, metric=args.metric, noise_n=args.noise_n,
        noise_seed=args.noise_seed, data_root=args.data_root, download=args.download,
        force=args.force, jobs=args.jobs, amp=args.amp, compile=args.compile,
        progress=not args.quiet, command=_args.command_line("tune-t"),
        threads=_args.threads(args.threads), loss=args.loss, executor=executor_spec(args),
    )
    return 0
