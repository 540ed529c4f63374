"""Figures of a Dynamics: not blank, readable (titles, labels, layer names in the SVG text), robust
to one snapshot, missing tables, NaN rows and hundreds of matrices; ``key_events`` against numpy.

``make_dynamics`` (also used by test_report, test_cards, test_browser) builds realistic tables
while hf_spectral.dynamics is being written: top σ grow, effective rank falls, agreement with the
final snapshot rises to 1, and the validation accuracy jumps late (grokking-like)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.errors import SpectralError

STEPS = (0, 16, 128, 1024, 8192, 65536)  # log-spaced, with the initialization at step 0
MATRICES = (
    ("transformer.h.0.attn.c_attn.weight", "attention", 48, 16),
    ("transformer.h.0.attn.c_proj.weight", "attention", 16, 16),
    ("transformer.h.0.mlp.c_fc.weight", "mlp", 64, 16),
    ("transformer.h.0.mlp.c_proj.weight", "mlp", 16, 64),
    ("lm_head.weight", "output", 20, 16),
)


def _progress(steps: np.ndarray, centre: float = 2000.0) -> np.ndarray:
    """0 at step 0, rising to ~1 along a logistic in log10(1 + step) centred on ``centre``
    (most change around it, like a grokking run)."""
    z = np.log10(1.0 + np.asarray(steps, dtype=float)) - math.log10(centre)
    return 1.0 / (1.0 + np.exp(-3.0 * z))


def _metrics(sigma: np.ndarray) -> dict[str, float]:
    r = sigma.size
    p = sigma / sigma.sum()
    erank = math.exp(-(p * np.log(p)).sum())
    mass90 = int(np.searchsorted(np.cumsum(p), 0.9, side="right") + 1)
    return {
        "rank_dim": float(r), "effective_rank": erank, "normalized_effective_rank": erank / r,
        "mass90_rank": float(mass90), "normalized_mass90_rank": mass90 / r,
        "stable_rank": float((sigma**2).sum() / sigma[0] ** 2), "normalized_stable_rank": float((sigma**2).sum() / sigma[0] ** 2) / r,
        "spectral_norm": float(sigma[0]), "frobenius_norm": float(np.sqrt((sigma**2).sum())), "nuclear_norm": float(sigma.sum()),
        "condition_number": float(sigma[0] / sigma[-1]), "numerical_rank": float(r), "gini": math.nan,
    }


def make_dynamics(
    steps=STEPS,
    matrices=MATRICES,
    *,
    agreement: bool = True,
    alignment: bool = True,
    training: bool = True,
    flagged: tuple[str, int] | None = None,
    grok_step: float = 2000.0,
) -> Dynamics:
    """Synthetic but self-consistent tables of the CONTRACT ``Dynamics`` (hf_spectral/dynamics/types.py)."""
    steps = np.asarray(steps, dtype=float)
    progress = _progress(steps, grok_step)
    labels = [f"step-{int(s):06d}" for s in steps]
    traj, sv, agr, agr_prev, scores, al, al_scores, summary = [], [], [], [], [], [], [], []
    for t, (step, label, g) in enumerate(zip(steps, labels, progress)):
        errs, srks, norms, agrees, aligns, n_flagged = [], [], [], [], [], 0
        for j, (name, kind, rows, cols) in enumerate(matrices):
            r = min(rows, cols)
            i = np.arange(r)
            # The top values grow most ("rich get richer"); the rest barely move.
            sigma = np.linspace(1.0, 0.25, r) * (1.0 + g * (6.0 + j) * np.exp(-i / 2.0))
            is_flagged = flagged is not None and flagged == (name, t)
            base = dict(step=int(step), label=label, matrix=name, component="", kind=kind, rows=rows, cols=cols)
            if is_flagged:
                n_flagged += 1
                values = {k: math.nan for k in _metrics(sigma)}
                traj.append({**base, "status": "flagged", "flag": "zero_matrix", **values})
                sigma = np.zeros(r)
            else:
                values = _metrics(sigma)
                traj.append({**base, "status": "ok", "flag": "", **values})
                errs.append(values["normalized_effective_rank"])
                srks.append(values["normalized_stable_rank"])
                norms.append(values["spectral_norm"])
            sv.extend({"step": int(step), "label": label, "matrix": name, "index": k, "sigma": s} for k, s in enumerate(sigma))
            if agreement:
                # Top vectors settle first: S_ii = g^(1 + i/3), exactly 1 at the reference (the last step).
                diag = np.where(t == len(steps) - 1, 1.0, g ** (1.0 + i / 3.0))
                prev = np.ones(r) if t == 0 else (0.5 + 0.5 * g) ** (1.0 + i / 4.0)
                for table, d, ref in ((agr, diag, labels[-1]), (agr_prev, prev, labels[max(t - 1, 0)])):
                    table.extend({"step": int(step), "label": label, "matrix": name, "reference": ref, "index": k, "value": float(v)}
                                 for k, v in enumerate(d))
                for kind_, d, ref in (("reference", diag, labels[-1]), ("previous", prev, labels[max(t - 1, 0)])):
                    scores.append({"step": int(step), "label": label, "matrix": name, "reference_kind": kind_, "reference": ref,
                                   "score": float(d[:10].mean()), "subspace": float(d[:10].mean())})
                agrees.append(float(diag[:10].mean()))
        if alignment:
            for (a, _, _, ra), (b, _, cb, _) in zip(matrices[:-1], matrices[1:]):
                if ra != cb:
                    continue
                pair = f"{a.rsplit('.', 2)[-2]} → {b.rsplit('.', 2)[-2]}"
                diag = 0.1 + 0.2 * g * np.exp(-np.arange(min(ra, 16)) / 4.0)
                al.extend({"step": int(step), "label": label, "pair": pair, "prev": a, "next": b, "mode": "out_in", "index": k,
                           "value": float(v)} for k, v in enumerate(diag))
                al_scores.append({"step": int(step), "label": label, "pair": pair, "prev": a, "next": b, "mode": "out_in",
                                  "score": float(diag[:10].mean())})
                aligns.append(float(diag[:10].mean()))
        summary.append({
            "step": int(step), "label": label, "matrices": len(matrices), "flagged": n_flagged,
            "mean_normalized_effective_rank": float(np.mean(errs)), "mean_normalized_stable_rank": float(np.mean(srks)),
            "mean_spectral_norm": float(np.mean(norms)),
            "mean_agreement": float(np.mean(agrees)) if agrees else math.nan,
            "mean_alignment": float(np.mean(aligns)) if aligns else math.nan,
        })
    train = []
    if training:
        logged = np.unique(np.round(np.geomspace(1, steps[-1], 40)).astype(int))
        for s in np.concatenate([[0], logged]):
            z = (math.log10(1 + s) - math.log10(grok_step)) * 8
            train.append({"step": int(s), "metric": "eval_accuracy", "value": 0.05 + 0.95 / (1 + math.exp(-z))})
            train.append({"step": int(s), "metric": "train_accuracy", "value": min(1.0, 0.05 + s / 200)})
            train.append({"step": int(s), "metric": "eval_loss", "value": 4.0 / (1 + math.exp(z))})

    def frame(rows, columns):
        return pd.DataFrame(rows, columns=columns)

    key = ["step", "label"]
    return Dynamics(
        trajectories=pd.DataFrame(traj),
        singular_values=frame(sv, key + ["matrix", "index", "sigma"]),
        agreement=frame(agr, key + ["matrix", "reference", "index", "value"]),
        agreement_previous=frame(agr_prev, key + ["matrix", "reference", "index", "value"]),
        agreement_scores=frame(scores, key + ["matrix", "reference_kind", "reference", "score", "subspace"]),
        alignment=frame(al, key + ["pair", "prev", "next", "mode", "index", "value"]),
        alignment_scores=frame(al_scores, key + ["pair", "prev", "next", "mode", "score"]),
        summary=pd.DataFrame(summary),
        training=frame(train, ["step", "metric", "value"]),
        meta={"source": "runs/tiny-gpt2", "reference": labels[-1]},
    )


def many_matrices(n: int) -> tuple:
    return tuple((f"model.encoder.layer.{i // 6}.{['q', 'k', 'v', 'o', 'fc1', 'fc2'][i % 6]}_proj.weight", "linear", 12, 8)
                 for i in range(n))


# ------------------------------------------------------------------------------------------------
# Image checks (shared with test_report / test_browser)
# ------------------------------------------------------------------------------------------------


def assert_not_blank(png: Path | np.ndarray, min_std: float = 0.05, min_colors: int = 16) -> None:
    """A real picture: pixel values vary and many distinct colours appear."""
    pixels = imread(png) if not isinstance(png, np.ndarray) else png
    rgb = pixels[..., :3].reshape(-1, 3)
    if rgb.dtype != np.uint8:
        rgb = (rgb * 255).round().astype(np.uint8)
    codes = rgb.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)  # one int per colour: a fast 1-D unique
    colors = np.unique(codes)
    rgb = rgb / 255.0
    assert rgb.std() > min_std, f"{png}: nearly uniform image (std {rgb.std():.4f})"
    assert len(colors) > min_colors, f"{png}: only {len(colors)} distinct colours"


def svg_text(path: Path) -> str:
    """The text of an SVG saved with svg.fonttype none (text kept as <text> elements)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

