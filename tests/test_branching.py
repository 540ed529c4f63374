"""--branch_from / --rewind_to (hf_spectral.ExperimentArguments) with the real Trainer on a tiny model: a branch
resumes weights, optimizer, scheduler and step from a checkpoint, with the data order of its own seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

import hf_spectral
from hf_spectral.recipe_support.branching import branch_data_seed

ROWS, BATCH, STEPS, LR = 64, 8, 24, 0.01  # 8 steps per epoch


class Probe(nn.Module):
    """A linear classifier that remembers the inputs of every training batch (the data order)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.seen: list[np.ndarray] = []

    def forward(self, x, labels=None):
        if self.training:
            self.seen.append(x[:, 0].detach().numpy().copy())
        logits = self.linear(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class AtTrainBegin(TrainerCallback):
    """What the Trainer holds when training starts (after a resume has loaded its state)."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.step = state.global_step
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.exp_avg = {i: s["exp_avg"].clone() for i, s in optimizer.state_dict()["state"].items()}
        self.lr = lr_scheduler.get_last_lr()[0]


def _data():
    import datasets

    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    x[:, 0] = np.arange(ROWS)  # column 0 names the row: the order of the batches is readable
    return datasets.Dataset.from_dict({"x": x.tolist(), "labels": (np.arange(ROWS) % 3).tolist()}).with_format("torch")


def _run(folder, seed=0, experiment=None, **flags):
    """Train Probe for STEPS steps (AdamW, linear decay) and return (trainer, model, train-begin probe)."""
    args = TrainingArguments(output_dir=str(folder), per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
                             lr_scheduler_type="linear", seed=seed, report_to="none", disable_tqdm=True, use_cpu=True,
                             save_strategy="steps", save_steps=flags.pop("save_steps", STEPS), logging_steps=1,
                             dataloader_pin_memory=False, log_level="error", **flags)
    experiment = experiment or hf_spectral.ExperimentArguments()
    experiment.configure(args)
    model, probe = Probe(), AtTrainBegin()
    trainer = Trainer(model=model, args=args, train_dataset=_data(), callbacks=[probe])
    experiment.train(trainer)
    return trainer, model, probe


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trunk")
    _, model, _ = _run(folder, seed=0, save_steps=4)
    return folder, model


def _branch(trunk, tmp_path, name, seed, step=12, **flags):
    return _run(tmp_path / name, seed=seed, experiment=hf_spectral.ExperimentArguments(branch_from=str(trunk[0] / f"checkpoint-{step}")),
                **flags)


def test_branches_diverge_with_their_seeds_and_one_seed_reproduces(trunk, tmp_path):
    _, one, _ = _branch(trunk, tmp_path, "one", seed=1)
    _, again, _ = _branch(trunk, tmp_path, "again", seed=1)
    _, two, _ = _branch(trunk, tmp_path, "two", seed=2)
    w = {name: m.linear.weight.detach().numpy() for name, m in (("one", one), ("again", again), ("two", two), ("trunk", trunk[1]))}
    np.testing.assert_array_equal(w["one"], w["again"])
    assert np.abs(w["one"] - w["two"]).max() > 1e-4 and np.abs(w["one"] - w["trunk"]).max() > 1e-4
    assert _same(one.seen, again.seen) and len(one.seen) == STEPS - 12  # only the remaining steps
    assert any(not np.array_equal(a, b) for a, b in zip(one.seen, two.seen))


def test_a_branch_resumes_weights_optimizer_schedule_and_step(trunk, tmp_path):
    checkpoint = trunk[0] / "checkpoint-12"
    trainer, _, probe = _branch(trunk, tmp_path, "b", seed=1)
    assert probe.step == 12 and trainer.state.global_step == STEPS
    saved = load_file(checkpoint / "model.safetensors")
    for name, value in saved.items():
        np.testing.assert_array_equal(probe.weights[name].numpy(), value.numpy())
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert optimizer and set(optimizer) == set(probe.exp_avg)
    for index, state in optimizer.items():
        assert np.abs(state["exp_avg"].numpy()).max() > 0  # a real moment, not a fresh optimizer's zeros
        np.testing.assert_array_equal(probe.exp_avg[index].numpy(), state["exp_avg"].numpy())
    assert probe.lr == pytest.approx(LR * (1 - 12 / STEPS))  # the linear schedule at step 12, not at 0
    # the branch's record continues the trunk's: its log history holds the trunk's steps before the split
    assert [e["step"] for e in trainer.state.log_history if "loss" in e][:3] == [1, 2, 3]


def test_an_epoch_boundary_branch_draws_its_order_from_its_seed(trunk, tmp_path):
    """Without the seedable sampler the order of an epoch comes from the random state, which the Trainer restores
    from the checkpoint before drawing it: resumed as is, every seed would replay the same order."""
    flags = {"accelerator_config": {"use_seedable_sampler": False}}
    plain = []
    for seed in (1, 2):
        args_dir = tmp_path / f"plain{seed}"
        _, model, _ = _run(args_dir, seed=seed, resume_from_checkpoint=str(trunk[0] / "checkpoint-8"), **flags)
        plain.append(model.seen)
    assert _same(*plain)  # the Trainer's own resume: one order for all seeds
    _, one, _ = _branch(trunk, tmp_path, "one", seed=1, step=8, **flags)
    _, two, _ = _branch(trunk, tmp_path, "two", seed=2, step=8, **flags)
    assert not np.array_equal(one.seen[0], two.seen[0])
    assert sorted(np.concatenate(one.seen[:8])) == list(range(ROWS))  # still one pass over the data per epoch


def test_branch_data_seeds_are_far_apart_and_set_before_the_trainer(trunk, tmp_path):
    # the seedable sampler orders epoch e by data_seed + e: seeds 1 and 2 would share orders one epoch apart
    seeds = [branch_data_seed(s) for s in range(50)]
    assert len(set(seeds)) == 50 and min(abs(a - b) for i, a in enumerate(seeds) for b in seeds[i + 1:]) > 1000
    assert all(0 <= s < 2**31 for s in seeds)
    branch = hf_spectral.ExperimentArguments(branch_from=str(trunk[0] / "checkpoint-8"))
    parsed = TrainingArguments(output_dir=str(tmp_path), seed=7, report_to="none")
    branch.configure(parsed)
    assert parsed.data_seed == branch_data_seed(7)
    chosen = TrainingArguments(output_dir=str(tmp_path), seed=7, data_seed=5, report_to="none")
    branch.configure(chosen)
    assert chosen.data_seed == 5  # an explicit --data_seed wins


def test_rewind_starts_from_the_checkpoint_weights_with_a_fresh_optimizer(trunk, tmp_path):
    checkpoint = trunk[0] / "checkpoint-4"
    trainer, _, probe = _run(tmp_path / "rewound", seed=3, experiment=hf_spectral.ExperimentArguments(rewind_to=str(checkpoint)))
    assert probe.step == 0 and probe.exp_avg == {} and probe.lr == pytest.approx(LR)
    for name, value in load_file(checkpoint / "model.safetensors").items():
        np.testing.assert_array_equal(probe.weights[name].numpy(), value.numpy())
    assert not np.array_equal(Probe().linear.weight.detach().numpy(), probe.weights["linear.weight"].numpy())


def test_a_branch_with_another_optimizer_stops_before_its_first_step(trunk, tmp_path):
    """torch's load_state_dict takes the saved groups' settings: SGD would fail at step 1 with a KeyError."""
    with pytest.raises(hf_spectral.SpectralError) as error:
        _branch(trunk, tmp_path, "sgd", seed=1, optim="sgd")
    message = str(error.value)
    assert message.startswith(f"--branch_from {trunk[0] / 'checkpoint-12'}: its optimizer.pt is another optimizer's (no ")
    assert "momentum" in message and message.endswith("; pass the trunk run's --optim (a branch resumes its optimizer)")
    assert not list((tmp_path / "sgd").glob("checkpoint-*"))  # stopped before step 1


def test_bad_branch_flags_say_what_to_do(trunk, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint=str(trunk[0] / "checkpoint-4"), report_to="none")
    with pytest.raises(hf_spectral.SpectralError, match="pass only one"):
        hf_spectral.ExperimentArguments(branch_from=str(trunk[0] / "checkpoint-8")).configure(args)
    with pytest.raises(hf_spectral.SpectralError, match="no such folder"):
        hf_spectral.ExperimentArguments(rewind_to=str(tmp_path / "nope")).configure(TrainingArguments(output_dir=str(tmp_path)))
    weights_only = tmp_path / "checkpoint-1"
    weights_only.mkdir()
    (weights_only / "model.safetensors").write_bytes((trunk[0] / "checkpoint-4" / "model.safetensors").read_bytes())
    with pytest.raises(hf_spectral.SpectralError, match="save_only_model false"):
        hf_spectral.ExperimentArguments(branch_from=str(weights_only)).configure(TrainingArguments(output_dir=str(tmp_path)))
    wrong = nn.Linear(2, 2)
    with pytest.raises(hf_spectral.SpectralError, match="do not fit this model"):
        hf_spectral.recipe_support.branching.load_weights(wrong, str(trunk[0] / "checkpoint-4"))
    torn = tmp_path / "checkpoint-2"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes((weights_only / "model.safetensors").read_bytes()[:40])  # cut short
    with pytest.raises(hf_spectral.SpectralError, match=r"^--rewind_to .*checkpoint-2/model.safetensors: unreadable weights \(.*\); "
                       "pass an intact checkpoint$"):
        hf_spectral.recipe_support.branching.load_weights(Probe(), str(torn))
