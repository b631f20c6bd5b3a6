"""``logitnorm-ood export``: results in pytorch-ood's table layout, or a ``ModelEntry`` for its
model registry (:mod:`logitnorm_plugin.export`)."""

import argparse
import sys
from pathlib import Path

from logitnorm_plugin.errors import UserError
from logitnorm_plugin.export import FORMATS

HELP = "export results or a model entry for pytorch-ood"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples: logitnorm-ood export results | logitnorm-ood export results --format rst "
        "--out docs/ | logitnorm-ood export --model results/runs/digits-logitnorm-s0"
    )
    parser.add_argument("results_dir", nargs="?", default=None, metavar="RESULTS_DIR",
                        help="folder written by `logitnorm-ood bench` (default: results)")
    parser.add_argument("--format", nargs="+", default=list(FORMATS), metavar="FMT",
                        help="md, csv, json, rst (default: all four)")
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
                        help="with --model: download URL of the uploaded weights (default: a "
                        "https://FILL-IN/... placeholder)")
    parser.add_argument("--weights-out", default=None, metavar="DIR",
                        help="with --model: also copy model.pt to DIR/<key>/model-<hash>.pt "
                        "for upload")


def run(args) -> int:
    from logitnorm_plugin import export, upstream
    from logitnorm_plugin.reporting import upload_keys
    from logitnorm_plugin.runs import read_card

    if args.model is not None:
        if args.results_dir is not None:
            raise UserError("give either RESULTS_DIR or --model RUN_DIR, not both")
        for run_dir in args.model:
            if not Path(run_dir).exists():
                raise UserError(f"run folder {run_dir!r} does not exist")
            read_card(run_dir)  # a clear error for a folder without a model card
        if args.url is not None and len(args.model) > 1:
            raise UserError("--url names one model's weights: export the run folders one at a "
                            "time, each with its own --url")
        keys = upload_keys.export_keys(args.model, key=args.key)
        for run_dir in args.model:
            if args.url is not None:
                upload_keys.check_url(args.url, read_card(run_dir)["sha256"])
            if args.weights_out:
                upload_keys.check_upload_folder(args.weights_out, keys[run_dir],
                                                read_card(run_dir)["sha256"])
        for run_dir in args.model:
            snippet = upstream.model_entry_snippet(run_dir, key=keys[run_dir], url=args.url)
            entry = upstream.build_model_entry(snippet)
            upstream.check_entry(entry, run_dir)
            sys.stdout.write(snippet)
            if args.weights_out:
                target = upstream.copy_weights(run_dir, args.weights_out, key=entry.key)
                print(f"# weights for upload: {target}", file=sys.stderr)
        return 0
    formats = []
    for item in args.format:
        formats += [f.strip().lower().lstrip(".") for f in item.split(",") if f.strip()]
    formats = ["md" if f == "markdown" else f for f in formats]
    written = export.export_results(args.results_dir or "results", out=args.out, formats=formats)
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
        if fmt == "csv":
            print(f"csv provenance: {export.provenance_path(path)}")
    return 0
