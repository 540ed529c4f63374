"""A recipe-shaped script for the sweep test: HfArgumentParser(TrainingArguments), a tiny MLP classifier on
a separable toy task, SpectralCallback, eval accuracy. Runs in a few seconds."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainingArguments

from hf_spectral import SpectralCallback


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main() -> None:
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        args=None, look_for_args_file=False)
    torch.manual_seed(args.seed)
    x = torch.randn(96, 8, generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"x": x.tolist(), "labels": (x[:, 0] > 0).long().tolist()}).train_test_split(0.25, seed=0)
    args.use_cpu, args.report_to, args.save_strategy, args.eval_strategy = True, [], "no", "steps"
    args.eval_steps, args.logging_steps, args.disable_tqdm = 4, 2, True
    trainer = Trainer(Classifier(), args, train_dataset=data["train"], eval_dataset=data["test"],
                      compute_metrics=accuracy, callbacks=[SpectralCallback(max_overhead=None)])
    trainer.train()


if __name__ == "__main__":
    main()
