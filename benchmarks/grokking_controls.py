#!/usr/bin/env python
"""The grokking controls side by side: validation accuracy, mean effective rank and the weights' norm.

The paper's argument (definitions §7, finding 3): with weight decay the network memorizes, then
generalizes while its rank collapses; without weight decay at 30% of the data it does neither; with
90% of the data and no weight decay it generalizes early *with a low rank but a larger norm than
the grokked solution*: rank, not norm, tracks generalization. This script reads finished (or
interrupted) `recipes/grokking.py` runs — their spectral record and log history, no training — and
writes a figure (validation and train accuracy, mean normalized effective rank, the sum over
matrices of the Frobenius norms) and a table into docs/grokking.md between the markers
`<!-- benchmarks/grokking_controls.py: start -->` and `<!-- benchmarks/grokking_controls.py: end -->`.

    python recipes/grokking.py --preset control_no_wd --num_threads 1 --output_dir runs/control_no_wd
    python recipes/grokking.py --preset control_90 --max_steps 10000 --num_threads 1 --output_dir runs/control_90
    python benchmarks/grokking_controls.py "wd 0, 30%=runs/control_no_wd" "wd 0, 90%=runs/control_90" \
        --figure docs/images/grokking_controls.png --title "paper setting (p = 113)"
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import hf_spectral
from grokking_seeds import ROOT, write_docs

DOCS = ROOT / "docs" / "grokking.md"
START = "<!-- benchmarks/grokking_controls.py: start -->"
END = "<!-- benchmarks/grokking_controls.py: end -->"


@dataclass
class Run:
    label: str
    curves: pd.DataFrame  # by step: mean_erank, frobenius (sum over matrices), sigma_max (sum)
    val: pd.Series  # eval_val_accuracy by step
    train: pd.Series  # eval_train_accuracy by step


def load(label: str, folder: Path) -> Run:
    """One run's curves from its spectral record (snapshots) and log history."""
    record = folder / "spectral"
    dyn = hf_spectral.compute_dynamics(hf_spectral.load_series(record))
    ok = dyn.trajectories[dyn.trajectories["status"] == "ok"]
    curves = ok.groupby("step").agg(mean_erank=("normalized_effective_rank", "mean"),
                                    frobenius=("frobenius_norm", "sum"), sigma_max=("spectral_norm", "sum"))
    history = json.loads((record / "log_history.json").read_text())
    series = lambda key: pd.Series({e["step"]: e[key] for e in history if key in e}, dtype=float).sort_index()  # noqa: E731
    return Run(label, curves, series("eval_val_accuracy"), series("eval_train_accuracy"))


def first(series: pd.Series, level: float) -> int | None:
    above = series[series >= level]
    return int(above.index[0]) if len(above) else None


def at(curves: pd.DataFrame, column: str, step: int | None) -> float | None:
    if step is None:
        return None
    return float(curves[column].iloc[int(np.argmin(np.abs(curves.index.to_numpy() - step)))])


def table(runs: list[Run]) -> str:
    fmt = lambda x, spec=".3f": "—" if x is None else format(x, spec)  # noqa: E731
    step = lambda x: "none" if x is None else f"{x:,}"  # noqa: E731
    lines = ["| run | steps | memorized at (train ≥ 99%) | val ≥ 90% at | final val acc | mean erank: init → memorized → "
             "val ≥ 90% → final | Σ‖W‖_F: init → memorized → val ≥ 90% → final | Σσ₁ final |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        memorized, crossed = first(r.train, 0.99), first(r.val, 0.9)
        last = int(r.curves.index[-1])
        ranks = " → ".join(fmt(at(r.curves, "mean_erank", s)) for s in (0, memorized, crossed, last))
        norms = " → ".join(fmt(at(r.curves, "frobenius", s), ".1f") for s in (0, memorized, crossed, last))
        lines.append(f"| {r.label} | {last:,} | {step(memorized)} | {step(crossed)} | {r.val.iloc[-1]:.3f} | {ranks} | "
                     f"{norms} | {r.curves['sigma_max'].iloc[-1]:.1f} |")
    return "\n".join(lines)


def figure(runs: list[Run], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    acc, rank, norm = fig.subplots(1, 3, sharex=True)
    for i, r in enumerate(runs):
        color = f"C{i}"
        acc.plot(r.val.index, r.val.to_numpy(), color=color, lw=1.6, label=r.label)
        acc.plot(r.train.index, r.train.to_numpy(), color=color, lw=0.9, ls=":")
        rank.plot(r.curves.index, r.curves["mean_erank"], color=color, lw=1.6)
        norm.plot(r.curves.index, r.curves["frobenius"], color=color, lw=1.6)
    acc.set_ylabel("accuracy (solid: validation, dotted: train)")
    rank.set_ylabel("mean normalized effective rank")
    norm.set_ylabel("Σ over matrices of ‖W‖_F")
    for ax in (acc, rank, norm):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    acc.legend(fontsize=8, frameon=False, loc="center right")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help='"label=run folder" pairs (a recipe --output_dir each)')
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "grokking_controls.png"))
    parser.add_argument("--title", default="grokking controls")
    parser.add_argument("--no-docs", action="store_true", help="print the table, leave docs/grokking.md alone")
    parser.add_argument("--marker", default="", help="a suffix of the docs markers, for a second table")
    args = parser.parse_args(argv)
    runs = [load(label, Path(folder)) for label, folder in (item.split("=", 1) for item in args.runs)]
    figure(runs, Path(args.figure), args.title)
    start, end = (m.replace(" -->", f"{args.marker} -->") for m in (START, END))
    text = "\n".join([start, f"`python benchmarks/grokking_controls.py {' '.join(repr(r) for r in args.runs)}` "
                      f"(figure: `{Path(args.figure).name}`)", "", table(runs), end])
    print(text)
    if not args.no_docs:
        write_docs(text, DOCS, start, end)
    return text


if __name__ == "__main__":
    main()