from hf_spectral import plots  # noqa: E402
from hf_spectral.plots import key_events, save_figure  # noqa: E402


@pytest.fixture(scope="module")
def dyn() -> Dynamics:
    return make_dynamics()


ALL = [
    ("rank_heatmap", plots.plot_rank_heatmap, ["Normalized effective rank of every weight matrix", "weight matrix (model order)", "step (log scale)", "attn.c_attn"]),
    ("rank_lines", plots.plot_rank_lines, ["Normalized effective rank per weight matrix", "mean over matrices", "lm_head"]),
    ("singular_values", plots.plot_singular_values, ["Singular values over training", "singular value σᵢ", "lm_head"]),
    ("agreement", plots.plot_agreement, ["Agreement of singular vectors with snapshot step-065536", "index i (0 = top σ)"]),
    ("agreement_scores", plots.plot_agreement_scores, ["Agreement of top-10 singular vectors", "mlp.c_fc"]),
    ("alignment", plots.plot_alignment, ["Alignment of consecutive layers", "c_attn → c_proj"]),
    ("alignment_scores", plots.plot_alignment_scores, ["Alignment of consecutive layers (top-10 score)", "layer pair (model order)"]),
    ("summary", plots.plot_summary, ["Model-level summary over training", "mean normalized effective rank", "mean agreement with reference"]),
    ("training", plots.plot_training_and_rank, ["Validation accuracy and effective rank over training", "normalized effective rank",
                                                "fastest rank drop", "validation accuracy ≥ 0.9 at step"]),
]


