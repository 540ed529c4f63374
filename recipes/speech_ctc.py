"""Spectral dynamics of speech recognizers trained with CTC over characters (paper §3: a 4-layer bi-LSTM
on 40 power-mel features, LibriSpeech, AdamW 3e-4, wd 0.1, cosine).

``--model_type wav2vec2``: ``Wav2Vec2ForCTC`` from a small ``Wav2Vec2Config``, trained from scratch.
``--model_type lstm``: the paper's bidirectional LSTM acoustic model (log-free power mel features computed
with torch, a linear head to characters) as a small ``PreTrainedModel``. Both read 16 kHz waveforms through
a ``Wav2Vec2Processor`` built from a local ``vocab.json`` and saved with the model; the Trainer reports
greedy-decoding CER / WER (``hf_spectral.ctc_metrics``); ``SpectralCallback`` records the spectra (with the
LSTM's alignment pairs: ih→hh, ih/hh→next ih, g gate, bidirectional halves).

    python recipes/speech_ctc.py --model_type lstm            # offline: digit strings spoken by espeak-ng
    accelerate launch recipes/speech_ctc.py --model_type lstm --model_preset paper \\
        --dataset_name openslr/librispeech_asr --dataset_config_name clean \\
        --train_split_name train.100 --eval_split_name validation --num_train_epochs 50
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from torch import nn
from transformers import (HfArgumentParser, PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments,
                          Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                          Wav2Vec2Processor, set_seed)
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_outputs import CausalLMOutput

import hf_spectral


@dataclass
class SpeechArguments:
    model_type: str = field(default="lstm", metadata={"help": "wav2vec2 | lstm"})
    model_preset: str = field(default="small", metadata={"help": "tiny (tests) | small (default) | paper"})
    dataset_name: str | None = field(default=None, metadata={"help": "datasets.load_dataset name or path"})
    dataset_config_name: str | None = None
    train_file: str | None = field(default=None, metadata={"help": "local .json/.jsonl/.parquet: audio arrays + text"})
    train_split_name: str = "train"
    eval_split_name: str | None = field(default=None, metadata={"help": "none: 10% of the train split"})
    audio_column: str = "audio"
    text_column: str = "text"
    sampling_rate: int = field(default=16_000, metadata={"help": "of plain float arrays (Audio columns are cast)"})
    speech_source: str = field(default="auto", metadata={"help": "offline default data: auto | espeak | tones"})
    num_utterances: int = 1200
    max_eval_samples: int = 200


# model presets, and the TrainingArguments defaults they set (flags given on the command line win)
WAV2VEC2 = {
    "tiny": dict(conv_dim=(16, 16, 16), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), hidden_size=32,
                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4),
    "small": dict(conv_dim=(32,) * 7, hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=192, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8),
    "paper": dict(),  # wav2vec2-base: 7 convs of 512, 12 layers of 768
}
LSTM = {"tiny": dict(num_layers=2, hidden_size=16, num_mel_bins=16), "small": dict(num_layers=3, hidden_size=96),
        "paper": dict(num_layers=4, hidden_size=256)}
SMALL_STEPS = {"wav2vec2": 500, "lstm": 1000}  # ~ the same CPU time: a wav2vec2 step costs ~3 LSTM steps
TRAINING = {
    "tiny": dict(max_steps=6, learning_rate=1e-3),
    "small": dict(learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=50),  # + SMALL_STEPS
    "paper": dict(num_train_epochs=50, learning_rate=3e-4, weight_decay=0.1, lr_scheduler_type="cosine"),
}


def transcript(text: str) -> str:
    """Lower case, letters, apostrophes and single spaces: the character set CTC predicts."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def load_data(args: SpeechArguments, seed: int) -> tuple[datasets.DatasetDict, str]:
    """(train/validation with columns ``audio``: float32 16 kHz arrays and ``text``, what the data is)."""
    if args.dataset_name is None and args.train_file is None:
        digits = hf_spectral.spoken_digits(args.num_utterances, seed=seed, source=args.speech_source)
        if digits.source != "espeak-ng":
            print(f"WARNING: training on {digits.source}", file=sys.stderr)
        ds = datasets.Dataset.from_dict({"audio": digits.audio, "text": digits.text})
        return ds.train_test_split(test_size=0.1, seed=seed, load_from_cache_file=False), f"spoken digits ({digits.source})"
    if args.train_file is not None:
        kind = "parquet" if args.train_file.endswith(".parquet") else "json"
        raw = datasets.load_dataset(kind, data_files={"train": args.train_file})
    else:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    name = args.dataset_name or args.train_file
    for split in (args.train_split_name, args.eval_split_name or args.train_split_name):
        if split not in raw:
            raise hf_spectral.SpectralError(f"{name}: no split {split!r} (splits: {list(raw)}); pass --train_split_name "
                                            "/ --eval_split_name")
    for flag, column in (("audio", args.audio_column), ("text", args.text_column)):
        if column not in raw[args.train_split_name].column_names:
            raise hf_spectral.SpectralError(f"{name}: no column {column!r} (columns: "
                                            f"{raw[args.train_split_name].column_names}); pass --{flag}_column")
    if args.eval_split_name is None:
        raw = raw[args.train_split_name].train_test_split(test_size=0.1, seed=seed)
    else:
        raw = datasets.DatasetDict(train=raw[args.train_split_name], test=raw[args.eval_split_name])
    if isinstance(raw["train"].features[args.audio_column], datasets.Audio):
        raw = raw.cast_column(args.audio_column, datasets.Audio(sampling_rate=16_000))

    def standard(row):  # an Audio dict or a plain float array at --sampling_rate
        audio = row[args.audio_column]
        array, rate = (audio["array"], audio["sampling_rate"]) if isinstance(audio, dict) else (audio, args.sampling_rate)
        return {"audio": hf_spectral.resample_audio(np.asarray(array, dtype=np.float32), rate), "text": row[args.text_column]}

    raw = raw.map(standard, remove_columns=raw["train"].column_names)
    return raw, name


