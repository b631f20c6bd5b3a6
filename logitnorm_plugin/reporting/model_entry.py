"""A trained model in pytorch-ood's own form: a ``ModelEntry(...)`` for its model registry.

``logitnorm-ood export --model RUN_DIR`` prints a ready-to-paste ``ModelEntry(...)`` for
``pytorch_ood/model/registry.py`` built from a trainer run folder's model card; the snippet is
checked by building the real :class:`pytorch_ood.model.registry.ModelEntry` from it before it is
printed. The download URL is an explicit placeholder (``https://FILL-IN/...``).

Nothing read from a card is trusted further than it is checked: the card's own
``card_sha256`` and the weights' SHA-256 must match, the model must load (its ``arch_class``
in the closed table of :func:`logitnorm_plugin.registry.architectures.resolve_class`, the
weights' shapes those of its ``arch_kwargs``: :func:`~logitnorm_plugin.training.runs.
load_trained`), and every part of the
registry key (the card's ``arch``/``dataset``/``loss``/``seed``, or ``--key``) must be a plain name
(letters, digits, ``.``, ``_``, ``+``, ``-``; never ``..``), so the upload path
``<weights-out>/<key>/model-<hash>.pt`` stays inside ``--weights-out``.
:func:`build_model_entry` reads a snippet with :mod:`ast`, never ``eval``: only the calls
``ModelEntry(...)`` and ``ImagePreprocessing(...)`` with literal keyword arguments.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.atomic import atomic_write
from logitnorm_plugin._core.conventions import REGISTRY_LOSS_NAMES
from logitnorm_plugin._core.errors import ModelIntegrityError, UntrustedFileError
from logitnorm_plugin.training import runs

__all__ = [
    "URL_PLACEHOLDER",
    "build_model_entry",
    "check_entry",
    "check_key",
    "copy_weights",
    "model_entry_snippet",
    "upstream_key",
]

#: how the URL of an exported model entry starts until the weights are uploaded
URL_PLACEHOLDER = "https://FILL-IN"


# -- model entries for pytorch-ood's registry ---------------------------------------------------


def _upstream_loss(loss: str) -> str:
    """pytorch-ood's registry spelling of a training method (``cross_entropy`` ->
    ``crossentropy``), from the engine's table of registry names."""
    inverse = {ours: theirs for theirs, ours in REGISTRY_LOSS_NAMES.items()}
    return inverse.get(loss, loss)


_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,79}$")


def check_key(key: str, what: str = "--key") -> str:
    """``key`` if each ``/``-separated part is a plain name (letters, digits, ``.``, ``_``,
    ``+``, ``-``, not starting with a dot; never ``..``), the form of pytorch-ood's keys.

    :raises UntrustedFileError: for anything that could leave the upload folder
    """
    parts = str(key).split("/")
    bad = [p for p in parts if not _KEY_PART.match(p) or ".." in p]
    if bad:
        raise UntrustedFileError(
            f"{what}: {str(bad[0])[:80]!r} in the registry key {str(key)[:120]!r} is not a plain "
            "name (letters, digits, '.', '_', '+', '-'; no '..'); the weights are copied to "
            "<weights-out>/<key>/, so a key must not leave that folder"
        )
    return str(key)


def upstream_key(card: Mapping[str, Any]) -> str:
    """The registry key ``arch/dataset/loss/seed`` with pytorch-ood's method names.

    :raises UntrustedFileError: a part of it is not a plain name (e.g. ``../../x``)
    """
    parts = [card["arch"], card["dataset"], _upstream_loss(card["loss"])]
    if card.get("seed"):
        parts.append(card["seed"])
    for part in parts:
        if not isinstance(part, str) or "/" in part:
            raise UntrustedFileError(
                f"the model card's arch/dataset/loss/seed {str(part)[:80]!r} is not a plain name; "
                "refusing to build a registry key and a path from it"
            )
    return check_key("/".join(parts), "the model card's arch/dataset/loss/seed")


