"""Spectral dynamics of a diffusion UNet (paper §3: small UNet, MNIST, AdamW 3e-4, wd 0, ε-prediction).

The loop is diffusers' ``examples/unconditional_image_generation/train_unconditional.py``: a
``UNet2DModel`` and a ``DDPMScheduler`` trained with an ``accelerate.Accelerator`` (gradient
accumulation, ``accelerator.log`` to the trackers of ``--report_to``), with ``hf_spectral.SpectralTracker``
stepping inside it. At the end: a diffusers pipeline folder (``DDPMPipeline.from_pretrained(output_dir)``
loads it, ``hf-spectral analyze output_dir`` reads it), a PNG grid of samples, the spectral report with
the UNet's alignment pairs, the model card and a short summary.

    python recipes/diffusion_unet.py                                   # offline: sklearn digits at 32x32
    accelerate launch recipes/diffusion_unet.py --dataset_name ylecun/mnist --model_preset paper --num_epochs 100
    python recipes/diffusion_unet.py --train_dir my_images/            # any imagefolder
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from PIL import Image

import hf_spectral


@dataclass
class TrainingArguments:
    """The flags of diffusers' train_unconditional.py / transformers' TrainingArguments that this loop uses."""

    output_dir: str = "runs/diffusion_unet"
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps; <= 0: --num_epochs decides."})
    num_epochs: int = field(default=100, metadata={"help": "Used when --max_steps <= 0 (the paper: 100 on MNIST)."})
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    report_to: str = field(default="none", metadata={"help": "accelerate trackers: tensorboard, wandb, all, none."})
    logging_steps: int = 20
    eval_steps: int = 100
    checkpointing_steps: int = field(default=0, metadata={"help": "accelerator.save_state every N steps (0: off)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": 'A checkpoint folder or "latest".'})


@dataclass
class RecipeArguments:
    model_preset: str = field(default="small", metadata={"help": "tiny (tests) | small (default) | paper."})
    dataset_name: str | None = field(default=None, metadata={"help": "datasets.load_dataset name, e.g. ylecun/mnist."})
    dataset_config_name: str | None = None
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder (ignored with --dataset_name)."})
    image_column: str = "image"
    resolution: int = 32
    num_train_timesteps: int = 1000
    sample_steps: int = field(default=50, metadata={"help": "DDIM steps for the sample grid."})
    num_samples: int = 16


PRESETS = {  # block_out_channels, layers per block, attention in the second-lowest resolution
    "tiny": ((8, 16), 1, False),
    "small": ((32, 64, 64), 1, True),
    # the paper's channels 64/128/256/512; time embedding: see recipes/README.md (diffusers' "fourier"
    # embedding is the score-SDE one, log σ in and output / σ, which divides by DDPM's t = 0)
    "paper": ((64, 128, 256, 512), 2, True),
}


def digits_images(resolution: int) -> torch.Tensor:
    """scikit-learn's 1,797 real 8x8 handwritten digits, upsampled to resolution², in [-1, 1]."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def hub_images(args: RecipeArguments) -> torch.Tensor:
    """A datasets image column (``--dataset_name`` or an imagefolder) as one grey resolution² tensor in [-1, 1]."""
    import datasets

    if args.dataset_name is not None:
        ds = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split="train")
    else:
        ds = datasets.load_dataset("imagefolder", data_dir=args.train_dir, split="train")
    if args.image_column not in ds.column_names:
        raise hf_spectral.SpectralError(f"{args.dataset_name or args.train_dir}: no column {args.image_column!r} "
                                        f"(columns: {ds.column_names}); pass --image_column")
    size = (args.resolution, args.resolution)
    arrays = [np.asarray(im.convert("L").resize(size, Image.BILINEAR), dtype=np.float32) for im in ds[args.image_column]]
    return torch.tensor(np.stack(arrays))[:, None] / 127.5 - 1


