"""``logitnorm-ood list``: the registered losses, detectors and benchmarks with their papers."""

from logitnorm_plugin import registry
from logitnorm_plugin.tables import plain_table

HELP = "list registered losses, detectors and benchmarks"

_PLURALS = {"losses": "loss", "detectors": "detector", "benchmarks": "benchmark"}


def add_arguments(parser) -> None:
    parser.add_argument(
        "kind",
        nargs="?",
        choices=sorted(_PLURALS),
        help="what to list (default: all three)",
    )
    parser.add_argument("--filter", default=None, help="wildcard pattern, e.g. '*entropy*'")


def run(args) -> int:
    kinds = [_PLURALS[args.kind]] if args.kind else ["loss", "detector", "benchmark"]
    for i, kind in enumerate(kinds):
        rows = registry.describe(kind, args.filter)
        if i:
            print()
        print(f"{registry.GROUPS[kind]} ({len(rows)})")
        columns = ["name", "class", "distribution", "paper"]
        if kind in ("detector", "loss"):
            columns.append("notes")
        body = [[row[c] for c in columns] for row in rows]
        print(plain_table([c.upper() for c in columns], body) if rows else "  (none)")
    return 0