@pytest.mark.parametrize("name,draw,texts", ALL, ids=[a[0] for a in ALL])
def test_figures_are_drawn_readable_and_not_blank(dyn, tmp_path, name, draw, texts):
    fig = draw(dyn)
    assert isinstance(fig, Figure)
    paths = save_figure(fig, tmp_path / name, ("png", "svg"), dpi=60)
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    assert_not_blank(paths[0])
    text = svg_text(paths[1])
    for expected in texts:
        assert expected in text, f"{name}: {expected!r} not in the SVG text"


def test_figures_do_not_touch_pyplot(dyn):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.plot_rank_heatmap(dyn)
    plots.plot_training_and_rank(dyn)
    assert plt.get_fignums() == before


def test_heatmap_colours_follow_the_values(dyn, tmp_path):
    """The heat map's top-left cell (first matrix, first step) is the highest rank (yellow in
    viridis) and its top-right cell (last step) is lower (darker)."""
    fig = plots.plot_rank_heatmap(make_dynamics(matrices=MATRICES[:1]))
    ax = fig.axes[0]
    mesh = ax.collections[0]
    values = np.asarray(mesh.get_array()).reshape(1, len(STEPS))
    sigma = [np.linspace(1.0, 0.25, 16) * (1.0 + g * 6.0 * np.exp(-np.arange(16) / 2.0)) for g in _progress(np.array(STEPS))]
    expected = [math.exp(-((s / s.sum()) * np.log(s / s.sum())).sum()) / 16 for s in sigma]
    np.testing.assert_allclose(values[0], expected, rtol=1e-12)
    assert np.all(np.diff(values[0]) < 0)  # the rank falls in this series


