"""Heavy-tailed (WeightWatcher-style) metrics of one empirical spectral density (ESD).

The ESD of a weight matrix W is the set of eigenvalues λ = σ² of WᵀW (docs/heavy_tailed.md).
Definitions and algorithms follow ``weightwatcher`` 0.7.x's defaults (``analyze()`` with
``fit='PL'``, ``pl_package='ww'``, no ``fix_fingers``, no ``xmax``), so the same eigenvalues give
the same numbers:

* ``alpha``: exponent of a continuous power law p(λ) ∝ λ^(-α) on [xmin, ∞), fitted by maximum
  likelihood, α = 1 + n / Σ log(λᵢ / xmin), for every candidate xmin among the eigenvalues
  (all but the largest); the xmin with the smallest Kolmogorov–Smirnov distance ``D`` between
  the fitted and the empirical CDF of the tail wins (the first one on ties). With fewer than 20
  eigenvalues WeightWatcher switches to a bias-corrected α on tails of at least 8, as we do.
* ``alpha_sigma`` = (α − 1)/√n_tail, the MLE's standard error; ``num_pl_spikes`` = #λ ≥ xmin.
* norms: ``log_norm`` = log10 Σλ = log10 ‖W‖_F², ``log_spectral_norm`` = log10 λ_max,
  ``alpha_weighted`` = α·log10 λ_max, ``log_alpha_norm`` = log10 Σ λ^α, ``esd_stable_rank`` = Σλ / λ_max.
* Marchenko–Pastur fit (WeightWatcher's ``mp_fit=True``): the ESD rescaled to mean 1, σ_mp fitted
  to a linear-kernel density estimate of the bulk (grid search, then Nelder–Mead), bulk edge
  λ₊ = (σ_mp(1 + 1/√Q))²; ``mp_softrank`` = λ₊/λ_max and ``mp_num_spikes`` = #λ above λ₊ plus the
  Tracy–Widom margin.

Differences from weightwatcher (all documented in docs/heavy_tailed.md): eigenvalues that are
numerical zeros are left out of the fit by a *relative* floor (the numerical-rank tolerance),
where weightwatcher drops λ ≤ 1e-5 whatever the matrix's scale — so the fit here is exactly
invariant to scaling W; and an undefined fit is NaN with a reason in ``heavy_tail_flag`` instead
of weightwatcher's ``-1`` or ``inf``.

Pure numpy on 1-D arrays: no I/O, no model knowledge.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from hf_spectral._lazy import LazyModule
from hf_spectral.metrics.spectrum import FLAG_NON_FINITE, FLAG_ZERO, FLOAT32_EPS, MetricInputError, _to_numpy_1d

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

HEAVY_TAIL_METRICS = (
    "alpha",
    "alpha_sigma",
    "alpha_weighted",
    "log_norm",
    "log_spectral_norm",
    "log_alpha_norm",
    "esd_stable_rank",
    "pl_xmin",
    "pl_ks_distance",
    "num_pl_spikes",
    "num_evals",
    "mp_softrank",
    "mp_num_spikes",
)
# weightwatcher's band of "well trained" layers (constants OVER_TRAINED_THRESH / UNDER_TRAINED_THRESH)
ALPHA_BAND = (2.0, 6.0)
# weightwatcher skips a layer with fewer eigenvalues (DEFAULT_MIN_EVALS); a fit on fewer is noise
MIN_EVALS = 8
# below this many fitted eigenvalues weightwatcher uses its small-sample fit (WW_powerlaw.SMALL_N_CUTOFF)
SMALL_N = 20
# weightwatcher's absolute floor on the eigenvalues it fits (EVALS_THRESH); ours is relative
WW_EVALS_FLOOR = 1e-5
# conv kernels in weightwatcher's view are multiplied by sqrt(1/2) (conv2d_norm=True, pooled slices)
WW_CONV_SCALE = 0.5  # on the eigenvalues: (1/√2)²

FLAG_TOO_FEW = "too_few_eigenvalues"
FLAG_DEGENERATE = "degenerate_tail"

# (rows of the candidate-xmin block) x (eigenvalues): elements per block of the vectorized KS scan
_BLOCK_ELEMENTS = 1 << 20


class PowerLawFit(NamedTuple):
    """Result of :func:`power_law_fit` on eigenvalues sorted ascending."""

    alpha: float
    xmin: float
    ks_distance: float
    sigma: float  # standard error (α − 1)/√n_tail
    n_tail: int


def esd(sigma: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """Eigenvalues λ = σ² of WᵀW from singular values, float64, ascending."""
    s = _to_numpy_1d(sigma, "sigma")
    return np.sort(s * s)


def conv_slice_eigenvalues(kernel: torch.Tensor, *, scale: float = WW_CONV_SCALE) -> np.ndarray:
    """weightwatcher's ESD of a conv kernel (out, in, *k): the eigenvalues of every (out × in)
    kernel-position slice W[:, :, i, j], pooled, times ``scale`` (weightwatcher's conv2d_norm: ½).

    float64 SVDs of the k·k slices (batched). Returns the pooled eigenvalues, ascending.
    """
    if not isinstance(kernel, torch.Tensor) or kernel.ndim < 3:
        raise MetricInputError(f"expected a conv kernel (out, in, *kernel), got {getattr(kernel, 'shape', kernel)!r}")
    out_ch, in_ch = int(kernel.shape[0]), int(kernel.shape[1])
    slices = kernel.detach().to("cpu" if kernel.device.type == "mps" else kernel.device, torch.float64)
    slices = slices.reshape(out_ch, in_ch, -1).permute(2, 0, 1)  # (k·k, out, in)
    if out_ch < in_ch:
        slices = slices.mT  # the tall orientation is faster; the spectrum is the same
    sigma = torch.linalg.svdvals(slices).reshape(-1)
    return np.sort(sigma.cpu().numpy() ** 2 * scale)


def power_law_fit(evals: np.ndarray | Sequence[float]) -> PowerLawFit:
    """weightwatcher's default power-law fit on positive eigenvalues (any order; ≥ 2 of them).

    Scans every eigenvalue but the largest as xmin; α by maximum likelihood; the smallest KS
    distance wins (the first on ties). Fewer than 20 eigenvalues: weightwatcher's small-sample fit
    (bias-corrected α = 1 + (n − 1)/Σ log(λ/xmin), tails of ≥ 8 eigenvalues, the smallest D).
    """
    data = np.sort(_to_numpy_1d(evals, "evals"))
    if data.size < 2:
        raise MetricInputError(f"a power-law fit needs at least 2 eigenvalues, got {data.size}")
    if data[0] <= 0:
        raise MetricInputError("a power-law fit needs positive eigenvalues; drop the zeros first")
    if data.size < SMALL_N:
        return _fit_small_n(data)
    return _fit_standard(data)


def undefined_heavy_tail_metrics(flag: str) -> dict[str, float | str]:
    """The heavy-tail row of a matrix with no ESD to fit (non-finite weights, a failed SVD): NaN + ``flag``."""
    values: dict[str, float | str] = {key: math.nan for key in HEAVY_TAIL_METRICS}
    values["heavy_tail_flag"] = flag
    return values


def heavy_tail_metrics(
    evals: np.ndarray | Sequence[float],
    shape: tuple[int, int],
    *,
    eps: float = FLOAT32_EPS,
    floor: float | None = None,
    mp: bool = True,
) -> dict[str, float | str]:
    """Keys :data:`HEAVY_TAIL_METRICS` plus ``heavy_tail_flag`` for one ESD (all eigenvalues).

    ``shape``: (rows, cols) of one matrix behind the ESD (for a pooled conv view, of one slice):
    sets the aspect ratio Q of the Marchenko–Pastur fit and the noise floor.
    ``floor``: eigenvalues ≤ floor are numerical zeros, left out of the power-law fit (norms keep
    them). Default: (max(m, n)·eps)²·λ_max — the numerical-rank tolerance of ``spectrum_metrics``
    squared, so the fit is invariant to scaling W. ``floor=WW_EVALS_FLOOR`` mimics weightwatcher.
    ``mp``: also fit the Marchenko–Pastur bulk (``mp_softrank``, ``mp_num_spikes``; ~10 ms).

    Undefined values are NaN and ``heavy_tail_flag`` says why: ``zero_matrix``, ``non_finite``,
    ``too_few_eigenvalues`` (fewer than 8 above the floor: norms defined, no fit), ``degenerate_tail``
    (the chosen tail's eigenvalues are all equal, α = ∞). Otherwise the flag is ``""``.
    """
    m, n = int(shape[0]), int(shape[1])
    lam = np.sort(_to_numpy_1d(evals, "evals"))
    if lam.size == 0:
        raise MetricInputError(f"a {m}x{n} matrix has no eigenvalues; heavy-tail metrics are undefined")
    values = undefined_heavy_tail_metrics(FLAG_NON_FINITE)
    values["num_evals"] = float(lam.size)
    if not np.isfinite(lam).all():
        return values
    if (lam < 0).any():
        raise MetricInputError("eigenvalues of WᵀW are >= 0; got negative values")
    lam_max = float(lam[-1])
    if lam_max == 0.0:
        values.update(log_norm=-math.inf, log_spectral_norm=-math.inf, heavy_tail_flag=FLAG_ZERO)
        return values
    total = float(np.sum(lam))
    values.update(
        log_norm=math.log10(total),
        log_spectral_norm=math.log10(lam_max),
        esd_stable_rank=total / lam_max,
        heavy_tail_flag="",
    )
    if floor is None:
        floor = (max(m, n) * eps) ** 2 * lam_max
    fitted = lam[lam > floor]
    if fitted.size < MIN_EVALS:
        values["heavy_tail_flag"] = f"{FLAG_TOO_FEW} ({fitted.size} < {MIN_EVALS})"
    else:
        fit = power_law_fit(fitted)
        if not math.isfinite(fit.alpha):
            values["heavy_tail_flag"] = FLAG_DEGENERATE
        else:
            values.update(
                alpha=fit.alpha,
                alpha_sigma=fit.sigma,
                alpha_weighted=fit.alpha * math.log10(lam_max),
                log_alpha_norm=_log10_power_sum(lam, fit.alpha),
                pl_xmin=fit.xmin,
                pl_ks_distance=fit.ks_distance,
                num_pl_spikes=float(np.count_nonzero(lam >= fit.xmin)),
            )
    if mp and lam.size >= 2 and min(m, n) > 0:
        softrank, spikes = marchenko_pastur_fit(lam, max(m, n) / min(m, n), min(m, n))
        values.update(mp_softrank=softrank, mp_num_spikes=float(spikes))
    return values


def marchenko_pastur_fit(evals: np.ndarray, q: float, m: int, *, bandwidth: float = 0.1) -> tuple[float, int]:
    """weightwatcher's Marchenko–Pastur fit of an ESD (``mp_fit``): (mp_softrank, num_spikes).

    The ESD is rescaled to mean 1; σ_mp minimizes the squared residual between the MP density
    (the quarter-circle law of the singular values when Q = 1) and a linear-kernel density
    estimate (bandwidth 0.1) of the ESD, first on weightwatcher's grid of σ, then polished by
    Nelder–Mead as ``scipy.optimize.brute``'s default finish does. ``m``: the smaller dimension.
    """
    lam = np.sort(_to_numpy_1d(evals, "evals"))
    scale2 = lam.size / float(np.sum(lam))  # Wscale² = N_evals / ‖W‖_F²
    rescaled = scale2 * lam
    lam_max = float(rescaled[-1])
    target = np.sqrt(rescaled) if q == 1 else rescaled
    residual = _MPResidual(target, q, bandwidth)
    sigma_unit = math.sqrt(lam_max / (1.0 + 1.0 / math.sqrt(q)) ** 2)  # weightwatcher's calc_sigma
    grid = np.mgrid[slice(0.05 * sigma_unit, 2.0 * sigma_unit, 0.01 * sigma_unit)]
    values = residual.many(grid)
    sigma = _nelder_mead_1d(residual, float(grid[int(np.argmin(values))]))
    bulk_max = (sigma * (1.0 + 1.0 / math.sqrt(q))) ** 2
    tracy_widom = 1.0 / math.sqrt(q) * bulk_max ** (2.0 / 3.0) * m ** (-2.0 / 3.0)
    spikes = int(np.count_nonzero(rescaled > bulk_max + math.sqrt(tracy_widom)))
    return bulk_max / lam_max, spikes


# ----------------------------------------------------------------------------------------------
# internals
# ----------------------------------------------------------------------------------------------


def _fit_standard(data: np.ndarray) -> PowerLawFit:
    """weightwatcher's ``WWFit.fit_power_law_standard``, vectorized over blocks of candidate xmin."""
    count = data.size
    log_data = np.log(data)
    candidates = count - 1
    tail = count - np.arange(candidates)  # n for xmin = data[i]
    # Σ_{j ≥ i} log λ_j: the same sums weightwatcher forms one by one (rounding differs by ~1 ulp)
    log_tail_sums = np.cumsum(log_data[::-1])[::-1][:candidates]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alphas = 1.0 + tail / (log_tail_sums - tail * log_data[:candidates])
    distances = np.ones(candidates)
    rows = max(1, _BLOCK_ELEMENTS // count)
    positions = np.arange(count, dtype=np.float64)
    for start in range(0, candidates, rows):
        i = np.arange(start, min(start + rows, candidates))
        offset = np.arange(start, count)[None, :] - i[:, None]  # position in the tail of xmin = data[i]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            fitted = 1.0 - (data[None, start:] / data[i][:, None]) ** (-alphas[i][:, None] + 1.0)
            gap = np.abs(fitted - positions[np.maximum(offset, 0)] / tail[i][:, None])
        gap[offset < 0] = -np.inf  # eigenvalues below this xmin are not in its tail
        block = np.max(gap, axis=1)
        valid = alphas[i] > 1  # weightwatcher leaves D = 1 where α ≤ 1 (or NaN)
        distances[i[valid]] = block[valid]
    best = int(np.argmin(distances))
    alpha = float(alphas[best])
    return PowerLawFit(alpha, float(data[best]), float(distances[best]),
                       (alpha - 1.0) / math.sqrt(count - best), int(count - best))


def _fit_small_n(data: np.ndarray, k_min: int = 8) -> PowerLawFit:
    """weightwatcher's small-sample fit: ``WWFit.fit_powerlaw_smallN`` then ``WWFit.__init__``.

    Tails of ≥ k_min eigenvalues get the bias-corrected α = 1 + (n − 1)/Σ log(λ/xmin) and their KS
    distance; ``fit_powerlaw_smallN`` picks a tail by D − 0.868/√n, but ``__init__`` then takes the
    smallest D over the same candidates (inadmissible ones keep D = 1, α = 0) — the numbers weightwatcher
    reports, so the ones reproduced here. No admissible tail: the whole set is fitted.
    """
    count = data.size
    log_data = np.log(data)
    alphas = np.zeros(count - 1)
    distances = np.ones(count - 1)
    admissible = False
    for i in range(count - 1):
        n_tail = count - i
        s = float(np.sum(log_data[i:]) - n_tail * log_data[i])
        if n_tail < k_min or s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n_tail - 1.0) / s
        if alphas[i] <= 1.0:
            continue
        fitted = 1.0 - (data[i:] / data[i]) ** (1.0 - alphas[i])
        distances[i] = float(np.max(np.abs(np.arange(n_tail) / n_tail - fitted)))
        admissible = True
    if not admissible:
        s = float(np.sum(log_data) - count * log_data[0])
        if s <= 1e-12:  # all equal: weightwatcher reports α = 0 here; it is no fit
            return PowerLawFit(math.inf, float(data[0]), 1.0, math.nan, count)
        alphas[0] = 1.0 + (count - 1.0) / s
        fitted = 1.0 - (data / data[0]) ** (1.0 - alphas[0])
        distances[0] = float(np.max(np.abs(np.arange(count) / count - fitted)))
    best = int(np.argmin(distances))
    n_tail = count - best
    alpha = float(alphas[best])
    return PowerLawFit(alpha, float(data[best]), float(distances[best]), (alpha - 1.0) / math.sqrt(n_tail), n_tail)


def _log10_power_sum(lam: np.ndarray, alpha: float) -> float:
    """log10 Σ λ^α without overflow (λ^α of a large λ and α overflows float64)."""
    positive = lam[lam > 0]
    logs = alpha * np.log(positive)
    top = float(np.max(logs))
    return (top + math.log(float(np.sum(np.exp(logs - top))))) / math.log(10.0)


def _linear_kde(samples: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density of a linear-kernel (triangular) KDE — scikit-learn's ``KernelDensity(kernel='linear')``."""
    out = np.empty(points.size)
    step = max(1, _BLOCK_ELEMENTS // max(samples.size, 1))
    for start in range(0, points.size, step):
        d = np.abs(points[start:start + step, None] - samples[None, :]) / bandwidth
        out[start:start + step] = np.sum(np.clip(1.0 - d, 0.0, None), axis=1)
    return out / (samples.size * bandwidth)


class _MPResidual:
    """Σ residual² of weightwatcher's ``resid_mp`` as a function of σ. The density estimate is made
    once here (weightwatcher recomputes it for every σ), and the grid search evaluates every σ at once."""

    def __init__(self, target: np.ndarray, q: float, bandwidth: float) -> None:
        grid = np.linspace(0.0, float(np.max(target)) + 0.5, 1000)
        density = _linear_kde(target, grid, bandwidth)
        keep = density > 0.01  # weightwatcher drops points where the density is almost zero
        self.x, self.y, self.q = grid[keep], density[keep], q
        self.peak = float(self.x[np.argmax(self.y)]) if self.x.size else 0.0
        self.x_top = float(np.max(self.x)) if self.x.size else 0.0

    def __call__(self, sigma: float) -> float:
        return float(self.many(np.array([sigma]))[0])

    def many(self, sigmas: np.ndarray) -> np.ndarray:
        x, q = self.x[None, :], self.q
        s = np.asarray(sigmas, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            if q == 1:
                law = np.nan_to_num((1.0 / (np.pi * s * s)) * np.sqrt(4.0 - x ** 2))
                return np.sum((law - self.y) ** 2, axis=1)
            b = (s * (1.0 + math.sqrt(1.0 / q))) ** 2
            a = (s * (1.0 - math.sqrt(1.0 / q))) ** 2
            law = np.nan_to_num((1.0 / (2.0 * np.pi * s * s * x / q)) * np.sqrt((b - x) * (x - a)))
        out = np.sum((law - self.y) ** 2, axis=1)
        # weightwatcher's penalty for an MP law whose bulk misses the density's peak or range
        outside = (b[:, 0] < self.peak) | (b[:, 0] > self.x_top) | (a[:, 0] > self.peak)
        out[outside] = 1000.0 ** 2 * self.x.size
        return out


def _nelder_mead_1d(func, x0: float, *, xatol: float = 1e-4, fatol: float = 1e-4, maxiter: int = 200) -> float:
    """``scipy.optimize.fmin`` in one dimension with its defaults (the finish of ``optimize.brute``)."""
    sim = np.array([x0, 1.05 * x0 if x0 != 0 else 0.00025])
    fsim = np.array([func(sim[0]), func(sim[1])])
    calls = 2
    order = np.argsort(fsim)
    sim, fsim = sim[order], fsim[order]
    iterations = 1
    while calls < maxiter and iterations < maxiter:
        if abs(sim[1] - sim[0]) <= xatol and abs(fsim[0] - fsim[1]) <= fatol:
            break
        xbar = sim[0]
        xr = 2.0 * xbar - sim[1]
        fxr = func(xr)
        calls += 1
        shrink = False
        if fxr < fsim[0]:
            xe = 3.0 * xbar - 2.0 * sim[1]
            fxe = func(xe)
            calls += 1
            sim[1], fsim[1] = (xe, fxe) if fxe < fxr else (xr, fxr)
        elif fxr < fsim[1]:  # (scipy's "fxr < fsim[-2]" branch is fsim[0] here: never taken)
            xc = 1.5 * xbar - 0.5 * sim[1]
            fxc = func(xc)
            calls += 1
            if fxc <= fxr:
                sim[1], fsim[1] = xc, fxc
            else:
                shrink = True
        else:
            xcc = 0.5 * xbar + 0.5 * sim[1]
            fxcc = func(xcc)
            calls += 1
            if fxcc < fsim[1]:
                sim[1], fsim[1] = xcc, fxcc
            else:
                shrink = True
        if shrink:
            sim[1] = sim[0] + 0.5 * (sim[1] - sim[0])
            fsim[1] = func(sim[1])
            calls += 1
        iterations += 1
        order = np.argsort(fsim)
        sim, fsim = sim[order], fsim[order]
    return float(sim[0])