def build_processor(train_texts: list[str], output_dir: str) -> Wav2Vec2Processor:
    """A character vocabulary (``vocab.json``, "|" between words, "<pad>" = the CTC blank) and a processor."""
    chars = sorted({c for t in train_texts for c in t} - {" "})
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    tokenizer = Wav2Vec2CTCTokenizer(os.path.join(output_dir, "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|", bos_token=None, eos_token=None)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


class SpeechLSTMConfig(PretrainedConfig):
    model_type = "speech_lstm"

    def __init__(self, vocab_size: int = 32, num_mel_bins: int = 40, hidden_size: int = 256, num_layers: int = 4,
                 sampling_rate: int = 16_000, n_fft: int = 400, hop_length: int = 160, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.num_mel_bins, self.hidden_size, self.num_layers = vocab_size, num_mel_bins, hidden_size, num_layers
        self.sampling_rate, self.n_fft, self.hop_length = sampling_rate, n_fft, hop_length


class PowerMel(nn.Module):
    """Log-free power mel spectrogram (25 ms Hann window, 10 ms hop), computed with torch; the filter bank
    and window are non-persistent buffers (derived from the config, never saved), each utterance scaled
    by its mean power so that the LSTM's inputs are O(1)."""

    def __init__(self, config: SpeechLSTMConfig):
        super().__init__()
        self.n_fft, self.hop = config.n_fft, config.hop_length
        bank = mel_filter_bank(config.n_fft // 2 + 1, config.num_mel_bins, 0.0, config.sampling_rate / 2,
                               config.sampling_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("bank", torch.tensor(bank, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def forward(self, audio: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        mel = (spec.abs() ** 2).transpose(1, 2) @ self.bank  # (batch, frames, mels)
        valid = (torch.arange(mel.shape[1], device=mel.device)[None] < frames[:, None]).unsqueeze(-1)
        scale = (mel * valid).sum((1, 2), keepdim=True) / (valid.sum((1, 2), keepdim=True) * mel.shape[2])
        return mel / (scale + 1e-8)


class SpeechLSTMForCTC(PreTrainedModel):
    """The paper's acoustic model: power mel → bidirectional LSTM stack → linear head → CTC over characters."""

    config_class = SpeechLSTMConfig
    main_input_name = "input_values"

    def __init__(self, config: SpeechLSTMConfig):
        super().__init__(config)
        self.features = PowerMel(config)
        self.lstm = nn.LSTM(config.num_mel_bins, config.hidden_size, num_layers=config.num_layers,
                            bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * config.hidden_size, config.vocab_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # torch's own LSTM / Linear initialization, as the paper's model

    def forward(self, input_values, attention_mask=None, labels=None, **kwargs) -> CausalLMOutput:
        samples = attention_mask.sum(-1) if attention_mask is not None else torch.full(
            (input_values.shape[0],), input_values.shape[1], device=input_values.device)
        frames = samples // self.config.hop_length + 1  # center=True framing
        # padded, not packed: packed was 3.4-8x slower on CPU (benchmarks/lstm_packed.py); batches are grouped by length
        # (--train_sampling_strategy group_by_length), so the reverse direction reads few zero frames first
        logits = self.head(self.lstm(self.features(input_values, frames))[0])
        loss = None
        if labels is not None:
            targets = labels >= 0
            log_probs = logits.log_softmax(-1).transpose(0, 1)
            loss = nn.functional.ctc_loss(log_probs, labels[targets], frames, targets.sum(-1), blank=self.config.pad_token_id,
                                          reduction="mean", zero_infinity=True)
        return CausalLMOutput(loss=loss, logits=logits)


def build_model(args: SpeechArguments, processor: Wav2Vec2Processor) -> PreTrainedModel:
    tok = processor.tokenizer
    if args.model_type == "wav2vec2":
        config = Wav2Vec2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, ctc_loss_reduction="mean",
                                ctc_zero_infinity=True, feat_extract_norm="layer", do_stable_layer_norm=True,
                                mask_time_prob=0.05 if args.model_preset == "paper" else 0.0, layerdrop=0.0,
                                **WAV2VEC2[args.model_preset])
        return Wav2Vec2ForCTC(config)
    return SpeechLSTMForCTC(SpeechLSTMConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **LSTM[args.model_preset]))


@dataclass
class CTCCollator:
    """Pads waveforms (with their attention mask) and label ids (padding → -100, ignored by CTC)."""

    processor: Wav2Vec2Processor

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.processor.feature_extractor.pad([{"input_values": f["input_values"]} for f in features],
                                                     padding=True, return_tensors="pt")
        labels = self.processor.tokenizer.pad({"input_ids": [f["labels"] for f in features]}, padding=True,
                                              return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        return batch


TRAINER_DEFAULTS = dict(per_device_train_batch_size=16, per_device_eval_batch_size=32, eval_strategy="steps",
                        eval_on_start=True, eval_steps=100, logging_steps=20, save_strategy="no", report_to="none", seed=0,
                        train_sampling_strategy="group_by_length", length_column_name="input_length",
                        dataloader_pin_memory=False, spectra_alignment=True,  # LSTM gate / direction pairs; wav2vec2's
                        use_cpu=not torch.accelerator.is_available())  # CPU processes join one gloo DDP run


def main(argv: list[str] | None = None) -> hf_spectral.RunSummary | None:
    model_type = HfArgumentParser(SpeechArguments).parse_known_args(argv)[0].model_type
    presets = {**TRAINING, "small": {**TRAINING["small"], "max_steps": SMALL_STEPS.get(model_type, 500)}}
    args, training_args, spectral = hf_spectral.parse_recipe_args(
        (SpeechArguments, TrainingArguments, hf_spectral.SpectralArguments), argv, presets=presets,
        defaults=TRAINER_DEFAULTS, output_dir="runs/speech_ctc_{model_type}")
    if args.model_type not in ("wav2vec2", "lstm"):
        raise hf_spectral.SpectralError(f"--model_type {args.model_type!r}: choose wav2vec2 or lstm")
    data, data_label = load_data(args, training_args.seed)
    data["test"] = data["test"].select(range(min(args.max_eval_samples, len(data["test"]))))
    data = data.map(lambda row: {"text": transcript(row["text"])})
    processor = build_processor(data["train"]["text"], training_args.output_dir)

    def prepare(row):
        return {"input_values": processor.feature_extractor(row["audio"], sampling_rate=16_000).input_values[0],
                "labels": processor.tokenizer(row["text"]).input_ids, "input_length": len(row["audio"])}

    data = data.map(prepare, remove_columns=data["train"].column_names)
    set_seed(training_args.seed)  # the model's initialization (the Trainer seeds only a model_init)
    model = build_model(args, processor)
    # the paper decays ALL parameters (the Trainer's default optimizer exempts biases and norms)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training_args.learning_rate, weight_decay=training_args.weight_decay,
                                  betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon)
    per_step = training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["test"],
                      data_collator=CTCCollator(processor), processing_class=processor, optimizers=(optimizer, None),
                      compute_metrics=hf_spectral.ctc_metrics(processor.tokenizer.get_vocab()),
                      preprocess_logits_for_metrics=hf_spectral.ctc_argmax,
                      callbacks=spectral.callbacks(steps_per_epoch=max(1, len(data["train"]) // per_step),
                                                   epochs=math.ceil(training_args.num_train_epochs)))
    hf_spectral.attach_console(trainer, ["eval_cer", "eval_wer"])
    start = time.time()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    wall = time.time() - start
    if not any("eval_cer" in e and e.get("step") == trainer.state.global_step for e in trainer.state.log_history):
        trainer.evaluate()  # the final metric, when the last step was not an evaluation step
    trainer.save_model()  # model + processor (vocab.json, tokenizer and feature-extractor configs)
    trainer.save_state()
    print(f"data: {data_label}; {len(data['train'])} train / {len(data['test'])} eval utterances")
    if not trainer.is_world_process_zero():
        return None
    kind = "Wav2Vec2ForCTC" if args.model_type == "wav2vec2" else "bidirectional LSTM on power-mel features"
    return hf_spectral.finish_run(training_args.output_dir, recipe=f"speech_ctc_{args.model_type}", metric="eval_cer",
                                  higher_is_better=False, metric_label="character error rate",
                                  card_fields={"model_summary": f"A {kind} ({args.model_preset} preset) trained from "
                                               f"scratch with character CTC on {data_label} by `recipes/speech_ctc.py` "
                                               "of hf-spectral; its processor is saved beside it.",
                                               "model_type": f"{kind}, CTC over characters",
                                               "training_details": f"AdamW lr {training_args.learning_rate}, weight decay "
                                               f"{training_args.weight_decay} on all parameters, "
                                               f"{training_args.lr_scheduler_type.value} schedule, {trainer.state.global_step} "
                                               f"steps of {training_args.per_device_train_batch_size}, {wall:.0f} s."},
                                  title=f"Speech CTC ({args.model_type}, {args.model_preset}; {data_label})",
                                  log_history=trainer.state.log_history, alignment=spectral.spectra_alignment,
                                  model_card_copy=spectral.model_card_copy, train_seconds=wall)


if __name__ == "__main__":
    hf_spectral.run_main(main)
