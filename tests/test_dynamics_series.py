"""hf_spectral.dynamics series: a Trainer run, a callback record, Hub revisions and explicit lists →
snapshots and Dynamics tables equal to per-snapshot analyses and to float64 numpy."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_spectral.engine as engine
from hf_spectral.analyzer import analyze
from hf_spectral.dynamics import compute_dynamics
from hf_spectral.series import dynamics_from_source, load_series
from hf_spectral.sources.hub import expand_revisions, step_from_name
from hf_spectral.engine import AnalysisOptions, analyze_model
from hf_spectral.errors import SpectralError
from hf_spectral.store import write_snapshot
from tiny_models import TinyMLP, build_tiny, fake_hub_cache

METRICS = ["normalized_effective_rank", "normalized_stable_rank", "spectral_norm", "frobenius_norm", "effective_rank"]


# ---------------------------------------------------------------- builders

@contextlib.contextmanager
def logged_warning(caplog: pytest.LogCaptureFixture, pattern: str):
    """One hf_spectral warning matching ``pattern`` (logged once, as transformers does; no UserWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw UserWarning would fail here
        with caplog.at_level(logging.WARNING, logger="hf_spectral"):
            yield
    hits = [r for r in caplog.records if re.search(pattern, r.getMessage())]
    assert len(hits) == 1, [r.getMessage() for r in caplog.records]



def train_steps(model: torch.nn.Module, steps: int, seed: int = 0):
    """A plain torch loop on random tokens; yields (step, loss) after each optimizer step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(1, steps + 1):
        tokens = torch.randint(0, 101, (4, 12), generator=generator)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        yield step, float(loss.detach())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Trainer-style run: run/checkpoint-{2,4,6}/ (save_pretrained + trainer_state.json)."""
    root = tmp_path_factory.mktemp("run") / "run"
    model = build_tiny("gpt2")
    history = []
    for step, loss in train_steps(model, 6):
        history.append({"loss": loss, "learning_rate": 0.01, "epoch": step / 6, "step": step})
        if step % 2 == 0:
            folder = root / f"checkpoint-{step}"
            model.save_pretrained(folder)
            state = {"global_step": step, "log_history": list(history)}
            (folder / "trainer_state.json").write_text(json.dumps(state))
    return root


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A callback-style record: record/step-00000N/ snapshots written while training, + log_history.json."""
    root = tmp_path_factory.mktemp("record") / "record"
    model = build_tiny("gpt2")
    options = AnalysisOptions(top_k=8, progress=False)
    history = []
    for step, loss in train_steps(model, 3, seed=1):
        history.append({"loss": loss, "step": step})
        model.eval()
        write_snapshot(analyze_model(model, options, step=step), root / f"step-{step:06d}")
        model.train()
    history.append({"eval_accuracy": 0.5, "step": 3})
    (root / "log_history.json").write_text(json.dumps(history))
    return root, history


def numpy_sigma(matrix: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(matrix.detach().double().reshape(matrix.shape[0], -1).numpy(), compute_uv=False)


def count_decompositions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every matrix the engine decomposes is appended to the returned list."""
    calls: list[str] = []
    real = engine.decompose

    def counting(spec, *args, **kwargs):
        calls.append(spec.name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engine, "decompose", counting)
    return calls


# ---------------------------------------------------------------- Trainer run


def test_trainer_run_trajectories_equal_per_snapshot_analysis(run: Path) -> None:
    dyn = dynamics_from_source(run, progress=False)
    assert dyn.steps == [2, 4, 6]
    assert dyn.meta["reference"] == "checkpoint-6" and not dyn.meta["step_is_position"]
    for step in (2, 6):
        folder = run / f"checkpoint-{step}"
        alone = analyze(folder, top_k=20, alignment=True, progress=False)
        rows = dyn.trajectories[dyn.trajectories["step"] == step].set_index("matrix")
        expected = alone.matrices.set_index("name")
        assert list(rows.index) == list(expected.index) and len(rows) == 11
        assert (rows["label"] == f"checkpoint-{step}").all()
        np.testing.assert_allclose(rows[METRICS].to_numpy(float), expected.loc[rows.index, METRICS].to_numpy(float),
                                   rtol=1e-12)
        # The full spectra, independently: float64 numpy SVD of the saved weights (σ is transpose-invariant).
        weights = load_file(folder / "model.safetensors")
        sv = dyn.singular_values[dyn.singular_values["step"] == step]
        for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight", "lm_head.weight"):
            got = sv[sv["matrix"] == name].sort_values("index")["sigma"].to_numpy()
            want = numpy_sigma(weights[name])
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-6 * want[0])
        # Alignment copied from the per-snapshot analysis.
        scores = dyn.alignment_scores[dyn.alignment_scores["step"] == step].set_index("pair")
        np.testing.assert_allclose(scores.loc[alone.alignment["label"], "score"].to_numpy(float),
                                   alone.alignment["score"].to_numpy(float), rtol=1e-12)


