#!/usr/bin/env python
"""Grokking modular arithmetic with a 1-layer Transformer, tracked by hf_spectral.

Yunis et al. (arXiv 2408.11804): trained full batch on 30% of all pairs (a, b) of a + b mod 113 with AdamW,
weight decay 1.0, it memorizes, then much later generalizes, as the effective rank of every weight matrix drops;
without weight decay neither happens. Ends with the dynamics report, grokking.png, a summary.

    python recipes/grokking.py                                  # CPU demo: p=113, 30%, lr 2e-3, wd 3 (~4.5 min, `make demo`)
    python recipes/grokking.py --preset demo --weight_decay 0   # control: no grokking, no rank collapse
    python recipes/grokking.py --preset paper                   # the paper's setting (40k steps)
    python recipes/grokking.py --batch_size 64 --branch_from RUN/checkpoint-100 --seed 1 --split_seed 0  # an LMC branch
    accelerate launch recipes/grokking.py --preset paper        # same, on whatever accelerate sees
"""

import math
import os
import random
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments, set_seed
from transformers.modeling_outputs import CausalLMOutput

import hf_spectral

try:  # transformers >= 5: init functions that leave weights loaded by from_pretrained alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init


# --- 1. Arguments ---------------------------------------------------------------------------------
# The paper's setting (authors' code: modular_addition/, sweep modadd_tfmr_113_nolayernorm_wd): constant
# lr without warmup, full batch (batch_size 0), evaluation and checkpoint every 100 steps.
PAPER = dict(operation="add", p=113, train_fraction=0.3, layer_norm=False, learning_rate=1e-3, weight_decay=1.0,
             warmup_steps=0, batch_size=0, max_steps=40_000, eval_steps=100, logging_steps=100, spectra_schedule="100")
PRESETS = {
    "paper": PAPER,
    # Controls of the paper (§4 finding 3): no weight decay; 90% of the data without weight decay.
    "control_no_wd": {**PAPER, "weight_decay": 0.0},
    "control_90": {**PAPER, "train_fraction": 0.9, "weight_decay": 0.0},
    # The paper's setting 6x faster (docs/grokking.md, the search): lr x weight decay 6x (lr 2e-3, wd 3), so
    # the plateau and the jump come 6x sooner (~1,900 steps); a snapshot at every evaluation (50 steps).
    "demo": {**PAPER, "learning_rate": 2e-3, "weight_decay": 3.0, "max_steps": 3000, "eval_steps": 50,
             "logging_steps": 50, "spectra_schedule": "50"},
    # Thilak et al.'s Slingshot setting as run by the authors (modadd_tfmr_97_slingshot): LayerNorm kept,
    # minibatches of 512, no weight decay, 10 warmup steps (max_steps counts optimizer steps).
    "slingshot": {**PAPER, "p": 97, "train_fraction": 0.7, "layer_norm": True, "weight_decay": 0.0,
                  "batch_size": 512, "warmup_steps": 10, "max_steps": 100_000},
}
# Defaults (flags override): no clipping (authors' Lightning default), AdamW β2 0.98, evaluation at init and every eval_steps,
# the final model only; alignment on (where the Transformer at high weight decay differs: docs/definitions.md, finding 6).
TRAINER_DEFAULTS = dict(lr_scheduler_type="constant_with_warmup", max_grad_norm=0.0, adam_beta2=0.98, eval_strategy="steps",
                        eval_on_start=True, per_device_eval_batch_size=1, save_strategy="no", save_only_model=True,
                        report_to="none", dataloader_pin_memory=False, seed=0, spectra_alignment=True)
OPERATIONS = {  # name: (formula for titles, a∘b mod p)
    "add": ("a + b", lambda a, b, p: (a + b) % p), "sub": ("a − b", lambda a, b, p: (a - b) % p),
    "mul": ("a · b", lambda a, b, p: (a * b) % p), "div": ("a / b", lambda a, b, p: (a * pow(b, -1, p)) % p),  # b != 0, p prime
    "x2_xy_y2": ("a² + ab + b²", lambda a, b, p: (a * a + a * b + b * b) % p),
    "x2_y2": ("a² + b²", lambda a, b, p: (a * a + b * b) % p), "x3_xy": ("a³ + ab", lambda a, b, p: (a**3 + a * b) % p),
}


