"""--branch_from / --rewind_to end to end through recipes/image_classification.py and recipes/gpt2_lm.py: their
``main``, offline, tiny. A trunk saves full checkpoints; branches of its step-4 checkpoint diverge by seed and
reproduce bit for bit, start from the checkpoint's weights, optimizer moments and step, continue its log history
and write their own record from step 4 on, leaving the trunk's folder untouched; a rewound run starts at step 0
from the checkpoint's weights with a fresh optimizer. Weights are read back with safetensors' numpy loader,
spectra checked against float64 numpy SVDs. Bad checkpoints get one line naming the folder and the fix."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tiny_models import load_recipe
from transformers import TrainerCallback

import hf_spectral

SPLIT, STEPS, SEED = 4, 8, 1  # branches of checkpoint-4 train to step 8 with seeds 1 (twice) and 2
SCHEDULE = ["--spectra_schedule", "0,2,4,6,8", "--logging_steps", "1", "--disable_tqdm", "true"]


@dataclass(frozen=True)
class Setting:
    """A recipe's tiny flags, a matrix to check in its record, and model flags that make another architecture
    (one that changes which tensors there are, one that changes their shapes)."""

    flags: tuple[str, ...]
    matrix: str
    other_layers: tuple[str, ...]
    other_shapes: tuple[str, ...]


SETTINGS = {
    # the paper's MLP with AdamW (moments to compare) on 54 digits of 16x16: 7 steps per epoch, so step 4 is mid-epoch
    "image_classification": Setting(
        ("--model_type", "mlp", "--optim", "adamw_torch", "--max_train_samples", "60", "--image_size", "16",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32", "--logging_strategy", "steps",
         "--split_seed", "42"),  # the trunk's split in every branch (--split_seed defaults to --seed)
        "layers.1.weight", ("--model_type", "vgg"), ("--image_size", "8")),
    # GPT-2 with dropout: a branch's seed changes its dropout masks as well as its data order
    "gpt2_lm": Setting(
        ("--n_layer", "2", "--n_embd", "32", "--n_head", "2", "--block_size", "32", "--vocab_size", "320",
         "--per_device_train_batch_size", "4", "--eval_steps", "4", "--max_eval_samples", "32", "--report_to", "none"),
        "transformer.h.0.mlp.c_fc.weight", ("--n_layer", "3"), ("--n_embd", "48")),
}


class Probe(TrainerCallback):
    """What the Trainer holds when training starts, after a resume or a rewind has loaded its state."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.step = state.global_step
        self.weights = {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}
        self.moments = {index: {key: value.clone() for key, value in entry.items()}  # state_dict() shares the tensors
                        for index, entry in optimizer.state_dict()["state"].items()}

    def on_train_end(self, args, state, control, **kwargs):
        self.losses = {row["step"]: row["loss"] for row in state.log_history if "loss" in row}  # by step


@dataclass
class Run:
    out: Path
    probe: Probe
    finish: dict  # what main handed to finish_run


