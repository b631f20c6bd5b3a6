"""``logitnorm-ood export``: results in pytorch-ood's table layout or as OpenOOD leaderboard
rows (:mod:`logitnorm_plugin.reporting.export`, :mod:`logitnorm_plugin.reporting.leaderboard`);
trained
models as a ``ModelEntry`` for pytorch-ood's registry, a patch of that registry, or a Hugging
Face model repository folder (:mod:`logitnorm_plugin.reporting.model_entry`,
:mod:`logitnorm_plugin.reporting`)."""

import argparse
import sys
from pathlib import Path

from logitnorm_plugin._core.errors import UserError, closest_match
from logitnorm_plugin.reporting.export import FORMATS

HELP = "export results or a model entry for pytorch-ood"

#: the format of ``--format`` that writes OpenOOD leaderboard rows
LEADERBOARD_FORMAT = "openood-leaderboard"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples: logitnorm-ood export results | logitnorm-ood export results --format rst "
        "--out docs/ | logitnorm-ood export results --format openood-leaderboard | "
        "logitnorm-ood export --model results/runs/digits-logitnorm-s0 | logitnorm-ood export "
        "--model RUN --hf-card hf/ --results results | logitnorm-ood export --model RUN1 RUN2 "
        "--pytorch-ood-patch registry.patch --weights-out upload/"
    )
    parser.add_argument("results_dir", nargs="?", default=None, metavar="RESULTS_DIR",
                        help="folder written by `logitnorm-ood bench` (default: results)")
    parser.add_argument("--format", nargs="+", default=list(FORMATS), metavar="FMT",
                        help=f"md, csv, json, rst, {LEADERBOARD_FORMAT} (default: md csv json "
                        "rst)")
    parser.add_argument("--nonstandard", action="store_true",
                        help=f"with --format {LEADERBOARD_FORMAT}: write rows of results that "
                        "do not follow OpenOOD's v1.5 protocol, marked as such")
    parser.add_argument("--out", default=None,
                        help="output folder (default: RESULTS_DIR/export)")
    parser.add_argument("--model", default=None, nargs="+", metavar="RUN_DIR",
                        help="print a pytorch-ood ModelEntry(...) for each of these trainer "
                        "run folders instead of exporting tables")
    parser.add_argument("--key", default=None,
                        help="with one --model: registry key (default: arch/dataset/loss/seed "
                        "in pytorch-ood's spelling; runs of one export that share it get their "
                        "loss arguments in the loss part, e.g. logitnorm-t0.02)")
    parser.add_argument("--url", default=None,
                        help="with one --model: download URL of the uploaded weights (default: "
                        "a https://FILL-IN/... placeholder)")
    parser.add_argument("--url-prefix", default=None, metavar="URL",
                        help="with --model: the URLs are URL/<key>/model-<hash>.pt, where "
                        "--weights-out puts the files")
    parser.add_argument("--weights-out", default=None, metavar="DIR",
                        help="with --model: also copy model.pt to DIR/<key>/model-<hash>.pt "
                        "for upload")
    parser.add_argument("--hf-card", default=None, metavar="DIR",
                        help="with one --model: write a Hugging Face model repository folder "
                        "(README.md with model-index, weights, provenance)")
    parser.add_argument("--results", default=None, metavar="RESULTS_DIR",
                        help="with --hf-card: put this model's stored results in the card")
    parser.add_argument("--pytorch-ood-patch", default=None, metavar="FILE",
                        help="with --model: write a unified diff adding the ModelEntry records "
                        "to pytorch-ood's src/pytorch_ood/model/registry.py")


