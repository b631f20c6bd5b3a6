"""``logitnorm-ood list``: the registered losses, detectors and benchmarks with their papers."""

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.tables import plain_table
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.registry import listing

HELP = "list registered losses, detectors and benchmarks"

_PLURALS = {"losses": "loss", "detectors": "detector", "benchmarks": "benchmark"}


def add_arguments(parser) -> None:
    parser.epilog = (
        "examples: logitnorm-ood list | logitnorm-ood list detectors | "
        "logitnorm-ood list detectors 'm*' | logitnorm-ood list '*entropy*'"
    )
    parser.add_argument(
        "words", nargs="*", metavar="[KIND] [PATTERN]",
        help="what to list: losses, detectors or benchmarks (default: all three), then "
        "optionally a wildcard pattern, e.g. 'm*' (as lp.list_detectors('m*'))",
    )
    parser.add_argument("--filter", default=None, help="wildcard pattern, e.g. '*entropy*'")


def _kind_and_pattern(words, option):
    """``[KIND] [PATTERN]`` from the positional words (and ``--filter``). A pattern needs a
    wildcard (``*``, ``?``, ``[``), so that a mistyped kind is an error, not an empty list."""
    words = list(words)
    kind = words.pop(0).lower() if words and words[0].lower() in _PLURALS else None
    if len(words) > 1 or (words and option is not None):
        raise UserError("list takes a kind (losses, detectors, benchmarks) and at most one "
                        f"pattern, got {' '.join(_args_text(kind, words, option))}")
    if words and not any(c in words[0] for c in "*?["):
        raise UserError(f"invalid choice: {words[0]!r} (choose from "
                        f"{', '.join(sorted(_PLURALS))}; a pattern needs a wildcard, e.g. "
                        f"'{words[0]}*')")
    return kind, (words[0] if words else option)


def _args_text(kind, words, option):
    return [*([kind] if kind else []), *map(repr, words),
            *([f"--filter {option!r}"] if option is not None else [])]


def run(args) -> int:
    kind, pattern = _kind_and_pattern(args.words, args.filter)
    kinds = [_PLURALS[kind]] if kind else ["loss", "detector", "benchmark"]
    for i, kind in enumerate(kinds):
        rows = listing.describe(kind, pattern)
        if i:
            print()
        print(f"{registry.GROUPS[kind]} ({len(rows)})")
        columns = ["name", "class", "distribution", "paper"]
        if kind in ("detector", "loss"):
            columns.append("notes")
        body = [[row[c] for c in columns] for row in rows]
        print(plain_table([c.upper() for c in columns], body) if rows else "  (none)")
    return 0
