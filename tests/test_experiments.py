"""The paper's interventions (hf_spectral.experiments) against independent numpy float64 computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_spectral import experiments
from tiny_models import TinyMLP, build_tiny


class TinyCNN(nn.Module):
    """Conv → BatchNorm → transposed conv → linear: every reshaping view, and BatchNorm statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.bn(self.conv(x))))).flatten(1))


class Regressor(nn.Module):
    """A tiny MLP regressor with a Trainer-shaped output (for the truncated evaluations)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = TinyMLP((12, 16, 16, 1))

    def forward(self, x, labels=None):
        out = self.mlp(x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def _numpy_low_rank(w: np.ndarray, fraction: float, keep: str) -> np.ndarray:
    u, s, vh = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    k = math.ceil(fraction * len(s))
    part = slice(0, k) if keep == "top" else slice(len(s) - k, len(s))
    return (u[:, part] * s[part]) @ vh[part]


def _matrix_views(model: nn.Module) -> dict[str, np.ndarray]:
    """The paper's matrix of each weight, computed here independently of the views layer."""
    out = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if w is None or w.dim() < 2:
            continue
        w = w.detach().double().numpy()
        if isinstance(module, nn.ConvTranspose2d):
            w = np.swapaxes(w, 0, 1)
        elif type(module).__name__ == "Conv1D":  # HF GPT-2 stores (in, out)
            w = w.T
        out[f"{name}.weight"] = w.reshape(w.shape[0], -1)
    return out


