"""``hf-spectral compare``: two checkpoints → a per-layer table of agreement, spectra and W_A − W_B."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from hf_spectral.cli.common import add_analysis_arguments, analysis_options, is_main_process, keep_vectors_by_default

if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.dynamics.comparison import Comparison

COLUMNS = {
    "matrix": "matrix",
    "shape": "shape",
    "agreement": "agree@{top}",
    "subspace": "subspace@{top}",
    "erank_a": "erank/R A",
    "erank_b": "erank/R B",
    "sigma_max_a": "sigma_max A",
    "sigma_max_b": "sigma_max B",
    "diff_sigma_max": "sigma_max(A-B)",
    "relative_difference": "|A-B|/|B|",
    "diff_erank": "erank/R (A-B)",
}


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="compare two checkpoints: singular-vector agreement, spectra, spectrum of A - B",
        description="Compare two checkpoints (LMC branches, a pruned and a dense model, a fine-tune and its base): "
        "per matrix the agreement of their top singular vectors (mean of the top diagonal entries of "
        "|U_A^T U_B| * |V_A^T V_B|), both spectra and the spectrum of W_A - W_B.",
    )
    parser.add_argument("a", metavar="A", help="first checkpoint: file, folder or Hub model id")
    parser.add_argument("b", metavar="B", help="second checkpoint: file, folder or Hub model id")
    parser.add_argument("--revision-a", metavar="REV", help="Hub revision of A")
    parser.add_argument("--revision-b", metavar="REV", help="Hub revision of B")
    parser.add_argument("--top", type=int, default=10,
                        help="diagonal entries averaged by the agreement score (default 10)")
    parser.add_argument("--output", type=Path, help="also write the tables (parquet) to this folder")
    parser.add_argument("--all", action="store_true", help="print every matrix (default: up to 40)")
    add_analysis_arguments(parser)
    keep_vectors_by_default(parser, alignment=False)  # no alignment in a comparison
    parser.set_defaults(run=run_compare)
    for action in parser._actions:
        if action.dest == "revision":
            action.help = "Hub revision for both A and B (--revision-a / --revision-b set one)"


def run_compare(args: argparse.Namespace) -> int:
    from hf_spectral.comparison import compare

    result = compare(
        args.a, args.b, revision_a=args.revision_a or args.revision, revision_b=args.revision_b or args.revision,
        variant=args.variant, top=args.top, **analysis_options(args),
    )
    if is_main_process():
        if args.output is not None:
            result.save(args.output)
        print(format_comparison(result, limit=None if args.all else 40))
        if args.output is not None:
            print(f"tables written to {args.output}")
    return 0


def format_comparison(result: Comparison, limit: int | None = 40) -> str:
    """The per-layer table, then the matrices that could not be compared."""
    top = result.meta.get("top", 10)
    layers = result.layers.copy()
    lines = [f"A: {_name(result.meta.get('a'))}", f"B: {_name(result.meta.get('b'))}"]
    if len(layers):
        layers["shape"] = layers["rows"].astype(int).astype(str) + "x" + layers["cols"].astype(int).astype(str)
        shown = layers if limit is None else layers.head(limit)
        frame = shown[list(COLUMNS)].rename(columns={k: v.format(top=top) for k, v in COLUMNS.items()})
        lines.append(frame.to_string(index=False, float_format=lambda x: f"{x:.4g}", max_colwidth=60))
        if limit is not None and len(layers) > limit:
            lines.append(f"... {len(layers) - limit} more matrices (--all prints every row)")
    if len(result.mismatches):
        lines.append(f"not compared ({len(result.mismatches)}):")
        for row in result.mismatches.head(10).to_dict("records"):
            lines.append(f"  {row['matrix']}: {row['reason']}")
        if len(result.mismatches) > 10:
            lines.append(f"  ... {len(result.mismatches) - 10} more (see mismatches.parquet with --output)")
    if result.meta.get("agreement"):
        lines.append(f"agreement: {result.meta['agreement']}")
    return "\n".join(lines)


def _name(described: dict | None) -> str:
    if not described:
        return "?"
    revision = f"@{described['revision']}" if described.get("revision") else ""
    return f"{described.get('source')}{revision}"

