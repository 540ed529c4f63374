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
