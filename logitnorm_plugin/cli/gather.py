"""``logitnorm-ood gather OUT``: finish a bench submitted with ``--executor slurm --no-wait``
(:func:`logitnorm_plugin.workflows.gather.gather`)."""

import argparse

HELP = "finish a bench submitted with --no-wait (wait, merge, write the tables)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the --out folder of the submitted bench")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")


def run(args) -> int:
    from logitnorm_plugin.workflows.gather import gather

    gather(args.out, progress=not args.no_progress)
    return 0
