"""``logitnorm-ood train``: train a model with any registered loss (:func:`lp.train`)."""

import argparse
import os
from pathlib import Path

from logitnorm_plugin._core.arg_checks import check_values
from logitnorm_plugin.cli import _args
from logitnorm_plugin.training.request import TrainRequest

HELP = "train a model with any registered loss"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples: logitnorm-ood train --dataset digits --loss cross_entropy | "
        "logitnorm-ood train --dataset cifar10 --data-root data --loss logitnorm "
        "--loss-arg t=0.04 --recipe paper --device cuda --out runs/c10-ln | "
        "torchrun --nproc_per_node 4 -m logitnorm_plugin.cli train --dataset cifar10 ..."
    )
    parser.add_argument("--dataset", default="digits",
                        help="digits (default, offline), cifar10, cifar100 or an image folder")
    parser.add_argument("--data-root", default=None, help="folder with the datasets")
    parser.add_argument("--download", action="store_true", help="download missing CIFAR data")
    parser.add_argument("--arch", default=None,
                        help="wrn-40-2, resnet18-32x32 or digits-cnn (default: the recipe's)")
    parser.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="architecture argument, e.g. drop_rate=0.0 (repeatable)")
    parser.add_argument("--loss", default="logitnorm",
                        help="any name of the pytorch_ood.losses group (default: logitnorm)")
    parser.add_argument("--loss-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="loss constructor argument, e.g. t=0.04 (repeatable)")
    parser.add_argument("--outliers", default=None, metavar="NAME|FOLDER",
                        help="auxiliary outliers for objectives that need them (outlier_exposure"
                        ", energy_regularized, ...): digits_jigsaw (the digits, offline), "
                        "tinyimages300k, tinyimagenet (under --data-root) or an image folder")
    parser.add_argument("--outlier-ratio", type=float, default=None, metavar="R",
                        help="outlier images per ID image in a step (default: the objective's "
                        "published ratio, 2 for outlier_exposure and energy_regularized)")
    parser.add_argument("--recipe", default=None,
                        help="paper, openood or digits (default: digits for the digits, "
                        "paper otherwise)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--out", default=None,
                        help="run folder (default runs/<dataset>-<arch>-<loss>-s<seed>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last intact checkpoint, with "
                        "the configuration stored there (options given as well must agree "
                        "with it)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA, off on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on for CUDA, off on CPU)")
    parser.add_argument("--t-from", default=None, metavar="JSON",
                        help="recommended_t.json of `logitnorm-ood tune-t`: use its chosen_t")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms (bit-for-bit repeatable, slower)")
    _args.add_threads(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    # values first, before torch loads: an argument error answers at once
    check_values(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seeds=[args.seed])
    from logitnorm_plugin._core.device import resolve_threads, torch_threads
    from logitnorm_plugin.training.loop import run_training

    kwargs = _train_kwargs(args)
    if args.resume and args.out:
        kwargs = _stored_kwargs(args, kwargs)
    request = TrainRequest(**kwargs)  # the one request object of this command
    threads = resolve_threads(_args.threads(args.threads), args.device, request.dataset)
    with torch_threads(threads):
        result = run_training(request)
    if int(os.environ.get("RANK", "0")) == 0:
        card = result.card
        print(
            f"{card['key']}: final accuracy {card['metrics']['final_accuracy']:.4f} "
            f"(best {card['metrics']['best_accuracy']:.4f}), "
            f"{card['wall_time_s']:.1f}s of training; run folder: {result.run_dir}"
        )
    return 0


def _train_kwargs(args) -> dict:
    return dict(
        dataset=args.dataset,
        arch=args.arch,
        arch_kwargs=_args.key_values(args.arch_arg, "--arch-arg") or None,
        loss=args.loss,
        loss_kwargs=_args.key_values(args.loss_arg),
        outliers=args.outliers,
        outlier_ratio=args.outlier_ratio,
        recipe=args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        out=args.out,
        resume=args.resume,
        amp=args.amp,
        compile=args.compile,
        data_root=args.data_root,
        download=args.download,
        t_from=args.t_from,
        deterministic=args.deterministic,
        progress=not args.quiet,
    )


#: option -> the train() arguments it sets, that --resume takes from the run folder instead
_STORED = {
    "dataset": ("dataset",), "arch": ("arch",), "arch_arg": ("arch_kwargs",),
    "loss": ("loss",), "loss_arg": ("loss_kwargs",), "outliers": ("outliers",),
    "outlier_ratio": ("outlier_ratio",), "recipe": ("recipe",), "epochs": ("epochs",),
    "batch_size": ("batch_size",), "lr": ("lr",), "seed": ("seed",), "t_from": ("t_from",),
}


def _stored_kwargs(args, kwargs: dict) -> dict:
    """``--resume``: the configuration stored in the run folder, for every option not given on
    the command line (the ones given are compared with it by the trainer)."""
    from logitnorm_plugin.training.runs import CONFIG_FILE, read_config

    if not (Path(args.out) / CONFIG_FILE).is_file():
        return kwargs  # nothing stored: the trainer says what is missing
    stored = read_config(args.out)
    explicit = getattr(args, "explicit", None)
    given = set(explicit) if explicit is not None else set(_STORED)
    out = dict(kwargs)
    # arguments of another loss or architecture than the stored one are not the stored ones
    if "loss" in given and args.loss != stored.get("loss"):
        given |= {"loss_arg", "outliers", "outlier_ratio"}
    if "arch" in given and args.arch != stored.get("arch"):
        given.add("arch_arg")
    for option, names in _STORED.items():
        if option in given:
            continue
        for name in names:
            out[name] = stored.get(name)
    if "arch_arg" not in given and out["arch_kwargs"]:
        # the stored arguments are resolved: the class count and input planes come from the data
        out["arch_kwargs"] = {k: v for k, v in out["arch_kwargs"].items()
                              if k not in ("num_classes", "in_channels")} or None
    if "t_from" not in given:
        out["t_from"] = None  # its value is in the stored loss arguments
    if "outlier_ratio" not in given and stored.get("outliers") is None:
        out["outlier_ratio"] = None
    return out
