"""The LMC report (experiments.lmc_report, plots.plot_lmc) against independent numpy float64 computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hf_spectral import SpectralError, experiments
from hf_spectral.plots import plot_lmc, save_figure
from tiny_models import TinyMLP

SIZES = (6, 12, 12, 3)
rng = np.random.default_rng(0)
X = rng.normal(size=(40, SIZES[0]))
Y = rng.integers(0, SIZES[-1], size=40)


def _model(seed: int) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP(SIZES)


def _numpy_state(model: TinyMLP) -> list[tuple[np.ndarray, np.ndarray]]:
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in linears]


def _numpy_metrics(layers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Cross-entropy and accuracy of the MLP, in numpy float64."""
    h = X
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    log_p = h - h.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(Y)), Y].mean()), float((h.argmax(1) == Y).mean())


def _evaluate(model: torch.nn.Module) -> dict[str, float]:
    with torch.no_grad():
        logits = model(torch.as_tensor(X, dtype=torch.float32))
    return {"loss": float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(Y))),
            "accuracy": float((logits.argmax(1).numpy() == Y).mean())}


def _numpy_expectation(a: TinyMLP, b: TinyMLP, num: int = 11) -> dict[str, float]:
    la, lb = _numpy_state(a), _numpy_state(b)
    alphas = np.linspace(0, 1, num)
    values = np.array([_numpy_metrics([((1 - t) * wa + t * wb, (1 - t) * ba + t * bb) for (wa, ba), (wb, bb) in zip(la, lb)])
                       for t in alphas])
    line = values[0] + np.outer(alphas, values[-1] - values[0])
    scores = []
    for (wa, _), (wb, _) in zip(la, lb):
        ua, _, vha = np.linalg.svd(wa, full_matrices=False)
        ub, _, vhb = np.linalg.svd(wb, full_matrices=False)
        k = min(10, ua.shape[1])
        scores.append(np.mean(np.abs((ua[:, :k] * ub[:, :k]).sum(0)) * np.abs((vha[:k] * vhb[:k]).sum(1))))
    return {"barrier_loss": float(np.max((values - line)[1:-1, 0])),
            "barrier_accuracy": float(np.max((line - values)[1:-1, 1])),  # accuracy: its largest drop
            "agreement": float(np.mean(scores)), "loss_a": values[0, 0], "loss_b": values[-1, 0]}


def test_report_matches_numpy_barriers_and_agreement():
    a, b, c = _model(0), _model(1), _model(2)
    pairs = [experiments.BranchPair("branches", 10, a, b, label="1-2"),
             experiments.BranchPair("cross-trunk", 10, a, c),
             experiments.BranchPair("perturbed", 10, a, experiments.perturb(a, 0.5, seed=3), eta=0.5)]
    report = experiments.lmc_report(pairs, _evaluate, progress=False)
    assert list(report.summary["kind"]) == ["branches", "cross-trunk", "perturbed"]
    for row, (x, y) in zip(report.summary.itertuples(), [(a, b), (a, c), (a, pairs[2].b)]):
        expected = _numpy_expectation(x, y)
        for key, value in expected.items():
            assert getattr(row, key) == pytest.approx(value, abs=2e-6), key
    assert abs(report.summary.loc[0, "barrier_loss"]) > 0.005  # two independent inits: not a trivial 0
    assert len(report.paths) == 33 and set(report.paths["alpha"].round(3)) == set(np.linspace(0, 1, 11).round(3))
    assert len(report.layers) == 3 * 3 and report.layers["matrix"].iloc[0] == "net.0.weight"


def test_a_model_with_itself_has_no_barrier_and_full_agreement():
    a = _model(0)
    row = experiments.lmc_report([experiments.BranchPair("branches", 0, a, a)], _evaluate, num=5).summary.iloc[0]
    assert row["barrier_loss"] == pytest.approx(0.0, abs=1e-6) and row["agreement"] == pytest.approx(1.0)


def test_endpoints_as_paths_and_bad_pairs(tmp_path):
    a, b = _model(0), _model(1)
    saved = {"a": a, "b": b}
    report = experiments.lmc_report([experiments.BranchPair("branches", 5, "a", "b")], _evaluate, load=saved.__getitem__)
    assert report.summary.loc[0, "barrier_loss"] == pytest.approx(_numpy_expectation(a, b)["barrier_loss"], abs=2e-6)
    with pytest.raises(SpectralError, match="load="):
        experiments.lmc_report([experiments.BranchPair("branches", 5, "a", "b")], _evaluate)
    with pytest.raises(SpectralError, match="kind"):
        experiments.lmc_report([experiments.BranchPair("siblings", 5, a, b)], _evaluate)
    with pytest.raises(SpectralError, match="one architecture"):
        experiments.endpoint_agreement(a, TinyMLP((6, 12, 3)))


def test_saved_tables_and_the_figure(tmp_path):
    a, b, c = _model(0), _model(1), _model(2)
    pairs = [experiments.BranchPair("branches", s, a, m) for s, m in ((0, b), (10, c), (100, a))]
    pairs += [experiments.BranchPair("cross-trunk", 10, b, c)]
    pairs += [experiments.BranchPair("perturbed", 10, a, experiments.perturb(a, eta, seed=1), eta=eta) for eta in (0.0, 1.0)]
    report = experiments.lmc_report(pairs, _evaluate, num=5, progress=False)
    written = report.save(tmp_path / "lmc")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "lmc" / "summary.parquet"), report.summary)
    table = (tmp_path / "lmc" / "summary.md").read_text()
    assert table.count("\n") == len(pairs) + 2 and "| branches | 0 |" in table
    fig = plot_lmc(report.summary, report.paths)
    assert len(fig.axes) == 5  # four panels and the η panel's second axis
    barrier_ax = fig.axes[1]
    means = report.summary[report.summary["kind"] == "branches"].groupby("split")["barrier_loss"].mean().to_numpy()
    np.testing.assert_allclose(barrier_ax.lines[0].get_ydata(), means)
    assert all(p.exists() for p in save_figure(fig, tmp_path / "lmc" / "lmc")) and len(written) == 4
    with pytest.raises(SpectralError, match="no barrier of 'perplexity'"):
        plot_lmc(report.summary, report.paths, metric="perplexity")
