#!/usr/bin/env python
"""Finding 9 of Yunis et al. at small scale: a global magnitude mask keeps the top singular vectors of the weights it
prunes (SVD(mask ⊙ W) agrees with SVD(W)); a random mask of the same per-layer density does not.

The paper takes a one-shot global magnitude mask keeping 5% of VGG-16's weights (all matrices but the last) from
the final dense weights, rewinds to an early checkpoint and retrains with the mask re-applied after every step;
the control is a random mask with the same per-layer density. Here, on scikit-learn's 8x8 digits (offline), an MLP
64->256->256->256->10:

1. train it dense, keeping the weights after epoch 1 (the rewind point);
2. for densities 2% ... 50%: `experiments.magnitude_mask` and `experiments.random_mask(like=...)`, and
   `experiments.mask_agreement` (top-10 S_ii between the SVDs of mask ⊙ W and W, per matrix);
3. at --density (5%), the tickets: both masks on the rewound weights, retrained with re-masking after every step;
   `hf_spectral.compare` sets each ticket's final weights against the dense final ones.

    python recipes/paper/lottery_ticket.py                     # ~1 min on one thread
    python recipes/paper/lottery_ticket.py --epochs 5 --densities 0.05 0.2

Writes <output_dir>/mask_agreement.csv, tickets.csv, lottery_ticket.md, the three final models (.safetensors);
the figure goes to --figure.
"""

import argparse
import copy
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import hf_spectral

experiments = hf_spectral.experiments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rewind_epoch", type=int, default=1, help="the tickets start from the weights after this epoch")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--density", type=float, default=0.05, help="the tickets' density (the paper's 5%%)")
    parser.add_argument("--learning_rate", type=float, default=0.02, help="SGD, momentum 0.9")
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=Path("runs/paper/lottery_ticket"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/repro_lottery_ticket.png"))
    return parser.parse_args(argv)


def build_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(-1) == y).float().mean().item()


@torch.no_grad()
def remask(model: nn.Module, mask: dict[str, torch.Tensor] | None) -> None:
    """Zero the pruned weights (after every optimizer step, as the authors: momentum cannot revive them)."""
    for name, parameter in model.named_parameters():
        if mask is not None and name in mask:
            parameter.mul_(mask[name])


