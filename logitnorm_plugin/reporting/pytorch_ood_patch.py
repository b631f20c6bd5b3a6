"""Trained models as a patch of pytorch-ood's model registry.

``logitnorm-ood export --model RUN... --pytorch-ood-patch FILE`` writes a unified diff against
the installed pytorch-ood's ``src/pytorch_ood/model/registry.py`` (paths ``a/src/...`` and
``b/src/...``, so ``patch -p1`` or ``git apply`` applies it in a pytorch-ood checkout or source
distribution) that adds one ``ModelEntry(...)`` per run to ``_ENTRIES``: after the last entry of
the same architecture and dataset, else after the last of the same dataset, else at the end of
the list. The entries are those of
:func:`logitnorm_plugin.reporting.model_entry.model_entry_snippet`
(checked against the run's card); ``url_prefix`` replaces the ``https://FILL-IN`` placeholder,
so the URL is ``<url_prefix>/<key>/model-<sha256[:16]>.pt``, the layout ``--weights-out``
writes.

The registry is located with :mod:`ast`, never imported from the text: the patched source is
parsed again and its keys checked for duplicates before the diff is returned. The diff itself
is :func:`difflib.unified_diff` (the standard library's, in the format ``patch`` reads).
"""

from __future__ import annotations

import ast
import difflib
import inspect
from collections.abc import Sequence
from pathlib import Path

from logitnorm_plugin._core.errors import UsageError, UserError
from logitnorm_plugin.reporting import model_entry as upstream
from logitnorm_plugin.training.runs import read_card

__all__ = ["REGISTRY_PATH", "entry_lines", "installed_registry", "insert_entries",
           "registry_patch"]

#: the registry's path inside pytorch-ood's repository and source distribution
REGISTRY_PATH = "src/pytorch_ood/model/registry.py"


def installed_registry() -> tuple[Path, str]:
    """The installed ``pytorch_ood/model/registry.py``: its path and text."""
    from pytorch_ood.model import registry

    path = Path(inspect.getsourcefile(registry))
    return path, path.read_text(encoding="utf-8")


def _literal(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            try:
                return ast.literal_eval(kw.value)
            except ValueError:
                return None
    return None


def _entries_list(tree: ast.Module) -> ast.List:
    for node in tree.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if (isinstance(target, ast.Name) and target.id == "_ENTRIES"
                and isinstance(node.value, ast.List)):
            return node.value
    raise UserError("pytorch-ood's registry.py has no `_ENTRIES = [...]` list: this pytorch-ood "
                    "version keeps its models elsewhere; the patch cannot be made")


def _keys(source: str) -> list[str]:
    entries = _entries_list(ast.parse(source))
    return [_literal(e, "key") for e in entries.elts if isinstance(e, ast.Call)]


def entry_lines(snippet: str) -> list[str]:
    """A snippet of :func:`~logitnorm_plugin.reporting.model_entry.model_entry_snippet` as list
    items: indented by four spaces, the call followed by a comma."""
    lines = snippet.rstrip("\n").split("\n")
    if lines[-1] != ")":
        raise ValueError("not a ModelEntry snippet: it does not end with ')'")
    lines[-1] = "),"
    return [("    " + line) if line else "" for line in lines]


def insert_entries(source: str, entries: Sequence[tuple[str, str, str]]) -> str:
    """``source`` of a registry with the snippets inserted into ``_ENTRIES``.

    :param entries: ``(arch, dataset, snippet)`` per model
    :raises UserError: if a key is already registered or given twice
    """
    listing = _entries_list(ast.parse(source))
    calls = [e for e in listing.elts if isinstance(e, ast.Call)]
    known = [_literal(e, "key") for e in calls]
    lines = source.split("\n")
    inserts: dict[int, list[str]] = {}  # after line number (1-based) -> lines
    for arch, dataset, snippet in entries:
        key = upstream.build_model_entry(snippet).key
        if key in known:
            raise UsageError(f"pytorch-ood's registry already has a model {key!r}; give "
                            "another --key")
        known.append(key)
        same = [e for e in calls if (_literal(e, "arch"), _literal(e, "dataset")) == (
            arch, dataset)] or [e for e in calls if _literal(e, "dataset") == dataset]
        if same:
            after = same[-1].end_lineno
            if not lines[after - 1].rstrip().endswith(","):
                raise UserError("unexpected layout of pytorch-ood's _ENTRIES (an entry "
                                "without a trailing comma)")
        else:  # before the closing bracket of the list
            after = listing.end_lineno - 1
        inserts.setdefault(after, []).extend(entry_lines(snippet))
    for after in sorted(inserts, reverse=True):
        lines[after:after] = inserts[after]
    patched = "\n".join(lines)
    compile(patched, REGISTRY_PATH, "exec")  # a syntax error here would be a bug
    keys = _keys(patched)
    if len(keys) != len(set(keys)):  # pragma: no cover - checked above
        raise RuntimeError("the patched registry has a key twice")
    return patched


def registry_patch(run_dirs: Sequence, url_prefix: str | None = None,
                   keys: Sequence[str | None] | None = None) -> str:
    """The unified diff that adds a ``ModelEntry`` per run folder to the installed
    pytorch-ood's registry.

    :param run_dirs: run folders written by ``logitnorm-ood train``
    :param url_prefix: where the weights are uploaded (``<url_prefix>/<key>/model-<hash>.pt``);
        without it the URLs are the ``https://FILL-IN`` placeholder
    :param keys: registry keys instead of the derived ones (one per run, or ``None``)
    :return: the diff, with ``a/`` and ``b/`` paths relative to the repository root
    """

    _, source = installed_registry()
    keys = list(keys) if keys is not None else [None] * len(run_dirs)
    entries = []
    for run_dir, key in zip(run_dirs, keys):
        snippet = upstream.model_entry_snippet(run_dir, key=key)
        if url_prefix:
            url = upstream.build_model_entry(snippet).url.replace(
                upstream.URL_PLACEHOLDER, url_prefix.rstrip("/"), 1)
            snippet = upstream.model_entry_snippet(run_dir, key=key, url=url)
        entry = upstream.build_model_entry(snippet)
        upstream.check_entry(entry, run_dir)
        card = read_card(run_dir)
        entries.append((card.get("arch"), card.get("dataset"), snippet))
    patched = insert_entries(source, entries)
    return "".join(difflib.unified_diff(
        source.splitlines(keepends=True), patched.splitlines(keepends=True),
        fromfile=f"a/{REGISTRY_PATH}", tofile=f"b/{REGISTRY_PATH}",
    ))
