#!/usr/bin/env python
"""Grokking modular arithmetic with a 1-layer Transformer, tracked by hf_spectral.

Reproduces the grokking experiment of Yunis et al., "Approaching Deep Learning through the
Spectral Dynamics of Weights" (arXiv 2408.11804): a 1-layer Transformer trained full batch on
30% of all pairs (a, b) of a + b mod 113 with AdamW and weight decay 1.0 first memorizes the
training set, and much later generalizes; the paper reports that the validation jump coincides
with a drop of the effective rank of every weight matrix, and that without weight decay neither
happens. The run ends with the dynamics report (HTML + PNG) and a printed summary: when validation
accuracy crossed 90%, when the mean effective rank fell fastest, the two side by side.

    python recipes/grokking.py                                  # CPU demo: p=113, 40%, lr 3e-3 (~3.5 min, `make demo`)
    python recipes/grokking.py --preset demo --weight_decay 0   # control: no grokking, no rank collapse
    python recipes/grokking.py --preset paper                   # the paper's setting (40k steps)
    accelerate launch recipes/grokking.py --preset paper        # same, on whatever accelerate sees

The file reads top to bottom: arguments, data, model, training, report.
"""

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import datasets
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    HfArgumentParser,
    PretrainedConfig,
    PreTrainedModel,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.modeling_outputs import CausalLMOutput

import hf_spectral
from hf_spectral.errors import SpectralError

try:  # transformers >= 5: init functions that leave weights loaded by from_pretrained alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init


# ------------------------------------------------------------------------------------------------
# 1. Arguments
# ------------------------------------------------------------------------------------------------

# The paper's setting (authors' code: modular_addition/, sweep modadd_tfmr_113_nolayernorm_wd).
PAPER = dict(
    operation="add",
    p=113,
    train_fraction=0.3,
    layer_norm=False,
    learning_rate=1e-3,
    weight_decay=1.0,
    warmup_steps=0,  # the authors' grokking runs use a constant lr without warmup
    batch_size=0,  # 0 = full batch
    max_steps=40_000,
    eval_steps=100,  # authors evaluate and checkpoint every 100 steps
    spectra_schedule="100",
)
PRESETS = {
    "paper": PAPER,
    # Controls of the paper (§4 finding 3): no weight decay; 90% of the data without weight decay.
    "control_no_wd": {**PAPER, "weight_decay": 0.0},
    "control_90": {**PAPER, "train_fraction": 0.9, "weight_decay": 0.0},
    # Closest to the paper that groks reliably in ~5 min on 2 CPU cores (docs/grokking.md).
    # Only two changes: 40% of the pairs (not 30%) and lr 3e-3 (not 1e-3); groks at ~1,200 steps.
    "demo": {
        **PAPER,
        "train_fraction": 0.4,
        "learning_rate": 3e-3,
        "max_steps": 2500,
        "eval_steps": 25,
        "spectra_schedule": "25",  # a snapshot at every evaluation: ~3% of the run's time
    },
    # Thilak et al.'s Slingshot setting as run by the authors (modadd_tfmr_97_slingshot): LayerNorm
    # kept, minibatches of 512, no weight decay, 10 warmup steps. The authors ran 100k epochs;
    # here max_steps counts optimizer steps.
    "slingshot": {
        **PAPER,
        "p": 97,
        "train_fraction": 0.7,
        "layer_norm": True,
        "weight_decay": 0.0,
        "batch_size": 512,
        "warmup_steps": 10,
        "max_steps": 100_000,
    },
}

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, -1, p)) % p,  # b != 0, p prime
    "x2_xy_y2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "x2_y2": lambda a, b, p: (a * a + b * b) % p,
    "x3_xy": lambda a, b, p: (a**3 + a * b) % p,
}
FORMULAS = {"add": "a + b", "sub": "a − b", "mul": "a · b", "div": "a / b", "x2_xy_y2": "a² + ab + b²",
            "x2_y2": "a² + b²", "x3_xy": "a³ + ab"}  # for titles