def _models(args) -> int:
    from logitnorm_plugin.reporting import model_entry as upstream
    from logitnorm_plugin.reporting import upload_keys
    from logitnorm_plugin.training.runs import read_card

    if args.results_dir is not None:
        raise UserError("give either RESULTS_DIR or --model RUN_DIR, not both")
    for run in args.model:
        if not Path(run).exists():
            raise UserError(f"run folder {run!r} does not exist")
        read_card(run)  # a clear error for a folder without a model card
    if args.url is not None and len(args.model) > 1:
        raise UserError("--url names one model's weights: export the run folders one at a "
                        "time, each with its own --url")
    if len(args.model) > 1 and (args.key or args.hf_card):
        raise UserError("--key, --url and --hf-card take one --model RUN_DIR")
    if args.results and not args.hf_card:
        raise UserError("--results goes with --hf-card")
    if args.url and (args.url_prefix or args.pytorch_ood_patch):
        raise UserError("--url goes with one ModelEntry; use --url-prefix with several or "
                        "with --pytorch-ood-patch")
    # unique within the export, new to pytorch-ood's registry (issue 21)
    keys = upload_keys.export_keys(args.model, key=args.key)
    for run in args.model:
        sha256 = read_card(run)["sha256"]
        if args.url is not None:
            upload_keys.check_url(args.url, sha256)
        if args.weights_out:
            upload_keys.check_upload_folder(args.weights_out, keys[run], sha256)
    if args.hf_card:
        from logitnorm_plugin.reporting.hf_card import write_hf_card

        written = write_hf_card(args.model[0], args.hf_card, results=args.results,
                                key=args.key)
        for what, path in written.items():
            print(f"{what}: {path}")
        return 0
    if args.pytorch_ood_patch:
        from logitnorm_plugin._core.atomic import write_text
        from logitnorm_plugin.reporting.pytorch_ood_patch import registry_patch

        diff = registry_patch(args.model, url_prefix=args.url_prefix,
                              keys=[keys[run] for run in args.model])
        print(f"pytorch-ood registry patch: {write_text(args.pytorch_ood_patch, diff)}")
    for run in args.model:
        snippet = upstream.model_entry_snippet(run, key=keys[run], url=args.url)
        if args.url_prefix:
            url_of = upstream.build_model_entry(snippet).url.replace(
                upstream.URL_PLACEHOLDER, args.url_prefix.rstrip("/"), 1)
            snippet = upstream.model_entry_snippet(run, key=keys[run], url=url_of)
        entry = upstream.build_model_entry(snippet)
        upstream.check_entry(entry, run)
        if not args.pytorch_ood_patch:
            sys.stdout.write(snippet)
        if args.weights_out:
            target = upstream.copy_weights(run, args.weights_out, key=entry.key)
            print(f"# weights for upload: {target}", file=sys.stderr)
    return 0


def run(args) -> int:
    from logitnorm_plugin.reporting import export

    if args.model is not None:
        return _models(args)
    for flag in ("hf_card", "results", "pytorch_ood_patch", "url_prefix", "weights_out"):
        if getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')} goes with --model RUN_DIR")
    formats = []
    for item in args.format:
        formats += [f.strip().lower().lstrip(".") for f in item.split(",") if f.strip()]
    formats = ["md" if f == "markdown" else f for f in formats]
    unknown = sorted(set(formats) - set(FORMATS) - {LEADERBOARD_FORMAT})
    if unknown:
        known = [*FORMATS, LEADERBOARD_FORMAT]
        near = closest_match(unknown[0], known)
        raise UserError(f"unknown export format(s) {unknown}; choose from {known}"
                        + (f" (closest: {near})" if near else ""))
    results = args.results_dir or "results"
    if LEADERBOARD_FORMAT in formats:
        from logitnorm_plugin.reporting.leaderboard import write_leaderboard

        formats = [f for f in formats if f != LEADERBOARD_FORMAT]
        for what, paths in write_leaderboard(results, out=args.out,
                                             nonstandard=args.nonstandard).items():
            for path in paths:
                print(f"openood {what}: {path}")
    elif args.nonstandard:
        raise UserError(f"--nonstandard goes with --format {LEADERBOARD_FORMAT}")
    if not formats:
        return 0
    written = export.export_results(results, out=args.out, formats=formats)
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
        if fmt == "csv":
            print(f"csv provenance: {export.provenance_path(path)}")
    return 0
