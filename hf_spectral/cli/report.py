"""``hf-spectral report``: a series of checkpoints (or saved dynamics) → a self-contained HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_spectral.cli.analyze import _is_main, add_analysis_arguments, analysis_options
from hf_spectral.errors import SpectralError

DYNAMICS_META = "dynamics.json"  # a folder written by save_dynamics (CONTRACT: hf_spectral/dynamics/types.py)
DEFAULT_TOP_K = 20  # singular vectors kept per matrix: agreement needs them (as `hf-spectral dynamics`)


def add_series_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE and the options of the commands that turn a series of checkpoints into figures
    (report, card): the same as ``hf-spectral dynamics``, plus the training metric to mark."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="saved dynamics folder, callback record, Trainer run, checkpoints (several), or one Hub model id")
    parser.add_argument("--revisions", metavar="LIST",
                        help="Hub revisions: comma-separated names and/or globs, e.g. step1000,step2000 or 'step*'")
    parser.add_argument("--reference", default="final", metavar="final|first|LABEL|STEP",
                        help="the snapshot agreement is measured against (default: final)")
    parser.add_argument("--top", type=int, default=10, help="diagonal entries averaged by the scores (default 10)")
    parser.add_argument("--cache-dir", type=Path, help="where analyzed snapshots are kept for reuse "
                        "(default for a Trainer run: <run>/spectral_cache)")
    parser.add_argument("--no-alignment", action="store_true", help="skip consecutive-layer alignment")
    parser.add_argument("--metric", help="training metric shown against rank (default: the validation accuracy when logged)")
    parser.add_argument("--threshold", type=float, default=0.9, help="level of --metric to mark (default 0.9)")
    add_analysis_arguments(parser)
    parser.set_defaults(top_k=DEFAULT_TOP_K)
    for action in parser._actions:
        if action.dest == "top_k":
            action.help = f"singular vectors kept per matrix, for agreement (default {DEFAULT_TOP_K})"
        elif action.dest == "alignment":
            action.help = "compute consecutive-layer alignment (the default; see --no-alignment)"


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="a self-contained HTML report of how the spectra changed",
        description="Analyze a series of checkpoints (a Trainer run, a callback record, checkpoints, Hub revisions) "
        "or read saved dynamics, and write a static HTML page (figures embedded, nothing loaded from the network) "
        "with a per-matrix table and a short summary of what changed.",
    )
    add_series_arguments(parser)
    parser.add_argument("--output", type=Path, help="report folder (default: spectral/<source name>/report)")
    parser.add_argument("--title", help="page title (default: from the source)")
    parser.add_argument("--formats", default="png,svg", help="figure files written beside the page (default: png,svg)")
    parser.set_defaults(run=run_report)


def load_dynamics_for(args: argparse.Namespace):
    """The ``Dynamics`` of ``args.sources``: read when it is one saved dynamics folder, else computed."""
    if len(args.sources) == 1 and (Path(args.sources[0]) / DYNAMICS_META).is_file():
        from hf_spectral.dynamics import load_dynamics

        return load_dynamics(Path(args.sources[0]))
    from hf_spectral.dynamics import dynamics_from_source

    if args.revision and args.revisions:
        raise SpectralError("give either --revision or --revisions, not both")
    options = analysis_options(args)
    options["alignment"] = not args.no_alignment
    sources = args.sources[0] if len(args.sources) == 1 else args.sources
    return dynamics_from_source(sources, revisions=args.revisions or args.revision, reference=args.reference,
                                cache_dir=args.cache_dir, top=args.top, variant=args.variant, **options)


def run_report(args: argparse.Namespace) -> int:
    from hf_spectral.analyzer import default_output
    from hf_spectral.report import write_report

    dynamics = load_dynamics_for(args)
    if not _is_main():
        return 0
    output = args.output or default_output(args.sources[0]) / "report"
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    index = write_report(dynamics, output, title=args.title, formats=formats, metric=args.metric, threshold=args.threshold)
    print(f"report written to {index}")
    return 0
