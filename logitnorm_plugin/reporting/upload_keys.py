"""Registry keys of exported models that never collide.

pytorch-ood's key ``arch/dataset/loss/seed`` does not say how a model was trained beyond its
loss; two runs of one loss with different arguments (a temperature sweep) would share it, and
their weights one upload folder. :func:`export_keys` gives each run of one export its key: the
plain key where it is unique; where several runs share it and differ in the loss's arguments
(or the recipe), those values join the loss part (``logitnorm-t0.02``); any other collision,
and any key pytorch-ood's registry already holds, is refused with the fix (``--key``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.errors import UsageError
from logitnorm_plugin._core.model_groups import model_configuration
from logitnorm_plugin.reporting.model_entry import _upload_name, check_key, upstream_key
from logitnorm_plugin.training import runs

__all__ = ["check_upload_folder", "check_url", "export_keys", "registry_keys"]

#: how torch.hub finds the hash prefix in a download's file name (``torch.hub.HASH_REGEX``)
_HUB_HASH = re.compile(r"-([a-f0-9]*)\.")


def registry_keys() -> list[str]:
    """The keys of pytorch-ood's own model registry."""
    from pytorch_ood.model import registry  # pytorch-ood only when a model is exported

    return list(registry.list_models())


def _text(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _tag(configs: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> str | None:
    """What sets ``config`` apart from ``configs`` as a key suffix (loss arguments, recipe);
    ``None`` when they differ in something else too (or in nothing)."""
    fields = {k for c in configs for k in set(c) | set(config) if c.get(k) != config.get(k)}
    fields -= {"loss_class", "t", "recipe_description"}
    mine = config.get("loss_kwargs") or {}
    args = {k for c in configs for o in [c.get("loss_kwargs") or {}]
            for k in set(o) | set(mine) if o.get(k) != mine.get(k)}
    rest = fields - {"loss_kwargs", "recipe"}
    if rest or not (args or "recipe" in fields):
        return None
    parts = [f"{k}{_text(mine.get(k))}" for k in sorted(args)]
    if "recipe" in fields:
        parts.append(_text(config.get("recipe")))
    return "-".join(parts)


def export_keys(run_dirs: Sequence, key: str | None = None,
                known: Sequence[str] | None = None) -> dict[str, str]:
    """Run folder -> its registry key, unique within the export and new to pytorch-ood.

    :param run_dirs: trainer run folders exported together
    :param key: the key given with ``--key`` (one run folder only)
    :param known: keys that exist already (default: pytorch-ood's registry)
    :raises UsageError: a key shared by runs that cannot be told apart, or one pytorch-ood's
        registry has, each with the fix
    """
    run_dirs = [str(r) for r in run_dirs]
    if key is not None and len(run_dirs) > 1:
        raise UsageError("--key names one model: export the run folders one at a time, each "
                         "with its own --key")
    cards = {r: runs.read_card(r) for r in run_dirs}
    keys = {r: check_key(key) if key else upstream_key(cards[r]) for r in run_dirs}
    shared: dict[str, list[str]] = {}
    for r, k in keys.items():
        shared.setdefault(k, []).append(r)
    for k, members in shared.items():
        if len(members) < 2:
            continue
        configs = {r: model_configuration(cards[r].get("config") or {}) for r in members}
        for r in members:
            tag = _tag([configs[o] for o in members if o != r], configs[r])
            if tag is None:
                others = ", ".join(o for o in members if o != r)
                raise UsageError(
                    f"run folders {r} and {others} both export as {k!r}; give each its own key: "
                    f"export them one at a time with --model RUN --key {k}-<what sets it apart>"
                )
            parts = k.split("/")
            parts[2] = f"{parts[2]}-{tag}"
            keys[r] = check_key("/".join(parts))
    if len(set(keys.values())) < len(keys):
        raise UsageError("the run folders still share keys after adding their loss arguments "
                         f"({sorted(keys.values())}); export them one at a time with --key")
    existing = set(registry_keys() if known is None else known)
    for r, k in keys.items():
        if k in existing:
            raise UsageError(
                f"{k!r} ({r}) is already a key of pytorch-ood's model registry; uploading under "
                f"it would replace or shadow that entry: choose a new one with --key, e.g. "
                f"--key {k}-<your tag>"
            )
    return keys


def check_upload_folder(dest, key: str, sha256: str) -> None:
    """Refuse to put a second model into one upload folder ``dest/<key>/``.

    :raises UsageError: the folder holds the weights of another model
    """
    folder = Path(dest) / key
    other = sorted(p.name for p in folder.glob("model-*.pt") if p.name != _upload_name(sha256))
    if other:
        raise UsageError(
            f"the upload folder {folder} already holds another model's weights ({other[0]}): "
            f"two models would share the key {key!r}; give this one its own with --key"
        )


def check_url(url: str, sha256: str) -> str:
    """``url`` if its file name carries a prefix of the weights' SHA-256 the way ``torch.hub``
    reads it (``model-<hex>.pt``), so pytorch-ood's loader can verify the download.

    :raises UsageError: a file name without it, or with another model's hash
    """
    name = url.rstrip("/").rpartition("/")[2]
    match = _HUB_HASH.search(name)
    prefix = match.group(1) if match else ""
    if len(prefix) < 8 or not sha256.startswith(prefix):
        raise UsageError(
            f"--url {url!r}: torch.hub checks a download against the hex digits after the last "
            f"'-' of its file name, and {name!r} does not carry this model's "
            + ("hash" if not prefix else f"hash (it has {prefix!r})")
            + f"; upload the file as {_upload_name(sha256)} and give that URL"
        )
    return url