@dataclass
class Trunk:
    recipe: ModuleType
    setting: Setting
    root: Path
    flags: list[str]
    trunk_run: Run | None = None
    branches: dict[str, Run] = field(default_factory=dict)
    digests: tuple[str, str] = ("", "")  # the trunk folder before and after the branches ran

    @property
    def out(self) -> Path:
        return self.root / "trunk"

    @property
    def checkpoint(self) -> Path:
        return self.out / f"checkpoint-{SPLIT}"

    def run(self, name: str, *flags: str) -> Run:
        """The recipe's main with the tiny flags and a Probe on its Trainer, without its report and card: their
        plots take 90% of a tiny run (~20 s), and the recipes' smoke tests check them."""
        probe, out, finish = Probe(), self.root / name, {}

        class ProbedTrainer(self.recipe.Trainer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.add_callback(probe)

        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
            patch.setattr(self.recipe, "Trainer", ProbedTrainer)
            patch.setattr(hf_spectral, "finish_run", lambda *args, **kwargs: finish.update(kwargs))
            self.recipe.main([*self.flags, *flags, "--max_steps", str(STEPS), "--output_dir", str(out)])
        return Run(out, probe, finish)


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(str(p.relative_to(folder)).encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def trunk(request, tmp_path_factory) -> Trunk:
    """A tracked trunk run saving full checkpoints every 4 steps, then three branches of its checkpoint-4."""
    root = tmp_path_factory.mktemp(request.param)
    flags = [*SETTINGS[request.param].flags, *SCHEDULE]
    if request.param == "gpt2_lm":
        from test_recipe_gpt2_lm import documentation_text

        (root / "corpus").mkdir()
        lines = documentation_text()
        (root / "corpus" / "train.txt").write_text("".join(lines[:2000]))
        (root / "corpus" / "validation.txt").write_text("".join(lines[3000:3200]))
        flags += ["--dataset_name", str(root / "corpus")]
    trunk = Trunk(load_recipe(request.param), SETTINGS[request.param], root, flags)
    trunk.trunk_run = trunk.run("trunk", "--save_strategy", "steps", "--save_steps", str(SPLIT), "--save_only_model", "false")
    before = _digest(trunk.out)
    branch = ("--branch_from", str(trunk.checkpoint))
    trunk.branches = {"one": trunk.run("one", *branch, "--seed", str(SEED)),
                      "again": trunk.run("again", *branch, "--seed", str(SEED), "--track_spectra", "false"),
                      "two": trunk.run("two", *branch, "--seed", str(SEED + 1), "--track_spectra", "false")}
    trunk.digests = (before, _digest(trunk.out))
    return trunk


def _singular_values(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix.astype(np.float64), compute_uv=False)


def test_branches_diverge_by_seed_and_one_seed_reproduces(trunk):
    weights = {name: load_file(run.out / "model.safetensors") for name, run in trunk.branches.items()}
    weights["trunk"] = load_file(trunk.out / "model.safetensors")
    assert weights["one"].keys() == weights["again"].keys() == weights["two"].keys()
    for name in weights["one"]:  # the same seed twice (tracked and not): bit for bit
        np.testing.assert_array_equal(weights["one"][name], weights["again"][name])

    def gap(a: str, b: str) -> float:
        return max(float(np.abs(weights[a][n] - weights[b][n]).max()) for n in weights["one"])

    assert gap("one", "two") > 1e-5 and gap("one", "trunk") > 1e-5  # another seed, another path after step 4


def test_a_branch_starts_from_the_checkpoint_weights_optimizer_and_step(trunk):
    probe = trunk.branches["one"].probe
    assert probe.step == SPLIT
    saved = load_file(trunk.checkpoint / "model.safetensors")
    assert set(saved) <= set(probe.weights)
    for name, value in saved.items():
        np.testing.assert_array_equal(probe.weights[name], value)
    optimizer = torch.load(trunk.checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert optimizer and set(optimizer) == set(probe.moments)
    for index, entry in optimizer.items():
        assert float(entry["step"]) == SPLIT and np.abs(entry["exp_avg"].numpy()).max() > 0  # AdamW's, after 4 steps
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(probe.moments[index][key].numpy(), entry[key].numpy())
    state = json.loads((trunk.checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == SPLIT
    finish = trunk.branches["one"].finish  # the summary's step count and the card tell where the branch began
    assert finish["start_step"] == SPLIT and f"as a branch of {trunk.checkpoint}" in finish["card_fields"]["model_summary"]
    # the branch's log history continues the trunk's: its steps 1-4, then its own
    trunk_losses, one, two = (run.probe.losses for run in (trunk.trunk_run, trunk.branches["one"], trunk.branches["two"]))
    assert sorted(one) == list(range(1, STEPS + 1))
    assert [one[s] for s in range(1, SPLIT + 1)] == [trunk_losses[s] for s in range(1, SPLIT + 1)]
    assert one[SPLIT + 1] != trunk_losses[SPLIT + 1] and one[SPLIT + 1] != two[SPLIT + 1]
    recorded = json.loads((trunk.branches["one"].out / "spectral" / "log_history.json").read_text())
    assert {row["step"]: row["loss"] for row in recorded if "loss" in row} == one  # the record keeps the same history


def test_a_branch_records_from_the_split_on_and_leaves_the_trunk_alone(trunk):
    one = trunk.branches["one"]
    branch_steps = hf_spectral.dynamics_from_source(one.out / "spectral").steps
    assert branch_steps == [SPLIT, 6, 8]
    assert hf_spectral.dynamics_from_source(trunk.out / "spectral").steps == [0, 2, 4, 6, 8]
    assert trunk.digests[0] == trunk.digests[1]  # nothing of the branches written into the trunk's folder
    assert (one.out / "branch_point").is_dir() and not (trunk.out / "branch_point").exists()
    name = trunk.setting.matrix
    at_split = hf_spectral.read_snapshot(one.out / "spectral" / "step-000004").spectra[name]
    np.testing.assert_allclose(at_split, _singular_values(load_file(trunk.checkpoint / "model.safetensors")[name]), rtol=1e-5)
    ends = {run: hf_spectral.read_snapshot(folder / "spectral" / "step-000008").spectra[name]
            for run, folder in (("trunk", trunk.out), ("one", one.out))}
    for run, folder in (("trunk", trunk.out), ("one", one.out)):  # each record holds its own run's final weights
        np.testing.assert_allclose(ends[run], _singular_values(load_file(folder / "model.safetensors")[name]), rtol=1e-5)
    assert np.abs(ends["trunk"] - ends["one"]).max() > 1e-6


def test_rewind_starts_at_step_0_from_the_checkpoint_weights_with_a_fresh_optimizer(trunk):
    rewound = trunk.run("rewound", "--rewind_to", str(trunk.checkpoint), "--seed", "3")
    probe, saved = rewound.probe, load_file(trunk.checkpoint / "model.safetensors")
    assert probe.step == 0 and probe.moments == {} and rewound.finish["start_step"] == 0
    assert f"from the weights of {trunk.checkpoint}" in rewound.finish["card_fields"]["model_summary"]
    for name, value in saved.items():
        np.testing.assert_array_equal(probe.weights[name], value)
    assert sorted(probe.losses) == list(range(1, STEPS + 1))  # all 8 steps trained, none of the trunk's logged
    steps = hf_spectral.dynamics_from_source(rewound.out / "spectral").steps
    assert steps == [0, 2, 4, 6, 8]
    name = trunk.setting.matrix
    at_start = hf_spectral.read_snapshot(rewound.out / "spectral" / "step-000000").spectra[name]
    np.testing.assert_allclose(at_start, _singular_values(saved[name]), rtol=1e-5)


def test_bad_checkpoints_get_one_line_naming_the_folder_and_the_fix(trunk, tmp_path):
    missing = tmp_path / "no-run" / "checkpoint-4"
    for flag in ("--branch_from", "--rewind_to"):
        with pytest.raises(hf_spectral.SpectralError) as error:
            trunk.run("missing", flag, str(missing))
        assert str(error.value) == f"{flag} {missing}: no such folder; pass a Trainer checkpoint such as run/checkpoint-100"
    with pytest.raises(hf_spectral.SpectralError) as error:  # e.g. image_classification's default --output_dir
        trunk.run("trunk", "--branch_from", str(trunk.checkpoint))
    assert str(error.value) == (f"--branch_from {trunk.checkpoint}: it lies in --output_dir {trunk.out}, where the new run "
                                "would overwrite its trunk's model, record and later checkpoints; pass a new --output_dir")
    for flag, model in (("--branch_from", trunk.setting.other_layers), ("--rewind_to", trunk.setting.other_shapes)):
        with pytest.raises(hf_spectral.SpectralError) as error:
            trunk.run("other", flag, str(trunk.checkpoint), *model)
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{flag} {trunk.checkpoint}: its weights do not fit this model")
        assert message.endswith("pass the model flags of the run that saved it, or a checkpoint of this model")
        assert (" there, " in message) if flag == "--rewind_to" else ("lacks" in message or "entries" in message)
    assert not (trunk.root / "other" / "model.safetensors").exists()  # stopped before training
