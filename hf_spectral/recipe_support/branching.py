"""Where a recipe's training starts: from scratch, resumed (``--resume_from_checkpoint``, the Trainer's own),
branched (``--branch_from checkpoint-N --seed S``: a linear-mode-connectivity branch) or rewound
(``--rewind_to checkpoint-N``: a lottery ticket), all through ``Trainer.train``.

A branch is a Trainer resume with a different seed. ``Trainer.train(resume_from_checkpoint=...)`` restores the
weights, the optimizer and scheduler state, the step and the log history, *and* the random state saved with the
checkpoint (``rng_state.pth``, read by ``Trainer._load_rng_state`` before the first batch of an epoch is drawn).
Resumed as is, every branch would replay the same random numbers, whatever its ``--seed``. So the branch resumes
from a *branch point*: a folder of links to the checkpoint's files whose random state is replaced by that of a fresh
run seeded with the branch's seed; and, because the Trainer's seedable sampler orders epoch e by ``data_seed + e``
(so that seeds S and S + 1 would replay each other's epochs one epoch apart), the branch's ``data_seed`` is drawn
from its seed.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hf_spectral.errors import SpectralError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import TrainOutput

RNG_FILES = ("rng_state.pth", "rng_state_*.pth")  # the Trainer's names: one process, process i of many
BRANCH_POINT = "branch_point"  # the branch's resume folder inside its output_dir
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json")  # what a branch resumes besides weights
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class ExperimentArguments:
    """``--branch_from`` and ``--rewind_to``: start training from a Trainer checkpoint of another run."""

    branch_from: str | None = field(default=None, metadata={
        "help": "A Trainer checkpoint (run/checkpoint-N, saved with optimizer state) to branch from: its weights, optimizer, "
                "scheduler and step, with the data order and random state of --seed (linear mode connectivity)."})
    rewind_to: str | None = field(default=None, metadata={
        "help": "A checkpoint whose weights training starts from (lottery-ticket rewinding); optimizer, schedule and step "
                "start afresh."})
    start_step: int = field(default=0, init=False)  # the step training started at, set by train() (not a flag)

    def configure(self, training: TrainingArguments) -> None:
        """Check the flags against ``training`` and give a branched or rewound run its own data order (before the
        Trainer is built: the Trainer hands ``data_seed`` to accelerate when it is made)."""
        chosen = [f"--{name} {value}" for name, value in (("branch_from", self.branch_from), ("rewind_to", self.rewind_to),
                                                           ("resume_from_checkpoint", training.resume_from_checkpoint)) if value]
        if len(chosen) > 1:
            raise SpectralError(f"{' and '.join(chosen)}: pass only one of them (a run starts from one place)")
        if self.rewind_to:
            _weights_file(self.rewind_to, "--rewind_to")
        if self.branch_from:
            _weights_file(self.branch_from, "--branch_from")
            missing = [name for name in TRAINING_STATE if not os.path.isfile(os.path.join(self.branch_from, name))]
            if missing:
                raise SpectralError(f"--branch_from {self.branch_from}: no {', '.join(missing)} (a branch resumes the optimizer "
                                    "and schedule); save full checkpoints in the trunk run (--save_only_model false)")
        for flag, checkpoint in (("--branch_from", self.branch_from), ("--rewind_to", self.rewind_to)):
            if checkpoint and _within(checkpoint, training.output_dir):  # e.g. a recipe's default --output_dir
                raise SpectralError(f"{flag} {checkpoint}: it lies in --output_dir {training.output_dir}, where the new run "
                                    "would overwrite its trunk's model, record and later checkpoints; pass a new --output_dir")
        if (self.branch_from or self.rewind_to) and training.data_seed is None:
            training.data_seed = branch_data_seed(training.seed)

    @property
    def origin(self) -> str:
        """Where the weights came from, for model cards: "from scratch", "as a branch of run/checkpoint-N"..."""
        if self.branch_from:
            return f"as a branch of {self.branch_from}"
        if self.rewind_to:
            return f"from the weights of {self.rewind_to}"
        return "from scratch"

    def train(self, trainer: Trainer) -> TrainOutput:
        """``trainer.train()`` from where the flags say: a branch point, a rewound model, the Trainer's own
        ``--resume_from_checkpoint``, or from scratch. Sets ``start_step`` (a branch's or resumed run's: N)."""
        from transformers import TrainerCallback

        experiment = self

        class StartStep(TrainerCallback):
            def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # after a resume restored its state
                experiment.start_step = state.global_step
                if experiment.branch_from and optimizer is not None:
                    check_optimizer(optimizer, experiment.branch_from)

        trainer.add_callback(StartStep)
        try:
            if self.rewind_to:
                load_weights(trainer.model, self.rewind_to)
                return trainer.train()
            if self.branch_from:
                # the Trainer's resume loads weights non-strictly (missing layers: a warning) and then fails deep in
                # torch on the optimizer state: check the fit first, in one line
                check_fits(trainer.model, self.branch_from, "--branch_from")
                return trainer.train(resume_from_checkpoint=branch_point(trainer, self.branch_from))
            return trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
        finally:
            trainer.remove_callback(StartStep)


def branch_data_seed(seed: int) -> int:
    """A data seed far from every small one: the seedable sampler orders epoch e by ``data_seed + e``."""
    import numpy as np

    return int(np.random.SeedSequence(seed).generate_state(1)[0] >> 1)  # < 2**31


def branch_point(trainer: Trainer, checkpoint: str) -> str:
    """A folder in ``trainer.args.output_dir`` that ``trainer.train(resume_from_checkpoint=...)`` resumes from:
    links to ``checkpoint``'s files, except its random state, replaced by that of a fresh run seeded with
    ``trainer.args.seed`` (written by the Trainer itself). One folder per process (each writes its own state)."""
    from transformers import set_seed

    args = trainer.args
    folder = os.path.join(args.output_dir, BRANCH_POINT if args.world_size <= 1 else f"{BRANCH_POINT}-process{args.process_index}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rng_files = {os.path.basename(p) for pattern in RNG_FILES for p in glob.glob(os.path.join(checkpoint, pattern))}
    for name in sorted(set(os.listdir(checkpoint)) - rng_files):
        source, target = os.path.abspath(os.path.join(checkpoint, name)), os.path.join(folder, name)
        try:
            os.symlink(source, target, target_is_directory=os.path.isdir(source))
        except OSError:  # no symlinks here (some Windows set-ups): copy
            (shutil.copytree if os.path.isdir(source) else shutil.copy2)(source, target)
    set_seed(args.seed)
    trainer._save_rng_state(folder)  # the Trainer's own writer: exactly the file and format its _load_rng_state reads
    return folder


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Load ``checkpoint``'s weights (one file or shards, safetensors or .bin) into ``model``, strictly: every
    parameter and buffer must be there with its shape (tied copies, which ``save_pretrained`` leaves out, excepted)."""
    from transformers.trainer_utils import load_sharded_checkpoint

    weights = check_fits(model, checkpoint, "--rewind_to")
    if weights.endswith(".index.json"):
        load_sharded_checkpoint(model, checkpoint, strict=False)
    elif weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights), strict=False)
    else:
        import torch

        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)