def _upload_name(sha256: str) -> str:
    # torch.hub's check_hash reads the hash prefix after the last '-' of the URL's file name
    return f"model-{sha256[:16]}.pt"


def _py(value) -> str:
    """Python source of a JSON-like value (floats with repr, so they round-trip exactly)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value) if isinstance(value, str) else repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_py(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_py(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} into a ModelEntry")


def _py_wrapped(text: str, indent: int, width: int) -> str:
    """A string literal split into implicitly concatenated pieces of at most ``width``
    characters (as pytorch-ood's registry writes long descriptions)."""
    import textwrap

    pieces = textwrap.wrap(text, width - 3, drop_whitespace=False,
                           break_on_hyphens=False) or [""]
    if len(pieces) == 1:
        return _py(text)
    return ("\n" + " " * indent).join(_py(p) for p in pieces)


def _description(card: Mapping[str, Any]) -> str:
    text = str(card.get("description") or "").strip()
    recipe, t = card.get("recipe"), card.get("t")
    additions = []
    if recipe and f"'{recipe}'" not in text and f"recipe {recipe}" not in text:
        additions.append(f"recipe '{recipe}'")
    if t is not None and f"t={t:g}" not in text:
        additions.append(f"t={t:g}")
    if additions:
        text = (text + " " if text else "") + "Trained with " + ", ".join(additions) + "."
    return text


def model_entry_snippet(run_dir, key: str | None = None, url: str | None = None) -> str:
    """Python source of a ``ModelEntry(...)`` for ``pytorch_ood/model/registry.py``.

    Built from the run folder's model card after checking the weights' SHA-256 against it.
    The key follows pytorch-ood's convention ``arch/dataset/loss/seed`` with its method names
    (``crossentropy``, ``logitnorm``, ``oe``, ...); the URL, unless given, is the placeholder
    ``https://FILL-IN/<key>/model-<sha256[:16]>.pt`` (upload the weights under a file name that
    ends in ``-<first hex digits of the hash>.pt``, which torch.hub checks on download).

    :param run_dir: a run folder written by ``logitnorm-ood train`` (or its ``model.json``)
    :param key: registry key to use instead of the derived one
    :param url: the download URL, once known
    :return: the snippet (a Python expression, with comments)
    :raises ModelIntegrityError: if ``model.pt`` does not match the card's hash
    """

    path = Path(run_dir)
    card_dir = path if path.is_dir() else path.parent
    weights, card = runs.verified_weights(path)  # the card's digest, then the weights'
    digest = card["sha256"]
    # export only what loads: the closed table, the card's values, the weights' shapes
    # checked on the meta device before anything is allocated (runs.load_trained)
    runs.load_trained(path)
    key = check_key(key) if key else upstream_key(card)
    placeholder = url is None
    url = url or f"{URL_PLACEHOLDER}/{key}/{_upload_name(digest)}"
    pre = card.get("preprocessing")
    metrics = {k: float(card["metrics"][k]) for k in ("final_accuracy", "best_accuracy")
               if k in (card.get("metrics") or {})}
    lines = [
        f"# {key}: exported by logitnorm-plugin from {_printable(card_dir.name)}/model.json",
    ]
    if placeholder:
        lines.append(
            f"# FILL IN the url: upload {weights.name} as {_upload_name(digest)} and put its "
            "download URL below"
        )
    if not str(card["arch_class"]).startswith("pytorch_ood."):
        lines.append(
            f"# NOTE: arch_class {card['arch_class']} is not part of pytorch-ood: loading needs "
            "logitnorm-plugin installed, or the class added to pytorch_ood.model"
        )
    lines += [
        "ModelEntry(",
        f"    key={_py(key)},",
        f"    arch={_py(card.get('arch'))},",
        f"    dataset={_py(card.get('dataset'))},",
        f"    loss={_py(_upstream_loss(card['loss']) if card.get('loss') else None)},",
        f"    seed={_py(card.get('seed'))},",
        f"    arch_class={_py(card['arch_class'])},",
        f"    arch_kwargs={_py(dict(card['arch_kwargs']))},",
        f"    url={_py(url)},{'  # FILL IN' if placeholder else ''}",
        f"    sha256={_py(digest)},",
    ]
    if pre:
        lines.append(
            f"    preprocessing=ImagePreprocessing(mean={_py(list(pre['mean']))}, "
            f"std={_py(list(pre['std']))}, size={_py(list(pre['size']))}),"
        )
    lines += [
        f"    metrics={_py(metrics)},",
        f"    source={_py(card.get('source'))},",
        f"    description={_py_wrapped(_description(card), 8, 99 - 16)},",
        ")",
    ]
    return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _not_a_snippet(why: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"not a ModelEntry snippet: {why}; only ModelEntry(...) with literal keyword arguments "
        "(and preprocessing=ImagePreprocessing(...)) is read"
    )


def _entry_call(node: ast.AST, allowed: str):
    """Build the object of a ``ModelEntry(...)`` / ``ImagePreprocessing(...)`` call node."""
    from pytorch_ood.model.registry import ImagePreprocessing, ModelEntry

    classes = {"ModelEntry": ModelEntry, "ImagePreprocessing": ImagePreprocessing}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == allowed):
        raise _not_a_snippet(f"expected a call of {allowed}")
    if node.args or any(kw.arg is None for kw in node.keywords):
        raise _not_a_snippet(f"{allowed} takes keyword arguments only")
    kwargs = {}
    for kw in node.keywords:
        if allowed == "ModelEntry" and kw.arg == "preprocessing" and isinstance(kw.value,
                                                                              ast.Call):
            kwargs[kw.arg] = _entry_call(kw.value, "ImagePreprocessing")
            continue
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError) as exc:
            raise _not_a_snippet(f"the value of {kw.arg!r} is not a literal") from exc
    return classes[allowed](**kwargs)


