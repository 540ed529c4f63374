"""recipes/diffusion_unet.py end to end, offline, in seconds: a tiny UNet on the digits and on a local
imagefolder stand-in; asserts on what the run wrote (record, report, card, pipeline folder, sample grid)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import load_recipe

import hf_spectral

TINY = ["--model_preset", "tiny", "--resolution", "16", "--max_steps", "6", "--logging_steps", "2", "--eval_steps", "3",
        "--sample_steps", "2", "--num_samples", "4", "--spectra_schedule", "0,1,3,6"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("unet") / "run"
    summary = load_recipe("diffusion_unet").main(["--output_dir", str(out), *TINY])
    return out, summary


def test_record_report_card_and_metric(run):
    out, summary = run
    dyn = hf_spectral.dynamics_from_source(out / "spectral")
    assert list(dyn.summary["step"]) == [0, 1, 3, 6]
    assert (out / "report" / "index.html").is_file()
    assert "spectral" in (out / "README.md").read_text().lower()
    history = json.loads((out / "spectral" / "log_history.json").read_text())
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e]
    assert len(eval_losses) == 2 and all(math.isfinite(v) and v > 0 for v in eval_losses)
    # the UNet's alignment pairs as the registry defines them: the path, the skip concatenations, time embedding
    pairs = set(dyn.alignment_scores["pair"])
    assert any(p.endswith("[skip]") for p in pairs) and any(p.endswith("[hidden]") for p in pairs)
    assert "conv_in → up_blocks.1.resnets.1.conv1[skip]" in pairs
    assert "time_embedding.linear_1 → time_embedding.linear_2" in pairs


def test_saved_pipeline_loads_and_denoises_one_step(run):
    from diffusers import DDPMPipeline

    out, _ = run
    pipe = DDPMPipeline.from_pretrained(out)
    pipe.scheduler.set_timesteps(10)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = pipe.scheduler.timesteps[0]
    with torch.no_grad():
        eps = pipe.unet(x, t).sample
    prev = pipe.scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert prev.shape == x.shape and torch.isfinite(prev).all() and not torch.equal(prev, x)
    # the final snapshot holds the saved weights' spectrum (an independent float64 SVD of conv_in, flattened)
    w = pipe.unet.conv_in.weight.detach().double().flatten(1).numpy()
    final = hf_spectral.dynamics_from_source(out / "spectral").singular_values
    sigma = final[(final["step"] == 6) & (final["matrix"] == "conv_in.weight")].sort_values("index")["sigma"]
    np.testing.assert_allclose(sigma.to_numpy(), np.linalg.svd(w, compute_uv=False), rtol=1e-5)


def test_analyze_reads_the_pipeline_folder(run):
    out, _ = run
    snap = hf_spectral.analyze(out, alignment=True, progress=False)
    names = set(snap.table["name"])
    assert "unet/conv_in.weight" in names and "unet/up_blocks.1.resnets.1.conv1.weight" in names
    assert any(label.endswith("[skip]") for label in snap.alignment["label"])


def test_sample_grid_png(run):
    out, _ = run
    grid = Image.open(out / "samples.png")
    assert grid.size == (3 * 2 * (16 + 2), 3 * 2 * (16 + 2))  # 4 samples in a 2x2 grid, 1-px borders, x3


def test_imagefolder_stand_in_resume_and_presets(tmp_path):
    """--train_dir (an imagefolder) end to end; then --resume_from_checkpoint latest continues the run and its record."""
    module = load_recipe("diffusion_unet")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    common = ["--output_dir", str(out), "--train_dir", str(folder), "--train_batch_size", "4", "--model_preset", "tiny",
              "--resolution", "16", "--logging_steps", "2", "--eval_steps", "2", "--sample_steps", "2",
              "--num_samples", "4", "--spectra_schedule", "0,2,4,6"]
    module.main([*common, "--max_steps", "4", "--checkpointing_steps", "2"])
    assert (out / "model_index.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    module.main([*common, "--max_steps", "6", "--resume_from_checkpoint", "latest"])
    assert list(hf_spectral.dynamics_from_source(out / "spectral").summary["step"]) == [0, 2, 4, 6]
    steps = [e["step"] for e in json.loads((out / "training_log.json").read_text()) if "eval_loss" in e]
    assert steps == [2, 4, 6]  # the resumed run's log continues the first one's
    paper = module.make_unet("paper", 32)
    assert paper.config.block_out_channels == (64, 128, 256, 512) and paper.config.layers_per_block == 2
    with pytest.raises(hf_spectral.SpectralError, match="model_preset"):
        module.main(["--output_dir", str(tmp_path / "bad"), "--model_preset", "huge"])


@pytest.mark.slow
def test_two_cpu_processes_train_one_run(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPUs: one gloo DDP run, one record, one summary."""
    import os
    import subprocess

    from tiny_models import RECIPES, two_cpu_processes

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(two_cpu_processes(RECIPES / "diffusion_unet.py", "--output_dir", str(out), *TINY),
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es), DistributedType.MULTI_CPU" in proc.stdout
    assert proc.stdout.count("== diffusion_unet summary") == 1
    assert list(hf_spectral.dynamics_from_source(out / "spectral").summary["step"]) == [0, 1, 3, 6]
