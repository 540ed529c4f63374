"""Full-batch training with the HF Trainer (the paper's grokking and small-data experiments): a
dataset whose every item is the whole, ready batch, so the Trainer takes one optimizer step per
item without collating thousands of rows each time."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100  # ignored by the Trainer's losses and by hf_spectral.accuracy_metrics
# Set on a full batch's tensors, not on its dict: the Trainer copies item dicts to drop unused columns.
MARK = "_hf_spectral_full_batch"


class FullBatch(torch.utils.data.Dataset):
    """``length`` items, each the same ready batch (a dict) of all rows of ``split`` (``columns`` as tensors).

    Under ``num_processes`` processes (DDP) each holds an equal shard (``process_index``), the last
    padded with copies whose ``label_column`` is -100 (ignored), so that the gradients averaged over
    processes are the full-batch gradient. ``length``: steps to serve (e.g. max_steps × processes)."""

    def __init__(self, split: Any, length: int, process_index: int = 0, num_processes: int = 1, *,
                 columns: Sequence[str] = ("input_ids", "labels"), label_column: str = "labels") -> None:
        tensors = {name: torch.as_tensor(split[name]) for name in columns}
        rows = len(tensors[label_column])
        shard = math.ceil(rows / num_processes)
        pad = shard * num_processes - rows
        if pad:
            for name, tensor in tensors.items():
                filler = torch.full_like(tensor[:pad], IGNORE_INDEX) if name == label_column else tensor[:pad]
                tensors[name] = torch.cat([tensor, filler])
        mine = slice(process_index * shard, (process_index + 1) * shard)
        self.batch = {name: tensor[mine] for name, tensor in tensors.items()}
        for tensor in self.batch.values():
            setattr(tensor, MARK, True)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


def full_batch_collate(features: list[Any]) -> Any:
    """``Trainer(data_collator=...)``: a :class:`FullBatch` item as it is; other rows stacked
    (``torch.utils.data.default_collate``), so one collator serves full batches and minibatches."""
    if len(features) == 1 and all(getattr(value, MARK, False) for value in features[0].values()):
        return dict(features[0])
    return torch.utils.data.default_collate(features)


def digits_splits(seed: int, images: bool = False, train_share: float = 0.8
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 8x8 digits (offline, shipped with scikit-learn) scaled to [0, 1], as 64 pixels
    or, with ``images``, (1, 8, 8) images; a seeded ``train_share`` / rest train/validation split:
    ((x_train, y_train), (x_val, y_val))."""
    from sklearn.datasets import load_digits  # the recipes extra

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1) if images else \
        torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(train_share * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])
