"""The ``logitnorm-ood`` command line: one module per command, the only place argparse lives.

Each command module provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``;
this file wires them up and turns :class:`~logitnorm_plugin._core.errors.UserError`, and an
``OSError`` of a path that cannot be used as given
(:func:`~logitnorm_plugin._core.path_errors.path_error_message`), into a one-line message on
stderr and exit status 2; a closed stdout (``logitnorm-ood list | head -1``) ends the command
quietly. Any other exception keeps its traceback: it is a bug to report. A command's module is
imported only when it runs, so ``logitnorm-ood list`` stays light.
"""

import argparse
import importlib
import logging
import os
import select
import signal
import sys
import warnings
from typing import List

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.path_errors import path_error_message

#: command -> module of this package that implements it
COMMANDS = {
    "list": "list",
    "train": "train",
    "bench": "bench",
    "export": "export",
    "report": "report",
    "tune-t": "tune_t",
    "upstream-patch": "upstream_patch",
    "gather": "gather",
}

#: one line per command for the top-level help (the modules hold the same text as HELP)
SUMMARIES = {
    "list": "list registered losses, detectors and benchmarks",
    "train": "train a model with any registered loss",
    "bench": "run a comparison benchmark (default: digits, offline)",
    "export": "export results or a model entry for pytorch-ood",
    "report": "write a Markdown report with plots",
    "tune-t": "choose the LogitNorm temperature on Gaussian noise",
    "upstream-patch": "write a git format-patch series adding LogitNorm's detector to pytorch-ood",
    "gather": "finish a bench submitted with --no-wait (wait, merge, write the tables)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logitnorm-ood",
        description="LogitNorm for pytorch-ood: train, benchmark and export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        sub.add_parser(name, help=summary, description=summary)
    return parser


def _once_per_message(show):
    """A ``warnings.showwarning`` that prints each distinct message once per command: the same
    warning of each of 120 cells (e.g. pytorch-ood's AUTC of constant scores) is one line."""
    seen = set()

    def showwarning(message, category, filename, lineno, file=None, line=None):
        key = (category, str(message))
        if key not in seen:
            seen.add(key)
            show(message, category, filename, lineno, file, line)

    return showwarning


def _explicit(parser: argparse.ArgumentParser, argv: List[str]) -> frozenset:
    """The options given on the command line (not left at their defaults): the same parser
    parsed again with every default suppressed."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return frozenset(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``poll`` reports an error on its
    write end); where ``poll`` is missing, a broken pipe is taken to be stdout's."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a file (a captured stream)
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _drop_stdout() -> None:
    """Point the file descriptor of stdout at ``os.devnull``: what is still buffered for a
    closed pipe is dropped instead of failing again when the interpreter exits."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a captured stream): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: List[str] | None = None) -> int:
    # not list(argv): once `logitnorm-ood list` ran in this process, importing the submodule
    # cli.list made `list` in this module's namespace that module, not the builtin
    argv = sys.argv[1:] if argv is None else [*argv]
    parser = build_parser()
    # parse the command first, then let its module add its own arguments
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if known.command is None:
        parser.print_help()
        return 0 if not argv else 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[known.command]}")
    sub = argparse.ArgumentParser(
        prog=f"logitnorm-ood {known.command}", description=module.HELP
    )
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    args.explicit = _explicit(sub, argv[1:])
    # warnings are messages for the user here, not for a developer reading a stack: one line
    # each, each distinct message once (restored afterwards, for callers of main())
    shown = warnings.showwarning, warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: (
        f"logitnorm-ood: warning: {message}\n"
    )
    warnings.showwarning = _once_per_message(warnings.showwarning)
    # the package's diagnostics (logging) as one line each on stderr; stdout stays for results
    # made per call, so it writes to the stderr of this call (pytest's capsys swaps it)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("logitnorm-ood: %(message)s"))
    logger = logging.getLogger("logitnorm_plugin")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at the interpreter's exit
        return status
    except UserError as exc:
        print(f"logitnorm-ood {known.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # another pipe (a worker's): not the reader of our output going away
        # `logitnorm-ood list | head -1`: the reader of stdout is gone; stop quietly, as Unix
        # tools do (their status is 128 + SIGPIPE)
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except OSError as exc:
        message = path_error_message(exc)  # a path that cannot be used as given
        if message is None:
            raise
        print(f"logitnorm-ood {known.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"logitnorm-ood {known.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning, warnings.formatwarning = shown
        logger.removeHandler(handler)
        logger.setLevel(level)

