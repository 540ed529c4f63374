"""Tiny real models built from configs, for offline tests (nothing is downloaded).

Each builder returns a freshly initialised model with a fixed seed. ``save_tiny`` writes one with
``save_pretrained`` and a small ``max_shard_size`` so that sharded-index code paths are exercised.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from types import ModuleType
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=99, max_position_embeddings=64,
    )
    return BertForMaskedLM(config)


def tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=3,
    )
    return ViTForImageClassification(config)


def tiny_resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=3,
    )
    return ResNetForImageClassification(config)


def tiny_wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(4, 2), conv_kernel=(5, 3), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, vocab_size=12, do_stable_layer_norm=False,
    )
    return Wav2Vec2ForCTC(config)


def tiny_unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    )


class TinyMLP(nn.Module):
    """A plain sequential MLP (no HF config): the generic fallback path."""

    def __init__(self, sizes: tuple[int, ...] = (12, 16, 16, 5)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyLSTM(nn.Module):
    """A 2-layer bidirectional LSTM with an output linear (the paper's speech model, shrunk)."""

    def __init__(self, n_in: int = 8, hidden: int = 6, n_out: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(x)[0])


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "gpt2": tiny_gpt2,
    "bert": tiny_bert,
    "vit": tiny_vit,
    "resnet": tiny_resnet,
    "wav2vec2": tiny_wav2vec2,
    "unet": tiny_unet,
}


def build_tiny(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def save_tiny(name: str, directory: Path, seed: int = 0, max_shard_size: str = "20KB") -> nn.Module:
    """Build ``name`` and save it with ``save_pretrained`` in small shards; returns the model."""
    model = build_tiny(name, seed)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return model


def save_ddpm_pipeline(directory: Path, seed: int = 0, variant: str | None = None) -> nn.Module:
    """A diffusers pipeline folder (model_index.json, unet/, scheduler/); returns the UNet."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = build_tiny("unet", seed)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(directory, variant=variant)
    return unet


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fake_hub_cache(cache: Path, repo_id: str, revisions: dict[str, Path], refs: dict[str, str]) -> dict[str, str]:
    """A real huggingface_hub cache layout: ``blobs/<hash>``, ``snapshots/<commit>/...`` symlinks,
    ``refs/<name>`` -> commit. ``revisions``: commit -> local folder to publish; ``refs``: name -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, folder in revisions.items():
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = f.read_bytes()
            lfs = f.suffix in (".safetensors", ".bin")
            blob = hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data)
            (repo / "blobs" / blob).write_bytes(data)
            link = repo / "snapshots" / commit / f.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for name, commit in refs.items():
        (repo / "refs" / name).write_text(commit)
    return dict(refs)


def private_module_cache_fixture():  # type: ignore[no-untyped-def]
    """A module-scoped autouse fixture pointing hf_spectral's on-disk module-info cache at a temporary
    folder: tests neither read nor write ``~/.cache/hf_spectral``. Use as
    ``private_module_cache = private_module_cache_fixture()`` in a test module."""
    import pytest

    @pytest.fixture(autouse=True, scope="module")
    def private_module_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_SPECTRAL_CACHE", str(tmp_path_factory.mktemp("module_cache")))
            yield

    return private_module_cache


def saved_tiny_fixture(name: str):  # type: ignore[no-untyped-def]
    """A module-scoped fixture: the tiny ``name`` model saved with ``save_pretrained`` in a fresh folder
    (tests copy it before damaging it). Use as ``gpt2_dir = saved_tiny_fixture("gpt2")``."""
    import pytest

    @pytest.fixture(scope="module")
    def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
        folder = tmp_path_factory.mktemp("pristine") / name
        save_tiny(name, folder)
        return folder

    return saved


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str = "grokking") -> ModuleType:
    """``recipes/<name>.py`` imported as a module (recipes are scripts, not a package), once per session:
    dataclasses resolve their module by name, and the grokking recipe registers its config with AutoConfig."""
    module_name = f"{name.replace('/', '_')}_recipe"  # paper/truncation -> paper_truncation_recipe
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def two_cpu_processes(script: Path | str, *script_args: str) -> list[str]:
    """``accelerate launch`` of ``script`` as 2 CPU processes. Its ``--cpu`` launcher starts one process
    unless MPI is installed; the torchrun launcher (``--multi_gpu``) starts two, which join a gloo group."""
    import socket

    with socket.socket() as s:  # a free port: parallel test workers must not share a rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), str(script), *script_args,
    ]
