"""SpectralCallback in real Trainer runs: snapshots at the scheduled steps, numbers equal to the analyzer
on the checkpoint of the same step and to float64 numpy, scalars in log_history and TensorBoard, and
training left bit-identical."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from tracking_common import image_trainer, lm_trainer  # noqa: E402

import hf_spectral  # noqa: E402
from hf_spectral import SpectralCallback  # noqa: E402
from hf_spectral.store import read_snapshot  # noqa: E402
from hf_spectral.tracking import log_spaced_steps  # noqa: E402

pytestmark = pytest.mark.slow



# ------------------------------------------------------------------------------------------------
# independent float64 numpy references


def np_sigma(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def np_erank(matrix: np.ndarray) -> float:
    sigma = np_sigma(matrix)
    p = sigma / sigma.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()) / min(matrix.shape))


def as_matrix(name: str, weight: np.ndarray) -> np.ndarray:
    """Rows = output side (definitions §1): HF Conv1D (attn/mlp of GPT-2) is stored (in, out)."""
    if weight.ndim > 2:
        return weight.reshape(weight.shape[0], -1)
    if ".attn.c_" in name or ".mlp.c_" in name:
        return weight.T
    return weight


def spectral_entries(history: list[dict]) -> dict[int, dict]:
    entries: dict[int, dict] = {}
    for entry in history:
        if any(key.startswith("spectral/") for key in entry):
            assert entry["step"] not in entries, f"two spectral log entries at step {entry['step']}"
            entries[entry["step"]] = entry
    return entries


def record_steps(record: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in record.iterdir() if p.is_dir())


# ------------------------------------------------------------------------------------------------


def test_gpt2_snapshots_equal_the_analyzer_on_checkpoints_and_numpy(tmp_path):
    def weight_norm(model):
        return {"norm": math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))}

    callback = SpectralCallback(max_overhead=None, top_k=4, extra_measures={"weights": weight_norm})
    trainer = lm_trainer(tmp_path, [callback], max_steps=20, save_steps=10)
    trainer.train()
    record = tmp_path / "spectral"
    assert callback.record_dir == record

    # Snapshots at exactly the scheduled steps (step 0 = initialization), each naming its step.
    expected = log_spaced_steps(20)
    assert expected[:5] == [0, 1, 2, 3, 4] and expected[-1] == 20
    assert record_steps(record) == expected
    for step in expected:
        assert read_snapshot(record / f"step-{step:06d}").meta["step"] == step
    assert not [p for p in record.iterdir() if p.name.startswith(".")], "temporary folders left behind"

    logged = spectral_entries(trainer.state.log_history)
    assert sorted(logged) == expected
    # log_history.json is the Trainer's whole history (losses too), written at train end.
    assert json.loads((record / "log_history.json").read_text()) == json.loads(json.dumps(trainer.state.log_history))

    for step in (10, 20):
        checkpoint = tmp_path / f"checkpoint-{step}"
        ours = read_snapshot(record / f"step-{step:06d}")
        theirs = hf_spectral.analyze(checkpoint, top_k=4, progress=False)
        assert list(ours.matrices["name"]) == list(theirs.matrices["name"])
        for name in theirs.spectra:
            np.testing.assert_allclose(ours.spectra[name], theirs.spectra[name], rtol=1e-6, atol=0)

        weights = load_file(str(checkpoint / "model.safetensors"))
        assert len(ours.spectra) == len([w for w in weights.values() if w.ndim >= 2]) == 11
        entry = logged[step]
        for name, weight in weights.items():
            if weight.ndim < 2:
                continue
            matrix = as_matrix(name, weight)
            reference = np_sigma(matrix)
            np.testing.assert_allclose(ours.spectra[name], reference, rtol=0, atol=1e-6 * reference[0])
            assert entry[f"spectral/erank/{name}"] == pytest.approx(np_erank(matrix), rel=1e-6)
            assert entry[f"spectral/sigma_max/{name}"] == pytest.approx(reference[0], rel=1e-6)
            # stored top-4 singular vectors are those of the checkpoint's matrix (up to sign)
            u, _, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
            stored_u, stored_v = ours.vectors[name]
            np.testing.assert_allclose(np.abs((stored_u * u[:, :4]).sum(0)), 1, atol=1e-4)
            np.testing.assert_allclose(np.abs((stored_v * vt[:4].T).sum(0)), 1, atol=1e-4)
        erank = [np_erank(as_matrix(n, w)) for n, w in weights.items() if w.ndim >= 2]
        assert entry["spectral/mean_erank"] == pytest.approx(np.mean(erank), rel=1e-6)

        norm = math.sqrt(sum(float(np.square(w.astype(np.float64)).sum()) for w in weights.values()))
        assert ours.meta["extra_measures"]["weights"]["norm"] == pytest.approx(norm, rel=1e-6)
        assert entry["spectral/weights/norm"] == pytest.approx(norm, rel=1e-6)

        # the checkpoint carries its own spectra: singular values and metrics, no vectors
        summary = read_snapshot(checkpoint / "spectral")
        assert summary.meta["step"] == step and not summary.vectors
        for name in theirs.spectra:
            np.testing.assert_array_equal(summary.spectra[name], ours.spectra[name])

    # Agreement with the previous snapshot (paper Eq. 5, mean of the top entries), from stored vectors.
    previous, current = read_snapshot(record / "step-000018"), read_snapshot(record / "step-000020")
    scores = []
    for name, (u, v) in current.vectors.items():
        u0, v0 = (x.astype(np.float64) for x in previous.vectors[name])
        diagonal = np.abs((u.astype(np.float64) * u0).sum(0)) * np.abs((v.astype(np.float64) * v0).sum(0))
        scores.append(diagonal.mean())
        assert logged[20][f"spectral/agreement/{name}"] == pytest.approx(diagonal.mean(), abs=1e-5)
    assert logged[20]["spectral/mean_agreement"] == pytest.approx(np.mean(scores), abs=1e-5)
    assert "spectral/agreement/transformer.wte.weight" not in logged[0]  # nothing before the init


def test_scalars_reach_a_tensorboard_event_file(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    trainer = lm_trainer(tmp_path / "run", [SpectralCallback(max_overhead=None, schedule=4, top_k=2)], max_steps=12,
                         save_strategy="no", report_to=["tensorboard"], logging_steps=3)
    trainer.train()

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # The Trainer's reporters prefix non-eval keys with "train/" (rewrite_logs).
    assert "train/loss" in tags
    logged = spectral_entries(trainer.state.log_history)
    assert sorted(logged) == [0, 4, 8, 12]
    for key in ("spectral/mean_erank", "spectral/erank/transformer.h.0.attn.c_attn.weight",
                "spectral/sigma_max/lm_head.weight"):
        points = {e.step: e.value for e in events.Scalars(f"train/{key}")}
        assert sorted(points) == [0, 4, 8, 12], key
        for step, value in points.items():
            assert value == pytest.approx(logged[step][key], rel=1e-6)
    agreement = {e.step for e in events.Scalars("train/spectral/mean_agreement")}
    assert agreement == {4, 8, 12}


def test_tracking_leaves_training_bit_identical(tmp_path):
    def noisy_measure(model):
        # draws random numbers and switches to eval(): the callback must undo both
        model.eval()
        return {"noise": float(torch.randn(3).sum()), "dropout": float(np.random.rand() + torch.rand(1).item())}

    runs = {}
    for name, callbacks in (("plain", []), ("tracked", [SpectralCallback(max_overhead=None, top_k=3, extra_measures={"m": noisy_measure})])):
        trainer = lm_trainer(tmp_path / name, callbacks, max_steps=12, save_strategy="no", logging_steps=1)
        trainer.train()
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        runs[name] = (losses, {k: v.clone() for k, v in trainer.model.state_dict().items()})
    assert len(runs["plain"][0]) == 12
    assert runs["plain"][0] == runs["tracked"][0]  # exact float equality, step by step
    for key, value in runs["plain"][1].items():
        assert torch.equal(value, runs["tracked"][1][key]), key
    assert len(list((tmp_path / "tracked" / "spectral").glob("step-*"))) == len(log_spaced_steps(12))


def test_image_classifier_convolutions(tmp_path):
    trainer = image_trainer(tmp_path, [SpectralCallback(max_overhead=None, schedule=4, top_k=2, log_layers=False)],
                            max_steps=12, save_steps=6)
    trainer.train()
    record = tmp_path / "spectral"
    assert record_steps(record) == [0, 4, 8, 12]

    # checkpoint-6 is not a scheduled step: its summary is computed at the save (singular values only)
    summary = read_snapshot(tmp_path / "checkpoint-6" / "spectral")
    assert summary.meta["step"] == 6 and not summary.vectors
    at_six = load_file(str(tmp_path / "checkpoint-6" / "model.safetensors"))
    for name, sigma in summary.spectra.items():
        reference = np_sigma(at_six[name].reshape(at_six[name].shape[0], -1))
        np.testing.assert_allclose(sigma, reference, rtol=0, atol=1e-6 * reference[0])
    assert len(summary.spectra) == len([w for w in at_six.values() if w.ndim >= 2])

    ours = read_snapshot(record / "step-000012")
    theirs = hf_spectral.analyze(tmp_path / "checkpoint-12", top_k=2, progress=False)
    for name in theirs.spectra:
        np.testing.assert_allclose(ours.spectra[name], theirs.spectra[name], rtol=1e-6)
    weights = load_file(str(tmp_path / "checkpoint-12" / "model.safetensors"))
    convs = [n for n, w in weights.items() if w.ndim == 4]
    assert convs, "the tiny ResNet has convolutions"
    for name in convs:
        matrix = weights[name].reshape(weights[name].shape[0], -1)  # (out, in·kh·kw)
        reference = np_sigma(matrix)
        np.testing.assert_allclose(ours.spectra[name], reference, rtol=0, atol=1e-6 * reference[0])
    logged = spectral_entries(trainer.state.log_history)
    assert not [k for k in logged[12] if k.startswith("spectral/erank/")]  # log_layers=False
    erank = [np_erank(weights[n].reshape(weights[n].shape[0], -1)) for n in ours.spectra]
    assert logged[12]["spectral/mean_erank"] == pytest.approx(np.mean(erank), rel=1e-6)


def test_alignment_is_stored_and_equals_the_analyzer(tmp_path):
    trainer = lm_trainer(tmp_path, [SpectralCallback(max_overhead=None, schedule=[0, 10], top_k=0, alignment=True)], max_steps=10,
                         save_steps=10)
    trainer.train()
    snapshot = read_snapshot(tmp_path / "spectral" / "step-000010")
    reference = hf_spectral.analyze(tmp_path / "checkpoint-10", alignment=True, progress=False)
    assert len(snapshot.alignment) == len(reference.alignment) > 0
    got = snapshot.alignment.set_index("label")["score"]
    expected = reference.alignment.set_index("label")["score"]
    np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-5)
    # an out_in pair of whole matrices (attn.c_proj → mlp.c_fc) checked against float64 numpy:
    # the |U_prevᵀ V_next| diagonal and its top-10 mean
    pairs = snapshot.alignment
    row = pairs[(pairs["mode"] == "out_in") & pairs["prev"].str.endswith("h.0.attn.c_proj.weight")].iloc[0]
    weights = {k: v.detach().double().numpy() for k, v in trainer.model.named_parameters()}
    prev, nxt = as_matrix(row["prev"], weights[row["prev"]]), as_matrix(row["next"], weights[row["next"]])
    u_prev = np.linalg.svd(prev, full_matrices=False)[0]
    v_next = np.linalg.svd(nxt, full_matrices=False)[2].T
    k = min(u_prev.shape[1], v_next.shape[1])
    diagonal = np.abs(np.sum(u_prev[:, :k] * v_next[:, :k], axis=0))
    np.testing.assert_allclose(snapshot.alignment_diagonals[row["label"]], diagonal, atol=1e-5)
    assert row["score"] == pytest.approx(diagonal[:10].mean(), abs=1e-5)