@dataclass
class GrokkingArguments:
    """Command-line arguments. `None` means "take it from the preset"; explicit flags win."""

    preset: str = field(default="demo", metadata={"help": "Base setting.", "choices": sorted(PRESETS)})
    # data
    operation: str | None = field(default=None, metadata={"help": "a∘b mod p.", "choices": sorted(OPERATIONS)})
    p: int | None = field(default=None, metadata={"help": "The modulus (prime for div)."})
    train_fraction: float | None = field(default=None, metadata={"help": "Share of all pairs used for training."})
    split_seed: int | None = field(default=None, metadata={"help": "Seed of the train/val split (default: seed)."})
    # model
    num_layers: int = 1
    d_model: int = 128
    num_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool | None = field(default=None, metadata={"help": "Keep pre-LayerNorms (paper: removed)."})
    positions: str = field(default="sinusoidal", metadata={"choices": ["sinusoidal", "learned"]})
    # optimization
    learning_rate: float | None = None
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW decay, applied to ALL parameters."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    warmup_steps: int | None = None
    max_steps: int | None = None
    batch_size: int | None = field(default=None, metadata={"help": "Examples per step; 0 = full batch."})
    seed: int = 0
    # logging and saving
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate (val + train) every N steps."})
    save_steps: int = field(default=0, metadata={"help": "Save a checkpoint every N steps (0: final model only)."})
    output_dir: str | None = field(default=None, metadata={"help": "Default: runs/grokking_<preset>_seed<seed>."})
    report_to: str = field(default="none", metadata={"help": "Trainer loggers, e.g. tensorboard."})
    disable_tqdm: bool = False
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads per process (0: torch's default)."})
    use_cpu: bool | None = field(
        default=None,
        metadata={"help": "Train on CPU. Default: when torch sees no GPU/accelerator, so that several CPU processes "
                  "(torchrun, accelerate launch --multi_gpu) train as one DDP run over gloo."},
    )
    # spectral tracking (hf_spectral.SpectralCallback)
    track_spectra: bool = True
    spectra_schedule: str | None = field(default=None, metadata={"help": '"log", N (every N steps) or "a,b,c".'})
    spectra_top_k: int | None = field(default=None, metadata={"help": "Singular vectors kept per matrix."})


def parse_args(argv: list[str] | None = None) -> GrokkingArguments:
    """Parse the command line (or `argv`) and fill unset fields from the preset."""
    (args,) = HfArgumentParser(GrokkingArguments).parse_args_into_dataclasses(args=argv)
    preset = PRESETS[args.preset]
    args = dataclasses.replace(args, **{k: v for k, v in preset.items() if getattr(args, k) is None})
    if args.split_seed is None:
        args.split_seed = args.seed  # as the authors: one seed for split and init
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", f"grokking_{args.preset}_seed{args.seed}")
    if args.spectra_schedule is None:
        args.spectra_schedule = "log"
    return args


# ------------------------------------------------------------------------------------------------
# 2. Data: every pair (a, b) as the sequence [a, b, =], target a∘b mod p at the last position
# ------------------------------------------------------------------------------------------------


def make_dataset(operation: str, p: int, train_fraction: float, split_seed: int) -> datasets.DatasetDict:
    """All pairs of `operation` mod `p` with a random train/validation split of `train_fraction`."""
    if operation not in OPERATIONS:
        raise SpectralError(f"--operation {operation!r}: choose one of {sorted(OPERATIONS)}")
    if p < 2:
        raise SpectralError(f"--p {p}: the modulus must be at least 2")
    if operation == "div" and any(p % d == 0 for d in range(2, math.isqrt(p) + 1)):
        raise SpectralError(f"--p {p}: division needs a prime modulus (every b != 0 invertible)")
    if not 0.0 < train_fraction < 1.0:
        raise SpectralError(f"--train_fraction {train_fraction}: must lie strictly between 0 and 1")
    op = OPERATIONS[operation]
    b_values = range(1, p) if operation == "div" else range(p)
    pairs = [(a, b) for a in range(p) for b in b_values]
    equals = p  # token id of "="; the number tokens are 0 .. p-1
    data = datasets.Dataset.from_dict(
        {
            "a": [a for a, _ in pairs],
            "b": [b for _, b in pairs],
            "input_ids": [[a, b, equals] for a, b in pairs],
            "labels": [op(a, b, p) for a, b in pairs],
        }
    )
    # Same split as the authors' code: shuffle all pairs with Python's RNG, take the first part.
    order = list(range(len(pairs)))
    random.Random(split_seed).shuffle(order)
    n_train = int(train_fraction * len(pairs))
    if n_train == 0 or n_train == len(pairs):
        raise SpectralError(f"--train_fraction {train_fraction}: leaves an empty split of {len(pairs)} pairs")
    return datasets.DatasetDict(
        {"train": data.select(order[:n_train]), "validation": data.select(order[n_train:])}
    )


class FullBatch(torch.utils.data.Dataset):
    """A "dataset" whose every item is the same ready batch: full-batch training without collation.

    Each process holds its own equal-size shard of the split (padded with ignored labels), so under
    `accelerate launch` the gradients averaged over processes are the full-batch gradient.
    """

    def __init__(self, split: datasets.Dataset, length: int, process_index: int = 0, num_processes: int = 1):
        input_ids = torch.tensor(split["input_ids"], dtype=torch.long)
        labels = torch.tensor(split["labels"], dtype=torch.long)
        shard = math.ceil(len(labels) / num_processes)
        pad = shard * num_processes - len(labels)
        if pad:  # -100 is ignored by the loss and by the accuracy
            input_ids = torch.cat([input_ids, input_ids[:pad]])
            labels = torch.cat([labels, torch.full((pad,), -100, dtype=torch.long)])
        rows = slice(process_index * shard, (process_index + 1) * shard)
        self.batch = {"input_ids": input_ids[rows], "labels": labels[rows]}
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


def collate(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack dataset rows (input_ids (3,)); a `FullBatch` item (input_ids (B, 3)) is already a batch."""
    if features[0]["input_ids"].dim() == 2:
        return features[0]
    return {key: torch.stack([f[key] for f in features]) for key in ("input_ids", "labels")}


# ------------------------------------------------------------------------------------------------
# 3. Model: the authors' 1-layer Transformer as a HuggingFace model
# ------------------------------------------------------------------------------------------------


class GrokkingConfig(PretrainedConfig):
    """Configuration of `GrokkingTransformer`: vocabulary = the p numbers and "=" (id p)."""

    model_type = "grokking_transformer"

    def __init__(
        self,
        p: int = 113,
        num_hidden_layers: int = 1,
        hidden_size: int = 128,
        num_attention_heads: int = 4,
        intermediate_size: int = 512,
        layer_norm: bool = False,
        position_embedding_type: str = "sinusoidal",
        max_position_embeddings: int = 3,
        scale_embedding: bool = True,
        initializer_range: float = 0.1,
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ):
        if hidden_size % num_attention_heads:
            raise SpectralError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if position_embedding_type not in ("sinusoidal", "learned"):
            raise SpectralError(f"position_embedding_type {position_embedding_type!r}: use 'sinusoidal' or 'learned'")
        self.p = p
        self.vocab_size = p + 1
        self.num_hidden_layers = num_hidden_layers
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.layer_norm = layer_norm
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        self.scale_embedding = scale_embedding
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        kwargs["tie_word_embeddings"] = False  # untied embed / unembed, as the paper
        super().__init__(**kwargs)


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """The (n, d) sine/cosine table of "Attention is all you need" (the authors' PositionalEncoding)."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class GrokkingAttention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections."""

    def __init__(self, config: GrokkingConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """Attention outputs of the last `num_queries` positions (keys and values from all)."""
        batch, length, d = x.shape
        heads = lambda t: t.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = heads(self.q(x[:, length - num_queries :]))
        k, v = heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (batch, heads, queries, length)
        if num_queries > 1:  # the last position sees everything; earlier ones need the causal mask
            query_pos = torch.arange(length - num_queries, length, device=x.device)[:, None]
            key_pos = torch.arange(length, device=x.device)[None, :]
            scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        out = scores.softmax(-1) @ v
        return self.o(out.transpose(1, 2).reshape(batch, num_queries, d))


class GrokkingMLP(nn.Module):
    def __init__(self, config: GrokkingConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.relu(self.fc_in(x)))


class GrokkingBlock(nn.Module):
    """Pre-LN residual block (LayerNorms optional: the paper removes them)."""

    def __init__(self, config: GrokkingConfig):
        super().__init__()
        norm = lambda: nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # noqa: E731
        self.ln_1 = norm() if config.layer_norm else nn.Identity()
        self.attn = GrokkingAttention(config)
        self.ln_2 = norm() if config.layer_norm else nn.Identity()
        self.mlp = GrokkingMLP(config)

    def forward(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        x = x[:, x.shape[1] - num_queries :] + self.attn(self.ln_1(x), num_queries)
        return x + self.mlp(self.ln_2(x))


class GrokkingTransformer(PreTrainedModel):
    """The authors' grokking Transformer; predicts the answer at the last position ("=").

    `labels` are the answers, shape (batch,); the loss is the cross-entropy at the last position.
    `logits_to_keep` positions are computed (default 1: the last only — exact, and ~3x cheaper,
    because the last layer's queries, MLP and unembedding only matter there); 0 keeps all.
    """

    config_class = GrokkingConfig
    base_model_prefix = "grokking"
    main_input_name = "input_ids"

    def __init__(self, config: GrokkingConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(GrokkingBlock(config) for _ in range(config.num_hidden_layers))
        self.unembed = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.unembed

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The authors' init: torch's nn.TransformerEncoderLayer defaults, uniform ±0.1 embed/unembed.
        r = self.config.initializer_range
        if isinstance(module, nn.Linear):  # torch's default Linear init (the MLP keeps it)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.uniform_(module.bias, -1 / math.sqrt(module.in_features), 1 / math.sqrt(module.in_features))
        elif isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -r, r)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GrokkingAttention):  # nn.MultiheadAttention: xavier on the fused (3d, d)
            d = module.q.in_features
            for proj in (module.q, module.k, module.v):
                init.uniform_(proj.weight, -math.sqrt(6 / (4 * d)), math.sqrt(6 / (4 * d)))
                init.zeros_(proj.bias)
            init.zeros_(module.o.bias)
        elif isinstance(module, GrokkingTransformer):
            init.uniform_(module.unembed.weight, -r, r)
            init.zeros_(module.unembed.bias)

    def forward(
        self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None, logits_to_keep: int = 1
    ) -> CausalLMOutput:
        length = input_ids.shape[1]
        keep = length if logits_to_keep == 0 else logits_to_keep
        x = self.embed_tokens(input_ids)
        if self.config.scale_embedding:
            x = x * math.sqrt(self.config.hidden_size)
        if self.config.position_embedding_type == "learned":
            x = x + self.embed_positions(torch.arange(length, device=input_ids.device))
        else:
            x = x + sinusoidal_positions(length, self.config.hidden_size).to(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, num_queries=keep if i == len(self.layers) - 1 else length)
        logits = self.unembed(x)  # (batch, keep, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, -1].float(), labels, ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


AutoConfig.register(GrokkingConfig.model_type, GrokkingConfig, exist_ok=True)
AutoModel.register(GrokkingConfig, GrokkingTransformer, exist_ok=True)
# How its matrices pair for alignment (separate q/k/v/o, untied unembed) and the order the model registers
# them in, so hf_spectral plans its checkpoints from names alone (`hf-spectral ... --register recipes/grokking.py`).
hf_spectral.register_architecture(
    GrokkingConfig.model_type,
    pairing=hf_spectral.TransformerPairing(
        layer=r"(^|\.)layers\.(?P<i>\d+)\.",
        roles={"q": r"^attn\.q\.weight$", "k": r"^attn\.k\.weight$", "v": r"^attn\.v\.weight$",
               "o": r"^attn\.o\.weight$", "mlp_in": r"^mlp\.fc_in\.weight$", "mlp_out": r"^mlp\.fc_out\.weight$"},
        stem=(r"(^|\.)embed_tokens\.weight$",),
        heads=((r"(^|\.)unembed\.weight$",),),
    ),
    first=("q", "k", "v", "o"),
    complete=True,
)


# ------------------------------------------------------------------------------------------------
# 4. Measures: accuracy, and the grokking-specific spectral measure (Fourier sparsity)
# ------------------------------------------------------------------------------------------------


def last_position_argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the predicted answer, so evaluation gathers (batch,) ints, not logits."""
    return logits[:, -1].argmax(-1)


def compute_metrics(prediction) -> dict[str, float]:
    """Accuracy of the answers (padding labels -100 ignored)."""
    predictions, labels = prediction.predictions, prediction.label_ids
    mask = labels != -100
    return {"accuracy": float((predictions[mask] == labels[mask]).mean())}


@torch.no_grad()
def fourier_sparsity(model: nn.Module, k: int = 5) -> dict[str, float]:
    """Nanda et al.'s progress measure on the embeddings of the p number tokens.

    Returns the share of the embedding's energy (squared Frobenius norm) in its `k` strongest
    non-constant Fourier frequencies over Z_p, and the Gini coefficient of the frequency norms
    (0: spread evenly, ->1: a few key frequencies, as after grokking).
    """
    model = getattr(model, "module", model)  # unwrap DDP
    p = model.config.p
    w = model.get_input_embeddings().weight[:p].detach().to("cpu", torch.float64)  # (p, d)
    spectrum = torch.fft.rfft(w, dim=0)  # frequencies 0 .. p//2
    energy = spectrum.abs().pow(2).sum(-1) / p  # Parseval: energies sum to ||w||_F^2 ...
    energy[1 : (p + 1) // 2] *= 2  # ... once each frequency counts its cos and its sin
    norms = energy[1:].sqrt().sort().values  # non-constant frequencies, ascending
    n = len(norms)
    gini = float(((2 * torch.arange(1, n + 1, dtype=torch.float64) - n - 1) * norms).sum() / (n * norms.sum()))
    top = float(energy[1:].sort(descending=True).values[:k].sum() / energy.sum())
    return {f"top{k}_fraction": top, "gini": gini}


# ------------------------------------------------------------------------------------------------
# 5. Training with the HF Trainer
# ------------------------------------------------------------------------------------------------


def build_trainer(args: GrokkingArguments) -> Trainer:
    """The Trainer for `args`: model, data, AdamW with decay on all parameters, callbacks."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=args.warmup_steps,
        max_grad_norm=0.0,  # no clipping (authors' Lightning default)
        per_device_train_batch_size=args.batch_size or 1,  # full batch: 1 item = the whole batch
        per_device_eval_batch_size=1,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        eval_on_start=True,
        logging_steps=args.eval_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        save_only_model=True,  # checkpoints are for spectral analysis, ~1 MB each
        report_to=args.report_to,
        disable_tqdm=args.disable_tqdm,
        seed=args.seed,
        dataloader_pin_memory=False,
        # transformers joins the launcher's process group on CPU only with use_cpu; without it every
        # rank of a CPU-only machine would train alone, duplicating the run into the same folder
        use_cpu=args.use_cpu if args.use_cpu is not None else not torch.accelerator.is_available(),
    )
    world, rank = training_args.world_size, training_args.process_index

    data = make_dataset(args.operation, args.p, args.train_fraction, args.split_seed)
    if args.batch_size:  # minibatches: the usual shuffled datasets pipeline
        train_dataset = data["train"].with_format("torch", columns=["input_ids", "labels"])
    else:  # full batch: collated once, served every step
        train_dataset = FullBatch(data["train"], args.max_steps * world, rank, world)
    eval_dataset = {
        "val": FullBatch(data["validation"], world, rank, world),
        "train": FullBatch(data["train"], world, rank, world),
    }

    set_seed(args.seed)
    config = GrokkingConfig(
        p=args.p,
        num_hidden_layers=args.num_layers,
        hidden_size=args.d_model,
        num_attention_heads=args.num_heads,
        intermediate_size=args.d_mlp,
        layer_norm=args.layer_norm,
        position_embedding_type=args.positions,
    )
    model = GrokkingTransformer(config)

    # The paper decays ALL parameters; the Trainer's default optimizer exempts biases and norms.
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=1e-8,
        weight_decay=args.weight_decay,
    )

    callbacks = []
    if args.track_spectra:
        from hf_spectral import SpectralCallback

        schedule = args.spectra_schedule
        if schedule != "log":
            steps = [int(s) for s in schedule.split(",")]
            schedule = steps[0] if len(steps) == 1 else steps
        top_k = {} if args.spectra_top_k is None else {"top_k": args.spectra_top_k}  # else the callback's default
        callbacks.append(
            # alignment on: consecutive-layer alignment is where the Transformer at high weight decay
            # differs (docs/definitions.md §7, finding 6); the 8 pairs of this model cost little
            # max_overhead=None: the schedule is the experiment (every snapshot the figures date events by)
            SpectralCallback(schedule=schedule, alignment=True, extra_measures={"fourier": fourier_sparsity},
                             max_overhead=None, **top_k)
        )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate,
        optimizers=(optimizer, None),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=last_position_argmax,
        callbacks=callbacks,
    )
    # One short line per ~4% of training instead of every log dict (and a bar per evaluation).
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleProgress(every=progress_every(args), bar=not args.disable_tqdm))
    return trainer