def check_fits(model: nn.Module, checkpoint: str, flag: str) -> str:
    """``checkpoint``'s weights file, after checking from its headers that its tensors are ``model``'s (names and
    shapes); else a one-line error naming the folder, what differs and the fix."""
    weights = _weights_file(checkpoint, flag)
    saved = _saved_shapes(weights, flag)
    here = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = _untied(model, [name for name in here if name not in saved])
    unexpected = [name for name in saved if name not in here]
    resized = [f"{name} is {_dims(saved[name])} there, {_dims(here[name])} here" for name in here
               if name in saved and saved[name] != here[name]]
    if missing or unexpected or resized:
        what = "; ".join(part for part in (
            resized and ", ".join(resized[:2]) + (f" (+{len(resized) - 2} more)" if len(resized) > 2 else ""),
            missing and f"it lacks {missing[:3]}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""),
            unexpected and f"it has entries the model does not ({unexpected[:3]})") if part)
        raise SpectralError(f"{flag} {checkpoint}: its weights do not fit this model: {what}; pass the model flags of "
                            "the run that saved it, or a checkpoint of this model")
    return weights


def check_optimizer(optimizer, checkpoint: str) -> None:
    """After a resume: the loaded state must be this optimizer's. ``load_state_dict`` takes the saved groups' settings
    as they are, so another --optim's state would fail at the first step, deep in torch (SGD without "momentum")."""
    absent = sorted(set(optimizer.defaults) - {key for group in optimizer.param_groups for key in group})
    if absent:
        raise SpectralError(f"--branch_from {checkpoint}: its optimizer.pt is another optimizer's (no {', '.join(absent[:3])}); "
                            "pass the trunk run's --optim (a branch resumes its optimizer)")


def _saved_shapes(weights: str, flag: str) -> dict[str, tuple[int, ...]]:
    """The name -> shape of every tensor in a weights file or sharded index (safetensors: from the headers, no
    tensor data read)."""
    import json

    folder = os.path.dirname(weights)
    try:
        if weights.endswith(".index.json"):
            with open(weights) as index:
                files = sorted(set(json.load(index)["weight_map"].values()))
        else:
            files = [os.path.basename(weights)]
        shapes: dict[str, tuple[int, ...]] = {}
        for name in files:
            path = os.path.join(folder, name)
            if path.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(path, "pt") as opened:
                    shapes.update((key, tuple(opened.get_slice(key).get_shape())) for key in opened.keys())
            else:
                import torch

                state = torch.load(path, map_location="cpu", weights_only=True)
                shapes.update((key, tuple(value.shape)) for key, value in state.items())
    except Exception as exc:  # a torn or foreign file: name it instead of a library's traceback
        raise SpectralError(f"{flag} {weights}: unreadable weights ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass an intact checkpoint") from exc
    return shapes


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _weights_file(checkpoint: str, flag: str) -> str:
    """The checkpoint's weights file (the first of WEIGHT_FILES present), or a one-line error."""
    if not os.path.isdir(checkpoint):
        raise SpectralError(f"{flag} {checkpoint}: no such folder; pass a Trainer checkpoint such as run/checkpoint-100")
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(checkpoint, name)):
            return os.path.join(checkpoint, name)
    raise SpectralError(f"{flag} {checkpoint}: no model weights ({' / '.join(WEIGHT_FILES[::2])}); pass a Trainer checkpoint folder")


def _untied(model: nn.Module, missing: list[str]) -> list[str]:
    """The ``missing`` names that share no storage with a loaded parameter (a tied copy is loaded with its twin)."""
    storage: dict[int, set[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        storage.setdefault(parameter.data_ptr(), set()).add(name)
    absent = set(missing)
    return [name for name in missing if not any(twin not in absent for twins in storage.values() if name in twins
                                                for twin in twins)]