def test_trainer_run_training_table_from_last_trainer_state(run: Path) -> None:
    dyn = compute_dynamics(load_series(run, progress=False))
    history = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    loss = dyn.training[dyn.training["metric"] == "loss"].sort_values("step")
    assert loss["step"].tolist() == [entry["step"] for entry in history]
    np.testing.assert_array_equal(loss["value"].to_numpy(), [entry["loss"] for entry in history])
    assert set(dyn.training["metric"]) == {"loss", "learning_rate", "epoch"}


def test_second_call_on_a_run_recomputes_nothing(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_series(run, cache_dir=cache, progress=False)
    stamps = {p.name: ((p / "meta.json").stat().st_mtime_ns, p.stat().st_ino) for p in cache.iterdir()}
    assert set(stamps) == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    calls = count_decompositions(monkeypatch)
    again = load_series(run, cache_dir=cache, progress=False)
    assert calls == []
    assert {p.name: ((p / "meta.json").stat().st_mtime_ns, p.stat().st_ino) for p in cache.iterdir()} == stamps
    for a, b in zip(first, again):
        assert a.meta["label"] == b.meta["label"]
        for name, sigma in a.spectra.items():
            np.testing.assert_array_equal(sigma, b.spectra[name])


def test_changed_options_are_computed_again(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_decompositions(monkeypatch)
    snapshots = load_series(run, cache_dir=tmp_path / "cache", top_k=4, alignment=False, include=r"lm_head", progress=False)
    assert calls == ["lm_head.weight"] * 3
    assert all(u.shape[1] == 4 for s in snapshots for u, _ in s.vectors.values())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_folder_of_analyzed_checkpoints_is_read_as_a_record(run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`hf-spectral analyze run/` (and --cache-dir) write checkpoint-N/ snapshot folders: read, not resolved."""
    load_series(run, cache_dir=tmp_path / "cache", progress=False)
    calls = count_decompositions(monkeypatch)
    snapshots = load_series(tmp_path / "cache")
    assert calls == [] and [s.meta["label"] for s in snapshots] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [s.step for s in snapshots] == [2, 4, 6]


# ---------------------------------------------------------------- callback record


def test_callback_record_is_read_not_recomputed(record: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, history = record
    calls = count_decompositions(monkeypatch)
    snapshots = load_series(root)
    assert calls == []
    assert [s.meta["label"] for s in snapshots] == ["step-000001", "step-000002", "step-000003"]
    dyn = compute_dynamics(snapshots)
    assert dyn.steps == [1, 2, 3] and dyn.meta["reference"] == "step-000003"
    for snapshot in snapshots:
        rows = dyn.trajectories[dyn.trajectories["step"] == snapshot.step].set_index("matrix")
        expected = snapshot.matrices.set_index("name").loc[rows.index]
        np.testing.assert_array_equal(rows[METRICS].to_numpy(float), expected[METRICS].to_numpy(float))
        for name, sigma in snapshot.spectra.items():
            got = dyn.singular_values.query("step == @snapshot.step and matrix == @name")["sigma"].to_numpy()
            np.testing.assert_array_equal(got, sigma)
    accuracy = dyn.training[dyn.training["metric"] == "eval_accuracy"]
    assert accuracy[["step", "value"]].values.tolist() == [[3, 0.5]]
    np.testing.assert_array_equal(dyn.training[dyn.training["metric"] == "loss"]["value"].to_numpy(),
                                  [h["loss"] for h in history if "loss" in h])
    # 8 vectors were kept: 8 agreement entries per matrix and step; the reference agrees with itself exactly.
    final = dyn.agreement[dyn.agreement["label"] == "step-000003"]
    assert len(final) == 11 * 8 and (final["value"] == 1.0).all()


# ---------------------------------------------------------------- Hub revisions (a fake offline cache)


def mlp_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in TinyMLP().state_dict().items()}


C1, C2, C3 = "1" * 40, "2" * 40, "3" * 40


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """org/tiny with tags step1, step2, step3 (step2 and step3: different commits, identical weight files)."""
    states = {C1: mlp_state(1), C2: mlp_state(2), C3: mlp_state(2)}
    folders = {}
    for commit, state in states.items():
        folder = tmp_path / f"src-{commit[0]}"
        folder.mkdir()
        save_file(state, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"model_type": "mlp", "commit": commit[0]}))
        folders[commit] = folder
    cache = tmp_path / "hf_cache"
    fake_hub_cache(cache, "org/tiny", folders, {"main": C3, "step1": C1, "step2": C2, "step3": C3})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return {"step1": states[C1], "step2": states[C2], "step3": states[C3]}


def test_hub_revision_glob_identical_analyzed_once(hub_cache: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = count_decompositions(monkeypatch)
    with logged_warning(caplog, r"identical.*step2 = step3"):
        snapshots = load_series("org/tiny", revisions="step*", progress=False)
    assert [s.meta["label"] for s in snapshots] == ["step1", "step2", "step3"]
    assert [s.step for s in snapshots] == [1, 2, 3]
    assert len(calls) == 2 * 3  # two distinct checkpoints of 3 matrices
    assert snapshots[2].meta["identical_to"] == "step2" and "identical_to" not in snapshots[1].meta
    assert snapshots[2].meta["revision"] == "step3" and snapshots[2].meta["commit"] == C3
    assert snapshots[0].meta["series"]["identical"] == [["step2", "step3"]]
    for snapshot in snapshots:
        state = hub_cache[snapshot.meta["label"]]
        for name, sigma in snapshot.spectra.items():
            np.testing.assert_allclose(sigma, numpy_sigma(state[name]), atol=1e-6 * float(sigma[0]))
    dyn = compute_dynamics(snapshots)
    assert dyn.meta["identical"] == [["step2", "step3"]]
    previous = dyn.agreement_previous[dyn.agreement_previous["label"] == "step3"]
    assert len(previous) and (previous["value"] == 1.0).all()


def test_hub_missing_revision_warns_and_continues(hub_cache: dict, caplog: pytest.LogCaptureFixture) -> None:
    with logged_warning(caplog, r"step9"):
        snapshots = load_series("org/tiny", revisions=["step1", "step9", "step3"], progress=False)
    assert [s.meta["label"] for s in snapshots] == ["step1", "step3"]
    assert snapshots[0].meta["series"]["missing"][0]["label"] == "step9"
    dyn = compute_dynamics(snapshots)
    assert dyn.meta["missing"][0]["label"] == "step9" and dyn.steps == [1, 3]


def test_hub_revision_errors(hub_cache: dict, tmp_path: Path) -> None:
    with pytest.raises(SpectralError, match=r"none of the 2 revisions of org/tiny"):
        load_series("org/tiny", revisions="step8,step9", progress=False)
    with pytest.raises(SpectralError, match=r"no revision of org/tiny matches 'epoch\*'.*step1"):
        load_series("org/tiny", revisions="epoch*", progress=False)
    with pytest.raises(SpectralError, match=r"--revisions applies to Hub model ids only"):
        load_series(tmp_path, revisions="step1")
    with pytest.raises(SpectralError, match=r"no revision of Hub model org/absent is in the cache"):
        load_series("org/absent", revisions="step*")


def test_expand_revisions_lists_refs_online(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from types import SimpleNamespace

    import hf_spectral.sources.hub as hub

    refs = SimpleNamespace(branches=[SimpleNamespace(name="main"), SimpleNamespace(name="step10")],
                           tags=[SimpleNamespace(name="step2"), SimpleNamespace(name="v1")])
    asked = []
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo_id, **kw: asked.append(repo_id) or refs)
    assert expand_revisions("EleutherAI/pythia-14m", "step*, main") == ["step2", "step10", "main"]
    assert asked == ["EleutherAI/pythia-14m"]
    assert expand_revisions("x/y", ["step1", "step1"]) == ["step1"]  # no glob: the Hub is not asked
    assert asked == ["EleutherAI/pythia-14m"]
    assert [step_from_name(n) for n in ("step1000", "step-20", "main", "v1")] == [1000, 20, None, None]


# ---------------------------------------------------------------- explicit lists


def test_explicit_list_keeps_order_and_reports_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    files = []
    for name, seed in (("late", 5), ("early", 4), ("copy", 5)):
        folder = tmp_path / name
        folder.mkdir()
        save_file(mlp_state(seed), folder / "model.safetensors")
        files.append(folder)
    calls = count_decompositions(monkeypatch)
    with logged_warning(caplog, r"late = copy"):
        dyn = dynamics_from_source(files, reference="early", progress=False)
    assert len(calls) == 2 * 3
    assert dyn.meta["labels"] == ["late", "early", "copy"] and dyn.meta["step_is_position"]
    assert dyn.steps == [0, 1, 2] and dyn.meta["reference"] == "early"
    with pytest.raises(SpectralError, match=r"empty series"):
        load_series([])


def test_identity_keys_hash_in_full_only_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from hf_spectral.sources.fingerprint import identity_keys
    from hf_spectral.sources.types import Checkpoint, ModelPart

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 3 << 20, dtype=np.uint8)  # 3 MiB: sampled, not read whole
    unsampled = base.copy()
    unsampled[(3 << 20) // 30] ^= 1  # a byte between two sampled blocks
    contents = {"a": base, "same_as_a": base, "unsampled_change": unsampled, "other": base[::-1].copy()}
    checkpoints = []
    for name, data in contents.items():
        (tmp_path / name).mkdir()
        data.tofile(tmp_path / name / "model.safetensors")
        reader = SimpleNamespace(files=[tmp_path / name / "model.safetensors"])
        checkpoints.append(Checkpoint(name, tmp_path / name, [ModelPart("", reader)], source=name))
    hashed = []
    real = Checkpoint.fingerprint
    monkeypatch.setattr(Checkpoint, "fingerprint", lambda self: hashed.append(self.label) or real(self))
    keys = identity_keys(checkpoints)
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3
    assert hashed == ["a", "same_as_a", "unsampled_change"]  # "other" differs in its samples: never read whole
