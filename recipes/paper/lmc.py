#!/usr/bin/env python
"""Linear mode connectivity at small scale (Yunis et al., finding 10; paper Fig. 11), on CPU.

The paper: branch two copies of a run at step N and train each to the end with its own data order. For early
N the straight line between the two endpoints climbs over a loss barrier; from some N on the barrier is gone,
and exactly then the endpoints share their top singular vectors (top-10 agreement rises). Endpoints of two
different trunks share neither; norm-preserving noise of size η at the split point destroys both together.

Here: the grokking recipe's 1-layer Transformer (recipes/grokking.py) on a + b mod 41, 50% of the pairs, AdamW
lr 3e-3, wd 1.0, minibatches of 64 (a full batch has no data order to vary), 500 steps. Two trunks (seeds 0, 1);
branches with seeds 1 and 2 from each trunk at every split step (`--branch_from trunk/checkpoint-N`; step 0 is
`--rewind_to` the trunk's initialization); the η sweep perturbs one split point of trunk 0 with two noise seeds
and trains both with one data order. ~2 min of CPU on one thread (runs/paper_lmc; rerun: finished runs reused).

    python recipes/paper/lmc.py                                  # writes runs/paper_lmc/{lmc.png, summary.md, ...}
    python recipes/paper/lmc.py --splits 0,10,25,50,100,150,200,300,400 --max_steps 600 --output_dir /tmp/lmc   # denser
"""

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import HfArgumentParser, TrainerCallback

import hf_spectral

HERE = os.path.dirname(os.path.abspath(__file__))


def load_recipe(name: str):
    """A recipe of recipes/ as a module (its model, data and Trainer are what this experiment branches)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "..", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grokking = load_recipe("grokking")


# --- 1. Arguments ---------------------------------------------------------------------------------
@dataclass
class LMCArguments:
    output_dir: str = "runs/paper_lmc"
    p: int = 41
    train_fraction: float = 0.5
    batch_size: int = 64
    max_steps: int = 500
    learning_rate: float = 3e-3
    weight_decay: float = 1.0
    trunks: str = field(default="0,1", metadata={"help": "Trunk seeds (init and data order)."})
    branch_seeds: str = field(default="1,2", metadata={"help": "Data-order seeds of the branches of every trunk."})
    splits: str = field(default="0,25,50,100,300", metadata={"help": "Split steps (0: the initialization)."})
    eta_split: int = field(default=300, metadata={"help": "The split step the η sweep perturbs (trunk 0)."})
    etas: str = field(default="0,0.5,1,1.5,2.5", metadata={"help": "Perturbation sizes η of the sweep (paper: 0 to 2.5)."})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads."})


def check_settings(args: LMCArguments) -> None:
    """Finished runs in --output_dir are reused (an interrupted experiment resumes): only if they were trained alike."""
    training = {k: getattr(args, k) for k in ("p", "train_fraction", "batch_size", "max_steps", "learning_rate", "weight_decay")}
    path = Path(args.output_dir, "training.json")
    before = json.loads(path.read_text()) if path.is_file() else training
    if before != training:
        raise hf_spectral.SpectralError(f"{args.output_dir} holds runs trained with {before}; pass a new --output_dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(training))


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def recipe_flags(args: LMCArguments, seed: int, output_dir: str, *extra: str) -> list[str]:
    """The grokking recipe's command line for one run of this experiment (the split of the pairs fixed: seed 0)."""
    return ["--p", str(args.p), "--train_fraction", str(args.train_fraction), "--batch_size", str(args.batch_size),
            "--max_steps", str(args.max_steps), "--learning_rate", str(args.learning_rate), "--weight_decay",
            str(args.weight_decay), "--seed", str(seed), "--split_seed", "0", "--track_spectra", "false",
            "--eval_steps", str(args.max_steps), "--logging_steps", str(args.max_steps), "--disable_tqdm", "true",
            "--log_level", "error", "--num_threads", str(args.num_threads), "--output_dir", output_dir, *extra]


