#!/usr/bin/env python
"""Finding 4 of Yunis et al. at small scale: keeping the top half of every weight matrix's SVD preserves the model,
keeping the bottom half destroys it.

The paper replaces every matrix but the last by its top-50% (or bottom-50%) rank truncation, re-estimates the
BatchNorm statistics and evaluates without retraining, along training (its Fig. 4). Here: a small VGG-style CNN
with BatchNorm and an MLP trained on scikit-learn's 8x8 digits (offline), evaluated at every checkpoint in full,
top-half and bottom-half form (`hf_spectral.experiments.truncate` + `recompute_batchnorm`), then at the end of
training for kept fractions 0.1 ... 1.0.

    python recipes/paper/truncation.py                         # both models, 30 epochs, ~1 min on one thread
    python recipes/paper/truncation.py --epochs 5 --models mlp

Writes <output_dir>/over_training.csv, by_fraction.csv and truncation.md; the figure goes to --figure.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import hf_spectral

experiments = hf_spectral.experiments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--learning_rate", type=float, default=0.05, help="SGD, momentum 0.9 (the paper's VGG: 0.1)")
    parser.add_argument("--weight_decay", type=float, default=1e-4, help="the paper's VGG setting")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.5, help="the kept share during training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=Path("runs/paper/truncation"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/repro_truncation.png"))
    return parser.parse_args(argv)


# --- data and models ------------------------------------------------------------------------------


def build_model(kind: str) -> nn.Module:
    """cnn: 3x3 convs of 32, 64, 64 channels with BatchNorm (VGG's block), a 2x2 pool, global average pool, Linear.
    mlp: 64 -> 256 -> 256 -> 10 with ReLU, no normalization."""
    if kind == "cnn":
        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        return nn.Sequential(*block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def batches(x: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator | None = None):
    order = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    return [(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, len(y), size)]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(-1) == y).float().mean().item()}


def evaluate_low_rank(model: nn.Module, fraction: float, keep: str, train: tuple, val: tuple) -> dict[str, float]:
    """Every matrix but the last cut to its top (or bottom) ⌈fraction·R⌉ directions, BatchNorm re-estimated on
    the training set (a no-op for the MLP), evaluated on the validation set; the model itself is untouched."""
    truncated = experiments.truncate(model, fraction=fraction, keep=keep)
    experiments.recompute_batchnorm(truncated, batches(*train, 256))
    return evaluate(truncated, *val)


# --- training, with the full / top / bottom evaluation at checkpoints ------------------------------


def checkpoints(epochs: int) -> list[int]:
    """Epochs at which to evaluate: init, then 1, 2, 4, ... (log-spaced) and the last."""
    marks = {0, epochs} | {2**i for i in range(epochs.bit_length()) if 2**i <= epochs}
    return sorted(marks)


def train(kind: str, args: argparse.Namespace, train_set: tuple, val_set: tuple) -> tuple[nn.Module, pd.DataFrame]:
    torch.manual_seed(args.seed)
    model = build_model(kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    marks, rows = checkpoints(args.epochs), []
    for epoch in range(args.epochs + 1):
        if epoch in marks:
            row = {"model": kind, "epoch": epoch, **{f"full_{k}": v for k, v in evaluate(model, *val_set).items()}}
            for keep in ("top", "bottom"):
                scores = evaluate_low_rank(model, args.fraction, keep, train_set, val_set)
                row.update({f"{keep}_{k}": v for k, v in scores.items()})
            rows.append(row)
            print(f"{kind} epoch {epoch:3d}  val loss full {row['full_loss']:.3f}  top {row['top_loss']:.3f}  "
                  f"bottom {row['bottom_loss']:.3f}  |  acc {row['full_accuracy']:.3f} / {row['top_accuracy']:.3f} / "
                  f"{row['bottom_accuracy']:.3f}")
        if epoch == args.epochs:
            break
        model.train()
        for x, y in batches(*train_set, args.batch_size, generator):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        scheduler.step()
    return model, pd.DataFrame(rows)


def by_fraction(kind: str, model: nn.Module, train_set: tuple, val_set: tuple) -> pd.DataFrame:
    """The trained model evaluated with every kept fraction 0.1 ... 1.0 of the top and of the bottom."""
    rows = [{"model": kind, "keep": keep, "fraction": f, **evaluate_low_rank(model, f, keep, train_set, val_set)}
            for keep in ("top", "bottom") for f in np.round(np.linspace(0.1, 1.0, 10), 2)]
    return pd.DataFrame(rows)


# --- report ---------------------------------------------------------------------------------------


def plot(over: pd.DataFrame, fractions: pd.DataFrame, fraction: float, path: Path) -> None:
    kinds = list(dict.fromkeys(over["model"]))
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.6 * len(kinds)), squeeze=False)
    styles = {"full": ("black", "full model"), "top": ("#2a7ab9", f"top {fraction:.0%} of each SVD"),
              "bottom": ("#c0392b", f"bottom {fraction:.0%}")}
    for (time_ax, frac_ax), kind in zip(axes, kinds):
        rows = over[over["model"] == kind]
        for part, (color, label) in styles.items():
            time_ax.plot(rows["epoch"].clip(lower=0.5), rows[f"{part}_loss"], marker="o", color=color, label=label)
        time_ax.set(xscale="log", yscale="log", xlabel="epoch (init at 0.5)", ylabel="validation loss",
                    title=f"{kind}: truncated at each checkpoint, no retraining")
        time_ax.legend(fontsize=8)
        full = rows["full_accuracy"].iloc[-1]
        for keep in ("top", "bottom"):
            part = fractions[(fractions["model"] == kind) & (fractions["keep"] == keep)]
            frac_ax.plot(part["fraction"], part["accuracy"], marker="o", color=styles[keep][0], label=f"keep {keep}")
        frac_ax.axhline(full, color="black", ls="--", lw=1, label="full model")
        frac_ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
        frac_ax.set(xlabel="kept fraction of each SVD", ylabel="validation accuracy", ylim=(0, 1.02),
                    title=f"{kind}: end of training")
        frac_ax.legend(fontsize=8)
    fig.suptitle("Finding 4 at small scale: low-rank truncation of every matrix but the last (sklearn digits)")
    fig.tight_layout()
    hf_spectral.plots.save_figure(fig, path.with_suffix(""), (path.suffix.lstrip(".") or "png",))  # atomic
    plt.close(fig)


def markdown(over: pd.DataFrame, fractions: pd.DataFrame, fraction: float) -> str:
    pct = f"{fraction:.0%}"
    lines = [f"| model | epoch | val. loss full / top {pct} / bottom {pct} | val. acc. full / top {pct} / bottom {pct} |",
             "|---|---|---|---|"]
    for r in over.itertuples():
        lines.append(f"| {r.model} | {r.epoch} | {r.full_loss:.3f} / {r.top_loss:.3f} / {r.bottom_loss:.3f} | "
                     f"{r.full_accuracy:.3f} / {r.top_accuracy:.3f} / {r.bottom_accuracy:.3f} |")
    table = fractions.pivot_table(index=["model", "keep"], columns="fraction", values="accuracy").round(3)
    lines += ["", "Validation accuracy at the end of training, by kept fraction:", "",
              "| model | keep | " + " | ".join(f"{c:g}" for c in table.columns) + " |",
              "|---|---|" + "---|" * len(table.columns)]
    lines += [f"| {m} | {k} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for (m, k), vals in table.iterrows()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, nn.Module]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    train_set, val_set = hf_spectral.digits_splits(args.seed, images=True)
    models, over, fractions = {}, [], []
    for kind in args.models:
        models[kind], history = train(kind, args, train_set, val_set)
        over.append(history)
        fractions.append(by_fraction(kind, models[kind], train_set, val_set))
    over, fractions = pd.concat(over, ignore_index=True), pd.concat(fractions, ignore_index=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    over.to_csv(args.output_dir / "over_training.csv", index=False)
    fractions.to_csv(args.output_dir / "by_fraction.csv", index=False)
    text = markdown(over, fractions, args.fraction)
    (args.output_dir / "truncation.md").write_text(text + "\n")
    plot(over, fractions, args.fraction, args.figure)
    print(f"{text}\nfigure: {args.figure}")
    return over, fractions, models


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