def test_step_axis_is_log_for_log_spaced_schedules():
    assert plots.is_log_spaced([0, 16, 128, 1024, 8192, 65536])
    assert plots.is_log_spaced([1, 10, 100, 1000])
    assert not plots.is_log_spaced(range(0, 4001, 100))  # grokking: every 100 steps
    assert not plots.is_log_spaced([0, 500, 1000, 1500])
    assert not plots.is_log_spaced([5])
    axis = plots.StepAxis.for_steps([0, 9, 99], scale="log")
    np.testing.assert_allclose(axis.x([0, 9, 99]), [0.0, 1.0, 2.0])
    assert not plots.StepAxis.for_steps([0, 9, 99]).log  # two positive steps: no schedule to judge


def test_log_axis_ticks_read_as_steps(dyn):
    fig = plots.plot_rank_lines(dyn)
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert ticks[:3] == ["0", "10", "100"] and "10k" in ticks


def test_short_names_drop_shared_prefix_and_suffix():
    names = [m[0] for m in many_matrices(12)]
    short = plots.short_names(names)
    assert short[0] == "0.q_proj" and short[-1] == "1.fc2_proj"
    long = plots.short_names(["a." + "x" * 80 + ".weight", "b.y.weight"], max_length=20)
    assert len(long[0]) == 20 and "…" in long[0]
    assert plots.short_names(["only.weight"]) == ["only"]
    assert plots.short_names(["0.weight", "2.weight"]) == ["0.weight", "2.weight"]  # nn.Sequential: not a bare index


def test_short_names_keep_the_layer_index_of_long_names():
    """A BERT classifier's names (the head breaks the shared prefix): leading parts abbreviated, never the middle."""
    names = ([f"bert.encoder.layer.{i}.attention.self.query.weight" for i in (0, 11)]
             + ["bert.embeddings.word_embeddings.weight", "classifier.weight"])
    short = plots.short_names(names)
    assert short == ["b.e.layer.0.attention.self.query", "b.e.layer.11.attention.self.query",
                     "b.embeddings.word_embeddings", "classifier"]
    assert all(len(s) <= 38 and "…" not in s for s in short)


def test_hundreds_of_matrices_get_thinned_readable_labels(tmp_path):
    dyn = make_dynamics(matrices=many_matrices(240), agreement=False, alignment=False, training=False)
    fig = plots.plot_rank_heatmap(dyn)
    width, height = fig.get_size_inches()
    assert height <= 14.0
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert 20 <= len(labels) < 240  # every k-th label, enough to orient
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].get_yticklabels()]
    assert all(b.y1 <= a.y0 + 0.5 or a.y1 <= b.y0 + 0.5 for a, b in zip(boxes, boxes[1:]))  # no overlap
    path = save_figure(fig, tmp_path / "many", ("png",), dpi=40)[0]
    assert_not_blank(path)
    lines = plots.plot_rank_lines(dyn)
    assert len(lines.axes) == 2  # a depth colour bar instead of a 240-entry legend


def test_single_snapshot(tmp_path):
    dyn = make_dynamics(steps=(500,), training=False)
    for draw in (plots.plot_rank_heatmap, plots.plot_summary, plots.plot_agreement):
        fig = draw(dyn)
        assert_not_blank(save_figure(fig, tmp_path / draw.__name__, ("png",), dpi=50)[0], min_colors=8)
    # one step: the spectrum itself (σᵢ against i), not a column of dots
    ax = plots.plot_singular_values(dyn, MATRICES[0][0]).axes[0]
    assert ax.get_xlabel() == "index i (0 = largest)"
    sigma = dyn.singular_values[dyn.singular_values["matrix"] == MATRICES[0][0]]["sigma"].to_numpy()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), sigma)
    events = key_events(dyn)
    assert events["rank_drop_step"] is None and events["metric_step"] is None


def test_missing_tables_raise_one_line_errors():
    dyn = make_dynamics(agreement=False, alignment=False, training=False)
    for draw, word in ((plots.plot_agreement, "agreement"), (plots.plot_alignment_scores, "alignment"),
                       (plots.plot_training_and_rank, "training log")):
        with pytest.raises(SpectralError, match=word) as info:
            draw(dyn)
        assert "\n" not in str(info.value)
    with pytest.raises(SpectralError, match="no singular values for nope"):
        plots.plot_singular_values(make_dynamics(), "nope")


