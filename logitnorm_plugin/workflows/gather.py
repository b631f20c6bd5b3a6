"""``logitnorm-ood gather OUT``: the end of a bench submitted with ``--no-wait``.

The bench recorded its arguments and its Slurm jobs in ``OUT/workflow/submission.json``.
:func:`gather` runs that bench again with an executor that submits nothing: it waits for the
recorded jobs (one line per finished job), reports the failed ones like the bench would (one
line each, the last lines of its log, exit status 2), merges their shards into
``OUT/results.sqlite`` and writes the same tables, plots and JSON as a bench that waited.
From a login node: it trains and evaluates nothing itself.
"""

from __future__ import annotations

from logitnorm_plugin.workflows.bench import run as run_bench
from logitnorm_plugin.workflows.bench_request import BenchRequest
from logitnorm_plugin.workflows.executors import ExecutorSpec
from logitnorm_plugin.workflows.plan import read_call

__all__ = ["gather"]


def gather(out, progress: bool = True, stdout=None) -> dict:
    """Wait for the jobs of the ``--no-wait`` bench in ``out``, merge them, write its tables.

    :return: what :func:`logitnorm_plugin.workflows.bench.run` returns
    :raises UserError: no submission in ``out``; jobs failed (one line each)
    """
    call = dict(read_call(out)["call"])
    call["progress"] = progress and call.get("progress", True)
    spec = ExecutorSpec("slurm", gather=True)
    return run_bench(BenchRequest(**call), executor=spec, stdout=stdout)