def progress_every(args: GrokkingArguments, lines: int = 25) -> int:
    """Print a progress line every this many steps: a multiple of eval_steps, ~`lines` per run."""
    return args.eval_steps * max(1, round(args.max_steps / lines / args.eval_steps))


class ConsoleProgress(TrainerCallback):
    """The console: a tqdm bar (unless --disable_tqdm) and, every `every` steps, one line with the
    loss, train and validation accuracy, the mean effective rank and the embedding's Fourier share."""

    def __init__(self, every: int, bar: bool = True):
        self.every, self.use_bar, self.bar = every, bar, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, dynamic_ncols=True, initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The "train" split is evaluated after "val": its log completes a step's numbers.
        if not state.is_world_process_zero or "eval_train_accuracy" not in (logs or {}):
            return
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        line = progress_line(state.global_step, state.log_history)
        if self.bar is not None:
            self.bar.write(line)  # above the bar, which stays at the bottom
        else:
            print(line, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_line(step: int, log_history: list[dict]) -> str:
    """`step 1150  loss 0.0021  train acc 1.000  val acc 0.903  mean erank 0.412  fourier top-5 0.61`."""
    latest = {}
    for entry in reversed(log_history):  # the newest value of each key
        for key, value in entry.items():
            latest.setdefault(key, value)
    parts = [f"step {step:>6,}"]
    for key, label, fmt in (
        ("loss", "loss", ".4f"),
        ("eval_train_accuracy", "train acc", ".3f"),
        ("eval_val_accuracy", "val acc", ".3f"),
        ("spectral/mean_erank", "mean erank", ".3f"),
        ("spectral/fourier/top5_fraction", "fourier top-5", ".3f"),
    ):
        if isinstance(latest.get(key), (int, float)):
            parts.append(f"{label} {latest[key]:{fmt}}")
    return "  ".join(parts)


# ------------------------------------------------------------------------------------------------
# 6. Report
# ------------------------------------------------------------------------------------------------


def eval_rows(log_history: list[dict]) -> list[dict]:
    """One row per evaluated step, merging the Trainer's separate "val" and "train" eval logs."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if any(key.startswith("eval_") for key in entry):
            rows.setdefault(entry["step"], {"step": entry["step"]}).update(entry)
    return [rows[step] for step in sorted(rows)]


def first_step_above(log_history: list[dict], key: str = "eval_val_accuracy", threshold: float = 0.9) -> int | None:
    """The first logged step where `key` reached `threshold` (None if never)."""
    return next((row["step"] for row in log_history if row.get(key, -1.0) >= threshold), None)


GROKKED = 0.9  # validation accuracy that counts as "generalized"
METRIC = "eval_val_accuracy"  # the Trainer's name for the "val" split's accuracy


def report(args: GrokkingArguments, log_history: list[dict], threshold: float = GROKKED) -> dict:
    """The report step: `training_log.json`; with spectral tracking, the dynamics report
    (`report/index.html` + figures), the flagship figure `grokking.png` (validation accuracy and
    effective rank on one step axis) and a printed summary of when the network generalized and
    when its rank fell. Returns the numbers printed (see `key_events`) and the paths."""
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "training_log.json")
    with open(log_path + ".tmp", "w") as f:
        json.dump(log_history, f, indent=1)
    os.replace(log_path + ".tmp", log_path)  # atomic: never a half-written log
    rows = eval_rows(log_history)
    last = rows[-1] if rows else {}
    result = {
        "grok_step": first_step_above(log_history, METRIC, threshold),
        "memorized_step": first_step_above(log_history, "eval_train_accuracy", 0.99),
        "final_val_accuracy": last.get(METRIC),
        "final_train_accuracy": last.get("eval_train_accuracy"),
        "training_log": log_path,
    }
    record = os.path.join(out, "spectral")
    if args.track_spectra and os.path.isdir(record):
        result.update(spectral_report(args, record, threshold, result["memorized_step"]))
    print_summary(args, result, threshold)
    return result


def spectral_report(args: GrokkingArguments, record: str, threshold: float, memorized: int | None) -> dict:
    """Dynamics of the callback's record → HTML report, flagship PNG, key events, Fourier share.

    The fastest rank drop is reported twice: over the whole run (often the transient right after
    the initialization) and after the training set was memorized, where grokking happens."""
    from hf_spectral import dynamics_from_source, write_report
    from hf_spectral.highlights import key_events
    from hf_spectral.plots import plot_training_and_rank, save_figure

    dynamics = dynamics_from_source(record)  # the snapshots + the record's log_history.json
    events = key_events(dynamics, METRIC, threshold)
    events_after = key_events(dynamics, METRIC, threshold, after=memorized) if memorized is not None else None
    setting = setting_text(args)
    index = write_report(dynamics, os.path.join(args.output_dir, "report"), title=f"Grokking ({setting})",
                         formats=("png",), metric=METRIC, threshold=threshold)
    figure = plot_training_and_rank(dynamics, METRIC, threshold=threshold)
    figure.axes[0].set_title(f"Grokking {setting}:\nvalidation accuracy and normalized effective rank", fontsize=10)
    (png,) = save_figure(figure, os.path.join(args.output_dir, "grokking"), ("png",))

    # The mean rank at the jump, and Nanda et al.'s Fourier progress measure (logged at every snapshot).
    erank = dynamics.summary.set_index("step")["mean_normalized_effective_rank"]
    training = dynamics.training
    fourier = training[training["metric"] == "spectral/fourier/top5_fraction"].set_index("step")["value"]
    grok = events["metric_step"]
    return {
        "events": events,
        "events_after_memorization": events_after,
        "report": str(index),
        "figure": str(png),
        "erank_at_grok": last_at(erank, grok) if grok is not None else None,
        "fourier_initial": last_at(fourier, 0),
        "fourier_at_grok": last_at(fourier, grok) if grok is not None else None,
        "fourier_final": last_at(fourier, None),
    }


def last_at(series: pd.Series, step: int | None) -> float | None:
    """The value of a by-step series at the last step <= `step` (None: the last value); None if none."""
    values = series.dropna().sort_index()
    if step is not None:
        values = values[values.index <= step]
    return float(values.iloc[-1]) if len(values) else None


def print_summary(args: GrokkingArguments, result: dict, threshold: float) -> None:
    """A few lines: when validation accuracy crossed, when the rank fell fastest, where the report is."""
    at = lambda step: "never" if step is None else f"step {step:,}"  # noqa: E731
    num = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    grok = result["grok_step"]
    lines = [f"validation accuracy >= {threshold:.0%}: {at(grok)} (train accuracy >= 99%: {at(result['memorized_step'])})"]
    events = result.get("events")
    if events is not None:
        if events["rank_drop_interval"] is None:
            lines.append("mean normalized effective rank: never fell")
        else:
            a, b = events["rank_drop_interval"]
            lines.append(f"mean normalized effective rank fell fastest: steps {a:,}-{b:,} "
                         f"({events['erank_before']:.3f} -> {events['erank_after']:.3f})")
            if grok is not None:
                lines.append(f"side by side: the fastest rank drop ends at step {b:,}, {_when(events['lag'])} "
                             f"the validation jump (step {grok:,})")
        after = result.get("events_after_memorization")
        if after is not None and after["rank_drop_interval"] is not None:
            a, b = after["rank_drop_interval"]
            where = f", {_when(after['lag'])} the validation jump" if grok is not None else ""
            lines.append(f"after memorization (step {result['memorized_step']:,}) it fell fastest at steps {a:,}-{b:,} "
                         f"({after['erank_before']:.3f} -> {after['erank_after']:.3f}){where}")
        if events.get("around_metric") is not None:
            lines.append(around_text(events["around_metric"]))
        middle = f" -> {num(result['erank_at_grok'])} at step {grok:,}" if result["erank_at_grok"] is not None else ""
        lines.append(f"mean normalized effective rank: {num(events['erank_initial'])} at init{middle} -> "
                     f"{num(events['erank_final'])} at the end")
        if result["fourier_final"] is not None:
            middle = f" -> {num(result['fourier_at_grok'])} at step {grok:,}" if result["fourier_at_grok"] is not None else ""
            lines.append(f"Fourier top-5 share of the embedding: {num(result['fourier_initial'])} at init{middle} -> "
                         f"{num(result['fourier_final'])} at the end")
    lines.append(f"final accuracy: validation {num(result['final_val_accuracy'])}, "
                 f"train {num(result['final_train_accuracy'])}")
    if events is not None:
        lines += [f"report: {result['report']}", f"figure: {result['figure']}"]
    lines.append(f"training log: {result['training_log']}")
    print("\n".join(["", f"== grokking summary ({setting_text(args)}) ==", *lines]), flush=True)


def around_text(around: dict) -> str:
    """`around the jump (steps a-b) the mean rank fell 0.120; in the 4,000 steps before, 0.012: 10.0x as fast`."""
    (a, b), (c, _) = around["window"], around["window_before"]
    moved = lambda change: f"fell {-change:.3f}" if change < 0 else f"rose {change:.3f}"  # noqa: E731
    text = (f"around the jump (steps {a:,}-{b:,}) the mean rank {moved(around['change'])}; "
            f"in the {a - c:,} steps before, it {moved(around['change_before'])}")
    if around["change"] < 0 and around["change_before"] < 0:
        text += f": {around['ratio']:.1f}x as fast at the jump"
    return text


def _when(lag: int) -> str:
    return "at the step of" if lag == 0 else f"{abs(lag):,} steps {'after' if lag > 0 else 'before'}"


def setting_text(args: GrokkingArguments) -> str:
    """`a + b mod 113, 40% train, lr 0.003, wd 1, seed 0`, for titles."""
    return (f"{FORMULAS[args.operation]} mod {args.p}, {args.train_fraction:.0%} train, "
            f"lr {args.learning_rate:g}, wd {args.weight_decay:g}, seed {args.seed}")


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns a summary: wall time, arguments, final eval row and the report's
    numbers (grok_step, events from `key_events`, Fourier share, paths)."""
    args = parse_args(argv)
    trainer = build_trainer(args)
    start = time.time()
    trainer.train()
    wall = time.time() - start
    trainer.save_model(args.output_dir)  # safetensors + config.json, loadable with from_pretrained
    summary = {"wall_time_s": wall, "args": dataclasses.asdict(args)}
    if trainer.is_world_process_zero():
        extra = "evaluation and spectral snapshots" if args.track_spectra else "evaluation"
        print(f"\ntrained {args.max_steps:,} steps in {wall:.1f} s ({wall / max(args.max_steps, 1):.4f} s/step incl. {extra})")
        summary.update(report(args, trainer.state.log_history))
        summary["final"] = (eval_rows(trainer.state.log_history) or [{}])[-1]
        path = os.path.join(args.output_dir, "summary.json")  # what benchmarks/grokking_seeds.py reads
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