def test_nan_rows_are_gaps(tmp_path):
    name = MATRICES[2][0]
    dyn = make_dynamics(flagged=(name, 3))
    fig = plots.plot_rank_heatmap(dyn)
    grid = np.ma.asarray(fig.axes[0].collections[0].get_array()).reshape(len(MATRICES), len(STEPS))
    assert np.ma.getmaskarray(grid)[2, 3] and np.ma.getmaskarray(grid).sum() == 1
    assert "grey: undefined (flagged)" in svg_text(save_figure(fig, tmp_path / "gap", ("svg",))[0])
    lines = plots.plot_rank_lines(dyn)
    ydata = lines.axes[0].lines[2].get_ydata()
    assert np.isnan(ydata[3]) and np.isfinite(np.delete(ydata, 3)).all()
    # The mean line averages the defined rows only (it never becomes NaN because of one gap).
    assert np.isfinite(lines.axes[0].lines[-1].get_ydata()).all()


def _independent_mean_erank(dyn: Dynamics) -> tuple[np.ndarray, np.ndarray]:
    t = dyn.trajectories
    steps = np.array(sorted(set(t["step"])), dtype=float)
    means = np.array([np.mean([r.normalized_effective_rank for r in t.itertuples() if r.step == s and r.status == "ok"]) for s in steps])
    return steps, means


def test_key_events_match_numpy(dyn):
    events = key_events(dyn, "eval_accuracy", 0.9)
    train = dyn.training[dyn.training["metric"] == "eval_accuracy"].sort_values("step")
    s, v = train["step"].to_numpy(), train["value"].to_numpy()
    assert events["metric_step"] == int(s[np.argmax(v >= 0.9)])
    steps, means = _independent_mean_erank(dyn)
    slopes = np.diff(means) / np.diff(np.log10(1 + steps))  # log-spaced schedule: per decade
    i = int(np.argmin(slopes))
    assert events["slope_axis"] == "log10(1 + step)"
    assert events["rank_drop_interval"] == (int(steps[i]), int(steps[i + 1])) and events["rank_drop_step"] == int(steps[i + 1])
    assert events["rank_drop_slope"] == pytest.approx(slopes[i], rel=1e-12)
    assert events["erank_before"] == pytest.approx(means[i]) and events["erank_after"] == pytest.approx(means[i + 1])
    assert events["erank_initial"] == pytest.approx(means[0]) and events["erank_final"] == pytest.approx(means[-1])
    assert events["lag"] == events["rank_drop_step"] - events["metric_step"]
    # per step (linear axis): the steepest interval is a different one here
    linear = key_events(dyn, scale="linear")
    j = int(np.argmin(np.diff(means) / np.diff(steps)))
    assert linear["slope_axis"] == "step" and linear["rank_drop_interval"] == (int(steps[j]), int(steps[j + 1]))
    # after=: only intervals that start at or after that step compete
    later = key_events(dyn, scale="linear", after=int(steps[2]))
    per_step = np.diff(means) / np.diff(steps)
    k = 2 + int(np.argmin(per_step[2:]))
    assert later["rank_drop_interval"] == (int(steps[k]), int(steps[k + 1]))
    assert key_events(dyn, after=int(steps[-1]) + 1)["rank_drop_interval"] is None


def test_key_events_threshold_never_reached_and_unknown_metric(dyn):
    assert key_events(dyn, "eval_accuracy", 1.5)["metric_step"] is None
    with pytest.raises(SpectralError, match="eval_val_accuracy.*logged metrics: eval_accuracy"):
        key_events(dyn, "eval_val_accuracy")


def test_key_events_auto_picks_the_validation_accuracy_and_lists_user_metrics(dyn):
    renamed = dyn.training.copy()
    renamed["metric"] = renamed["metric"].replace({"eval_accuracy": "eval_val_accuracy"})
    extra = pd.DataFrame({"step": [0] * 2, "metric": ["eval_train_accuracy", "spectral/erank/h.0"], "value": [0.5, 0.9]})
    logged = dataclasses.replace(dyn, training=pd.concat([renamed, extra], ignore_index=True))
    auto = key_events(logged)  # eval_val_accuracy: the validation split, not train, not the spectral scalar
    assert auto["metric"] == "eval_val_accuracy" and auto["metric_step"] == key_events(dyn)["metric_step"]
    with pytest.raises(SpectralError) as info:
        key_events(logged, "eval_accuracy")
    assert "eval_val_accuracy" in str(info.value) and "(and 1 spectral/* scalars)" in str(info.value)
    assert "spectral/erank" not in str(info.value)
    no_accuracy = dataclasses.replace(dyn, training=dyn.training[dyn.training["metric"] == "eval_loss"])
    assert key_events(no_accuracy)["metric"] is None and key_events(no_accuracy)["rank_drop_step"] is not None


