"""``hf-spectral analyze``: one checkpoint (or every checkpoint of a run) → a printed table + snapshot."""

from __future__ import annotations

import argparse

from hf_spectral.cli.common import add_analysis_arguments, add_output_arguments, analysis_options, is_main_process
from hf_spectral.store import Snapshot

TABLE_COLUMNS = {
    "name": "name",
    "kind": "kind",
    "shape": "shape",
    "dtype": "dtype",
    "normalized_effective_rank": "erank/R",
    "normalized_stable_rank": "srank/R",
    "spectral_norm": "sigma_max",
    "flag": "flag",
}
HEAVY_TAIL_TABLE_COLUMNS = {"alpha": "alpha", "pl_ks_distance": "D", "num_pl_spikes": "pl_spikes", "mp_softrank": "mp_softrank"}


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "analyze", help="spectra of every weight matrix of a checkpoint",
        description="Analyze a .safetensors file, a model folder, a diffusers pipeline, a Trainer run "
        "(every checkpoint-*) or a Hub model id; print a per-layer table and write the snapshot. "
        "Under `accelerate launch` (or torchrun) the SVDs are dealt over the processes by cost; on a machine "
        "without GPUs use `accelerate launch --multi_gpu --num_processes N -m hf_spectral analyze ...` "
        "(accelerate's --cpu starts a single process unless MPI is set up).",
    )
    parser.add_argument("source", metavar="SOURCE", help="file, folder, Trainer output folder or Hub model id")
    add_analysis_arguments(parser)
    add_output_arguments(parser, "snapshot folder (default: spectral/<source name>)", rows="row")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its predicted cost (FLOPs, bytes, "
                        "seconds on this machine) from safetensors headers only: no tensor data is read, no weights "
                        "are downloaded")
    parser.add_argument("--processes", type=int, metavar="N", help="with --dry-run: predict for N processes "
                        "(accelerate launch --num_processes N; default: the processes launched)")
    parser.add_argument("--recalibrate", action="store_true", help="with --dry-run: measure this machine's kernel "
                        "speed again (it is measured once and cached; a busy machine measures slow rates)")
    parser.set_defaults(run=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    from hf_spectral.analyzer import analyze_resolved, analyze_resolved_series, default_output
    from hf_spectral.engine import AnalysisOptions
    from hf_spectral.sources import classify, open_source

    options = AnalysisOptions(**analysis_options(args))
    if args.dry_run:
        from hf_spectral.cli.dry_run import run_dry_run

        return run_dry_run(args, options)
    if args.processes is not None or args.recalibrate:
        from hf_spectral.errors import SpectralError

        raise SpectralError("--processes and --recalibrate apply to --dry-run: add --dry-run (a real run uses "
                            "the processes it is launched with)")
    output = args.output or default_output(args.source)
    # Opened once: a Hub id is looked up (and fetched) one time, a run listed one time.
    found = classify(args.source, revision=args.revision)
    checkpoints = open_source(found, variant=args.variant)
    if not found.is_series:
        snapshot = analyze_resolved(checkpoints, options, source=args.source, output=output)
        if is_main_process():
            print(format_table(snapshot, limit=None if args.all else 40))
            print(format_summary(snapshot))
            print(f"snapshot written to {output}")
        return 0
    snapshots = analyze_resolved_series(checkpoints, options, cache_dir=output)
    if is_main_process():
        for snapshot in snapshots:
            print(f"{snapshot.meta.get('label')}: {format_summary(snapshot)}")
        print(f"{len(snapshots)} snapshots written under {output}")
    return 0


def format_table(snapshot: Snapshot, limit: int | None = 40) -> str:
    """A fixed-width per-layer table of the decomposed matrices, then the skipped tensors."""
    matrices = snapshot.matrices.copy()
    matrices["shape"] = matrices["rows"].astype(str) + "x" + matrices["cols"].astype(str)
    shown = matrices if limit is None else matrices.head(limit)
    columns = dict(TABLE_COLUMNS)
    if "alpha" in shown:  # heavy_tail metrics: alpha and its fit quality before the flag
        flag = columns.pop("flag")
        columns.update(HEAVY_TAIL_TABLE_COLUMNS, flag=flag)
        shown = shown.assign(flag=[_joined(f, h) for f, h in zip(shown["flag"], shown["heavy_tail_flag"])])
    frame = shown[list(columns)].rename(columns=columns)
    # names left-aligned (pandas right-aligns strings), so that the layers of a block line up
    width = max([len("name"), *frame["name"].str.len()])
    frame = frame.rename(columns={"name": "name".ljust(width)})
    lines = [frame.to_string(index=False, float_format=lambda x: f"{x:.4g}",
                             formatters={frame.columns[0]: lambda name: name.ljust(width)})]
    if limit is not None and len(matrices) > limit:
        lines.append(f"... {len(matrices) - limit} more matrices (--all prints every row)")
    skipped = snapshot.skipped
    if len(skipped):
        lines.append(f"skipped {len(skipped)} tensors:")
        for _, row in skipped.head(10).iterrows():
            lines.append(f"  {row['name']} ({row['tensor_shape']}, {row['dtype']}): {row['flag']}")
        if len(skipped) > 10:
            lines.append(f"  ... {len(skipped) - 10} more (see matrices.parquet)")
    return "\n".join(lines)


def format_summary(snapshot: Snapshot) -> str:
    s = snapshot.summary()
    text = f"{s['matrices']} matrices, {s['skipped']} skipped, {s['flagged']} flagged"
    if s.get("flagged"):
        text += " (metrics undefined: zero or non-finite weights)"
    if s.get("rank_deficient"):
        text += f", {s['rank_deficient']} rank-deficient (metrics defined)"
    if "mean_normalized_effective_rank" in s:
        text += f"; mean erank/R {s['mean_normalized_effective_rank']:.4f}, mean srank/R {s['mean_normalized_stable_rank']:.4f}"
    if "mean_alpha" in s:
        undefined = f", {s['alpha_undefined']} without a fit" if s.get("alpha_undefined") else ""
        text += f"; mean alpha {s['mean_alpha']:.3f}{undefined}"
    if snapshot.meta.get("seconds") is not None:
        text += f"; {snapshot.meta['seconds']:.2f} s on {snapshot.meta.get('device')}"
    return text


def _joined(flag: object, heavy_tail_flag: object) -> str:
    parts = [str(flag or ""), f"alpha: {heavy_tail_flag}" if heavy_tail_flag else ""]
    return "; ".join(p for p in parts if p)
