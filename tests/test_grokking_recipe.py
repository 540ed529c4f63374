"""Tests of recipes/grokking.py: data, model (vs a float64 numpy reference), saving, a tiny run."""

import json
import math

import numpy as np
import pytest
from tiny_models import load_recipe
import torch

import hf_spectral


@pytest.fixture(scope="module")
def gk():
    return load_recipe("grokking")


# --- data -----------------------------------------------------------------------------------------

EXPECTED = {  # independent definitions of each operation
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b + p) % p,
    "mul": lambda a, b, p: a * b % p,
    "div": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a),  # c = a / b: c·b ≡ a
    "x2_xy_y2": lambda a, b, p: (a**2 + a * b + b**2) % p,
    "x2_y2": lambda a, b, p: (a**2 + b**2) % p,
    "x3_xy": lambda a, b, p: (a**3 + a * b) % p,
}


@pytest.mark.parametrize("operation", sorted(EXPECTED))
def test_dataset_targets_sizes_and_split(gk, operation):
    p, fraction = 11, 0.3
    data = gk.make_dataset(operation, p, fraction, split_seed=0)
    n_pairs = p * (p - 1) if operation == "div" else p * p
    assert len(data["train"]) == int(fraction * n_pairs)
    assert len(data["train"]) + len(data["validation"]) == n_pairs
    seen = set()
    for split in ("train", "validation"):
        for row in data[split]:
            a, b = row["a"], row["b"]
            assert row["input_ids"] == [a, b, p]  # "=" is token p
            assert row["labels"] == EXPECTED[operation](a, b, p)
            seen.add((a, b))
    b_values = range(1, p) if operation == "div" else range(p)
    assert seen == {(a, b) for a in range(p) for b in b_values}  # disjoint and complete


def test_split_is_deterministic_per_seed(gk):
    pairs = lambda d: [(r["a"], r["b"]) for r in d["train"]]  # noqa: E731
    first = pairs(gk.make_dataset("add", 13, 0.3, split_seed=1))
    assert first == pairs(gk.make_dataset("add", 13, 0.3, split_seed=1))
    assert set(first) != set(pairs(gk.make_dataset("add", 13, 0.3, split_seed=2)))


def test_bad_input_raises_spectral_error(gk):
    from hf_spectral.errors import SpectralError

    with pytest.raises(SpectralError, match="prime"):
        gk.make_dataset("div", 12, 0.3, 0)
    with pytest.raises(SpectralError, match="train_fraction"):
        gk.make_dataset("add", 7, 1.0, 0)
    with pytest.raises(SpectralError, match="num_attention_heads"):
        gk.GrokkingConfig(p=7, hidden_size=30, num_attention_heads=4)


# FullBatch and accuracy_metrics: tests/test_recipe_support.py


# --- model ----------------------------------------------------------------------------------------


def reference_logits(model, input_ids: np.ndarray) -> np.ndarray:
    """The naive full-sequence forward pass in float64 numpy with the model's weights: (B, T, V)."""
    cfg = model.config
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    batch, length = input_ids.shape
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    dh = d // heads

    def layer_norm(x, prefix):
        if not cfg.layer_norm:
            return x
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * w[prefix + ".weight"] + w[prefix + ".bias"]

    linear = lambda x, name: x @ w[name + ".weight"].T + w[name + ".bias"]  # noqa: E731
    x = w["embed_tokens.weight"][input_ids] * (math.sqrt(d) if cfg.scale_embedding else 1.0)
    if cfg.position_embedding_type == "learned":
        x = x + w["embed_positions.weight"][:length]
    else:
        pe = np.zeros((length, d))
        for t in range(length):
            for i in range(0, d, 2):
                pe[t, i] = math.sin(t / 10000 ** (i / d))
                pe[t, i + 1] = math.cos(t / 10000 ** (i / d))
        x = x + pe
    for layer in range(cfg.num_hidden_layers):
        pre = f"layers.{layer}."
        h = layer_norm(x, pre + "ln_1")
        split = lambda t: t.reshape(batch, length, heads, dh).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(linear(h, pre + "attn." + n)) for n in "qkv")
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        scores = np.where(np.triu(np.ones((length, length), bool), 1), -np.inf, scores)
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, length, d)
        x = x + linear(out, pre + "attn.o")
        h = layer_norm(x, pre + "ln_2")
        x = x + linear(np.maximum(linear(h, pre + "mlp.fc_in"), 0), pre + "mlp.fc_out")
    return linear(x, "unembed")


