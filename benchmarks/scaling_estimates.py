"""Estimated costs (the cost model, not measurements) of analyzing a GPT-2-small-, a Llama-2-7B- and a
Llama-2-70B-shaped checkpoint, once and as a 150-revision sweep, on 1 CPU (this machine's calibration),
1 GPU and 8 GPUs (assumed H100-class rates until ``benchmarks/gpu_check.sh`` measures them). Writes the
table into docs/scaling.md between its markers.

usage: python benchmarks/scaling_estimates.py [--no-docs]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hf_spectral.calibration import Calibration, calibration_for
from hf_spectral.cost import plan_cost
from hf_spectral.views.types import MatrixSpec
from readme_sections import replace_section  # benchmarks/ is on sys.path when run as a script

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
SWEEP = 150
DISK_BYTES_PER_S = 2e9  # a local NVMe SSD; a network file system is often 5-10x slower

# ASSUMED, not measured: an H100-class GPU. FP64 tensor-core GEMM ~50 TFLOP/s sustained (67 peak);
# cuSOLVER eigvalsh ~2e-12 s per n³ at n = 4096 (~0.14 s), with vectors ~3x; host-to-device copy over
# PCIe 4/5 ~25 GB/s (the weights come from host memory); ~1 ms of launches and syncs per matrix.
GPU_ASSUMED = Calibration(
    device="cuda:assumed H100-class", threads=1, torch_version=torch.__version__, gemm_flops_per_s=5e13,
    eigvalsh_s_per_n3=2e-12, eigh_s_per_n3=6e-12, svd_s_per_mn2=8e-12, convert_bytes_per_s=2.5e10,
    matrix_overhead_s=1e-3, batched_speedup=1.0, startup_s=4.0, load=0.0, cores=1, measured_at="assumed", seconds=0.0,
)


# This 2-core machine when quiet, from measurements already in the code: float64 GEMM 45 GFLOP/s (the
# calibration at load 2.3), and the engine's Gram path on a 4096x4096 matrix in ~2.6 s (the table in
# metrics/spectrum.py): 1.9 s of it the blocked Gram product at 45 GFLOP/s, so eigvalsh(4096) ~0.7 s, i.e.
# ~1e-11 s/n³ at n = 4096. The calibration measures at n = 768 on whatever load there is; per-n³ rates fall
# with n, and a loaded machine measured 20-40x slower rates while this was written.
CPU_QUIET = Calibration(
    device="cpu:threads=2 (quiet)", threads=2, torch_version=torch.__version__, gemm_flops_per_s=4.5e10,
    eigvalsh_s_per_n3=1.0e-11, eigh_s_per_n3=3.0e-11, svd_s_per_mn2=1.5e-10, convert_bytes_per_s=2.6e9,
    matrix_overhead_s=1e-4, batched_speedup=0.7, startup_s=1.2, load=0.0, cores=2, measured_at="see comment", seconds=0.0,
)


def transformer(name: str, *, layers: int, d: int, ff: int, vocab: int, kv: int | None = None, gated: bool = True,
                tied: bool = False) -> tuple[str, list[MatrixSpec], int]:
    """The matrices of a decoder-only Transformer (rows = output side), and its stored bytes (bf16)."""
    kv = kv or d
    per_layer = [("q", (d, d)), ("k", (kv, d)), ("v", (kv, d)), ("o", (d, d)), ("up", (ff, d)), ("down", (d, ff))]
    if gated:
        per_layer.append(("gate", (ff, d)))
    specs = [MatrixSpec("embed", "embedding", ("embed",), (vocab, d), (vocab, d), "BF16")]
    for layer in range(layers):
        specs += [MatrixSpec(f"{layer}.{n}", "linear", (f"{layer}.{n}",), s, s, "BF16") for n, s in per_layer]
    if not tied:
        specs.append(MatrixSpec("lm_head", "linear", ("lm_head",), (vocab, d), (vocab, d), "BF16"))
    stored = sum(s.shape[0] * s.shape[1] * 2 for s in specs)
    return name, specs, stored


MODELS = [
    transformer("GPT-2-small-shaped (q, k, v apart)", layers=12, d=768, ff=3072, vocab=50257, gated=False, tied=True),
    transformer("Llama-2-7B-shaped", layers=32, d=4096, ff=11008, vocab=32000),
    transformer("Llama-2-70B-shaped", layers=80, d=8192, ff=28672, vocab=32000, kv=1024),
]


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    cpu = calibration_for("cpu", startup=True)
    setups = [("1 CPU (2 cores, quiet rates)", CPU_QUIET, "cpu", 1),
              ("1 GPU (assumed H100-class)", GPU_ASSUMED, "cuda", 1),
              ("8 GPUs (assumed, dealt by cost)", GPU_ASSUMED, "cuda", 8)]
    lines = ["| model | matrices | TFLOP (σ only) | stored GB | setup | one checkpoint | + reading from disk | 150-revision sweep |",
             "|---|---|---|---|---|---|---|---|"]
    for name, specs, stored in MODELS:
        for label, rates, device, processes in setups:
            cost = plan_cost(specs, [], rates, device=device, processes=processes, local_processes=1)
            read = stored / DISK_BYTES_PER_S / (processes if device == "cuda" else 1)  # each process reads its share
            one = cost.wall_s
            # a sweep deals whole revisions over the processes: ceil(150 / P) rounds of one-process checkpoints
            single = plan_cost(specs, [], rates, device=device, processes=1, local_processes=1)
            rounds = -(-SWEEP // processes)
            sweep = rates.startup_s + rounds * (single.kernel_s + stored / DISK_BYTES_PER_S)
            lines.append(f"| {name} | {len(specs)} | {cost.flops / 1e12:.1f} | {stored / 1e9:.1f} | {label} | "
                         f"{human(one)} | {human(one + read)} | {human(sweep)} |")
    with_vectors = plan_cost(MODELS[1][1], [], CPU_QUIET, device="cpu", top_k=10)
    no_vectors = plan_cost(MODELS[1][1], [], CPU_QUIET, device="cpu")
    now = plan_cost(MODELS[0][1], [], cpu, device="cpu")
    note = (f"CPU rows: the quiet 2-core rates of `CPU_QUIET` in this script (float64 GEMM 45 GFLOP/s, eigvalsh "
            f"1e-11 s/n³ at n = 4096, from measurements recorded in the code). This machine's calibration when the "
            f"table was made ({cpu.measured_at}, load average {cpu.load:.1f} on {cpu.cores} shared cores): GEMM "
            f"{cpu.gemm_flops_per_s / 1e9:.0f} GFLOP/s, eigvalsh {cpu.eigvalsh_s_per_n3:.1e} s/n³ at n = 768, which "
            f"would put GPT-2 small at {human(now.wall_s)}. Keeping top-10 vectors (the callback's default) costs "
            f"{with_vectors.kernel_s / no_vectors.kernel_s:.1f}× the values-only time of the 7B model on the CPU "
            "(eigh instead of eigvalsh).")
    table = "\n".join(lines) + "\n\n" + note
    print(table)
    if not args.no_docs:
        start, end = "<!-- scaling_estimates.py: start -->", "<!-- scaling_estimates.py: end -->"
        replace_section(DOCS, start, end, f"{start}\n{table}\n{end}")


if __name__ == "__main__":
    main()
