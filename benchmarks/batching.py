"""Batched against one-by-one singular values of same-shaped matrices, on the GPT-2-small shapes (12 layers
of 768×768, 768×2304, 768×3072 and 3072×768, random float32), plus the many-small-matrices probe that
``hf_spectral.calibration`` uses to choose per device.

Interleaved rounds in one process (loop, batched, loop, batched, ...), medians; the machine is shared,
so the ratio of the two in the same round is what counts. ``--device cuda`` runs the same on a GPU
(``benchmarks/gpu_check.sh`` does).

usage: python benchmarks/batching.py [--repeats 3] [--device cpu] [--no-readme]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from hf_spectral.batching import MAX_BATCH_ELEMENTS
from hf_spectral.calibration import measure
from hf_spectral.metrics import singular_values, singular_values_batch
from readme_sections import replace_section  # benchmarks/ is on sys.path when run as a script

README = Path(__file__).resolve().parent / "README.md"
GROUPS = {"768x768 (attn.c_proj)": (768, 768), "2304x768 (attn.c_attn)": (2304, 768),
          "3072x768 (mlp.c_fc)": (3072, 768), "768x3072 (mlp.c_proj)": (768, 3072), "384x128 (calibration probe)": (384, 128)}
LAYERS = 12


def timed(run, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    load_start = os.getloadavg()[0]
    for label, (m, n) in GROUPS.items():
        count = LAYERS if m * n * 8 * LAYERS <= MAX_BATCH_ELEMENTS * 8 else MAX_BATCH_ELEMENTS // (m * n)
        matrices = [torch.randn(m, n, generator=gen).to(device) for _ in range(count)]
        singular_values_batch(matrices[:2])  # warm-up (kernels, allocator)
        loops, batches = [], []
        for _ in range(args.repeats):
            loops.append(timed(lambda: [singular_values(x) for x in matrices], device))
            batches.append(timed(lambda: singular_values_batch(matrices), device))
        loop, batch = statistics.median(loops), statistics.median(batches)
        rows.append((label, count, loop, batch))
        print(f"{label:28s} ×{count}: loop {loop:.3f} s, batched {batch:.3f} s, loop/batched {loop / batch:.2f}", flush=True)
    chosen = measure(device)
    lines = ["| matrices | count | one by one s | batched s | one-by-one ÷ batched |", "|---|---|---|---|---|"]
    for label, count, loop, batch in rows:
        lines.append(f"| {label} | {count} | {loop:.3f} | {batch:.3f} | **{loop / batch:.2f}** |")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    text = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {name} (a machine shared with other developers' jobs: "
            f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), {args.repeats} interleaved "
            f"rounds, medians.\n\n" + "\n".join(lines) + "\n\n"
            f"The calibration measured a batched speed-up of {chosen.batched_speedup:.2f} on its probe here, so "
            f"`--batch auto` {'batches' if chosen.batched_speedup > 1.1 else 'does not batch'} on this device.")
    print("\n" + text)
    if not args.no_readme:
        write_section(text, device)


def write_section(body: str, device: torch.device) -> None:
    start, end = f"<!-- benchmarks/batching.py {device.type}: start -->", f"<!-- benchmarks/batching.py {device.type}: end -->"
    section = f"""{start}
## `batching.py` ({device.type}): batched against one-by-one decompositions of same-shaped matrices

`python benchmarks/batching.py --device {device.type}`: for each GPT-2-small matrix shape, 12 random float32 matrices
decomposed one by one (`metrics.singular_values`) and in one batched call (`metrics.singular_values_batch`:
one stacked float64 Gram product, one batched `eigvalsh`). Exactness: `tests/test_batching.py` (same bounds as
the unbatched path, and within 1e-10·σ₁ of it).

{body}
{end}"""
    replace_section(README, start, end, section)


if __name__ == "__main__":
    main()