def train(model: nn.Module, args: argparse.Namespace, train_set: tuple, val_set: tuple, name: str,
          mask: dict[str, torch.Tensor] | None = None, rewind_epoch: int | None = None):
    """SGD over `args.epochs`; returns the per-epoch validation accuracy and, with `rewind_epoch`, the weights then."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    x, y = train_set
    remask(model, mask)
    rows, rewound = [{"model": name, "epoch": 0, "val_accuracy": accuracy(model, *val_set)}], None
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), args.batch_size):
            batch = order[i:i + args.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            remask(model, mask)
        rows.append({"model": name, "epoch": epoch, "val_accuracy": accuracy(model, *val_set)})
        if epoch == rewind_epoch:
            rewound = copy.deepcopy(model.state_dict())
    print(f"{name}: validation accuracy {rows[-1]['val_accuracy']:.3f} after {args.epochs} epochs")
    return pd.DataFrame(rows), rewound


def mask_agreements(dense: nn.Module, densities: list[float], seed: int) -> pd.DataFrame:
    """Per density, mask kind and masked matrix: the top-10 agreement of SVD(mask ⊙ W) with SVD(W)."""
    frames = []
    for d in densities:
        magnitude = experiments.magnitude_mask(dense, density=d)
        masks = {"magnitude": magnitude, "random": experiments.random_mask(dense, like=magnitude, seed=seed)}
        for kind, mask in masks.items():
            frames.append(experiments.mask_agreement(dense, mask).assign(target_density=d, mask=kind))
    return pd.concat(frames, ignore_index=True)


def plot(agreement: pd.DataFrame, curves: pd.DataFrame, tickets: pd.DataFrame, density: float, path: Path) -> None:
    fig, (mask_ax, acc_ax, ticket_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"magnitude": "#2a7ab9", "random": "#c0392b", "dense": "black"}
    for (kind, matrix), rows in agreement.groupby(["mask", "matrix"], sort=False):
        mask_ax.plot(rows["target_density"], rows["agreement"], marker="o", color=colors[kind], alpha=0.7,
                     ls={"0.weight": ":", "2.weight": "-", "4.weight": "--"}.get(matrix, "-."),
                     label=f"{kind}, {matrix}")
    densities = sorted(agreement["target_density"].unique())
    mask_ax.set(xscale="log", xlabel="density of the mask (global)", ylabel="top-10 agreement of mask⊙W with W",
                ylim=(0, 1.02), title="pruning the final dense weights")
    mask_ax.set_xticks(densities, [f"{d:.0%}" for d in densities])
    mask_ax.minorticks_off()
    mask_ax.legend(fontsize=7)
    for name, rows in curves.groupby("model", sort=False):
        kind = name.split()[0]
        acc_ax.plot(rows["epoch"], rows["val_accuracy"], color=colors[kind], label=name)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1.02), title=f"tickets at density {density:.0%}")
    acc_ax.legend(fontsize=8)
    x = np.arange(tickets["matrix"].nunique())
    for offset, (kind, rows) in zip((-0.2, 0.2), tickets.groupby("mask", sort=False)):
        ticket_ax.bar(x + offset, rows["agreement"], width=0.4, color=colors[kind], label=f"{kind} ticket")
    ticket_ax.set_xticks(x, list(dict.fromkeys(tickets["matrix"])))
    ticket_ax.set(ylabel="top-10 agreement with the dense final weights", ylim=(0, 1.02),
                  title="retrained ticket vs dense network")
    ticket_ax.legend(fontsize=8)
    fig.suptitle("Finding 9 at small scale: magnitude vs random masks of an MLP on sklearn digits")
    fig.tight_layout()
    hf_spectral.plots.save_figure(fig, path.with_suffix(""), (path.suffix.lstrip(".") or "png",))  # atomic
    plt.close(fig)


def markdown(agreement: pd.DataFrame, curves: pd.DataFrame, tickets: pd.DataFrame) -> str:
    table = agreement.pivot_table(index=["matrix", "mask"], columns="target_density", values="agreement", sort=False)
    subspace = agreement.pivot_table(index=["matrix", "mask"], columns="target_density", values="subspace", sort=False)
    lines = ["Top-10 agreement of SVD(mask ⊙ W) with SVD(W) (in brackets: top-10 subspace overlap), final dense "
             "weights, by global density:", "",
             "| matrix | mask | " + " | ".join(f"{d:g}" for d in table.columns) + " |", "|---|---|" + "---|" * len(table.columns)]
    lines += [f"| `{m}` | {k} | " + " | ".join(f"{v:.3f} ({o:.2f})" for v, o in zip(vals, subspace.loc[(m, k)])) + " |"
              for (m, k), vals in table.iterrows()]
    final = curves.groupby("model", sort=False)["val_accuracy"].last()
    lines += ["", "| network | val. acc. end | top-10 agreement (subspace overlap) with the dense final weights, per matrix |", "|---|---|---|",
              f"| dense | {final.iloc[0]:.3f} | 1 |"]
    for kind, rows in tickets.groupby("mask", sort=False):
        name = next(n for n in final.index if n.startswith(kind))
        lines.append(f"| {name} | {final[name]:.3f} | "
                     + ", ".join(f"`{r.matrix}` {r.agreement:.3f} ({r.subspace:.2f})" for r in rows.itertuples()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    train_set, val_set = hf_spectral.digits_splits(args.seed)
    torch.manual_seed(args.seed)
    dense = build_model()
    curves, rewound = train(dense, args, train_set, val_set, "dense", rewind_epoch=args.rewind_epoch)
    agreement = mask_agreements(dense, sorted(args.densities), args.seed)
    save_file(dense.state_dict(), args.output_dir / "dense.safetensors")
    magnitude = experiments.magnitude_mask(dense, density=args.density)
    masks = {"magnitude": magnitude, "random": experiments.random_mask(dense, like=magnitude, seed=args.seed)}
    all_curves, tickets = [curves], []
    for kind, mask in masks.items():
        ticket = build_model()
        ticket.load_state_dict(rewound)
        name = f"{kind} ticket ({experiments.density(mask):.0%})"
        ticket_curve, _ = train(ticket, args, train_set, val_set, name, mask=mask)
        all_curves.append(ticket_curve)
        path = args.output_dir / f"{kind}_ticket.safetensors"
        save_file(ticket.state_dict(), path)
        layers = hf_spectral.compare(path, args.output_dir / "dense.safetensors", top_k=10, progress=False).layers
        tickets.append(layers[layers["matrix"].isin(list(mask))][["matrix", "agreement", "subspace"]].assign(mask=kind))
    curves, tickets = pd.concat(all_curves, ignore_index=True), pd.concat(tickets, ignore_index=True)
    agreement.to_csv(args.output_dir / "mask_agreement.csv", index=False)
    tickets.to_csv(args.output_dir / "tickets.csv", index=False)
    text = markdown(agreement, curves, tickets)
    (args.output_dir / "lottery_ticket.md").write_text(text + "\n")
    plot(agreement, curves, tickets, args.density, args.figure)
    print(f"{text}\nfigure: {args.figure}")
    return agreement, curves, tickets


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
