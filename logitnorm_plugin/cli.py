"""The ``logitnorm-ood`` command line.

Each subcommand lives in the module that does the work; this file only wires them up and turns
:class:`~logitnorm_plugin.errors.UserError` into a one-line message and exit status 2. Modules
are imported only when their subcommand runs, so ``logitnorm-ood list`` stays light.
"""

import argparse
import importlib
import sys
import warnings
from typing import List

from logitnorm_plugin.errors import UserError

# subcommand -> (module that implements it, one-line help). The module provides
# ``cli_arguments(parser)`` and ``cli_main(args) -> int``.
SUBCOMMANDS = {
    "list": ("logitnorm_plugin.registry", "list registered losses, detectors and benchmarks"),
    "train": ("logitnorm_plugin.train", "train a model with any registered loss"),
    "bench": ("logitnorm_plugin.bench", "run a comparison benchmark (default: digits, offline)"),
    "export": ("logitnorm_plugin.export", "export results or a model entry for pytorch-ood"),
    "report": ("logitnorm_plugin.report", "write a Markdown report with plots"),
    "tune-t": ("logitnorm_plugin.tune", "choose the LogitNorm temperature on Gaussian noise"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logitnorm-ood",
        description="LogitNorm for pytorch-ood: train, benchmark and export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: List[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # parse the subcommand first, then let its module add its own arguments
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if known.command is None:
        parser.print_help()
        return 0 if not argv else 2
    # warnings are messages for the user here, not for a developer reading a stack
    warnings.formatwarning = lambda message, category, *rest: (
        f"logitnorm-ood: warning: {message}\n"
    )
    module = importlib.import_module(known._module)
    sub = argparse.ArgumentParser(
        prog=f"logitnorm-ood {known.command}", description=SUBCOMMANDS[known.command][1]
    )
    module.cli_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.cli_main(args) or 0)
    except UserError as exc:
        print(f"logitnorm-ood {known.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"logitnorm-ood {known.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