@dataclass
class GrokkingArguments:
    """The recipe's own flags. A preset sets the defaults of every flag, TrainingArguments' too; explicit flags win."""

    preset: str = field(default="demo", metadata={"help": "Base setting.", "choices": sorted(PRESETS)})
    operation: str = field(default="add", metadata={"help": "a∘b mod p.", "choices": sorted(OPERATIONS)})
    p: int = field(default=113, metadata={"help": "The modulus (prime for div)."})
    train_fraction: float = field(default=0.3, metadata={"help": "Share of all pairs used for training."})
    split_seed: int | None = field(default=None, metadata={"help": "Seed of the train/val split (default: --seed)."})
    batch_size: int = field(default=0, metadata={"help": "Examples per step; 0 = full batch."})
    num_layers: int = 1
    d_model: int = 128
    num_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = field(default=False, metadata={"help": "Keep pre-LayerNorms (paper: removed)."})
    positions: str = field(default="sinusoidal", metadata={"choices": ["sinusoidal", "learned"]})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads per process (0: the idle cores at the start)."})


def parse_args(argv: list[str] | None = None) -> tuple[GrokkingArguments, TrainingArguments, hf_spectral.SpectralArguments, hf_spectral.ExperimentArguments]:
    """The command line (or `argv`): the recipe's defaults, then the preset's, then explicit flags."""
    args, training, spectral, experiment = hf_spectral.parse_recipe_args(
        (GrokkingArguments, TrainingArguments, hf_spectral.SpectralArguments, hf_spectral.ExperimentArguments), argv, presets=PRESETS,
        # CPU processes (torchrun, accelerate launch --multi_gpu) join one DDP run over gloo only with use_cpu
        defaults={**TRAINER_DEFAULTS, "use_cpu": not torch.accelerator.is_available()}, preset_field="preset",
        output_dir=os.path.join("runs", "grokking_{preset}_seed{seed}"))
    args.split_seed = training.seed if args.split_seed is None else args.split_seed  # as the authors: one seed for split and init
    training.per_device_train_batch_size = args.batch_size or 1  # full batch: 1 item = the whole batch
    return args, training, spectral, experiment


# --- 2. Data: every pair (a, b) as the sequence [a, b, =], target a∘b mod p at the last position ----
def make_dataset(operation: str, p: int, train_fraction: float, split_seed: int) -> datasets.DatasetDict:
    """All pairs of `operation` mod `p` with a random train/validation split of `train_fraction`."""
    for bad, message in (
        (operation not in OPERATIONS, f"--operation {operation!r}: choose one of {sorted(OPERATIONS)}"),
        (p < 2, f"--p {p}: the modulus must be at least 2"),
        (operation == "div" and any(p % d == 0 for d in range(2, math.isqrt(p) + 1)), f"--p {p}: division needs a prime modulus"),
        (not 0.0 < train_fraction < 1.0, f"--train_fraction {train_fraction}: must lie strictly between 0 and 1"),
    ):
        if bad:
            raise hf_spectral.SpectralError(message)
    pairs = [(a, b) for a in range(p) for b in (range(1, p) if operation == "div" else range(p))]
    data = datasets.Dataset.from_dict({  # the number tokens are 0 .. p-1, "=" is p
        "a": [a for a, _ in pairs], "b": [b for _, b in pairs], "input_ids": [[a, b, p] for a, b in pairs],
        "labels": [OPERATIONS[operation][1](a, b, p) for a, b in pairs]})
    order = list(range(len(pairs)))  # the authors' split: shuffle all pairs with Python's RNG, take the first part
    random.Random(split_seed).shuffle(order)
    n_train = int(train_fraction * len(pairs))
    if n_train == 0 or n_train == len(pairs):
        raise hf_spectral.SpectralError(f"--train_fraction {train_fraction}: leaves an empty split of {len(pairs)} pairs")
    return datasets.DatasetDict({"train": data.select(order[:n_train]), "validation": data.select(order[n_train:])})


