#!/usr/bin/env python
"""Finding 5 of Yunis et al. at small scale: more weight decay -> lower effective rank; too much collapses the norm.

The paper sweeps wd in {0, 1e-4, ..., 10} on each of its tasks and finds the normalized effective rank of the
weights falling as the decay grows, until a decay so strong that the norm collapses and nothing is learned. Here:
`hf-spectral sweep` over the grokking recipe (the authors' 1-layer Transformer, AdamW, full batch) on a + b mod 41
for 1,500 steps per weight decay, then one table and one figure from the sweep's records.

    python recipes/paper/weight_decay.py                       # wd 0, 0.1, 1, 10, 100 x 1,500 steps, ~13 min
    python recipes/paper/weight_decay.py --weight_decay 0 1 10 --max_steps 300

Writes <output>/ (the sweep: one run per weight decay, report/) and <output>/weight_decay.md; the figure goes to
--figure (docs/images/repro_weight_decay.png by default).
"""

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import hf_spectral

RECIPE = Path(__file__).resolve().parents[1] / "grokking.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weight_decay", type=float, nargs="+", default=[0, 0.1, 1, 10, 100])
    parser.add_argument("--p", type=int, default=41, help="the modulus (the paper: 113)")
    parser.add_argument("--train_fraction", type=float, default=0.4)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=50, help="evaluation and snapshot interval (steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/paper/weight_decay"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/repro_weight_decay.png"))
    return parser.parse_args(argv)


def run_sweep(args: argparse.Namespace) -> None:
    """`hf-spectral sweep recipes/grokking.py`: one process per weight decay; finished runs are skipped."""
    recipe_flags = ["--preset", "demo", "--p", str(args.p), "--train_fraction", str(args.train_fraction),
                    "--max_steps", str(args.max_steps), "--eval_steps", str(args.every), "--logging_steps",
                    str(args.every), "--spectra_schedule", str(args.every), "--spectra_alignment", "false",
                    "--disable_tqdm", "true"]
    command = [sys.executable, "-m", "hf_spectral", "sweep", str(RECIPE), "--output", str(args.output),
               "--weight_decay", *[f"{v:g}" for v in args.weight_decay], "--seed", str(args.seed), "--metric", "eval_val_accuracy", "--", *recipe_flags]
    subprocess.run(command, check=True)


def final_ranks(args: argparse.Namespace) -> pd.DataFrame:
    """The normalized effective rank of every matrix at the last snapshot, one row per (weight decay, matrix)."""
    rows = []
    for wd in args.weight_decay:
        last = hf_spectral.load_series(args.output / f"wd-{wd:g}-seed-{args.seed}" / "spectral")[-1]
        for row in last.matrices.itertuples():
            rows.append({"weight_decay": wd, "matrix": row.name.removeprefix("layers.0.").removesuffix(".weight"),
                         "normalized_effective_rank": row.normalized_effective_rank})
    return pd.DataFrame(rows)


def train_accuracy(run: Path) -> float:
    """The last logged training-set accuracy of a grokking run (its log history)."""
    history = hf_spectral.load_series(run / "spectral")[-1].meta.get("log_history") or []
    values = [e["eval_train_accuracy"] for e in history if "eval_train_accuracy" in e]
    return float(values[-1]) if values else float("nan")


def results_table(runs: pd.DataFrame, ranks: pd.DataFrame) -> str:
    middle = ranks.pivot(index="weight_decay", columns="matrix", values="normalized_effective_rank")
    lines = ["| weight decay | mean norm. eff. rank init → end | Σ‖W‖_F init → last (median of the last quarter) | train loss end | "
             "train acc. end | val. acc. end | norm collapsed | lowest-rank matrix at the end |",
             "|---|---|---|---|---|---|---|---|"]
    for row in runs.itertuples():
        low = middle.loc[row.weight_decay].idxmin()
        lines.append(f"| {row.weight_decay:g} | {row.erank_init:.3f} → {row.erank_final:.3f} | "
                     f"{row.norm_init:.1f} → {row.norm_final:.2f} ({row.norm_end:.2f}) | {row.loss_final:.3g} | {row.train_accuracy:.3f} | "
                     f"{row.metric_final:.3f} | {'yes' if row.collapsed else 'no'} | "
                     f"`{low}` {middle.loc[row.weight_decay, low]:.3f} |")
    return "\n".join(lines)


def plot(over_time: pd.DataFrame, runs: pd.DataFrame, ranks: pd.DataFrame, path: Path) -> None:
    fig, (rank_ax, norm_ax, final_ax) = plt.subplots(1, 3, figsize=(14, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(runs)))
    for color, (wd, group) in zip(colors, over_time.groupby("weight_decay")):
        collapsed = bool(runs.loc[runs["weight_decay"] == wd, "collapsed"].iloc[0])
        label = f"wd {wd:g}" + (" (norm collapsed)" if collapsed else "")
        rank_ax.plot(group["step"], group["mean_normalized_effective_rank"], color=color, label=label)
        norm_ax.plot(group["step"], group["total_frobenius"], color=color, label=label)
    rank_ax.set(xlabel="step", ylabel="mean normalized effective rank", title="rank over training")
    norm_ax.set(xlabel="step", ylabel="Σ ‖W‖_F", yscale="log", title="norm over training")
    rank_ax.legend(fontsize=8)
    x = np.arange(len(runs))
    for matrix, group in ranks.groupby("matrix", sort=False):
        final_ax.plot(x, group["normalized_effective_rank"], marker="o", alpha=0.6, label=matrix)
    final_ax.plot(x, runs["erank_final"], color="black", lw=2.5, marker="s", label="mean")
    final_ax.set_xticks(x, [f"{v:g}" for v in runs["weight_decay"]])
    final_ax.set(xlabel="weight decay", ylabel="normalized effective rank at the end", title="final rank per matrix")
    final_ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Finding 5 at small scale: grokking Transformer, a + b mod p, AdamW, one run per weight decay")
    fig.tight_layout()
    hf_spectral.plots.save_figure(fig, path.with_suffix(""), (path.suffix.lstrip(".") or "png",))  # atomic
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    args.weight_decay = sorted(args.weight_decay)
    run_sweep(args)
    report = args.output / "report"
    runs = pd.read_parquet(report / "runs.parquet").sort_values("weight_decay").reset_index(drop=True)
    runs["train_accuracy"] = [train_accuracy(args.output / f"wd-{wd:g}-seed-{args.seed}") for wd in runs["weight_decay"]]
    over_time = pd.read_parquet(report / "over_time.parquet")
    ranks = final_ranks(args)
    plot(over_time, runs, ranks, args.figure)
    table = results_table(runs, ranks)
    healthy = runs[~runs["collapsed"]]
    falls = bool(np.all(np.diff(healthy["erank_final"].to_numpy()) <= 0.005))  # 0.005: one snapshot's noise
    verdict = (f"final mean rank {'falls' if falls else 'does NOT fall'} monotonically with weight decay over the "
               f"{len(healthy)} runs without norm collapse; norm collapsed at: "
               f"{', '.join(f'{v:g}' for v in runs.loc[runs['collapsed'], 'weight_decay']) or 'none'}")
    (args.output / "weight_decay.md").write_text(f"{table}\n\n{verdict}\n")
    print(f"{table}\n\n{verdict}\nfigure: {args.figure}")
    return runs


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
