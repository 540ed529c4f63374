"""``hf-spectral sweep``: one recipe run per weight decay (and seed), then one combined report."""

from __future__ import annotations

import argparse
from pathlib import Path

SUMMARY = "sweep.md"


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep", help="run a recipe once per weight decay (and seed) and compare the runs' spectra",
        description="Run RECIPE (a script taking --output_dir --weight_decay --seed, as every hf_spectral recipe does) "
        "once per weight decay and seed, each as its own process, into OUTPUT/wd-<v>-seed-<s>/; then write one report "
        "in OUTPUT/report/: effective rank and the total norm over time per weight decay, the final norm and eval "
        "metric per weight decay, norm collapse flagged. An interrupted sweep resumes: finished runs are skipped. "
        "Flags after -- go to the recipe.",
        epilog="example: hf-spectral sweep recipes/grokking.py --weight_decay 0 0.1 1 --seed 0 1 2 -- --preset demo",
    )
    parser.add_argument("recipe", type=Path, help="the recipe script, e.g. recipes/grokking.py")
    parser.add_argument("--weight_decay", "--weight-decay", type=float, nargs="+", required=True, metavar="V",
                        help="weight decay values, e.g. 0 0.1 1")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], metavar="S", help="seeds (default 0)")
    parser.add_argument("--output", type=Path, default=Path("sweeps/weight_decay"),
                        help="sweep folder (default: sweeps/weight_decay)")
    parser.add_argument("--launcher", help='command that starts each run, e.g. "accelerate launch --multi_gpu '
                        '--num_processes 2" (default: this Python)')
    parser.add_argument("--metric", help="eval metric reported per run (default: the eval accuracy, else eval_loss)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs, run nothing")
    parser.set_defaults(run=run_sweep_command, takes_passthrough=True)


def run_sweep_command(args: argparse.Namespace) -> int:
    from hf_spectral.errors import SpectralError
    from hf_spectral.experiments.sweep import plan_sweep, run_sweep, sweep_tables
    from hf_spectral.plots._common import save_figure
    from hf_spectral.plots.sweep import plot_sweep
    from hf_spectral.atomic import atomic_folder

    recipe_args = args.passthrough
    if args.report_only:
        runs = [r for r in plan_sweep(args.output, args.weight_decay, args.seed) if r.done]
        if not runs:
            raise SpectralError(f"{args.output}: no finished run of this sweep; run it without --report-only")
    else:
        runs = run_sweep(args.recipe, args.output, args.weight_decay, args.seed, recipe_args, args.launcher)
    over_time, table = sweep_tables(runs, metric=args.metric)
    report = args.output / "report"
    with atomic_folder(report) as tmp:  # the report is replaced whole, never left half-written
        for name, frame in (("over_time", over_time), ("runs", table)):
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        save_figure(plot_sweep(over_time, table), tmp / "sweep")
        (tmp / SUMMARY).write_text(_markdown(table, args))
    print(_markdown(table, args))
    print(f"sweep report written to {report}")
    return 0


def _markdown(table, args: argparse.Namespace) -> str:
    metric = table["metric"].dropna().iloc[0] if table["metric"].notna().any() else "metric"
    lines = [f"# Weight-decay sweep of {args.recipe.name}", "", "![sweep](sweep.png)", "",
             f"| weight decay | seed | erank init → final | Σ‖W‖_F init → final | final {metric} | norm collapsed |",
             "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.weight_decay:g} | {row.seed} | {row.erank_init:.3f} → {row.erank_final:.3f} | "
                     f"{row.norm_init:.4g} → {row.norm_final:.4g} | {row.metric_final:.4g} | "
                     f"{'yes' if row.collapsed else 'no'} |")
    return "\n".join(lines) + "\n"
