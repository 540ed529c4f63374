"""hf_spectral.metrics.spectrum against independent float64 numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_spectral import metrics
from hf_spectral.errors import SpectralError

BOUND = {"float32": 1e-4, "float64": 1e-9}  # the exactness contract, relative to σ_max
AIM = {"float32": 1e-7, "float64": 1e-12}  # what the implementation actually reaches


# ---------------------------------------------------------------------------------------------
# reference helpers (numpy float64, independent of the code under test)
# ---------------------------------------------------------------------------------------------


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def with_spectrum(rng: np.random.Generator, m: int, n: int, sigma) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    r = sigma.size
    return (orthonormal(rng, m, r) * sigma) @ orthonormal(rng, n, r).T


def ref_sigma(w: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(w.detach().to(torch.float64).numpy(), compute_uv=False)


def max_rel_error(sigma: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(sigma.numpy() - ref).max() / max(ref[0], 1e-300))


def cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "tall": rng.standard_normal((90, 40)),
        "wide": rng.standard_normal((40, 90)),
        "square": rng.standard_normal((50, 50)),
        "rank_deficient": with_spectrum(rng, 60, 45, np.r_[np.linspace(4, 1, 10), np.zeros(35)]),
        "ill_conditioned": with_spectrum(rng, 70, 50, np.logspace(0, -12, 50)),
        "ill_conditioned_wide": with_spectrum(rng, 50, 70, np.logspace(2, -10, 50)),
        "vector_row": rng.standard_normal((1, 17)),
        "vector_col": rng.standard_normal((17, 1)),
    }


CASES = cases()


# ---------------------------------------------------------------------------------------------
# singular_values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", metrics.PRECISIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_singular_values_match_numpy(name, precision):
    w = torch.tensor(CASES[name], dtype=torch.float32)
    sigma = metrics.singular_values(w, precision=precision)
    ref = ref_sigma(w)
    assert sigma.dtype == torch.float64 and sigma.device == w.device
    assert sigma.shape == (min(w.shape),)
    assert torch.all(sigma[:-1] >= sigma[1:]), "not descending"
    assert max_rel_error(sigma, ref) <= AIM[precision]


@pytest.mark.parametrize("precision", metrics.PRECISIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_singular_values_low_precision_inputs_are_upcast(dtype, precision):
    rng = np.random.default_rng(1)
    w = torch.tensor(with_spectrum(rng, 64, 48, np.logspace(0, -3, 48)), dtype=dtype)
    sigma = metrics.singular_values(w, precision=precision)
    # the reference decomposes exactly the stored (rounded) values, upcast
    assert max_rel_error(sigma, ref_sigma(w)) <= AIM[precision]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 48),
    n=st.integers(1, 48),
    log_scale=st.floats(-30, 30),
    decay=st.floats(0, 14),
    seed=st.integers(0, 2**31 - 1),
    precision=st.sampled_from(metrics.PRECISIONS),
)
def test_singular_values_property(m, n, log_scale, decay, seed, precision):
    rng = np.random.default_rng(seed)
    r = min(m, n)
    spectrum = 10.0 ** (log_scale - decay * np.linspace(0, 1, r))
    w = torch.tensor(with_spectrum(rng, m, n, spectrum), dtype=torch.float64)
    sigma = metrics.singular_values(w, precision=precision)
    assert max_rel_error(sigma, ref_sigma(w)) <= BOUND[precision]


def test_singular_values_float64_overflowing_gram_falls_back():
    # |w| ~ 1e200: WᵀW overflows float64, the result must still be exact.
    rng = np.random.default_rng(2)
    w = torch.tensor(rng.standard_normal((30, 20)) * 1e200)
    sigma = metrics.singular_values(w)
    assert torch.isfinite(sigma).all()
    assert max_rel_error(sigma, ref_sigma(w)) <= 1e-12


def test_singular_values_zero_and_empty():
    assert torch.equal(metrics.singular_values(torch.zeros(4, 3)), torch.zeros(3, dtype=torch.float64))
    assert metrics.singular_values(torch.zeros(0, 5)).shape == (0,)


def test_singular_values_bad_input():
    with pytest.raises(SpectralError):
        metrics.singular_values(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        metrics.singular_values(torch.zeros(2, 3), precision="float16")


class _FailOnce:
    """Wraps a torch.linalg function: raises LinAlgError on the first call(s), records inputs."""

    def __init__(self, real, failures: int = 1):
        self.real, self.failures, self.inputs = real, failures, []

    def __call__(self, a, *args, **kwargs):
        self.inputs.append(a.clone())
        if len(self.inputs) <= self.failures:
            raise torch.linalg.LinAlgError("forced failure")
        return self.real(a, *args, **kwargs)


@pytest.mark.parametrize("precision, target", [("float32", "eigvalsh"), ("float64", "svdvals")])
def test_retry_on_jittered_matrix(monkeypatch, precision, target):
    fake = _FailOnce(getattr(torch.linalg, target))
    monkeypatch.setattr(torch.linalg, target, fake)
    # A zero matrix makes the jitter visible: σ(0 + 1e-10·I) = 1e-10 on the leading square block.
    sigma = metrics.singular_values(torch.zeros(5, 3), precision=precision)
    assert len(fake.inputs) == 2
    np.testing.assert_allclose(sigma.numpy(), np.full(3, 1e-10), rtol=1e-6)

    fake = _FailOnce(getattr(torch.linalg, target))
    monkeypatch.setattr(torch.linalg, target, fake)
    w = torch.tensor(CASES["wide"], dtype=torch.float32)
    sigma = metrics.singular_values(w, precision=precision)
    ref = np.linalg.svd(w.double().numpy() + 1e-10 * np.eye(*w.shape), compute_uv=False)
    assert len(fake.inputs) == 2
    assert max_rel_error(sigma, ref) <= AIM[precision]


@pytest.mark.parametrize("precision, target", [("float32", "eigvalsh"), ("float64", "svdvals")])
def test_retry_then_raise(monkeypatch, precision, target):
    fake = _FailOnce(getattr(torch.linalg, target), failures=2)
    monkeypatch.setattr(torch.linalg, target, fake)
    with pytest.raises(metrics.DecompositionError, match="1e-10"):
        metrics.singular_values(torch.randn(6, 4), precision=precision)
    assert len(fake.inputs) == 2


@pytest.mark.parametrize("precision", metrics.PRECISIONS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_raises_instead_of_hanging(precision, bad):
    w = torch.randn(12, 8)
    w[3, 2] = bad
    with pytest.raises(metrics.DecompositionError):
        metrics.singular_values(w, precision=precision)
    with pytest.raises(metrics.DecompositionError):
        metrics.top_singular_vectors(w, 3, precision=precision)


# ---------------------------------------------------------------------------------------------
# top_singular_vectors / decompose
# ---------------------------------------------------------------------------------------------


def check_triplets(w: torch.Tensor, k: int, precision: str, tol: float) -> None:
    u, s, v = metrics.top_singular_vectors(w, k, precision=precision)
    a = w.to(torch.float64).numpy()
    uu, ss, vh = np.linalg.svd(a, full_matrices=False)
    kk = min(k, *a.shape)
    assert u.shape == (a.shape[0], kk) and s.shape == (kk,) and v.shape == (a.shape[1], kk)
    assert u.dtype == s.dtype == v.dtype == torch.float64
    scale = ss[0]
    np.testing.assert_allclose(s.numpy(), ss[:kk], atol=tol * scale, rtol=0)
    # U S Vᵀ is the best rank-k approximation
    approx = (uu[:, :kk] * ss[:kk]) @ vh[:kk]
    np.testing.assert_allclose((u.numpy() * s.numpy()) @ v.numpy().T, approx, atol=tol * scale * 10, rtol=0)
    np.testing.assert_allclose(u.numpy().T @ u.numpy(), np.eye(kk), atol=1e-8)
    np.testing.assert_allclose(v.numpy().T @ v.numpy(), np.eye(kk), atol=1e-8)
    # each vector equals numpy's up to sign (spectra here have distinct values)
    np.testing.assert_allclose(np.abs(np.sum(u.numpy() * uu[:, :kk], axis=0)), 1.0, atol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(v.numpy() * vh[:kk].T, axis=0)), 1.0, atol=1e-8)
    # sign convention: the largest-|.| entry of each v column is positive
    vn = v.numpy()
    assert np.all(vn[np.abs(vn).argmax(axis=0), np.arange(kk)] > 0)


@pytest.mark.parametrize("precision", metrics.PRECISIONS)
@pytest.mark.parametrize("shape", [(80, 30), (30, 80), (40, 40)])
@pytest.mark.parametrize("k", [1, 7, 100])
def test_top_vectors_reconstruct(shape, k, precision):
    rng = np.random.default_rng(sum(shape) + k)
    r = min(shape)
    w = torch.tensor(with_spectrum(rng, *shape, np.linspace(10, 1, r)), dtype=torch.float32)
    check_triplets(w, k, precision, 1e-10)


@pytest.mark.parametrize("precision", metrics.PRECISIONS)
def test_top_vectors_ill_conditioned_top_block(precision):
    # σ_k far below σ₁: the Gram shortcut would lose U; the result must still be exact.
    rng = np.random.default_rng(3)
    spectrum = np.r_[1.0, 0.5, 1e-6, 5e-7, np.linspace(1e-7, 1e-9, 26)]
    w = torch.tensor(with_spectrum(rng, 60, 30, spectrum))
    check_triplets(w, 4, precision, 1e-12)


def test_top_vectors_sign_convention_is_deterministic():
    w = torch.tensor(CASES["tall"])
    u1, s1, v1 = metrics.top_singular_vectors(w, 5)
    u2, s2, v2 = metrics.top_singular_vectors(w.clone(), 5)
    assert torch.equal(u1, u2) and torch.equal(v1, v2) and torch.equal(s1, s2)
    # -W has the same V under the convention, so U flips
    u3, _, v3 = metrics.top_singular_vectors(-w, 5)
    torch.testing.assert_close(v3, v1, atol=1e-10, rtol=0)
    torch.testing.assert_close(u3, -u1, atol=1e-10, rtol=0)
    # the Gram path and the direct SVD agree, signs included
    u4, _, v4 = metrics.top_singular_vectors(w, 5, precision="float64")
    torch.testing.assert_close(v4, v1, atol=1e-9, rtol=0)
    torch.testing.assert_close(u4, u1, atol=1e-9, rtol=0)


def test_top_vectors_rank_deficient_and_edge_k():
    w = torch.tensor(CASES["rank_deficient"])
    u, s, v = metrics.top_singular_vectors(w, 20)  # 10 non-zero σ, k beyond the rank
    np.testing.assert_allclose(u.numpy().T @ u.numpy(), np.eye(20), atol=1e-8)
    np.testing.assert_allclose((u * s) @ v.T, w.numpy(), atol=1e-10)
    assert metrics.top_singular_vectors(w, np.int64(3))[0].shape == (60, 3)
    u, s, v = metrics.top_singular_vectors(w, 0)
    assert u.shape == (60, 0) and s.shape == (0,) and v.shape == (45, 0)
    with pytest.raises(ValueError):
        metrics.top_singular_vectors(w, -1)


# ---------------------------------------------------------------------------------------------
# top-k Gram eigenvectors by Chebyshev-filtered subspace iteration (the default from n >= 1024;
# forced here on small matrices so that the tests stay fast)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def filter_always(monkeypatch):
    from hf_spectral.metrics import spectrum

    monkeypatch.setattr(spectrum, "FILTER_MIN_SIZE", 0)
    calls = []
    real = spectrum._chebyshev_filter
    monkeypatch.setattr(spectrum, "_chebyshev_filter", lambda *a: (calls.append(a[2]), real(*a))[1])
    return calls


@pytest.mark.parametrize("shape", [(400, 150), (150, 400), (160, 160)])
@pytest.mark.parametrize("k", [1, 10])
def test_filtered_top_vectors_match_numpy(filter_always, shape, k):
    rng = np.random.default_rng(sum(shape) + k)
    r = min(shape)
    # a trained-like spectrum: a decaying top over a smooth bulk
    top = 10 * 0.9 ** np.arange(24)
    w = torch.tensor(with_spectrum(rng, *shape, np.r_[top, np.linspace(top[-1] * 0.9, 0.01, r - 24)]), dtype=torch.float32)
    check_triplets(w, k, "float32", 1e-10)
    assert filter_always, "the filter was not used"
    result = metrics.decompose(w, k)
    # the values are exactly those of the values-only path (one eigvalsh serves both)
    assert torch.equal(result.sigma, metrics.singular_values(w))


def test_filtered_top_vectors_near_degenerate_span_the_subspace(filter_always):
    """σ₂ ≈ σ₃ ≈ σ₄ (gaps of 1e-9): single vectors of the cluster are not defined, their span is."""
    rng = np.random.default_rng(7)
    spectrum_ = np.r_[10.0, 6.0 + 1e-9, 6.0, 6.0 - 1e-9, 4.0, 3.0, 2.5 * 0.9 ** np.arange(20), np.linspace(0.3, 0.1, 124)]
    w = torch.tensor(with_spectrum(rng, 300, 150, spectrum_))
    k = 6
    u, s, v = metrics.top_singular_vectors(w, k)
    assert filter_always
    uu, ss, vh = np.linalg.svd(w.numpy(), full_matrices=False)
    np.testing.assert_allclose(s.numpy(), ss[:k], atol=1e-12 * ss[0], rtol=0)
    for cols in ([0], [1, 2, 3], [4], [5]):  # the projector onto each cluster's span
        ref = vh[cols].T @ vh[cols]
        np.testing.assert_allclose(v.numpy()[:, cols] @ v.numpy()[:, cols].T, ref, atol=1e-9)
        ref = uu[:, cols] @ uu[:, cols].T
        np.testing.assert_allclose(u.numpy()[:, cols] @ u.numpy()[:, cols].T, ref, atol=1e-9)
    np.testing.assert_allclose(v.numpy().T @ v.numpy(), np.eye(k), atol=1e-10)


def test_filter_falls_back_to_eigh_without_a_gap(filter_always):
    """A flat top (σ_k = σ_(p+1)) gives the filter nothing to separate: eigh decides, still exact."""
    rng = np.random.default_rng(8)
    w = torch.tensor(with_spectrum(rng, 300, 150, np.r_[np.full(40, 2.0), np.linspace(1, 0.1, 110)]))
    from hf_spectral.metrics import spectrum

    gram = spectrum._gram_lower(w)
    vecs = spectrum.top_eigenvectors(gram, torch.linalg.eigvalsh(gram, UPLO="L"), 5)
    assert not filter_always  # no iteration was attempted
    _, _, vh = np.linalg.svd(w.numpy(), full_matrices=False)
    ref = vh[:40].T @ vh[:40]  # the top-5 lie in the 40-fold eigenspace
    np.testing.assert_allclose(ref @ vecs.numpy(), vecs.numpy(), atol=1e-10)


def test_filtered_top_vectors_of_a_low_rank_matrix(filter_always):
    rng = np.random.default_rng(9)
    w = torch.tensor(with_spectrum(rng, 300, 150, np.r_[np.linspace(5, 1, 12), np.zeros(138)]))
    check_triplets(w, 10, "float32", 1e-10)
    assert filter_always


def test_decompose_matches_separate_calls():
    w = torch.tensor(CASES["wide"], dtype=torch.float32)
    result = metrics.decompose(w, 6)
    np.testing.assert_allclose(result.sigma.numpy(), ref_sigma(w), atol=1e-12)
    u, s, v = metrics.top_singular_vectors(w, 6)
    assert torch.equal(result.u, u) and torch.equal(result.v, v) and torch.equal(result.s, s)


# ---------------------------------------------------------------------------------------------
# spectrum_metrics
# ---------------------------------------------------------------------------------------------


def ref_metrics(s: np.ndarray, shape: tuple[int, int]) -> dict[str, float]:
    """Textbook definitions, written out independently."""
    r = min(shape)
    p = s / s.sum()
    erank = np.exp(-sum(pi * np.log(pi) for pi in p if pi > 0))
    cum = np.cumsum(p)
    mass90 = next(i + 1 for i in range(r) if cum[i] > 0.9)
    stable = (s**2).sum() / s.max() ** 2
    return {
        "effective_rank": erank,
        "normalized_effective_rank": erank / r,
        "mass90_rank": mass90,
        "normalized_mass90_rank": mass90 / r,
        "stable_rank": stable,
        "normalized_stable_rank": stable / r,
    }


def metrics_of(w: np.ndarray, **kw) -> dict:
    return metrics.spectrum_metrics(metrics.singular_values(torch.tensor(w)), w.shape, **kw)


def test_metric_keys():
    values = metrics_of(CASES["tall"])
    assert set(values) == set(metrics.SPECTRUM_METRICS) | {"flag"}
    assert all(isinstance(values[key], float) for key in metrics.SPECTRUM_METRICS)
    assert values["flag"] == "" and values["rank_dim"] == 40


def test_metrics_match_definitions():
    w = CASES["square"]
    values = metrics_of(w)
    s = np.linalg.svd(w, compute_uv=False)
    for key, expected in ref_metrics(s, w.shape).items():
        assert values[key] == pytest.approx(expected, rel=1e-10), key
    assert values["spectral_norm"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-10)
    assert values["frobenius_norm"] == pytest.approx(np.linalg.norm(w, "fro"), rel=1e-10)
    assert values["frobenius_norm"] ** 2 == pytest.approx(np.sum(s**2), rel=1e-10)
    assert values["nuclear_norm"] == pytest.approx(np.linalg.norm(w, "nuc"), rel=1e-10)
    assert values["stable_rank"] == pytest.approx(np.linalg.norm(w, "fro") ** 2 / np.linalg.norm(w, 2) ** 2, rel=1e-10)
    assert values["condition_number"] == pytest.approx(np.linalg.cond(w), rel=1e-8)
    assert values["numerical_rank"] == np.linalg.matrix_rank(w)


def test_identity_and_rank_one():
    values = metrics_of(np.eye(7))
    assert values["normalized_effective_rank"] == pytest.approx(1.0, abs=1e-15)
    assert values["normalized_effective_rank"] <= 1.0
    assert values["normalized_stable_rank"] == pytest.approx(1.0)
    assert values["mass90_rank"] == 7 and values["gini"] == pytest.approx(0.0, abs=1e-15)
    assert values["condition_number"] == pytest.approx(1.0)

    rng = np.random.default_rng(4)
    rank_one = np.outer(rng.standard_normal(12), rng.standard_normal(9))
    values = metrics_of(rank_one)
    assert values["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert values["normalized_effective_rank"] == pytest.approx(1 / 9, abs=1e-6)
    assert values["mass90_rank"] == 1 and values["normalized_mass90_rank"] == pytest.approx(1 / 9)
    assert values["normalized_stable_rank"] == pytest.approx(1 / 9, rel=1e-10)
    assert values["numerical_rank"] == 1 and values["flag"] == metrics.FLAG_RANK_DEFICIENT
    assert values["condition_number"] == math.inf


SCALE_FREE = ("normalized_effective_rank", "normalized_mass90_rank", "normalized_stable_rank", "gini",
              "condition_number", "numerical_rank")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_c=st.floats(-20, 20), m=st.integers(2, 30), n=st.integers(2, 30))
def test_scale_and_orthogonal_invariance(seed, log_c, m, n):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)) * np.linspace(1, 3, n)
    base = metrics_of(w)
    scaled = metrics_of(w * 10.0**log_c)
    rotated = metrics_of(orthonormal(rng, m, m) @ w @ orthonormal(rng, n, n))
    for other in (scaled, rotated):
        for key in SCALE_FREE:
            assert other[key] == pytest.approx(base[key], rel=1e-6), key
        assert other["flag"] == base["flag"]
    assert scaled["spectral_norm"] == pytest.approx(base["spectral_norm"] * 10.0**log_c, rel=1e-9)
    assert rotated["nuclear_norm"] == pytest.approx(base["nuclear_norm"], rel=1e-9)


def test_mass90_hand_computed():
    # p = [0.5, 0.3, 0.15, 0.05] -> cumsum [0.5, 0.8, 0.95, 1.0]: first > 0.9 is the 3rd
    values = metrics.spectrum_metrics(np.array([10.0, 6.0, 3.0, 1.0]), (4, 6))
    assert values["mass90_rank"] == 3 and values["normalized_mass90_rank"] == 0.75
    # cumsum hits exactly 0.9: the authors' strict '>' moves on to the next index
    values = metrics.spectrum_metrics(np.array([9.0, 1.0]), (2, 2))
    assert values["mass90_rank"] == 2
    values = metrics.spectrum_metrics(np.array([9.5, 0.5]), (2, 2))
    assert values["mass90_rank"] == 1


def test_effective_rank_hand_computed():
    s = np.array([3.0, 1.0, 0.0])  # p = [0.75, 0.25, 0]
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    values = metrics.spectrum_metrics(s, (3, 5))
    assert values["effective_rank"] == pytest.approx(expected, rel=1e-14)
    assert values["stable_rank"] == pytest.approx(10 / 9, rel=1e-14)
    assert values["flag"] == metrics.FLAG_RANK_DEFICIENT and values["condition_number"] == math.inf
    assert values["numerical_rank"] == 2


def test_numerical_rank_and_condition_threshold():
    rng = np.random.default_rng(5)
    spectrum = np.r_[np.ones(5), 1e-9, 1e-17]
    w = with_spectrum(rng, 20, 7, spectrum)
    eps64 = float(np.finfo(np.float64).eps)
    # a float64 noise floor needs the float64 decomposition (the Gram path resolves ~1e-8·σ₁)
    sigma64 = metrics.singular_values(torch.tensor(w), precision="float64")
    values = metrics.spectrum_metrics(sigma64, w.shape, eps=eps64)
    assert values["numerical_rank"] == np.linalg.matrix_rank(w) == 6
    assert values["flag"] == metrics.FLAG_RANK_DEFICIENT
    # the true ratio of the values given, flagged apart (not inf)
    assert values["condition_number"] == pytest.approx(float(sigma64[0] / sigma64[-1]), rel=1e-12)
    values32 = metrics_of(w)  # default float32 eps: 1e-9 is noise as well
    assert values32["numerical_rank"] == np.linalg.matrix_rank(w, tol=20 * np.finfo(np.float32).eps) == 5
    full = metrics.spectrum_metrics(np.array([2.0, 1e-3]), (2, 2))
    assert full["condition_number"] == pytest.approx(2000.0) and full["flag"] == ""


def test_zero_matrix_is_flagged():
    values = metrics_of(np.zeros((6, 4)))
    assert values["flag"] == metrics.FLAG_ZERO
    for key in ("effective_rank", "normalized_effective_rank", "mass90_rank", "normalized_mass90_rank",
                "stable_rank", "normalized_stable_rank", "condition_number", "gini"):
        assert math.isnan(values[key]), key
    assert values["spectral_norm"] == values["frobenius_norm"] == values["nuclear_norm"] == 0.0
    assert values["numerical_rank"] == 0.0 and values["rank_dim"] == 4.0


def test_non_finite_metrics():
    values = metrics.non_finite_metrics((5, 8))
    assert values["flag"] == metrics.FLAG_NON_FINITE and values["rank_dim"] == 5.0
    assert set(values) == set(metrics.SPECTRUM_METRICS) | {"flag"}
    assert all(math.isnan(values[k]) for k in metrics.SPECTRUM_METRICS if k != "rank_dim")
    # a non-finite spectrum gives the same row
    assert metrics.spectrum_metrics(torch.tensor([1.0, math.nan]), (2, 3))["flag"] == metrics.FLAG_NON_FINITE


def test_spectrum_metrics_rejects_partial_spectra():
    with pytest.raises(ValueError, match="top-k"):
        metrics.spectrum_metrics(torch.ones(3), (10, 5))
    with pytest.raises(ValueError):
        metrics.spectrum_metrics(torch.ones(6), (10, 5))
    with pytest.raises(ValueError):
        metrics.spectrum_metrics(torch.tensor([1.0, -1.0]), (2, 2))


def test_gini_known_vectors():
    assert metrics.gini(np.ones(6)) == 0.0
    assert metrics.gini(np.r_[np.zeros(4), 3.0]) == pytest.approx(4 / 5)
    assert metrics.gini(torch.tensor([1.0, 3.0])) == pytest.approx(0.25)  # |1-3|·2 / (2·4·2)
    assert math.isnan(metrics.gini(np.zeros(3)))
    rng = np.random.default_rng(6)
    x = rng.random(37)
    direct = np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean())
    assert metrics.gini(x) == pytest.approx(direct, rel=1e-12)