@pytest.mark.parametrize("keep", ["top", "bottom"])
def test_truncation_equals_numpy_rank_k_in_every_view(keep: str) -> None:
    for model in (TinyCNN(), build_tiny("gpt2")):
        before = _matrix_views(model)
        order = [n for n, p in model.named_parameters() if p.dim() >= 2]
        truncated = experiments.truncate(model, fraction=0.3, keep=keep)
        after = _matrix_views(truncated)
        for name in order[:-1]:
            assert dict(truncated.named_parameters())[name].shape == dict(model.named_parameters())[name].shape
            np.testing.assert_allclose(after[name], _numpy_low_rank(before[name], 0.3, keep), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(after[order[-1]], before[order[-1]])  # the last matrix is kept
        # GPT-2's fused c_attn is truncated whole: rank ⌈0.3·32⌉ = 10 of the (96, 32) matrix
        if "transformer.h.0.attn.c_attn.weight" in after:
            assert np.linalg.matrix_rank(after["transformer.h.0.attn.c_attn.weight"], tol=1e-4) == 10


def test_truncation_at_fraction_one_changes_nothing() -> None:
    torch.manual_seed(0)
    for model, x in ((TinyCNN().eval(), torch.randn(2, 3, 4, 4)), (build_tiny("gpt2"), torch.randint(0, 101, (2, 7)))):
        same = experiments.truncate(model, fraction=1.0, keep="top", exclude_last=False)
        with torch.no_grad():
            a, b = model(x), same(x)
        a, b = (a.logits, b.logits) if hasattr(a, "logits") else (a, b)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_recompute_batchnorm_matches_the_data_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    batches = [torch.randn(8, 4) * 3 + 1 for _ in range(5)]
    experiments.recompute_batchnorm(model.eval(), batches)
    with torch.no_grad():
        h = torch.cat([model[0](b) for b in batches]).double().numpy()
    np.testing.assert_allclose(model[1].running_mean.numpy(), h.mean(0), rtol=1e-5, atol=1e-6)
    # cumulative average of per-batch unbiased variances
    per_batch = np.mean([model[0](b).detach().double().numpy().var(0, ddof=1) for b in batches], axis=0)
    np.testing.assert_allclose(model[1].running_var.numpy(), per_batch, rtol=1e-5)
    assert not model.training  # its mode is restored


def test_recompute_batchnorm_without_batchnorm_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyMLP()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO", logger="hf_spectral.experiments.truncation"):
        experiments.recompute_batchnorm(model, [torch.randn(2, 12)])
    assert "no BatchNorm" in caplog.text
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_magnitude_mask_is_global_and_keeps_the_largest() -> None:
    model = TinyMLP((12, 16, 16, 5))
    mask = experiments.magnitude_mask(model, density=0.2)
    params = dict(model.named_parameters())
    assert set(mask) == {"net.0.weight", "net.2.weight"}  # every matrix but the last
    values = np.concatenate([params[n].detach().abs().numpy().ravel() for n in mask])
    kept = np.concatenate([mask[n].numpy().ravel() for n in mask])
    assert kept.sum() == round(0.2 * values.size)
    assert values[kept].min() >= values[~kept].max()  # a global threshold, not per layer
    assert abs(experiments.density(mask) - 0.2) < 1e-3


def test_iterative_round_stays_within_the_previous_mask() -> None:
    model = TinyMLP()
    first = experiments.magnitude_mask(model, density=0.5)
    with torch.no_grad():  # training moved the weights: a pruned weight may now be large
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    second = experiments.magnitude_mask(model, density=0.25, within=first)
    for name in first:
        assert not (second[name] & ~first[name]).any()
    assert abs(experiments.density(second) - 0.25) < 1e-3


def test_random_mask_matches_per_layer_density() -> None:
    model = TinyMLP()
    mask = experiments.magnitude_mask(model, density=0.3)
    control = experiments.random_mask(model, like=mask, seed=1)
    for name in mask:
        assert int(control[name].sum()) == int(mask[name].sum())
    assert any(not torch.equal(control[n], mask[n]) for n in mask)
    assert all(torch.equal(a, b) for a, b in zip(control.values(), experiments.random_mask(model, mask, seed=1).values()))


def test_masked_weights_stay_zero_through_real_training(tmp_path) -> None:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = TinyMLP((12, 16, 16, 3))

        def forward(self, x, labels=None):
            logits = self.mlp(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    torch.manual_seed(0)
    data = Dataset.from_dict({"x": torch.randn(32, 12).tolist(), "labels": torch.randint(0, 3, (32,)).tolist()})
    model = Classifier()
    mask = experiments.magnitude_mask(model, density=0.3)
    args = TrainingArguments(tmp_path, max_steps=6, per_device_train_batch_size=8, learning_rate=0.1, weight_decay=0.1,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    Trainer(model, args, train_dataset=data, callbacks=[experiments.MaskCallback(mask)]).train()
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert (params[name][~m] == 0).all()
        assert (params[name][m] != 0).all()


def test_interpolation_endpoints_and_midpoint() -> None:
    a, b = TinyCNN(), TinyCNN()
    b.bn.running_mean.fill_(2.0)
    for alpha, expected in ((0.0, a), (1.0, b)):
        got = experiments.interpolate(a, b, alpha).state_dict()
        for k, v in expected.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=0, rtol=0)
    mid = experiments.interpolate(a, b, 0.25).state_dict()
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            np.testing.assert_allclose(mid[k].numpy(), 0.75 * v.numpy() + 0.25 * b.state_dict()[k].numpy(), atol=1e-6)


def test_barrier() -> None:
    assert experiments.barrier([1.0] * 11) == 0.0
    alphas = np.linspace(0, 1, 11)
    loss = 1.0 + alphas + 4 * alphas * (1 - alphas)  # a bump of height 1 above the line from 1 to 2
    assert experiments.barrier(loss) == pytest.approx(1.0)
    assert experiments.barrier([0.0, 3.0, 0.5, 1.0], alphas=[0, 0.1, 0.5, 1]) == pytest.approx(3.0 - 0.1)


def test_linear_path_of_a_model_with_itself_has_no_barrier() -> None:
    model = TinyMLP()
    x = torch.randn(16, 12)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"loss": float(m(x).square().mean())}

    path = experiments.linear_path(model, model, evaluate, num=5)
    assert list(path.columns) == ["alpha", "loss"] and len(path) == 5
    assert experiments.barrier(path["loss"]) == pytest.approx(0.0, abs=1e-9)


def test_perturb_preserves_norms_and_zero_is_identity() -> None:
    model = build_tiny("gpt2")
    same = experiments.perturb(model, eta=0.0, seed=0)
    moved = experiments.perturb(model, eta=0.5, seed=0)
    before, after = dict(model.named_parameters()), dict(moved.named_parameters())
    matrices = [n for n, p in before.items() if p.dim() >= 2]
    for name in matrices[:-1]:
        w, w2 = before[name].detach().double().numpy(), after[name].detach().double().numpy()
        assert np.linalg.norm(w2) == pytest.approx(np.linalg.norm(w), rel=1e-5)
        assert not np.allclose(w, w2)
        torch.testing.assert_close(dict(same.named_parameters())[name], before[name], atol=1e-6, rtol=1e-6)
    assert torch.equal(after[matrices[-1]], before[matrices[-1]])  # the last matrix is kept
    biases = [n for n, p in before.items() if p.dim() == 1]
    assert all(torch.equal(after[n], before[n]) for n in biases)


def test_composed_weights_are_refused_with_one_line() -> None:
    from torch.nn.utils import prune

    model = TinyMLP()
    prune.l1_unstructured(model.net[0], "weight", amount=0.5)
    with pytest.raises(Exception, match=r"net\.0\.weight.*prune\.remove"):
        experiments.truncate(model, 0.5)


def test_a_two_run_sweep_writes_the_combined_report_and_resumes(tmp_path, capsys) -> None:
    from pathlib import Path

    import pandas as pd

    from hf_spectral.cli import main

    script = Path(__file__).parent / "scripts" / "sweep_recipe.py"
    out = tmp_path / "sweep"
    argv = ["sweep", str(script), "--weight_decay", "0", "1", "--output", str(out), "--",
            "--max_steps", "8", "--learning_rate", "0.05", "--per_device_train_batch_size", "16"]
    assert main(argv) == 0
    report = out / "report"
    runs = pd.read_parquet(report / "runs.parquet")
    over_time = pd.read_parquet(report / "over_time.parquet")
    assert sorted(runs["weight_decay"]) == [0.0, 1.0] and (report / "sweep.png").stat().st_size > 0
    assert set(runs["metric"]) == {"eval_accuracy"} and runs["metric_final"].between(0, 1).all()
    # the table's norm is the sum of the record's Frobenius norms at the last step, recomputed here
    from safetensors.numpy import load_file  # noqa: F401  (the record is read through the public API)
    import hf_spectral

    last = hf_spectral.load_series(out / "wd-1-seed-0" / "spectral")[-1]
    expected = float(last.table.loc[last.table["status"] == "ok", "frobenius_norm"].sum())
    assert runs.loc[runs["weight_decay"] == 1.0, "norm_final"].item() == pytest.approx(expected, rel=1e-9)
    assert len(over_time[over_time["weight_decay"] == 0.0]) >= 3
    # weight decay 1 leaves a smaller norm than no weight decay over the same steps
    final = runs.set_index("weight_decay")["norm_final"]
    assert final[1.0] < final[0.0]
    assert "| 0 | 0 |" in (report / "sweep.md").read_text()
    # a second call skips the finished runs (nothing is trained again: the markers stay untouched)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/sweep_run.json")}
    capsys.readouterr()
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/sweep_run.json")} == stamps


def test_a_live_pruned_model_is_analyzed_as_its_masked_weight() -> None:
    from torch.nn.utils import prune

    from hf_spectral import AnalysisOptions, analyze_model

    model = TinyMLP()
    prune.l1_unstructured(model.net[0], "weight", amount=0.6)
    snapshot = analyze_model(model, AnalysisOptions(progress=False))
    masked = (model.net[0].weight_orig * model.net[0].weight_mask).detach().double().numpy()
    np.testing.assert_allclose(snapshot.singular_values("net.0.weight"), np.linalg.svd(masked, compute_uv=False),
                               atol=1e-6)


def test_mask_agreement_magnitude_keeps_top_vectors_random_does_not() -> None:
    torch.manual_seed(0)
    model = TinyMLP((40, 48, 40, 5))
    with torch.no_grad():  # a strong low-rank structure on top of noise, as training leaves
        for layer in (model.net[0], model.net[2]):
            out, inp = layer.weight.shape
            layer.weight.copy_(3 * torch.randn(out, 2) @ torch.randn(2, inp) / inp**0.5 + 0.05 * torch.randn(out, inp))
    mask = experiments.magnitude_mask(model, density=0.3)
    table = experiments.mask_agreement(model, mask, top=2)
    control = experiments.mask_agreement(model, experiments.random_mask(model, mask, seed=0), top=2)
    assert (table["agreement"] > control["agreement"]).all()
    # the score is the mean of S_ii = |u_iᵀu'_i||v_iᵀv'_i| over the top 2, recomputed with numpy
    w = model.net[0].weight.detach().double().numpy()
    u, _, vh = np.linalg.svd(w)
    um, _, vhm = np.linalg.svd(w * mask["net.0.weight"].numpy())
    expected = np.mean([abs(u[:, i] @ um[:, i]) * abs(vh[i] @ vhm[i]) for i in range(2)])
    assert table.loc[0, "agreement"] == pytest.approx(expected, abs=1e-9)
    assert table.loc[0, "density"] == pytest.approx(float(mask["net.0.weight"].float().mean()))


def test_evaluate_truncated_through_the_trainer_and_restore(tmp_path) -> None:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    x = torch.randn(64, 12)
    data = Dataset.from_dict({"x": x.tolist(), "labels": (x[:, :2].sum(1)).tolist()})
    args = TrainingArguments(tmp_path, max_steps=40, per_device_train_batch_size=16, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(Regressor(), args, train_dataset=data, eval_dataset=data)
    trainer.train()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    full = trainer.evaluate()["eval_loss"]
    same = experiments.evaluate_truncated(trainer, fraction=1.0, keeps=("top",))
    assert same["eval_top100_loss"] == pytest.approx(full, rel=1e-5)
    halves = experiments.evaluate_truncated(trainer, fraction=0.5)
    # the bottom half of each SVD loses the learned directions; the top half keeps most of them
    assert halves["eval_top50_loss"] < halves["eval_bottom50_loss"]
    # the numbers are the loss of independently truncated weights (numpy), and the model is restored
    truncated = experiments.truncate(trainer.model, 0.5, "top")
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(truncated.mlp(x).squeeze(-1), x[:, :2].sum(1)))
    assert halves["eval_top50_loss"] == pytest.approx(expected, rel=1e-4)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert any(e.get("eval_bottom50_loss") is not None for e in trainer.state.log_history)
    with_full = experiments.evaluate_truncated(trainer, fraction=0.5, keeps=("top",), full=True, log=False)
    assert with_full["eval_loss"] == pytest.approx(full, rel=1e-6)
    assert with_full["eval_top50_loss"] == pytest.approx(halves["eval_top50_loss"], rel=1e-6)


@pytest.mark.parametrize("route", ["callbacks", "attach"])
def test_spectral_callback_truncation_eval_logs_live_truncated_losses(tmp_path, route: str) -> None:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_spectral import SpectralCallback

    torch.manual_seed(0)
    x = torch.randn(64, 12)
    y = x[:, :2].sum(1)
    data = Dataset.from_dict({"x": x.tolist(), "labels": y.tolist()})
    args = TrainingArguments(tmp_path, max_steps=6, per_device_train_batch_size=16, learning_rate=1e-2, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    callback = SpectralCallback(schedule=[0, 6], top_k=0, max_overhead=None, truncation_eval=0.5)
    trainer = Trainer(Regressor(), args, train_dataset=data, eval_dataset=data,
                      callbacks=[callback] if route == "callbacks" else [])
    if route == "attach":
        callback.attach(trainer)
    trainer.train()
    logged = {e["step"]: e for e in trainer.state.log_history if "eval_top50_loss" in e}
    assert sorted(logged) == [0, 6]
    truncated = experiments.truncate(trainer.model, 0.5, "top")  # the trained model, truncated independently
    with torch.no_grad():
        expected_top = float(nn.functional.mse_loss(truncated.mlp(x).squeeze(-1), y))
        expected_full = float(nn.functional.mse_loss(trainer.model.mlp(x).squeeze(-1), y))
    assert logged[6]["eval_top50_loss"] == pytest.approx(expected_top, rel=1e-4)
    assert logged[6]["eval_loss"] == pytest.approx(expected_full, rel=1e-5)
    assert "eval_bottom50_loss" in logged[6]


def test_norm_collapse_is_judged_on_the_end_of_the_run_not_its_last_spike() -> None:
    import numpy as np

    from hf_spectral.experiments.sweep import end_value, norm_collapsed

    # the wd-100 sweep run's shape: 53.7 at init, then spikes between 0.4 and 9, the last snapshot at 6.5
    spiky = [53.7, 5.9, 8.8, 0.86, 2.1, 4.4, 9.2, 8.6, 1.1, 0.40, 3.8, 6.5]
    assert end_value(spiky) == pytest.approx(float(np.median([0.40, 3.8, 6.5])))  # the last quarter: 3 of 12
    assert spiky[0] / spiky[-1] < 10 < spiky[0] / float(np.median(spiky[-3:]))
    assert norm_collapsed(spiky, loss_init=3.706, loss_final=3.676)  # the loss stayed at ln 41 = 3.71
    assert not norm_collapsed(spiky, loss_init=3.706, loss_final=0.5)  # it learned: a small norm, not collapse
    assert not norm_collapsed([53.7, 60.0, 55.0, 54.0], loss_init=3.7, loss_final=3.7)  # the norm did not fall
    assert end_value([2.0]) == 2.0