class SaveAt(TrainerCallback):
    """Save a full checkpoint (weights, optimizer, scheduler, random state) at each of ``steps``; stop after the
    last (the trunk's own end is never used; its schedule still runs to --max_steps)."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = control.should_save or state.global_step in self.steps
        control.should_training_stop = control.should_training_stop or state.global_step >= max(self.steps)


# --- 2. Runs: trunks with checkpoints at the split steps, branches from them --------------------------
def train(args: LMCArguments, seed: int, output_dir: str, *extra: str, save_at: list[int] = ()):
    """One run of the grokking recipe (its Trainer, started as ExperimentArguments say); returns the trained model,
    also saved in ``output_dir`` (a run found finished there is loaded instead: an interrupted experiment resumes)."""
    done = os.path.join(output_dir, "checkpoint-0" if save_at else "", "config.json")
    if os.path.isfile(done) and all(os.path.isdir(os.path.join(output_dir, f"checkpoint-{s}")) for s in save_at):
        return grokking.GrokkingTransformer.from_pretrained(os.path.dirname(done)).eval()
    recipe_args, training, spectral, experiment = grokking.parse_args(recipe_flags(args, seed, output_dir, *extra))
    trainer = grokking.build_trainer(recipe_args, training, spectral)
    trainer.remove_callback(hf_spectral.ConsoleCallback)  # dozens of runs: one line each, printed below
    if save_at:
        trainer.add_callback(SaveAt(save_at))
        trainer.save_model(os.path.join(output_dir, "checkpoint-0"))  # the initialization, for the step-0 split
    experiment.train(trainer)
    if not save_at:
        trainer.save_model(output_dir)
    return trainer.model.eval()


def branch(args: LMCArguments, trunk: str, split: int, seed: int, output_dir: str):
    """A branch of ``trunk`` at ``split`` with data-order seed ``seed`` (step 0: the trunk's init, rewound)."""
    start = "--rewind_to" if split == 0 else "--branch_from"
    return train(args, seed, output_dir, start, os.path.join(trunk, f"checkpoint-{split}"))


def perturbed_checkpoint(checkpoint: str, eta: float, noise_seed: int, folder: str) -> str:
    """A copy of ``checkpoint`` (optimizer state and all) whose weights carry norm-preserving noise of size η."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(checkpoint, folder)
    model = grokking.GrokkingTransformer.from_pretrained(checkpoint)
    hf_spectral.experiments.perturb(model, eta, seed=noise_seed).save_pretrained(folder)
    return folder


# --- 3. What the report measures along each path ------------------------------------------------------
def evaluator(args: LMCArguments):
    """``evaluate(model)``: cross-entropy and accuracy on the training and the held-out pairs, full batch."""
    data = grokking.make_dataset("add", args.p, args.train_fraction, 0)
    splits = {name: (torch.tensor(data[split]["input_ids"]), torch.tensor(data[split]["labels"]))
              for name, split in (("train", "train"), ("val", "validation"))}

    @torch.no_grad()
    def evaluate(model):
        metrics = {}
        for name, (inputs, labels) in splits.items():
            logits = model(inputs).logits[:, -1]
            metrics[f"{name}_loss"] = float(F.cross_entropy(logits, labels))
            metrics[f"{name}_accuracy"] = float((logits.argmax(-1) == labels).float().mean())
        return metrics

    return evaluate


def main(argv: list[str] | None = None) -> hf_spectral.experiments.LMCReport:
    (args,) = HfArgumentParser(LMCArguments).parse_args_into_dataclasses(args=argv)
    check_settings(args)
    torch.set_num_threads(args.num_threads)
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar per run
    splits, seeds, trunks = ints(args.splits), ints(args.branch_seeds), ints(args.trunks)
    start = time.time()
    pairs, ends = [], {}
    for t in trunks:
        trunk = os.path.join(args.output_dir, f"trunk-{t}")
        train(args, t, trunk, "--save_strategy", "no", "--save_only_model", "false", save_at=[s for s in splits if s])
        for s in splits:
            for seed in seeds:
                ends[t, s, seed] = branch(args, trunk, s, seed, os.path.join(trunk, f"branch-{s}-seed-{seed}"))
            pairs.append(hf_spectral.experiments.BranchPair("branches", s, ends[t, s, seeds[0]], ends[t, s, seeds[1]],
                                                            label=f"trunk {t}"))
        print(f"trunk {t}: {len(splits) * len(seeds)} branches done ({time.time() - start:.0f} s)", flush=True)
    for s in splits:  # the control: the same split step, two different trunks
        pairs.append(hf_spectral.experiments.BranchPair("cross-trunk", s, ends[trunks[0], s, seeds[0]],
                                                        ends[trunks[1], s, seeds[0]], label=f"trunks {trunks[0]}-{trunks[1]}"))
    trunk = os.path.join(args.output_dir, f"trunk-{trunks[0]}")
    for eta in [float(v) for v in args.etas.split(",")]:  # two noises at one split point, one data order
        split_point = os.path.join(trunk, f"checkpoint-{args.eta_split}")
        noisy = [train(args, seeds[0], os.path.join(trunk, f"perturbed-{eta:g}-noise-{k}-run"), "--branch_from",
                       perturbed_checkpoint(split_point, eta, k, os.path.join(trunk, f"perturbed-{eta:g}-noise-{k}")))
                 for k in (1, 2)]
        pairs.append(hf_spectral.experiments.BranchPair("perturbed", args.eta_split, *noisy, eta=eta, label=f"trunk {trunks[0]}"))
    print(f"training done ({time.time() - start:.0f} s); {len(pairs)} paths to measure", flush=True)

    report = hf_spectral.experiments.lmc_report(pairs, evaluator(args), num=11)
    report.save(args.output_dir)
    figure = hf_spectral.plots.plot_lmc(report.summary, report.paths, metric="train_loss")
    hf_spectral.plots.save_figure(figure, os.path.join(args.output_dir, "lmc"))
    columns = ["kind", "split", "eta", "label", "barrier_train_loss", "barrier_val_accuracy", "train_accuracy_a",
               "val_accuracy_a", "agreement"]
    print(report.summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{time.time() - start:.0f} s in all; tables and lmc.png in {args.output_dir}")
    return report


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
