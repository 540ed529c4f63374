"""``hf-spectral report``: a series of checkpoints (or saved dynamics) → a self-contained HTML page."""

from __future__ import annotations

import argparse

from hf_spectral.cli.common import add_output_arguments, add_series_arguments, is_main_process, load_dynamics_for


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="a self-contained HTML report of how the spectra changed",
        description="Analyze a series of checkpoints (a Trainer run, a callback record, checkpoints, Hub revisions) "
        "or read saved dynamics, and write a static HTML page (figures embedded, nothing loaded from the network) "
        "with a per-matrix table and a short summary of what changed.",
    )
    add_series_arguments(parser, figures=True)
    add_output_arguments(parser, "report folder (default: spectral/<source name>/report)", rows=None)
    parser.add_argument("--title", help="page title (default: from the source)")
    parser.add_argument("--formats", default="png,svg", help="figure files written beside the page (default: png,svg)")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from hf_spectral.analyzer import default_output
    from hf_spectral.report import write_report

    dynamics = load_dynamics_for(args)
    if not is_main_process():
        return 0
    output = args.output or default_output(args.sources[0]) / "report"
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    index = write_report(dynamics, output, title=args.title, formats=formats, metric=args.metric, threshold=args.threshold)
    print(f"report written to {index}")
    return 0
