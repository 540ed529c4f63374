"""Tiny Trainer set-ups shared by the tracking tests and the 2-process launch script."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (tiny_models)

from tiny_models import build_tiny  # noqa: E402


def lm_dataset(rows: int = 64, length: int = 16, vocab: int = 101, seed: int = 0):
    """Random token sequences (labels = inputs) for the tiny GPT-2."""
    from datasets import Dataset

    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def image_dataset(rows: int = 48, size: int = 16, classes: int = 3, seed: int = 0):
    """Random 3×size×size images with labels for the tiny ResNet classifier."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(rows, 3, size, size, generator=g).numpy().astype(np.float32)
    labels = torch.randint(0, classes, (rows,), generator=g).tolist()
    return Dataset.from_dict({"pixel_values": list(pixels), "labels": labels}).with_format("torch")


def training_args(output_dir: str | Path, max_steps: int, **overrides: Any):
    from transformers import TrainingArguments

    values: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=3e-3,
        use_cpu=True, report_to=[], save_strategy="steps", save_steps=10, logging_steps=5,
        disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def lm_trainer(output_dir: str | Path, callbacks: list, max_steps: int = 20, seed: int = 0, **overrides: Any):
    """A Trainer on the tiny GPT-2 (dropout on, so the RNG matters) and random tokens."""
    from transformers import Trainer

    model = build_tiny("gpt2", seed=seed).train()
    return Trainer(model=model, args=training_args(output_dir, max_steps, **overrides), train_dataset=lm_dataset(),
                   callbacks=callbacks)


def image_trainer(output_dir: str | Path, callbacks: list, max_steps: int = 12, **overrides: Any):
    """A Trainer on the tiny ResNet image classifier (convolutions and BatchNorm) and random images."""
    from transformers import Trainer

    model = build_tiny("resnet").train()
    return Trainer(model=model, args=training_args(output_dir, max_steps, **overrides), train_dataset=image_dataset(),
                   callbacks=callbacks)
