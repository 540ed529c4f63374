#!/usr/bin/env python
"""Wall-time overhead of SpectralCallback at its default schedule, on CPU.

Trains a small GPT-2 (4 layers x 256, seq 128, batch 16, vocab 8k) with and without the callback,
in back-to-back pairs (alternating which goes first) so that a change of machine load hits both
runs of a pair alike, and reports the median over pairs of the wall-time ratio of ``trainer.train()``
(target: <= 1.10). Also reports the time spent inside the snapshots themselves (the
``spectral/seconds`` scalars) as a share of training time, which other load disturbs less.

    python benchmarks/callback_overhead.py                 # 300 steps, 3 pairs (~20 min on 2 idle cores)
    python benchmarks/callback_overhead.py --steps 100 --repeats 1 --json overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def build_trainer(output_dir: str, steps: int, callbacks: list, args: argparse.Namespace):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, vocab_size=args.vocab,
                        n_positions=args.seq, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, args.vocab, (args.batch * 8, args.seq), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    training = TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=args.batch, learning_rate=6e-4,
        use_cpu=not args.gpu, report_to=[], save_strategy="no", logging_steps=50, disable_tqdm=True, seed=0,
    )
    return Trainer(model=model, args=training, train_dataset=data, callbacks=callbacks)


def run_once(tracked: bool, args: argparse.Namespace) -> dict:
    from hf_spectral import SpectralCallback

    with tempfile.TemporaryDirectory() as folder:
        callbacks = [SpectralCallback()] if tracked else []  # the defaults: schedule "log", top_k 10
        trainer = build_trainer(folder, args.steps, callbacks, args)
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
        seconds = [e["spectral/seconds"] for e in trainer.state.log_history if "spectral/seconds" in e]
    return {"tracked": tracked, "wall_s": wall, "snapshots": len(seconds), "snapshot_s": sum(seconds)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (with, without), back to back")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (benchmarks/gpu_check.sh); default: CPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    runs, ratios, shares = [], [], []
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)  # alternate who goes first
        pair = {}
        for tracked in order:
            pair[tracked] = result = run_once(tracked, args)
            runs.append(result)
            print(f"{'with' if tracked else 'without'} callback: {result['wall_s']:.1f} s"
                  + (f" ({result['snapshots']} snapshots, {result['snapshot_s']:.1f} s in them)" if tracked else ""),
                  flush=True)
        ratios.append(pair[True]["wall_s"] / pair[False]["wall_s"])
        shares.append(pair[True]["snapshot_s"] / pair[False]["wall_s"])
        print(f"pair {repeat + 1}: ratio {ratios[-1]:.3f}", flush=True)
    plain = statistics.median(r["wall_s"] for r in runs if not r["tracked"])
    summary = {
        "steps": args.steps, "pairs": args.repeats, "threads": torch.get_num_threads(),
        "model": f"GPT-2 {args.layers}x{args.width}, seq {args.seq}, batch {args.batch}, vocab {args.vocab}",
        "seconds_per_step": plain / args.steps, "ratio": statistics.median(ratios), "pair_ratios": ratios,
        "snapshots": next(r["snapshots"] for r in runs if r["tracked"]),
        "snapshot_share": statistics.median(shares), "runs": runs,
    }
    print(f"ratio with/without (median of {len(ratios)} pairs): {summary['ratio']:.3f} (target <= 1.10); "
          f"time inside the {summary['snapshots']} snapshots: {100 * summary['snapshot_share']:.1f}% of training "
          f"({summary['seconds_per_step']:.2f} s/step)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
