"""SpectralTracker driving a hand-written accelerate loop (diffusers UNet, ε-prediction), logging through
``accelerator.log``; a resumed loop continues the record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny  # noqa: E402

from hf_spectral import SpectralError, SpectralTracker  # noqa: E402
from hf_spectral.store import read_snapshot  # noqa: E402
from hf_spectral.tracking import log_spaced_steps  # noqa: E402

pytestmark = pytest.mark.slow



def list_tracker():
    from accelerate.tracking import GeneralTracker

    class ListTracker(GeneralTracker):
        """Keeps what accelerator.log sends, in memory."""

        name = "list"
        requires_logging_directory = False

        def __init__(self) -> None:
            super().__init__()
            self.logged: list[tuple[int, dict]] = []

        @property
        def tracker(self):
            return self.logged

        def store_init_configuration(self, values: dict) -> None:
            pass

        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            self.logged.append((step, dict(values)))

    return ListTracker()


def np_sigma(weight: np.ndarray) -> np.ndarray:
    matrix = weight.reshape(weight.shape[0], -1).astype(np.float64)  # conv (out, in, kh, kw) -> (out, in·kh·kw)
    return np.linalg.svd(matrix, compute_uv=False)


def train_unet(record: Path, steps: range, tracker_args: dict, max_steps: int = 12):
    """A DDPM-style loop; returns the tracker, what accelerator.log got, and the weights at scheduled steps."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    logs = list_tracker()
    accelerator = Accelerator(cpu=True, log_with=[logs])
    accelerator.init_trackers("unet")
    torch.manual_seed(0)
    model = build_tiny("unet").train()
    if steps.start > 0:  # resuming: the weights saved at that step
        model.load_state_dict(torch.load(record.parent / f"unet-{steps.start}.pt"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = DDPMScheduler(num_train_timesteps=100)
    tracker = SpectralTracker(record, max_steps=max_steps, accelerator=accelerator,
                              **{"max_overhead": None, **tracker_args})  # every scheduled step
    tracker.step(model, steps.start)
    weights = {}
    generator = torch.Generator().manual_seed(steps.start)
    for step in steps:
        clean = torch.randn(4, 1, 16, 16, generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, 100, (4,), generator=generator)
        loss = F.mse_loss(model(scheduler.add_noise(clean, noise, t), t).sample, noise)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        tracker.log({"loss": loss.item()}, step + 1)
        if tracker.schedule.is_due(step + 1, max_steps):
            weights[step + 1] = {k: v.detach().clone().numpy() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        tracker.step(model, step + 1)
        if step + 1 == 6:
            torch.save(accelerator.unwrap_model(model).state_dict(), record.parent / "unet-6.pt")
    tracker.close()
    accelerator.end_training()
    return tracker, logs.logged, weights


def test_tracker_in_a_handwritten_accelerate_loop(tmp_path):
    record = tmp_path / "spectral"
    tracker, logged, weights = train_unet(record, range(0, 12), {"top_k": 2})

    planned = log_spaced_steps(12)
    assert sorted(int(p.name[5:]) for p in record.glob("step-*")) == planned
    # every snapshot went to accelerator.log at its step, with the per-layer and summary scalars
    spectral = [(step, values) for step, values in logged if "spectral/mean_erank" in values]
    assert [step for step, _ in spectral] == planned
    assert "spectral/erank/conv_in.weight" in spectral[0][1]
    # tracker.log forwards the loop's own metrics to accelerator.log, at their steps
    assert [step for step, values in logged if "loss" in values] == list(range(1, 13))
    assert all(set(values) == {"loss"} for _, values in logged if "loss" in values)

    for step, state in weights.items():
        snapshot = read_snapshot(record / f"step-{step:06d}")
        assert snapshot.meta["step"] == step and snapshot.meta["producer"] == "SpectralTracker"
        for name, weight in state.items():
            if weight.ndim >= 2:
                reference = np_sigma(weight)
                np.testing.assert_allclose(snapshot.spectra[name], reference, rtol=0, atol=1e-6 * reference[0])
        values = dict(spectral)[step]
        assert values["spectral/sigma_max/conv_out.weight"] == pytest.approx(np_sigma(state["conv_out.weight"])[0], rel=1e-6)

    history = json.loads((record / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 13))  # the loop's own metrics
    assert [e["step"] for e in history if "spectral/mean_erank" in e] == planned


def test_resumed_loop_continues_the_record(tmp_path):
    record = tmp_path / "spectral"
    train_unet(record, range(0, 12), {"top_k": 2})
    before = (record / "step-000006" / "meta.json").read_text()
    # resume from the weights saved at step 6 (the run's later snapshots belong to the abandoned branch)
    tracker, logged, _ = train_unet(record, range(6, 12), {"top_k": 2})
    planned = log_spaced_steps(12)
    assert sorted(int(p.name[5:]) for p in record.glob("step-*")) == planned
    assert (record / "step-000006" / "meta.json").read_text() == before
    spectral = [(step, values) for step, values in logged if "spectral/mean_erank" in values]
    assert [step for step, _ in spectral] == [s for s in planned if s > 6]
    assert "spectral/mean_agreement" in spectral[0][1]  # compared with step 6, read back from disk
    history = json.loads((record / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 13))
    assert [e["step"] for e in history if "spectral/mean_erank" in e] == planned


def test_tracker_misconfiguration_fails_at_the_first_step(tmp_path):
    tracker = SpectralTracker(tmp_path / "spectral", include="^nothing$")
    with pytest.raises(SpectralError, match="select no weight matrix"):
        tracker.step(build_tiny("unet"), 0)
    with pytest.raises(SpectralError, match="not a valid regular expression"):
        SpectralTracker(tmp_path / "spectral", exclude="(")


def test_snapshots_leave_the_model_mode_and_random_state_alone(tmp_path):
    def measure(model):
        model.eval()  # a measure may switch modes and draw random numbers
        return {"draw": float(torch.rand(1)) + float(np.random.rand())}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).train()
    tracker = SpectralTracker(tmp_path / "spectral", schedule=[0], top_k=2, extra_measures={"m": measure})
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    weights = [p.detach().clone() for p in model.parameters()]
    scalars = tracker.step(model, 0)
    assert "spectral/m/draw" in scalars
    assert all(module.training for module in model.modules())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
