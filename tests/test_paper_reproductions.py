"""The small-scale reproductions of recipes/paper/ (docs/experiments.md): a few steps of each script's main, its
numbers checked against numpy float64 computations on the weights it trained (not against hf_spectral).

weight_decay.py has no test here: its computation is `hf-spectral sweep` (tests/test_experiments.py runs a
two-run sweep); a run of it on the grokking recipe took 2.5x that test's time, too slow for the suite."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from safetensors.numpy import load_file

import hf_spectral

from tiny_models import load_recipe


def normalized_erank(w: np.ndarray) -> float:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()) / len(s))


def top_agreement(a: np.ndarray, b: np.ndarray, top: int = 10) -> float:
    """Mean over i < top of |u_i · u'_i| |v_i · v'_i| (paper Eq. 5)."""
    u_a, _, vt_a = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    u_b, _, vt_b = np.linalg.svd(b.astype(np.float64), full_matrices=False)
    k = min(top, u_a.shape[1])
    return float(np.mean([abs(u_a[:, i] @ u_b[:, i]) * abs(vt_a[i] @ vt_b[i]) for i in range(k)]))


def numpy_rank_k(w: np.ndarray, fraction: float, keep: str) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    k = math.ceil(fraction * len(s) - 1e-9)
    part = slice(0, k) if keep == "top" else slice(len(s) - k, len(s))
    return (u[:, part] * s[part]) @ vt[part]


def test_truncation_script_matches_a_numpy_forward_pass_of_the_truncated_mlp(tmp_path) -> None:
    script = load_recipe("paper/truncation")
    over, fractions, models = script.main(["--models", "mlp", "--epochs", "1", "--output_dir", str(tmp_path),
                                           "--figure", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "truncation.md").is_file()
    assert list(over["epoch"]) == [0, 1]
    weights = {n: p.detach().double().numpy() for n, p in models["mlp"].named_parameters()}
    _, (x_val, y_val) = hf_spectral.digits_splits(0)
    x, y = x_val.reshape(len(y_val), 64).double().numpy(), y_val.numpy()
    for keep in ("top", "bottom"):
        for fraction in (0.3, 0.5, 1.0):
            h = x
            for i, layer in enumerate(("1", "3", "5")):
                w = weights[f"{layer}.weight"]
                w = w if layer == "5" else numpy_rank_k(w, fraction, keep)  # the last matrix is kept
                h = h @ w.T + weights[f"{layer}.bias"]
                h = np.maximum(h, 0) if i < 2 else h
            loss = np.mean(np.log(np.exp(h - h.max(1, keepdims=True)).sum(1)) + h.max(1) - h[np.arange(len(y)), y])
            row = fractions[(fractions["keep"] == keep) & np.isclose(fractions["fraction"], fraction)].iloc[0]
            assert row["loss"] == pytest.approx(loss, rel=1e-4)
            assert row["accuracy"] == pytest.approx(np.mean(h.argmax(1) == y))
    # at the end of training the half-truncated losses logged during training are those of the fraction sweep
    last = over.iloc[-1]
    for keep in ("top", "bottom"):
        swept = fractions[(fractions["keep"] == keep) & np.isclose(fractions["fraction"], 0.5)].iloc[0]
        assert last[f"{keep}_loss"] == pytest.approx(swept["loss"], rel=1e-6)


def test_random_labels_script_permutes_before_the_split_and_reports_numpy_ranks(tmp_path) -> None:
    script = load_recipe("paper/random_labels")
    (x_true, y_true), (xv_true, yv_true) = script.digits_splits("true", 0, 12345)
    (x_rand, y_rand), (xv_rand, yv_rand) = script.digits_splits("random", 0, 12345)
    assert np.array_equal(x_true.numpy(), x_rand.numpy()) and np.array_equal(xv_true.numpy(), xv_rand.numpy())
    everything_true = np.concatenate([y_true.numpy(), yv_true.numpy()])
    everything_random = np.concatenate([y_rand.numpy(), yv_rand.numpy()])
    assert Counter(everything_true) == Counter(everything_random)  # one permutation of ALL targets
    assert np.mean(everything_true != everything_random) > 0.8
    history, ranks, agreement, models = script.main(["--epochs", "2", "--hidden", "16", "--output_dir", str(tmp_path),
                                                     "--figure", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 0 and len(history) == 4
    for labels, model in models.items():
        final = ranks[(ranks["labels"] == labels) & (ranks["step"] == ranks["step"].max())].set_index("matrix")
        weights = {n: p.detach().numpy() for n, p in model.named_parameters() if p.ndim == 2}
        assert sorted(final.index) == sorted(weights)
        for name, w in weights.items():
            assert final.loc[name, "normalized_effective_rank"] == pytest.approx(normalized_erank(w), abs=1e-5)
        at_end = agreement[(agreement["labels"] == labels) & (agreement["step"] == agreement["step"].max())]
        assert np.allclose(at_end["score"], 1.0, atol=1e-5)


def test_lottery_ticket_script_against_numpy_masks_and_svds(tmp_path) -> None:
    script = load_recipe("paper/lottery_ticket")
    agreement, curves, tickets = script.main(["--epochs", "2", "--densities", "0.05", "0.3", "--output_dir", str(tmp_path),
                                              "--figure", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 0
    dense = load_file(tmp_path / "dense.safetensors")
    masked_names = ["0.weight", "2.weight", "4.weight"]  # every matrix but the last
    flat = np.concatenate([np.abs(dense[n]).ravel() for n in masked_names])
    for density in (0.05, 0.3):
        threshold = np.sort(flat)[::-1][round(density * flat.size) - 1]
        rows = agreement[np.isclose(agreement["target_density"], density)]
        for name in masked_names:
            keep = np.abs(dense[name]) >= threshold
            magnitude = rows[(rows["mask"] == "magnitude") & (rows["matrix"] == name)].iloc[0]
            random = rows[(rows["mask"] == "random") & (rows["matrix"] == name)].iloc[0]
            assert magnitude["density"] == pytest.approx(keep.mean())
            assert random["density"] == pytest.approx(keep.mean(), abs=1e-9)  # same per-layer density
            assert magnitude["agreement"] == pytest.approx(top_agreement(dense[name] * keep, dense[name]), abs=1e-6)
    # the 5% tickets: pruned entries stayed zero through retraining; their agreement with the dense weights
    threshold = np.sort(flat)[::-1][round(0.05 * flat.size) - 1]
    for kind in ("magnitude", "random"):
        ticket = load_file(tmp_path / f"{kind}_ticket.safetensors")
        kept = sum(int((ticket[n] != 0).sum()) for n in masked_names)
        assert kept <= round(0.05 * flat.size)
        if kind == "magnitude":
            for name in masked_names:
                assert not np.any(ticket[name][np.abs(dense[name]) < threshold])
        reported = tickets[tickets["mask"] == kind].set_index("matrix")["agreement"]
        for name in masked_names:
            assert reported[name] == pytest.approx(top_agreement(ticket[name], dense[name]), abs=1e-5)
    assert set(curves["model"].str.split().str[0]) == {"dense", "magnitude", "random"}


def test_digits_splits_are_sklearn_digits_scaled_and_split_by_a_seeded_permutation() -> None:
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    (x, y), (xv, yv) = hf_spectral.digits_splits(3)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(3)).numpy()
    assert x.shape == (1437, 64) and xv.shape == (360, 64)
    np.testing.assert_array_equal(x.numpy(), (digits.data[order[:1437]] / 16.0).astype(np.float32))
    np.testing.assert_array_equal(yv.numpy(), digits.target[order[1437:]])
    (images, _), _ = hf_spectral.digits_splits(3, images=True)
    np.testing.assert_array_equal(images.numpy()[:, 0], (digits.images[order[:1437]] / 16.0).astype(np.float32))