# --- 3. Model: the authors' 1-layer Transformer as a HuggingFace model ----------------------------
class GrokkingConfig(PretrainedConfig):
    """Configuration of `GrokkingTransformer`: vocabulary = the p numbers and "=" (id p)."""
    model_type = "grokking_transformer"

    def __init__(self, p: int = 113, num_hidden_layers: int = 1, hidden_size: int = 128, num_attention_heads: int = 4,
                 intermediate_size: int = 512, layer_norm: bool = False, position_embedding_type: str = "sinusoidal",
                 max_position_embeddings: int = 3, scale_embedding: bool = True, initializer_range: float = 0.1,
                 layer_norm_eps: float = 1e-5, **kwargs):
        if hidden_size % num_attention_heads:
            raise hf_spectral.SpectralError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if position_embedding_type not in ("sinusoidal", "learned"):
            raise hf_spectral.SpectralError(f"position_embedding_type {position_embedding_type!r}: use 'sinusoidal' or 'learned'")
        self.p, self.vocab_size, self.num_hidden_layers, self.hidden_size = p, p + 1, num_hidden_layers, hidden_size
        self.num_attention_heads, self.intermediate_size, self.layer_norm = num_attention_heads, intermediate_size, layer_norm
        self.position_embedding_type, self.max_position_embeddings = position_embedding_type, max_position_embeddings
        self.scale_embedding, self.initializer_range, self.layer_norm_eps = scale_embedding, initializer_range, layer_norm_eps
        kwargs["tie_word_embeddings"] = False  # untied embed / unembed, as the paper
        super().__init__(**kwargs)


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """The (n, d) sine/cosine table of "Attention is all you need" (the authors' PositionalEncoding)."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


class GrokkingAttention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections."""

    def __init__(self, config: GrokkingConfig):
        super().__init__()
        d, self.num_heads, self.head_dim = config.hidden_size, config.num_attention_heads, config.hidden_size // config.num_attention_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """Attention outputs of the last `num_queries` positions (keys and values from all)."""
        batch, length, d = x.shape
        heads = lambda t: t.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q(x[:, length - num_queries :])), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (batch, heads, queries, length)
        if num_queries > 1:  # the last position sees everything; earlier ones need the causal mask
            query_pos = torch.arange(length - num_queries, length, device=x.device)[:, None]
            scores = scores.masked_fill(torch.arange(length, device=x.device)[None, :] > query_pos, float("-inf"))
        return self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, num_queries, d))


class GrokkingTransformer(PreTrainedModel):
    """The authors' grokking Transformer; predicts the answer at the last position ("="). `labels` (batch,): the answers;
    loss: the cross-entropy at the last position. `logits_to_keep` positions are computed (default 1, the last only:
    exact and ~3x cheaper, since the last layer's queries, MLP and unembedding only matter there); 0 keeps all."""

    config_class, base_model_prefix, main_input_name = GrokkingConfig, "grokking", "input_ids"

    def __init__(self, config: GrokkingConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        d, d_mlp = config.hidden_size, config.intermediate_size
        norm = lambda: nn.LayerNorm(d, eps=config.layer_norm_eps) if config.layer_norm else nn.Identity()  # noqa: E731
        self.layers = nn.ModuleList(  # pre-LN residual blocks, LayerNorms optional (the paper removes them)
            nn.ModuleDict(dict(ln_1=norm(), attn=GrokkingAttention(config), ln_2=norm(), mlp=nn.Sequential(OrderedDict(
                fc_in=nn.Linear(d, d_mlp), relu=nn.ReLU(), fc_out=nn.Linear(d_mlp, d)))))
            for _ in range(config.num_hidden_layers))
        self.unembed = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

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
            bound = math.sqrt(6 / (4 * module.q.in_features))
            for proj in (module.q, module.k, module.v):
                init.uniform_(proj.weight, -bound, bound)
                init.zeros_(proj.bias)
            init.zeros_(module.o.bias)
        elif isinstance(module, GrokkingTransformer):
            init.uniform_(module.unembed.weight, -r, r)
            init.zeros_(module.unembed.bias)

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None, logits_to_keep: int = 1) -> CausalLMOutput:
        length = input_ids.shape[1]
        keep = length if logits_to_keep == 0 else logits_to_keep
        x = self.embed_tokens(input_ids) * (math.sqrt(self.config.hidden_size) if self.config.scale_embedding else 1.0)
        if self.config.position_embedding_type == "learned":
            x = x + self.embed_positions(torch.arange(length, device=input_ids.device))
        else:
            x = x + sinusoidal_positions(length, self.config.hidden_size).to(x)
        for i, layer in enumerate(self.layers):
            queries = keep if i == len(self.layers) - 1 else length
            x = x[:, x.shape[1] - queries :] + layer["attn"](layer["ln_1"](x), queries)
            x = x + layer["mlp"](layer["ln_2"](x))
        logits = self.unembed(x)  # (batch, keep, vocab)
        loss = None if labels is None else F.cross_entropy(logits[:, -1].float(), labels, ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


AutoConfig.register(GrokkingConfig.model_type, GrokkingConfig, exist_ok=True)
AutoModel.register(GrokkingConfig, GrokkingTransformer, exist_ok=True)
# How its matrices pair (separate q/k/v/o, untied unembed), in model order: checkpoints are planned from names alone.
hf_spectral.register_architecture(GrokkingConfig.model_type, first=("q", "k", "v", "o"), complete=True, pairing=hf_spectral.TransformerPairing(
    layer=r"(^|\.)layers\.(?P<i>\d+)\.", stem=(r"(^|\.)embed_tokens\.weight$",), heads=((r"(^|\.)unembed\.weight$",),),
    roles={"q": r"^attn\.q\.weight$", "k": r"^attn\.k\.weight$", "v": r"^attn\.v\.weight$", "o": r"^attn\.o\.weight$",
           "mlp_in": r"^mlp\.fc_in\.weight$", "mlp_out": r"^mlp\.fc_out\.weight$"}))


# --- 4. The grokking-specific spectral measure -----------------------------------------------------
def fourier_measure(model: nn.Module) -> dict[str, float]:
    """Nanda et al.'s progress measure: Fourier sparsity over Z_p of the p number tokens' embeddings."""
    model = getattr(model, "module", model)  # unwrap DDP
    return hf_spectral.fourier_sparsity(model.embed_tokens.weight[: model.config.p])


# --- 5. Training with the HF Trainer --------------------------------------------------------------
def build_trainer(args: GrokkingArguments, training: TrainingArguments, spectral: hf_spectral.SpectralArguments) -> Trainer:
    """The Trainer: model, data, AdamW with decay on all parameters, spectral and console callbacks."""
    world, rank = training.world_size, training.process_index
    args.num_threads = hf_spectral.set_cpu_threads(args.num_threads, world)  # 0: the idle cores (docs/grokking.md)
    torch.set_flush_denormal(True)  # weight-decay-0 runs: subnormal floats made steps 3.3x slower (docs/grokking.md)
    data = make_dataset(args.operation, args.p, args.train_fraction, args.split_seed)
    if args.batch_size:  # minibatches: the usual shuffled datasets pipeline
        train_dataset = data["train"].with_format("torch", columns=["input_ids", "labels"])
    else:  # full batch: collated once, served every step
        train_dataset = hf_spectral.FullBatch(data["train"], training.max_steps * world, rank, world)
    eval_dataset = {"val": hf_spectral.FullBatch(data["validation"], world, rank, world),
                    "train": hf_spectral.FullBatch(data["train"], world, rank, world)}
    set_seed(training.seed)
    model = GrokkingTransformer(GrokkingConfig(
        p=args.p, num_hidden_layers=args.num_layers, hidden_size=args.d_model, num_attention_heads=args.num_heads,
        intermediate_size=args.d_mlp, layer_norm=args.layer_norm, position_embedding_type=args.positions))
    # The paper decays ALL parameters; the Trainer's default optimizer exempts biases and norms.
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, betas=(training.adam_beta1, training.adam_beta2),
                                  eps=training.adam_epsilon, weight_decay=training.weight_decay)
    trainer = Trainer(model=model, args=training, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=hf_spectral.full_batch_collate,
                      optimizers=(optimizer, None), compute_metrics=hf_spectral.accuracy_metrics,
                      preprocess_logits_for_metrics=lambda logits, labels: logits[:, -1].argmax(-1),  # gather answers, not logits
                      callbacks=spectral.callbacks(extra_measures={"fourier": fourier_measure}))
    hf_spectral.attach_console(trainer, ["eval_train_accuracy", "eval_val_accuracy", "spectral/fourier/top5_fraction"])
    return trainer


