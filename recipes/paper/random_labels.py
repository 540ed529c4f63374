#!/usr/bin/env python
"""Finding 7 of Yunis et al. at small scale: a network that memorizes random labels keeps a higher effective rank in
its middle layers (and settles its top singular vectors later) than the same network fitted to the true labels,
although both reach zero training error.

The paper trains the MLP 3072->256->256->256->10 on CIFAR-10 for 300 epochs (SGD, momentum 0.9, constant lr 1e-3,
no weight decay), once on the true labels and once on one fixed permutation of all labels drawn before the
train/validation split. Here: the same MLP shape on scikit-learn's 8x8 digits (64 inputs, offline), both runs the
same number of epochs, labels permuted by `hf_spectral.experiments.permute_labels`, spectra recorded in the loop by
`hf_spectral.SpectralTracker` and read back by `hf_spectral.dynamics_from_source`.

    python recipes/paper/random_labels.py                      # 2 runs x 300 epochs of 1,617 digits, ~3 min
    python recipes/paper/random_labels.py --epochs 20

Writes <output_dir>/{true,random}/spectral (the records), ranks.csv and random_labels.md; the figure goes to --figure.
"""

import argparse
import sys
from pathlib import Path

import datasets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import hf_spectral

LABELS = ("true", "random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=300, help="the paper's length")
    parser.add_argument("--learning_rate", type=float, default=0.02, help="SGD, momentum 0.9, constant (the paper: 1e-3)")
    parser.add_argument("--batch_size", type=int, default=128, help="the paper's")
    parser.add_argument("--hidden", type=int, default=256, help="width of the 3 hidden layers (the paper's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label_seed", type=int, default=12345)
    parser.add_argument("--output_dir", type=Path, default=Path("runs/paper/random_labels"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/repro_random_labels.png"))
    return parser.parse_args(argv)


def digits_splits(labels: str, seed: int, label_seed: int) -> tuple[tuple, tuple]:
    """Digits as 64 standardized pixels; random labels: ONE fixed permutation of all targets, before the 90/10 split."""
    digits = load_digits()
    pixels = (digits.data - digits.data.mean(0)) / (digits.data.std(0) + 1e-6)
    data = datasets.Dataset.from_dict({"pixels": pixels.astype(np.float32), "label": digits.target})
    if labels == "random":
        data = hf_spectral.experiments.permute_labels(data, column="label", seed=label_seed)
    splits = data.train_test_split(test_size=0.1, seed=seed).with_format("torch")
    columns = [splits[name][:] for name in ("train", "test")]  # every row at once: a dict of tensors
    return tuple((c["pixels"], c["label"]) for c in columns)


def build_model(hidden: int) -> nn.Sequential:
    """64 -> hidden -> hidden -> hidden -> 10, ReLU; layers 0 and 3 are the input and output matrices."""
    sizes = [64, hidden, hidden, hidden, 10]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(-1) == y).float().mean().item()


def train(labels: str, args: argparse.Namespace) -> tuple[pd.DataFrame, nn.Module]:
    """One run; its spectra go to <output_dir>/<labels>/spectral; returns the per-epoch accuracies and the model."""
    (x, y), (x_val, y_val) = digits_splits(labels, args.seed, args.label_seed)
    torch.manual_seed(args.seed)  # the same initialization for both runs
    model = build_model(args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9)
    steps_per_epoch = -(-len(y) // args.batch_size)
    total = args.epochs * steps_per_epoch
    tracker = hf_spectral.SpectralTracker(args.output_dir / labels / "spectral", schedule="log", max_steps=total, top_k=10)
    tracker.step(model, 0)
    generator, step, rows = torch.Generator().manual_seed(args.seed), 0, []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), args.batch_size):
            batch = order[i:i + args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            step += 1
            tracker.step(model, step)
        rows.append({"labels": labels, "epoch": epoch, "step": step, "train_accuracy": accuracy(model, x, y),
                     "val_accuracy": accuracy(model, x_val, y_val), "last_batch_loss": loss.item()})
        if epoch % max(1, args.epochs // 10) == 0 or epoch == args.epochs:
            print(f"{labels:6s} labels  epoch {epoch:4d}  train acc {rows[-1]['train_accuracy']:.3f}  "
                  f"val acc {rows[-1]['val_accuracy']:.3f}")
    tracker.close()
    return pd.DataFrame(rows), model


def spectra(labels: str, args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Normalized effective rank per matrix and step; top-10 agreement of each snapshot with the final one."""
    dynamics = hf_spectral.dynamics_from_source(args.output_dir / labels / "spectral")
    ranks = dynamics.trajectories[["step", "matrix", "normalized_effective_rank"]].assign(labels=labels)
    scores = dynamics.agreement_scores
    agreement = scores[scores["reference_kind"] == "reference"][["step", "matrix", "score"]].assign(labels=labels)
    return ranks, agreement


def plot(history: pd.DataFrame, ranks: pd.DataFrame, agreement: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    matrices = list(dict.fromkeys(ranks["matrix"]))
    colors = dict(zip(matrices, plt.cm.tab10.colors))
    styles = {"true": "-", "random": "--"}
    for labels in LABELS:
        h = history[history["labels"] == labels]
        axes[0].plot(h["epoch"], h["train_accuracy"], ls=styles[labels], color="black", label=f"{labels}: train")
        axes[0].plot(h["epoch"], h["val_accuracy"], ls=styles[labels], color="grey", label=f"{labels}: validation")
        for matrix in matrices:
            r = ranks[(ranks["labels"] == labels) & (ranks["matrix"] == matrix)]
            axes[1].plot(r["step"].clip(lower=1), r["normalized_effective_rank"], ls=styles[labels], color=colors[matrix],
                         label=f"{matrix} ({labels})")
            a = agreement[(agreement["labels"] == labels) & (agreement["matrix"] == matrix)]
            axes[3].plot(a["step"].clip(lower=1), a["score"], ls=styles[labels], color=colors[matrix])
    axes[0].set(xlabel="epoch", ylabel="accuracy", title="fit")
    axes[0].legend(fontsize=7)
    axes[1].set(xscale="log", xlabel="step", ylabel="normalized effective rank", title="rank (solid: true, dashed: random)")
    axes[1].legend(fontsize=6, ncol=2)
    final = ranks[ranks["step"] == ranks.groupby("labels")["step"].transform("max")]
    x = np.arange(len(matrices))
    for offset, labels in ((-0.2, "true"), (0.2, "random")):
        values = final[final["labels"] == labels].set_index("matrix").loc[matrices, "normalized_effective_rank"]
        axes[2].bar(x + offset, values, width=0.4, label=f"{labels} labels")
    axes[2].set_xticks(x, matrices, fontsize=7)
    axes[2].set(ylabel="normalized effective rank at the end", ylim=(0, 1), title="end of training")
    axes[2].legend(fontsize=8)
    axes[3].set(xscale="log", xlabel="step", ylabel="top-10 agreement with the final snapshot",
                title="direction of the top vectors")
    fig.suptitle("Finding 7 at small scale: MLP on sklearn digits, true vs one fixed permutation of the labels")
    fig.tight_layout()
    hf_spectral.plots.save_figure(fig, path.with_suffix(""), (path.suffix.lstrip(".") or "png",))  # atomic
    plt.close(fig)


def markdown(history: pd.DataFrame, ranks: pd.DataFrame, agreement: pd.DataFrame) -> str:
    last = history.groupby("labels").last()
    lines = ["| labels | train acc. end | first epoch at train acc. 1.0 | val. acc. end |", "|---|---|---|---|"]
    for labels in LABELS:
        perfect = history[(history["labels"] == labels) & (history["train_accuracy"] >= 1.0)]["epoch"]
        lines.append(f"| {labels} | {last.loc[labels, 'train_accuracy']:.3f} | "
                     f"{perfect.min() if len(perfect) else 'never'} | {last.loc[labels, 'val_accuracy']:.3f} |")
    steps = sorted(ranks["step"].unique())
    quarter = min(steps, key=lambda s: abs(s - steps[-1] / 4))  # a snapshot a quarter into training
    lines += ["", f"| matrix | norm. eff. rank init | end, true | end, random | top-10 agreement with the end at "
              f"step {quarter}, true | same, random |", "|---|---|---|---|---|---|"]
    for matrix in dict.fromkeys(ranks["matrix"]):
        r = ranks[ranks["matrix"] == matrix]
        a = agreement[(agreement["matrix"] == matrix) & (agreement["step"] == quarter)].set_index("labels")["score"]
        at = {labels: r[r["labels"] == labels].sort_values("step")["normalized_effective_rank"] for labels in LABELS}
        lines.append(f"| `{matrix}` | {at['true'].iloc[0]:.3f} | {at['true'].iloc[-1]:.3f} | {at['random'].iloc[-1]:.3f} | "
                     f"{a.get('true', float('nan')):.3f} | {a.get('random', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, nn.Module]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    runs = {labels: train(labels, args) for labels in LABELS}
    history = pd.concat([runs[labels][0] for labels in LABELS], ignore_index=True)
    parts = [spectra(labels, args) for labels in LABELS]
    ranks = pd.concat([p[0] for p in parts], ignore_index=True)
    agreement = pd.concat([p[1] for p in parts], ignore_index=True)
    ranks.to_csv(args.output_dir / "ranks.csv", index=False)
    text = markdown(history, ranks, agreement)
    (args.output_dir / "random_labels.md").write_text(text + "\n")
    plot(history, ranks, agreement, args.figure)
    print(f"{text}\nfigure: {args.figure}")
    return history, ranks, agreement, {labels: runs[labels][1] for labels in LABELS}


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