@pytest.mark.parametrize(
    "layers, layer_norm, positions", [(1, False, "sinusoidal"), (1, True, "learned"), (2, True, "sinusoidal")]
)
def test_last_position_forward_matches_naive_reference(gk, layers, layer_norm, positions):
    torch.manual_seed(0)
    config = gk.GrokkingConfig(
        p=13, num_hidden_layers=layers, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        layer_norm=layer_norm, position_embedding_type=positions,
    )  # fmt: skip
    model = gk.GrokkingTransformer(config).eval()
    if layer_norm:  # non-trivial norm parameters
        for name, param in model.named_parameters():
            if ".ln_" in name:
                param.data.uniform_(0.5, 1.5)
    data = gk.make_dataset("add", 13, 0.5, 0)["train"]
    ids, labels = np.array(data["input_ids"]), np.array(data["labels"])
    expected = reference_logits(model, ids)
    with torch.no_grad():
        fast = model(torch.tensor(ids), labels=torch.tensor(labels))
        full = model(torch.tensor(ids), logits_to_keep=0).logits
    assert fast.logits.shape == (len(ids), 1, 14)
    np.testing.assert_allclose(fast.logits[:, -1].numpy(), expected[:, -1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(full.numpy(), expected, rtol=1e-4, atol=1e-4)  # causal mask, all positions
    last = expected[:, -1]
    log_z = np.log(np.exp(last - last.max(-1, keepdims=True)).sum(-1)) + last.max(-1)
    assert fast.loss.item() == pytest.approx(float(np.mean(log_z - last[np.arange(len(labels)), labels])), rel=1e-5)


def test_parameter_names_and_layer_norm_removal(gk):
    names = [n for n, _ in gk.GrokkingTransformer(gk.GrokkingConfig(p=7)).named_parameters()]
    assert names == [
        "embed_tokens.weight",
        *(f"layers.0.attn.{m}.{t}" for m in "qkvo" for t in ("weight", "bias")),
        *(f"layers.0.mlp.{m}.{t}" for m in ("fc_in", "fc_out") for t in ("weight", "bias")),
        "unembed.weight",
        "unembed.bias",
    ]
    with_ln = dict(gk.GrokkingTransformer(gk.GrokkingConfig(p=7, layer_norm=True)).named_parameters())
    assert with_ln["layers.0.ln_1.weight"].shape == (128,) and "layers.0.ln_2.bias" in with_ln
    shapes = {n: tuple(p.shape) for n, p in with_ln.items()}
    assert shapes["embed_tokens.weight"] == (8, 128) and shapes["unembed.weight"] == (8, 128)
    assert shapes["layers.0.mlp.fc_in.weight"] == (512, 128)


def test_save_pretrained_round_trip(gk, tmp_path):
    from transformers import AutoModel

    torch.manual_seed(1)
    model = gk.GrokkingTransformer(gk.GrokkingConfig(p=11, layer_norm=True, position_embedding_type="learned"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "grokking_transformer"
    ids = torch.tensor(gk.make_dataset("add", 11, 0.5, 0)["train"]["input_ids"])
    for loaded in (gk.GrokkingTransformer.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, gk.GrokkingTransformer)
        with torch.no_grad():
            assert torch.equal(model(ids, logits_to_keep=0).logits, loaded(ids, logits_to_keep=0).logits)


def test_fourier_sparsity_matches_explicit_fourier_basis(gk):
    torch.manual_seed(0)
    p = 13
    model = gk.GrokkingTransformer(gk.GrokkingConfig(p=p, hidden_size=16, num_attention_heads=2))
    x = np.arange(p)
    # Orthonormal real Fourier basis of Z_p, one row group per frequency: 1 | cos k, sin k.
    groups = [[np.ones(p) / np.sqrt(p)]] + [
        [np.cos(2 * np.pi * f * x / p) * np.sqrt(2 / p), np.sin(2 * np.pi * f * x / p) * np.sqrt(2 / p)]
        for f in range(1, (p + 1) // 2)
    ]
    w = model.embed_tokens.weight.detach().double().numpy()[:p]
    energy = np.array([sum(np.sum((b @ w) ** 2) for b in g) for g in groups])
    assert energy.sum() == pytest.approx(np.sum(w**2))
    norms = np.sort(np.sqrt(energy[1:]))
    n = len(norms)
    gini = np.sum((2 * np.arange(1, n + 1) - n - 1) * norms) / (n * norms.sum())
    got = hf_spectral.fourier_sparsity(model.embed_tokens.weight[:p], k=3)
    assert got["top3_fraction"] == pytest.approx(np.sort(energy[1:])[::-1][:3].sum() / energy.sum(), rel=1e-9)
    assert got["gini"] == pytest.approx(gini, rel=1e-9)
    # An embedding made of two frequencies is perfectly sparse.
    with torch.no_grad():
        model.embed_tokens.weight[:p] = torch.tensor(np.outer(np.cos(2 * np.pi * 3 * x / p), np.ones(16)))
        model.embed_tokens.weight[:p, :8] += torch.tensor(np.sin(2 * np.pi * 5 * x / p))[:, None]
    got = hf_spectral.fourier_sparsity(model.embed_tokens.weight[:p], k=2)
    assert got["top2_fraction"] == pytest.approx(1.0, abs=1e-6) and got["gini"] > 0.6
    assert gk.fourier_measure(model) == hf_spectral.fourier_sparsity(model.embed_tokens.weight[:p], k=5)  # the recipe's measure


# --- arguments, optimizer, a tiny run -------------------------------------------------------------


def test_presets_and_explicit_flags(gk):
    paper, train, *_ = gk.parse_args(["--preset", "paper"])
    assert (paper.p, paper.train_fraction, train.learning_rate, train.weight_decay) == (113, 0.3, 1e-3, 1.0)
    assert (train.max_steps, paper.batch_size, paper.layer_norm, train.warmup_steps) == (40_000, 0, False, 0)
    assert (train.eval_steps, train.logging_steps, train.max_grad_norm, train.adam_beta2) == (100, 100, 0.0, 0.98)
    control, train, *_ = gk.parse_args(["--preset", "paper", "--weight_decay", "0", "--train_fraction", "0.9"])
    assert (train.weight_decay, control.train_fraction, control.p) == (0.0, 0.9, 113)
    sling, train, *_ = gk.parse_args(["--preset", "slingshot", "--layer_norm", "false"])
    assert (sling.p, sling.train_fraction, sling.batch_size, train.weight_decay) == (97, 0.7, 512, 0.0)
    assert sling.layer_norm is False and gk.parse_args(["--preset", "slingshot"])[0].layer_norm is True
    assert train.per_device_train_batch_size == 512
    demo, train, spectral, _ = gk.parse_args([])
    assert demo.preset == "demo" and spectral.track_spectra is True and demo.split_seed == train.seed == 0
    assert train.output_dir == "runs/grokking_demo_seed0" and spectral.spectra_schedule == "50"
    # the paper's data and model, lr x weight decay 6x the paper's (docs/grokking.md, the search)
    assert (demo.p, demo.train_fraction, train.learning_rate, train.weight_decay, train.max_steps) == (113, 0.3, 2e-3, 3.0, 3000)
    assert gk.parse_args(["--seed", "3", "--preset", "paper"])[1].output_dir == "runs/grokking_paper_seed3"


def test_weight_decay_applies_to_every_parameter(gk, tmp_path):
    args = gk.parse_args(
        ["--p", "7", "--layer_norm", "true", "--max_steps", "2", "--track_spectra", "false",
         "--output_dir", str(tmp_path)]
    )  # fmt: skip
    trainer = gk.build_trainer(*args[:3])
    groups = trainer.optimizer.param_groups
    assert all(g["weight_decay"] == 3.0 for g in groups)  # the demo preset's
    assert all(g["betas"] == (0.9, 0.98) for g in groups)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in trainer.model.parameters()}  # biases and LayerNorms too


def test_tiny_run_trains_and_writes_model_and_log(gk, tmp_path, capsys):
    out = tmp_path / "run"
    run = gk.main(
        ["--p", "11", "--train_fraction", "0.5", "--max_steps", "40", "--eval_steps", "10", "--logging_steps", "10",
         "--track_spectra", "false", "--disable_tqdm", "true", "--output_dir", str(out)]
    )  # fmt: skip
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    log = json.loads((out / "training_log.json").read_text())
    losses = [row["loss"] for row in log if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0] / 2
    val = {row["step"]: row["eval_val_accuracy"] for row in log if "eval_val_accuracy" in row}
    train = {row["step"]: row["eval_train_accuracy"] for row in log if "eval_train_accuracy" in row}
    assert sorted(val) == sorted(train) == [0, 10, 20, 30, 40]
    assert train[40] > train[0]
    printed = capsys.readouterr().out
    assert run.steps == 40 and "validation accuracy >= 90%: " in printed
    assert "report:" not in printed and run.report is None  # no spectral record, no dynamics report
    assert json.loads((out / "summary.json").read_text())["final_metric"] == val[40] == run.final_metric
    loaded = gk.GrokkingTransformer.from_pretrained(out)
    assert loaded.config.p == 11


def test_minibatch_preset_path_trains(gk, tmp_path):
    args = gk.parse_args(
        ["--preset", "slingshot", "--p", "7", "--batch_size", "8", "--max_steps", "6", "--eval_steps", "3",
         "--logging_steps", "3", "--track_spectra", "false", "--disable_tqdm", "true", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    trainer = gk.build_trainer(*args[:3])
    assert "layers.0.ln_1.weight" in dict(trainer.model.named_parameters())
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (8, 3) and batch["labels"].shape == (8,)
    trainer.train()
    assert trainer.state.global_step == 6
    lrs = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]
    assert lrs[0] < 1e-3  # 10 warmup steps, as the authors' slingshot runs


def test_spectral_tracking_records_the_fourier_measure(gk, tmp_path):
    pytest.importorskip("hf_spectral.tracking")
    gk.main(
        ["--p", "7", "--max_steps", "4", "--eval_steps", "2", "--spectra_schedule", "2",
         "--disable_tqdm", "true", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    metas = sorted((tmp_path / "spectral").glob("**/meta.json"))
    assert len(metas) >= 2
    last = json.loads(metas[-1].read_text())
    assert 0.0 < last["extra_measures"]["fourier"]["top5_fraction"] <= 1.0


def test_a_branch_resumes_the_trunk_checkpoint_and_tracks_from_the_split(gk, tmp_path):
    common = ["--p", "7", "--train_fraction", "0.5", "--batch_size", "4", "--max_steps", "6", "--eval_steps", "3",
              "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    gk.main([*common, "--track_spectra", "false", "--save_strategy", "steps", "--save_steps", "3", "--save_only_model",
             "false", "--output_dir", str(tmp_path / "trunk")])  # fmt: skip
    trunk_log = json.loads((tmp_path / "trunk" / "training_log.json").read_text())
    run = gk.main([*common, "--branch_from", str(tmp_path / "trunk" / "checkpoint-3"), "--seed", "1", "--split_seed", "0",
                   "--spectra_schedule", "1", "--output_dir", str(tmp_path / "branch")])  # fmt: skip
    log = json.loads((tmp_path / "branch" / "training_log.json").read_text())
    losses = lambda rows: {r["step"]: r["loss"] for r in rows if "loss" in r}  # noqa: E731
    assert run.steps == 6 and sorted(losses(log)) == [1, 2, 3, 4, 5, 6]
    assert [losses(log)[s] for s in (1, 2, 3)] == [losses(trunk_log)[s] for s in (1, 2, 3)]  # the trunk's history
    assert losses(log)[4] != losses(trunk_log)[4]  # its own data order from the split on
    steps = hf_spectral.dynamics_from_source(tmp_path / "branch" / "spectral").summary["step"].tolist()
    assert steps[0] == 3 and steps[-1] == 6 and len(steps) >= 3  # snapshots from the split point on


@pytest.mark.slow
def test_two_cpu_processes_train_one_ddp_run(gk, tmp_path):
    """`accelerate launch` with 2 CPU processes trains ONE run (DDP over gloo: one summary, one record,
    snapshots computed by both) with the single-process run's full-batch losses and accuracies."""
    import os
    import subprocess

    from tiny_models import RECIPES, two_cpu_processes

    import hf_spectral

    flags = ["--p", "23", "--train_fraction", "0.5", "--max_steps", "20", "--eval_steps", "10", "--logging_steps", "10",
             "--spectra_schedule", "10", "--disable_tqdm", "true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    command = two_cpu_processes(RECIPES / "grokking.py", *flags, "--output_dir", str(tmp_path / "two"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("== grokking summary") == 1  # rank 1 trains its shard and stays quiet

    gk.main([*flags, "--output_dir", str(tmp_path / "one")])
    two, one = (json.loads((tmp_path / run / "training_log.json").read_text()) for run in ("two", "one"))
    for key in ("loss", "eval_train_accuracy", "eval_val_accuracy"):
        ours, theirs = ([row[key] for row in log if key in row] for log in (two, one))
        assert len(ours) == len(theirs) >= 2
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # the same full-batch gradient, summed in 2 parts

    steps = sorted(p.name for p in (tmp_path / "two" / "spectral").glob("step-*"))
    assert steps == ["step-000000", "step-000010", "step-000020"]
    for step in steps:
        snapshot = hf_spectral.read_snapshot(tmp_path / "two" / "spectral" / step)
        assert snapshot.meta["num_processes"] == 2