def test_rank_change_around_an_event_against_the_window_before():
    from hf_spectral.highlights import rank_change_around

    steps = np.arange(0, 101, 10)
    plateau_then_drop = pd.Series(np.interp(steps, [0, 40, 60, 100], [0.5, 0.5, 0.3, 0.3]), index=steps)
    around = rank_change_around(plateau_then_drop, 50, half_window=10)
    assert around["window"] == (40, 60) and around["window_before"] == (20, 40)
    assert around["change"] == pytest.approx(-0.2) and around["change_before"] == 0 and around["ratio"] is None

    steady = pd.Series(1.0 - 0.004 * steps, index=steps)  # a constant fall: the ratio is the windows' length ratio
    around = rank_change_around(steady, 53, half_window=9)  # edges 26, 44, 62 snap to the snapshots 30, 40, 60
    assert (around["window_before"], around["window"]) == ((30, 40), (40, 60))
    assert around["change"] == pytest.approx(-0.08) and around["ratio"] == pytest.approx(2.0)
    assert rank_change_around(steady, 52)["window"] == (50, 60)  # default half window: 5% of 100 steps: edges 37, 47, 57
    assert rank_change_around(steady, 50, half_window=1) is None  # all edges on one snapshot


def test_key_events_report_the_change_around_the_crossing(dyn):
    from hf_spectral.highlights import mean_erank

    events = key_events(dyn)
    around = events["around_metric"]
    erank = mean_erank(dyn)
    (a, b), (_, c) = around["window_before"], around["window"]
    assert around["change"] == pytest.approx(erank[c] - erank[b]) and around["change_before"] == pytest.approx(erank[b] - erank[a])
    assert b <= events["metric_step"] <= c


def test_training_figure_marks_the_events(dyn):
    fig = plots.plot_training_and_rank(dyn, "eval_accuracy", threshold=0.9)
    ax = fig.axes[0]
    events = key_events(dyn)
    vertical = [line for line in ax.lines if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2]
    assert any(np.isclose(line.get_xdata()[0], np.log10(1 + events["metric_step"])) for line in vertical)
    spans = [p for p in ax.patches]
    assert spans, "the fastest rank drop is shaded"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "train accuracy" in legend  # the companion metric drawn beside the validation one


def test_no_key_event_on_a_flat_series():
    """A flat mean rank with jitter well below the printed precision (the MiniLM fine-tune case, 0.770 → 0.770):
    no rank-drop event; the summary says nothing changed measurably."""
    from hf_spectral.highlights import summary_lines

    rng = np.random.default_rng(0)
    dyn = make_dynamics()
    t = dyn.trajectories.copy()
    t["normalized_effective_rank"] = 0.77 + 2e-5 * rng.standard_normal(len(t))
    flat = dataclasses.replace(dyn, trajectories=t, summary=dyn.summary.drop(columns=["mean_normalized_effective_rank"], errors="ignore"))
    events = key_events(flat, "eval_accuracy", 0.9)
    assert events["rank_drop_interval"] is None and events["rank_drop_step"] is None
    assert events["around_metric"] is None or not events["around_metric"]["measurable"]
    text = " ".join(summary_lines(flat, "eval_accuracy", 0.9))
    assert "fell fastest" not in text and "did not fall measurably" in text
    # a real drop on the same steps, larger than the jitter, is found where numpy puts it
    steps, _ = _independent_mean_erank(flat)
    drop_at = int(steps[len(steps) // 2])
    t2 = t.copy()
    t2.loc[t2["step"] >= drop_at, "normalized_effective_rank"] -= 0.05
    events = key_events(dataclasses.replace(flat, trajectories=t2), "eval_accuracy", 0.9)
    assert events["rank_drop_interval"][1] == drop_at