def build_model_entry(snippet: str):
    """Read a snippet of :func:`model_entry_snippet` into pytorch-ood's real ``ModelEntry``.

    The snippet is parsed with :mod:`ast`, never evaluated: the expression must be one call
    ``ModelEntry(...)`` whose keyword arguments are literals, except ``preprocessing``, which
    may be an ``ImagePreprocessing(...)`` call with literal keyword arguments.

    :raises UntrustedFileError: for anything else (also a ``ValueError``)
    """
    try:
        tree = ast.parse(snippet, mode="eval")
    except SyntaxError as exc:
        raise _not_a_snippet(f"a syntax error ({exc.msg})") from exc
    return _entry_call(tree.body, "ModelEntry")


def check_entry(entry, run_dir) -> None:
    """The entry built from the snippet agrees with the card (a safety net before printing)."""
    card = runs.read_card(run_dir)
    problems = []
    if entry.sha256 != card["sha256"]:
        problems.append("sha256")
    if entry.arch_class != card["arch_class"] or dict(entry.arch_kwargs) != card["arch_kwargs"]:
        problems.append("architecture")
    pre = card.get("preprocessing")
    if pre and (list(entry.preprocessing.mean) != list(pre["mean"])
                or list(entry.preprocessing.std) != list(pre["std"])
                or list(entry.preprocessing.size) != list(pre["size"])):
        problems.append("preprocessing")
    if problems:  # pragma: no cover - would be a bug in model_entry_snippet
        raise RuntimeError(f"exported ModelEntry differs from the card in {problems}")


def copy_weights(run_dir, dest, key: str | None = None) -> Path:
    """Copy a run's ``model.pt`` to ``dest/<key>/model-<sha256[:16]>.pt``, the upload layout
    that the placeholder URL of :func:`model_entry_snippet` assumes."""

    source, card = runs.verified_weights(run_dir)
    key = check_key(key) if key else upstream_key(card)
    dest = Path(dest)
    target = dest / key / _upload_name(card["sha256"])
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UntrustedFileError(f"the upload path {str(target)!r} leaves {str(dest)!r}")
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))
    if runs.sha256_file(target) != card["sha256"]:
        raise ModelIntegrityError(f"copy of {source} to {target} does not match its hash")
    return target


