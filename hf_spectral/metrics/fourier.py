"""Fourier sparsity of a table indexed by Z_p (Nanda et al.'s progress measure of grokking on the
embeddings of the p number tokens): how much of its energy a few frequencies over Z_p carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import LazyModule
from hf_spectral.metrics.spectrum import gini

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch


def fourier_sparsity(table: torch.Tensor, k: int = 5) -> dict[str, float]:
    """For ``table`` (p, d), rows indexed by Z_p: ``top{k}_fraction``, the share of its energy
    (squared Frobenius norm) in its ``k`` strongest non-constant frequencies, and ``gini``, the Gini
    coefficient of the frequency norms (0: spread evenly, -> 1: a few key frequencies)."""
    w = table.detach().to("cpu", torch.float64)  # detached: nothing below is tracked by autograd
    p = w.shape[0]
    energy = torch.fft.rfft(w, dim=0).abs().pow(2).sum(-1) / p  # frequencies 0 .. p//2; Parseval: they sum to ||w||_F^2 ...
    energy[1 : (p + 1) // 2] *= 2  # ... once each frequency counts its cos and its sin
    top = energy[1:].sort(descending=True).values[:k].sum() / energy.sum()
    return {f"top{k}_fraction": float(top), "gini": gini(energy[1:].sqrt())}
