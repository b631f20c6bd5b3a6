"""``logitnorm-ood upstream-patch``: a ``git format-patch`` series that adds what pytorch-ood
lacks (the LogitNorm detector, its tests and docs page) in its own conventions
(:mod:`logitnorm_plugin.reporting.upstream_patch`)."""

import argparse
from pathlib import Path

HELP = "write a git format-patch series adding LogitNorm's detector to pytorch-ood"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples: logitnorm-ood upstream-patch --out patches/ | logitnorm-ood upstream-patch "
        "--out patches/ --source ~/src/pytorch-ood (then: cd ~/src/pytorch-ood && git am "
        "patches/*.patch)"
    )
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the 000N-*.patch files")
    parser.add_argument("--source", default=None, metavar="PATH",
                        help="pytorch-ood checkout, source folder or source distribution "
                        "(.tar.gz) to write the series against (default: the cached source "
                        "distribution of the installed version, see CONTRIBUTING.md)")
    parser.add_argument("--author", default=None, metavar="'NAME <EMAIL>'",
                        help="author of the patches")


def run(args) -> int:
    from logitnorm_plugin._core.arg_checks import out_path
    from logitnorm_plugin._core.errors import UserError
    from logitnorm_plugin.reporting.upstream_patch import SeriesRequest, write_series

    extra = {}
    if args.author is not None:
        if "<" not in args.author or not args.author.endswith(">"):
            raise UserError(f"--author {args.author!r}: expected 'Name <email>'")
        extra["author"] = args.author
    request = SeriesRequest(out=out_path(args.out),
                            source=Path(args.source) if args.source else None, **extra)
    for path in write_series(request):
        print(path)
    return 0