def load_images(args: RecipeArguments, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) images; 10% held out for the ε-MSE validation loss."""
    images = digits_images(args.resolution) if args.dataset_name is None and args.train_dir is None else hub_images(args)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, len(images) // 10)
    return images[order[n_val:]], images[order[:n_val]]


def make_unet(preset: str, resolution: int) -> UNet2DModel:
    channels, layers, attention = PRESETS[preset]
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention:
        down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=resolution, in_channels=1, out_channels=1, block_out_channels=channels,
                       layers_per_block=layers, down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=min(8, channels[0]), attention_head_dim=channels[-1] // 4 or None)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, scheduler: DDPMScheduler, images: torch.Tensor, seed: int = 0) -> float:
    """ε-prediction MSE on held-out images with fixed noise and timesteps, so that values are comparable over time."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=g)
    model.eval()
    device = next(model.parameters()).device
    losses = [F.mse_loss(model(scheduler.add_noise(x, n, s).to(device), s.to(device)).sample, n.to(device)).item()
              * len(x) for x, n, s in zip(images.split(64), noise.split(64), t.split(64))]
    model.train()
    return float(sum(losses) / len(images))


def save_sample_grid(unet: UNet2DModel, scheduler: DDPMScheduler, path: str, n: int, steps: int, seed: int) -> str:
    """n samples (DDIM, ``steps`` steps, from the DDPM scheduler's config) as one PNG grid."""
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                  output_type="np").images  # (n, h, w, 1) in [0, 1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images.shape[1:3]
    grid = np.ones((rows * (h + 2), cols * (w + 2)), dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = im[..., 0]
    Image.fromarray((grid * 255).round().astype(np.uint8)).resize((grid.shape[1] * 3, grid.shape[0] * 3),
                                                                  Image.NEAREST).save(path)
    return path


def main(argv: list[str] | None = None) -> hf_spectral.RunSummary | None:
    train_args, args, spectral = hf_spectral.parse_recipe_args(
        (TrainingArguments, RecipeArguments, hf_spectral.SpectralArguments), argv,
        defaults={"spectra_alignment": True})  # the UNet's path, skip and time-embedding pairs
    if args.model_preset not in PRESETS:
        raise hf_spectral.SpectralError(f"--model_preset {args.model_preset!r}: choose one of {', '.join(PRESETS)}")
    out = train_args.output_dir
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),  # CPU processes (accelerate launch --multi_gpu) join one gloo group
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision,
        log_with=None if train_args.report_to == "none" else train_args.report_to,
        project_config=ProjectConfiguration(project_dir=out, logging_dir=os.path.join(out, "logs")),
    )
    set_seed(train_args.seed)
    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type}")

    # data
    train_images, val_images = load_images(args, train_args.seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_images),
                                         batch_size=train_args.train_batch_size, shuffle=True, drop_last=True)
    updates_per_epoch = math.ceil(len(loader) / train_args.gradient_accumulation_steps)
    max_steps = train_args.max_steps if train_args.max_steps > 0 else train_args.num_epochs * updates_per_epoch

    # model, noise scheduler, optimizer
    model = make_unet(args.model_preset, args.resolution)
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_args.learning_rate, weight_decay=train_args.weight_decay,
                                  betas=(train_args.adam_beta1, train_args.adam_beta2))
    lr_scheduler = get_scheduler(train_args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=train_args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    if accelerator.is_main_process:
        accelerator.init_trackers("diffusion_unet", config={k: v for k, v in vars(train_args).items()
                                                             if isinstance(v, (int, float, str, bool))})

    global_step = 0
    checkpoints = os.path.join(out, "checkpoints")  # beside the pipeline, so `analyze output_dir` reads the pipeline
    if train_args.resume_from_checkpoint:
        path = train_args.resume_from_checkpoint
        if path == "latest":
            saved = sorted(os.listdir(checkpoints), key=lambda d: int(d.split("-")[1])) if os.path.isdir(checkpoints) else []
            path = os.path.join(checkpoints, saved[-1]) if saved else None
        if path is not None:
            accelerator.load_state(path)
            global_step = int(os.path.basename(path.rstrip("/")).split("-")[1])
            accelerator.print(f"resumed from {path} at step {global_step}")

    tracker = None
    if spectral.track_spectra:
        tracker = hf_spectral.SpectralTracker(os.path.join(out, "spectral"), spectral.spectra_schedule, max_steps=max_steps,
                                              top_k=spectral.spectra_top_k, alignment=spectral.spectra_alignment,
                                              max_overhead=spectral.spectra_max_overhead, accelerator=accelerator)
        tracker.step(model, global_step)  # the initialization (or where the resumed run stands)

    # the loop (diffusers' train_unconditional.py)
    model.train()
    start = time.time()
    running: list[float] = []
    history: list[dict[str, float]] = []  # the loop's log without a record (the tracker's also holds a resumed run's past)
    spectra: dict[str, float] = {}  # the latest spectral scalars, for the console line
    while global_step < max_steps:
        for (clean,) in loader:
            noise = torch.randn_like(clean)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(noisy, timesteps).sample, noise)  # ε-prediction
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            running.append(loss.detach().item())
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            logs: dict[str, float] = {}
            if global_step % train_args.logging_steps == 0 or global_step == max_steps:
                logs = {"loss": float(np.mean(running)), "lr": lr_scheduler.get_last_lr()[0]}
                running = []
            if global_step % train_args.eval_steps == 0 or global_step == max_steps:
                logs["eval_loss"] = validation_loss(model, noise_scheduler, val_images)
            if logs:
                history.append({**logs, "step": global_step})
                accelerator.log(logs, step=global_step)
            if tracker is not None:
                if logs:
                    tracker.log(logs, step=global_step)
                spectra.update(tracker.step(model, global_step) or {})  # scalars also go to accelerator.log
            if logs:
                accelerator.print(hf_spectral.console_line(global_step, {**spectra, **logs}, ["eval_loss"]))
            if train_args.checkpointing_steps > 0 and global_step % train_args.checkpointing_steps == 0:
                accelerator.save_state(os.path.join(checkpoints, f"checkpoint-{global_step}"))
            if global_step >= max_steps:
                break
    if tracker is not None:
        tracker.close()
    accelerator.wait_for_everyone()

    # the pipeline folder, the sample grid, the report and the model card
    summary = None
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(model)
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(out)
        grid = save_sample_grid(unet, noise_scheduler, os.path.join(out, "samples.png"), args.num_samples,
                                args.sample_steps, train_args.seed)
        accelerator.print(f"samples: {grid}")
        data = args.dataset_name or args.train_dir or f"scikit-learn's 1,797 digits upsampled to {args.resolution}²"
        summary = hf_spectral.finish_run(
            out, recipe="diffusion_unet", metric="eval_loss", higher_is_better=False,
            card_fields={
                "model_summary": f"A diffusers `UNet2DModel` trained from scratch as a DDPM (ε-prediction, "
                                 f"{args.num_train_timesteps} timesteps) on {data} by `recipes/diffusion_unet.py` of "
                                 "hf-spectral. Load it with `DDPMPipeline.from_pretrained`; `samples.png` shows samples.",
                "model_type": f"UNet2DModel, channels {unet.config.block_out_channels} ({args.model_preset} preset)",
                "training_details": f"AdamW lr {train_args.learning_rate}, weight decay {train_args.weight_decay} on all "
                                    f"parameters, batch {train_args.train_batch_size}×{train_args.gradient_accumulation_steps}, "
                                    f"{max_steps} steps, {train_args.lr_scheduler} schedule, seed {train_args.seed}."},
            metric_label="validation ε-MSE", alignment=spectral.spectra_alignment, model_card_copy=spectral.model_card_copy,
            train_seconds=time.time() - start, log_history=tracker.history if tracker else history, title=f"Diffusion UNet ({args.model_preset})")
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    hf_spectral.run_main(main)
