"""``logitnorm-ood report``: a Markdown report with figures from a results folder
(:func:`logitnorm_plugin.reporting.report.write_report`)."""

import argparse

from logitnorm_plugin.reporting.report import BASELINE

HELP = "write a Markdown report with plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", nargs="?", default="results", metavar="RESULTS_DIR",
                        help="folder written by `logitnorm-ood bench` (default: results, as "
                        "for export)")
    parser.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/report)")
    parser.add_argument("--runs", nargs="+", default=[], metavar="DIR",
                        help="run folders (or folders of them) beyond RESULTS_DIR/runs")
    parser.add_argument("--baseline", default=BASELINE,
                        help="objective the others are compared with (default: cross_entropy)")
    parser.add_argument("--data-root", default=None,
                        help="data folder of the benchmark (for the reliability diagrams)")
    parser.add_argument("--device", default="cpu",
                        help="device for recomputing ID logits (default: cpu)")
    parser.add_argument("--no-figures", action="store_true", help="tables only, no PNGs")


def run(args) -> int:
    from logitnorm_plugin.reporting.report import write_report

    report = write_report(args.results_dir, out=args.out, runs=args.runs,
                          baseline=args.baseline, data_root=args.data_root, device=args.device,
                          figures=not args.no_figures)
    print(f"report: {report.path}")
    for fig in report.figures:
        print(f"figure: {fig}")
    for note in report.notes:
        print(f"not shown: {note}")
    return 0
