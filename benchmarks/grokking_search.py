#!/usr/bin/env python
"""The search for a fast grokking setting with the paper's signature (issue 14, docs/grokking.md).

The signature (definitions §7, finding 3): the network memorizes first, the mean effective rank
plateaus while it stays memorized, and it drops again when validation accuracy jumps. This script
runs `recipes/grokking.py` once per (setting, seed), one run at a time, each in a fresh process, and
writes a table into docs/grokking.md between `<!-- benchmarks/grokking_search.py: start -->` and
`<!-- benchmarks/grokking_search.py: end -->`: the step of memorization (train accuracy ≥ 99%), of the
jump (validation accuracy ≥ 90%), the mean effective rank at memorization / before / around / after
the jump, `rank_change_around` (the rank change in a window around the jump against the window
before it), the final validation accuracy and the time. A setting shows the signature when, for the
seed, memorization comes first, `rank_change_around` ≥ 3× and the final validation accuracy ≥ 95%.

Results are appended to a JSON file as each run finishes; a rerun skips the runs already there
(the search can be interrupted and resumed).

    python benchmarks/grokking_search.py                                 # every setting, seed 0
    python benchmarks/grokking_search.py --settings p59_f30 --seeds 0 1 2
    python benchmarks/grokking_search.py --list                           # the settings and their flags
    python benchmarks/grokking_search.py --table-only                     # redo the table from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from grokking_seeds import ROOT, run_recipe, write_docs

from hf_spectral.highlights import COINCIDES

DOCS = ROOT / "docs" / "grokking.md"
START = "<!-- benchmarks/grokking_search.py: start -->"
END = "<!-- benchmarks/grokking_search.py: end -->"
SIGNATURE_RATIO = COINCIDES  # rank_change_around the jump: at least this many times the window before (3)
SIGNATURE_FINAL = 0.95  # and the run must end at this validation accuracy

# name: recipe flags. Everything not named is the paper's setting (--preset paper: p 113, 30%,
# lr 1e-3, wd 1, full batch, evaluation and a snapshot every 100 steps).
SETTINGS: dict[str, list[str]] = {
    # a smaller modulus: the step costs ~p², so ~4x more steps fit in the same time
    "p59_f30": ["--preset", "paper", "--p", "59", "--max_steps", "20000"],
    "p59_f40": ["--preset", "paper", "--p", "59", "--train_fraction", "0.4", "--max_steps", "16000"],
    # the paper's data (p 113, 30%) with lr x weight decay 4x, 6x, 8x the paper's (the time to grok
    # scales roughly with their inverse)
    "p113_f30_x4": ["--preset", "paper", "--learning_rate", "2e-3", "--weight_decay", "2", "--max_steps", "6000"],
    "p113_f30_x6": ["--preset", "paper", "--learning_rate", "2e-3", "--weight_decay", "3", "--max_steps", "4000"],
    "p113_f30_x8": ["--preset", "paper", "--learning_rate", "2e-3", "--weight_decay", "4", "--max_steps", "3000"],
}


def nearest(history: list[dict], key: str, step: int | None) -> float | None:
    """The logged value of ``key`` at the logged step nearest ``step``."""
    rows = [e for e in history if key in e]
    if step is None or not rows:
        return None
    return float(min(rows, key=lambda e: abs(e["step"] - step))[key])


def describe(summary: dict, setting: str, seed: int) -> dict:
    """The row of one run: its steps, the mean effective rank at the points that matter, the verdict."""
    history = json.loads((Path(summary["folder"]) / "spectral" / "log_history.json").read_text())
    around = summary["events"].get("around_metric")
    memorized, jump = summary["after_step"], summary["metric_step"]
    erank = lambda step: nearest(history, "spectral/mean_erank", step)  # noqa: E731 - a one-line lookup
    ratio = around["ratio"] if around else None
    signature = bool(memorized is not None and jump is not None and memorized < jump and ratio is not None
                     and ratio >= SIGNATURE_RATIO and summary["final_metric"] >= SIGNATURE_FINAL)
    return {
        "setting": setting, "seed": seed, "args": {k: summary["args"][k] for k in (
            "p", "train_fraction", "learning_rate", "weight_decay", "max_steps", "eval_steps", "num_threads")},
        "memorized": memorized, "jump": jump, "final": summary["final_metric"],
        "erank_memorized": erank(memorized), "erank_final": summary["erank_final"],
        "window_before": around["window_before"] if around else None, "window": around["window"] if around else None,
        "erank_before_start": erank(around["window_before"][0]) if around else None,
        "erank_window_start": erank(around["window"][0]) if around else None,
        "erank_window_end": erank(around["window"][1]) if around else None,
        "change": around["change"] if around else None, "change_before": around["change_before"] if around else None,
        "ratio": ratio, "signature": signature, "train_seconds": summary["train_seconds"],
        "process_wall_s": summary["process_wall_s"], "steps": summary["steps"],
        "load_before": summary["load_before"], "load_after": summary["load_after"], "finished_at": summary["finished_at"],
        "folder": summary["folder"],
    }


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = [
        "| setting | seed | p | train | lr | wd | steps | memorized at | val ≥ 90% at (J) | mean erank: memorized → "
        "J − 3h → J − h → J + h → final | change around the jump vs before (ratio) | final val acc | "
        "signature | s/step | training s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    step = lambda x: "none" if x is None else f"{x:,}"  # noqa: E731 - a one-line formatter
    for r in rows:
        a = r["args"]
        ranks = " → ".join(fmt(r[k]) for k in ("erank_memorized", "erank_before_start", "erank_window_start",
                                               "erank_window_end", "erank_final"))
        around = "—" if r["ratio"] is None else f"{r['change']:+.3f} vs {r['change_before']:+.3f} ({r['ratio']:.1f}×)"
        lines.append(
            f"| {r['setting']} | {r['seed']} | {a['p']} | {a['train_fraction']:.0%} | {a['learning_rate']:g} | "
            f"{a['weight_decay']:g} | {r['steps']:,} | {step(r['memorized'])} | {step(r['jump'])} | {ranks} | {around} | "
            f"{r['final']:.3f} | {'**yes**' if r['signature'] else 'no'} | {r['train_seconds'] / r['steps']:.4f} | "
            f"{r['train_seconds']:.0f} |")
    return "\n".join(lines)


def section(rows: list[dict]) -> str:
    import torch

    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    return "\n".join([
        START,
        f"Measured {rows[0]['finished_at']} – {rows[-1]['finished_at']} by `python benchmarks/grokking_search.py` "
        f"(settings: `--list`), one run at a time in a fresh process; {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, torch threads as in the `s/step` note below; 1-min load average {min(loads):.1f}–"
        f"{max(loads):.1f} (the run's own process included).",
        "",
        table(rows),
        "",
        "Memorized: train accuracy first ≥ 99%. J: validation accuracy first ≥ 90%; h = 5% of the run's steps. The "
        "mean normalized effective rank at memorization, at J − 3h, J − h, J + h (the window around the jump and the "
        "window before it: `hf_spectral.highlights.rank_change_around`) and at the end. Signature: "
        f"memorized before the jump, the rank change around the jump ≥ {SIGNATURE_RATIO:g}× the change in the window "
        f"before, final validation accuracy ≥ {SIGNATURE_FINAL:.0%}.",
        END,
    ])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="names from --list (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: immune to a busy core)")
    parser.add_argument("--out", default=str(ROOT / ".benchmarks_out" / "grokking_search"))
    parser.add_argument("--json", default=None, help="results file (default: OUT/results.json)")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    parser.add_argument("--table-only", action="store_true", help="no training: the table from the results file")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/grokking.md alone")
    args = parser.parse_args(argv)
    if args.list:
        for name, flags in SETTINGS.items():
            print(f"{name:14s} {' '.join(flags)}")
        return []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = Path(args.json) if args.json else out / "results.json"
    rows = json.loads(results_file.read_text()) if results_file.exists() else []
    if not args.table_only:
        for name in args.settings:
            for seed in args.seeds:
                if any(r["setting"] == name and r["seed"] == seed for r in rows):
                    continue  # finished in an earlier invocation
                summary = run_recipe([*SETTINGS[name], "--seed", str(seed)], out / f"{name}_seed{seed}", args.threads,
                                     "grokking_search")
                # re-read: another invocation may have added its runs to the same file meanwhile
                rows = json.loads(results_file.read_text()) if results_file.exists() else []
                rows.append(describe(summary, name, seed))
                tmp = results_file.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(rows, indent=1))
                os.replace(tmp, results_file)
                r = rows[-1]
                print(f"[grokking_search]   memorized {r['memorized']}, jump {r['jump']}, ratio {fmt(r['ratio'], '.1f')}, "
                      f"final {r['final']:.3f}, signature {r['signature']}, {r['train_seconds']:.0f} s", flush=True)
    text = section(rows)
    print("\n" + text)
    if not args.no_docs:
        write_docs(text, DOCS, START, END)
    return rows


if __name__ == "__main__":
    main()
