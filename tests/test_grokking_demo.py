"""The grokking demo pipeline end to end, on a tiny instance (seconds): training with spectral
tracking, then the report step — snapshots, log_history.json, the self-contained HTML report, the
flagship PNG and the printed summary, with its numbers checked against float64 numpy."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
from tiny_models import load_recipe
from safetensors.numpy import load_file

P, STEPS, EVAL, EVERY = 13, 48, 4, 8
MATRICES = [
    "embed_tokens.weight",
    *(f"layers.0.attn.{m}.weight" for m in "qkvo"),
    "layers.0.mlp.fc_in.weight",
    "layers.0.mlp.fc_out.weight",
    "unembed.weight",
]


@pytest.fixture(scope="module")
def gk():
    return load_recipe("grokking")


@pytest.fixture(scope="module")
def demo(gk, tmp_path_factory):
    """One tiny tracked run through main(): (output folder, returned summary, printed text)."""
    out = tmp_path_factory.mktemp("grokking") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = gk.main(
            ["--p", str(P), "--train_fraction", "0.5", "--d_model", "32", "--d_mlp", "64",
             "--max_steps", str(STEPS), "--eval_steps", str(EVAL), "--logging_steps", str(EVAL), "--spectra_schedule", str(EVERY),
             "--disable_tqdm", "true", "--spectra_background", "off", "--output_dir", str(out)]
        )  # fmt: skip
    return out, summary, printed.getvalue()


def normalized_erank(sigma: np.ndarray) -> float:
    """exp(entropy of σ/Σσ) / min(m, n) (definitions §2), in float64."""
    s = np.asarray(sigma, dtype=np.float64)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()) / len(s))


def test_record_holds_a_snapshot_per_scheduled_step_and_the_log_history(demo):
    out, _, _ = demo
    record = out / "spectral"
    folders = sorted(f.name for f in record.iterdir() if f.is_dir())
    assert folders == [f"step-{s:06d}" for s in range(0, STEPS + 1, EVERY)]
    for folder in folders:
        spectra = load_file(str(record / folder / "spectra.safetensors"))
        assert sorted(k[len("sigma/"):] for k in spectra if k.startswith("sigma/")) == sorted(MATRICES)
    history = json.loads((record / "log_history.json").read_text())
    evals = [e["step"] for e in history if "eval_val_accuracy" in e]
    assert evals == list(range(0, STEPS + 1, EVAL))
    snaps = [e["step"] for e in history if "spectral/mean_erank" in e]
    assert snaps == list(range(0, STEPS + 1, EVERY))
    meta = json.loads((record / f"step-{STEPS:06d}" / "meta.json").read_text())
    assert 0.0 < meta["extra_measures"]["fourier"]["top5_fraction"] <= 1.0


def test_report_page_is_self_contained(demo):
    out, summary, _ = demo
    index = out / "report" / "index.html"
    assert summary.report == str(index)
    page = index.read_text(encoding="utf-8")
    assert "grokking (a + b mod 13, 50% train" in page
    assert page.count("data:image/png;base64,") >= 5  # figures embedded, not linked
    assert not re.search(r"""(src|href)=["']https?://""", page) and "<link" not in page
    assert "<script src" not in page
    assert (out / "report" / "figures" / "training_rank.png").stat().st_size > 10_000
    layers = (out / "report" / "layers.csv").read_text().strip().splitlines()
    assert len(layers) == 1 + len(MATRICES)


def test_flagship_png_shows_both_curves(demo):
    from matplotlib.image import imread

    out, summary, _ = demo
    png = out / "grokking.png"
    assert summary.figure == str(png)
    image = imread(str(png))[..., :3]
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image.std() > 0.05  # not blank
    colours = np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200
    # Matplotlib's C0 (validation accuracy) and C3 (effective rank) lines are both drawn.
    for rgb in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)):
        close = np.abs(image * 255 - np.array(rgb)).max(axis=-1) < 12
        assert close.sum() > 300


def test_summary_numbers_match_float64_numpy(demo):
    out, summary, _ = demo
    # Validation accuracy, from the training log.
    history = json.loads((out / "training_log.json").read_text())
    val = {e["step"]: e["eval_val_accuracy"] for e in history if "eval_val_accuracy" in e}
    crossed = [s for s in sorted(val) if val[s] >= 0.9]
    assert summary.metric_step == (crossed[0] if crossed else None)
    assert summary.final_metric == pytest.approx(val[STEPS])

    # Mean normalized effective rank per snapshot from the stored singular values; the steepest fall.
    steps = list(range(0, STEPS + 1, EVERY))
    mean = []
    for step in steps:
        spectra = load_file(str(out / "spectral" / f"step-{step:06d}" / "spectra.safetensors"))
        mean.append(np.mean([normalized_erank(spectra[f"sigma/{m}"]) for m in MATRICES]))
    slopes = np.diff(mean) / np.diff(steps)
    events = summary.events
    assert events["erank_initial"] == pytest.approx(mean[0], rel=1e-6)
    assert events["erank_final"] == pytest.approx(mean[-1], rel=1e-6)
    i = int(np.argmin(slopes))
    assert slopes[i] < 0
    assert tuple(events["rank_drop_interval"]) == (steps[i], steps[i + 1])
    assert events["erank_before"] == pytest.approx(mean[i], rel=1e-6)

    # The final snapshot is the saved model: its rank from a numpy SVD of the weights themselves.
    weights = load_file(str(out / "model.safetensors"))
    final = np.mean([normalized_erank(np.linalg.svd(weights[m].astype(np.float64), compute_uv=False)) for m in MATRICES])
    assert events["erank_final"] == pytest.approx(final, rel=1e-4)

    # Fourier top-5 share of the number tokens' embedding, over an explicit real Fourier basis of Z_p.
    x = np.arange(P)
    w = weights["embed_tokens.weight"][:P].astype(np.float64)
    energy = np.array([
        np.sum((np.cos(2 * np.pi * f * x / P) @ w) ** 2 + (np.sin(2 * np.pi * f * x / P) @ w) ** 2) * 2 / P
        for f in range(1, (P + 1) // 2)
    ])  # fmt: skip
    total = np.sum(w**2)
    assert summary.measures["Fourier top-5 share of the embedding"]["final"] == pytest.approx(np.sort(energy)[::-1][:5].sum() / total, rel=1e-6)


def test_console_shows_progress_lines_and_the_summary(demo):
    out, summary, printed = demo
    lines = printed.splitlines()
    progress = [line for line in lines if re.match(r"step\s+[\d,]+\s+loss ", line)]
    assert progress and all("val acc" in line and "mean erank" in line for line in progress)
    assert "spectral/erank/" not in printed  # no per-layer scalars on the console
    start = lines.index(next(line for line in lines if line.startswith("== grokking summary (a + b mod 13")))
    tail = "\n".join(lines[start:])
    a, b = summary.events["rank_drop_interval"]
    assert "validation accuracy >= 90%: " in tail
    assert f"mean normalized effective rank fell fastest: steps {a:,}-{b:,}" in tail
    assert "Fourier top-5 share of the embedding: " in tail
    assert f"report: {out / 'report' / 'index.html'}" in tail and f"figure: {out / 'grokking.png'}" in tail
    assert json.loads((out / "summary.json").read_text())["events"]["rank_drop_interval"] == [a, b]


# The summary's wording (side by side, around the crossing): tests/test_recipe_support.py
