"""Linear mode connectivity (paper finding 10): interpolate two models, evaluate along the straight line,
measure the barrier; the norm-preserving perturbation the authors apply at the branch point; and the LMC
report that puts, per split step, the barrier beside the agreement of the endpoints' singular vectors.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from hf_spectral.atomic import atomic_file
from hf_spectral.errors import SpectralError
from hf_spectral.experiments._matrices import as_matrix, live_matrices, matrix_agreement
from hf_spectral.experiments.truncation import recompute_batchnorm


@torch.no_grad()
def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``model_a`` holding (1 − α)·θ_A + α·θ_B for every floating state-dict entry (parameters and
    buffers, BatchNorm statistics included); integer buffers (``num_batches_tracked``) come from the nearer end."""
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if state_a.keys() != state_b.keys():
        only = sorted(set(state_a) ^ set(state_b))[:3]
        raise ValueError(f"the two models have different state-dict entries (e.g. {', '.join(only)})")
    merged = {}
    for name, a in state_a.items():
        b = state_b[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
        if a.is_floating_point():
            merged[name] = torch.lerp(a, b.to(a.dtype), float(alpha))
        else:
            merged[name] = (a if alpha < 0.5 else b).clone()
    model = copy.deepcopy(model_a)
    model.load_state_dict(merged)
    return model


def linear_path(model_a: nn.Module, model_b: nn.Module, evaluate: Callable[[nn.Module], Mapping[str, Any]],
                num: int = 11, dataloader: Iterable | None = None) -> pd.DataFrame:
    """``evaluate(model)`` at ``num`` evenly spaced α in [0, 1] on the line between the two models: a table
    with ``alpha`` and every metric ``evaluate`` returns. With ``dataloader``, BatchNorm statistics are
    re-estimated at each α (interpolated statistics do not describe the interpolated weights)."""
    rows = []
    for alpha in np.linspace(0.0, 1.0, num):
        model = interpolate(model_a, model_b, float(alpha))
        if dataloader is not None:
            recompute_batchnorm(model, dataloader)
        model.eval()
        rows.append({"alpha": float(alpha), **{k: float(v) for k, v in evaluate(model).items()}})
    return pd.DataFrame(rows)


def barrier(values: Sequence[float], alphas: Sequence[float] | None = None) -> float:
    """The largest rise of ``values`` (a loss along the path) above the straight line between its two
    endpoints, over the interior points only (negative when every interior point lies below the line).
    ``alphas`` default to evenly spaced points in [0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 3:
        raise ValueError("a barrier needs the two endpoints and at least one interior point")
    t = np.linspace(0.0, 1.0, v.size) if alphas is None else np.asarray(alphas, dtype=np.float64)
    t = (t - t[0]) / (t[-1] - t[0])
    line = v[0] + (v[-1] - v[0]) * t
    return float(np.max(v[1:-1] - line[1:-1]))


@torch.no_grad()
def perturb(model: nn.Module, eta: float, seed: int = 0, exclude_last: bool = True) -> nn.Module:
    """A copy of ``model`` whose every weight matrix (all but the last by default) gets norm-preserving noise:
    W ← ‖W‖·(W + η‖W‖ε̂)/‖W + η‖W‖ε̂‖ with ε̂ a unit-Frobenius-norm Gaussian (η = 0 is the identity)."""
    live_matrices(model, exclude_last=exclude_last, what="perturbation")  # refuses composed weights before copying
    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for entry in live_matrices(perturbed, exclude_last=exclude_last, what="perturbation"):
        w = entry.parameter.detach().to(torch.float64)
        norm = torch.linalg.vector_norm(w)
        noise = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        moved = w + eta * norm * noise / torch.linalg.vector_norm(noise)
        moved_norm = torch.linalg.vector_norm(moved)
        if norm == 0 or moved_norm == 0:
            continue  # a zero matrix has no direction to perturb
        entry.parameter.copy_((norm * moved / moved_norm).to(entry.parameter.dtype))
    return perturbed


# --- the LMC report (paper Fig. 11): per split step, the barrier beside the endpoints' agreement -----------
PAIR_KINDS = ("branches", "cross-trunk", "perturbed")  # one trunk, two data orders; two trunks (control); η sweep


@dataclass(frozen=True)
class BranchPair:
    """Two endpoints to connect. ``kind``: ``"branches"`` (two branches of one trunk split at step ``split``, each
    with its own data order), ``"cross-trunk"`` (the control: branches of two different trunks, same split step)
    or ``"perturbed"`` (two branches from the split point perturbed with noise of size ``eta``, instead of a
    different data order). ``a``/``b``: models, or checkpoint folders read by ``lmc_report(load=...)``."""

    kind: str
    split: int
    a: nn.Module | str | os.PathLike
    b: nn.Module | str | os.PathLike
    eta: float = 0.0
    label: str = ""


@dataclass
class LMCReport:
    """``summary``: one row per pair — kind, split, eta, label, ``barrier_<metric>`` for every metric (a
    higher-is-better metric's barrier is its largest *drop* below the straight line), the endpoints'
    ``<metric>_a``/``<metric>_b``, ``agreement`` (mean over the matrices of the top-``top`` S_ii of the two
    endpoints, paper Eq. 5) and ``subspace`` (mean top-``top`` subspace overlap). ``paths``: every metric at every
    α of every pair. ``layers``: the agreement per matrix."""

    summary: pd.DataFrame
    paths: pd.DataFrame
    layers: pd.DataFrame

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """``summary``/``paths``/``layers`` as parquet files in ``folder`` (each written atomically) and
        ``summary.md`` (the summary as a Markdown table); returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("summary", "paths", "layers"):
            with atomic_file(folder / f"{name}.parquet") as tmp:
                getattr(self, name).to_parquet(tmp, index=False)
            written.append(folder / f"{name}.parquet")
        with atomic_file(folder / "summary.md") as tmp:
            tmp.write_text(markdown_table(self.summary), encoding="utf-8")
        return written + [folder / "summary.md"]


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, floats to 4 significant digits (no tabulate needed)."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def endpoint_agreement(model_a: nn.Module, model_b: nn.Module, top: int = 10) -> pd.DataFrame:
    """Per weight matrix (the analyzer's views, model order) the top-``top`` agreement score and subspace overlap
    of the two models' singular vectors: ``matrix``, ``agreement``, ``subspace``."""
    theirs = {entry.spec.name: entry for entry in live_matrices(model_b, what="an agreement")}
    rows = []
    for entry in live_matrices(model_a, what="an agreement"):
        other = theirs.get(entry.spec.name)
        if other is None or tuple(other.parameter.shape) != tuple(entry.parameter.shape):
            raise SpectralError(f"{entry.spec.name}: the second model has no matrix of this name and shape; "
                                "compare two models of one architecture")
        score, subspace = matrix_agreement(as_matrix(entry), as_matrix(other), top)
        rows.append({"matrix": entry.spec.name, "agreement": score, "subspace": subspace})
    return pd.DataFrame(rows, columns=["matrix", "agreement", "subspace"])


def lmc_report(pairs: Iterable[BranchPair], evaluate: Callable[[nn.Module], Mapping[str, Any]], *, num: int = 11,
               top: int = 10, higher_is_better: Collection[str] = ("accuracy",),
               load: Callable[[str], nn.Module] | None = None, dataloader: Iterable | None = None,
               progress: bool = True) -> LMCReport:
    """The LMC report of ``pairs``: for each, :func:`linear_path` between its endpoints (``num`` points, BatchNorm
    re-estimated when ``dataloader`` is given), the :func:`barrier` of every metric ``evaluate`` returns, and the
    :func:`endpoint_agreement` of the two endpoints. Metrics whose name ends with one of ``higher_is_better`` are
    better high: their barrier is measured on the negated values. ``load(path)`` opens endpoints given as paths."""
    pairs = list(pairs)
    if not pairs:
        raise SpectralError("lmc_report got no BranchPair; pass the pairs of endpoints to connect")
    for pair in pairs:
        if pair.kind not in PAIR_KINDS:
            raise SpectralError(f"BranchPair kind {pair.kind!r} (split {pair.split}): use one of {', '.join(PAIR_KINDS)}")
    summary, paths, layers = [], [], []
    for pair in tqdm(pairs, desc="LMC pairs", disable=not progress or len(pairs) < 2):
        a, b = _endpoint(pair.a, load), _endpoint(pair.b, load)
        key = {"kind": pair.kind, "split": int(pair.split), "eta": float(pair.eta), "label": pair.label}
        path = linear_path(a, b, evaluate, num=num, dataloader=dataloader)
        agreement = endpoint_agreement(a, b, top)
        row = dict(key)
        for metric in path.columns.drop("alpha"):
            sign = -1.0 if metric.endswith(tuple(higher_is_better)) else 1.0
            row[f"barrier_{metric}"] = barrier(sign * path[metric].to_numpy(), path["alpha"].to_numpy())
            row[f"{metric}_a"], row[f"{metric}_b"] = float(path[metric].iloc[0]), float(path[metric].iloc[-1])
        row["agreement"], row["subspace"] = float(agreement["agreement"].mean()), float(agreement["subspace"].mean())
        summary.append(row)
        paths.append(path.assign(**key))
        layers.append(agreement.assign(**key))
    return LMCReport(summary=pd.DataFrame(summary), paths=_keys_first(paths, key), layers=_keys_first(layers, key))


def _keys_first(frames: list[pd.DataFrame], key: Mapping[str, Any]) -> pd.DataFrame:
    """The frames stacked, the pair's key columns (kind, split, eta, label) in front."""
    frame = pd.concat(frames, ignore_index=True)
    return frame[list(key) + [c for c in frame.columns if c not in key]]


def _endpoint(endpoint: nn.Module | str | os.PathLike, load: Callable[[str], nn.Module] | None) -> nn.Module:
    if isinstance(endpoint, nn.Module):
        return endpoint
    if load is None:
        raise SpectralError(f"{endpoint}: an endpoint given as a path needs lmc_report(load=...), e.g. AutoModel.from_pretrained")
    return load(os.fspath(endpoint))