# --- 6. Report ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> hf_spectral.RunSummary | None:
    """Train, save the model; on the main process write the report, grokking.png, model card and summary."""
    args, training, spectral, experiment = parse_args(argv)
    trainer = build_trainer(args, training, spectral)
    start = time.time()
    experiment.train(trainer)  # from scratch, --resume_from_checkpoint, --branch_from or --rewind_to
    wall = time.time() - start
    trainer.save_model(training.output_dir)  # safetensors + config.json, loadable with from_pretrained
    if not trainer.is_world_process_zero():
        return None
    setting = (f"{OPERATIONS[args.operation][0]} mod {args.p}, {args.train_fraction:.0%} train, lr {training.learning_rate:g}, "
               f"wd {training.weight_decay:g}, seed {training.seed}")  # for titles
    return hf_spectral.finish_run(
        training.output_dir, recipe="grokking", metric="eval_val_accuracy", threshold=0.9, metric_label="validation accuracy",
        after=hf_spectral.Crossing("eval_train_accuracy", 0.99, "train accuracy"), title=setting, start_step=experiment.start_step,
        measures={"eval_train_accuracy": "train accuracy", "spectral/fourier/top5_fraction": "Fourier top-5 share of the embedding"},
        log_history=trainer.state.log_history, alignment=spectral.spectra_alignment, model_card_copy=spectral.model_card_copy,
        train_seconds=wall, extra={"args": {**asdict(args), **asdict(spectral), **asdict(experiment), **training.to_dict()}})


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
