#!/usr/bin/env python
"""Image classification with the HF Trainer, tracked by hf_spectral: ViT, ResNet, and the paper's VGG-16-BN and MLP.

Yunis et al. (arXiv 2408.11804) train VGG-16-BN on CIFAR-10 and report that the normalized effective rank of nearly
every weight matrix falls during training (finding 2), more with more weight decay (finding 5), and less with random
labels (finding 7, their 4-layer MLP). This trains any of four models on any image dataset, then writes the dynamics
report, the model card and a console summary.

    python recipes/image_classification.py --model_type vgg                 # offline: sklearn's digits, 32x32 RGB
    python recipes/image_classification.py --model_type mlp --random_labels # the random-label experiment
    python recipes/image_classification.py --model_type vgg --model_preset paper --dataset_name uoft-cs/cifar10
    python recipes/image_classification.py --model_type resnet --train_dir path/to/imagefolder
    accelerate launch --multi_gpu --num_processes 2 recipes/image_classification.py --model_type vit
    python recipes/image_classification.py --branch_from RUN/checkpoint-26 --seed 1 --split_seed 42 --output_dir RUN-b1  # LMC

`--model_preset paper`: the paper's models and settings (VGG: SGD momentum 0.9, lr 0.1, wd 1e-4, lr x0.1 at epochs
82/123/160 of 164; MLP: SGD momentum 0.9, constant lr 1e-3, wd 0, 300 epochs; batch 128, no augmentation, 10% of
the training set held out). Explicit TrainingArguments flags win over the presets.
"""

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModelForImageClassification, HfArgumentParser, PretrainedConfig, PreTrainedModel,
                          ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments, ViTConfig,
                          ViTForImageClassification, ViTImageProcessorPil, set_seed)
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

import hf_spectral

# --- 1. Arguments: the recipe's own flags, and TrainingArguments defaults per model type and preset ---

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]  # the authors' cifar_vgg_16
MODELS = {  # model configuration per model type and preset; "tiny" trains in minutes on 2 CPU cores
    "vgg": {"tiny": {"plan": [c // 4 if c != "M" else c for c in VGG16]}, "paper": {"plan": VGG16}},
    "mlp": {"tiny": {"hidden_sizes": [64, 64, 64]}, "paper": {"hidden_sizes": [256, 256, 256]}},  # 3072→256→256→256→10
    "vit": {"tiny": dict(patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
            "paper": dict(patch_size=4, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536)},
    "resnet": {"tiny": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic"),
               "paper": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")},
}
PAPER_SGD = dict(optim="sgd", optim_args="momentum=0.9", learning_rate=0.1, weight_decay=1e-4, lr_schedule="step")
OPTIMIZATION = {  # docs/definitions.md §7; ViT/ResNet are our HF analogues (ResNet trained as the paper's VGG)
    "vgg": PAPER_SGD, "resnet": PAPER_SGD,
    "mlp": dict(optim="sgd", optim_args="momentum=0.9", learning_rate=1e-3, weight_decay=0.0, lr_scheduler_type="constant"),
    "vit": dict(optim="adamw_torch", learning_rate=1e-3, weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=0.05),
}
EPOCHS = {"tiny": {"vgg": 20, "resnet": 30, "mlp": 100, "vit": 20}, "paper": {"vgg": 164, "resnet": 164, "mlp": 300, "vit": 164}}


@dataclass
class ImageArguments:
    model_type: str = field(default="vgg", metadata={"choices": sorted(MODELS)})
    model_preset: str = field(default="tiny", metadata={"choices": ["tiny", "paper"], "help": "Model size and schedule."})
    dataset_name: str | None = field(default=None, metadata={"help": "load_dataset name, e.g. uoft-cs/cifar10 (default: digits)."})
    dataset_config_name: str | None = None
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder: <train_dir>/<class>/<image>."})
    image_column: str | None = field(default=None, metadata={"help": "Default: the first Image column."})
    label_column: str = "label"
    image_size: int = field(default=32, metadata={"help": "Images are resized to this (digits: 8 -> 32)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the training set held out."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N images (quick tests)."})
    random_labels: bool = field(default=False, metadata={"help": "A fixed permutation of all labels, before the split."})
    label_seed: int = 12345
    split_seed: int | None = field(default=None, metadata={"help": "Seed of the train/val split (default: --seed; keep a "
                                                               "branch's or rewound run's split that of its trunk)."})
    lr_schedule: str | None = field(default=None, metadata={"help": "'step': the paper's x0.1 decays, else --lr_scheduler_type."})


TRAINER_DEFAULTS = dict(  # as the authors: batch 128, no gradient clipping, their checkpoints; the transform needs "image"
    per_device_train_batch_size=128, per_device_eval_batch_size=256, max_grad_norm=0.0, eval_strategy="epoch", logging_strategy="epoch",
    save_strategy="no", report_to="none", remove_unused_columns=False, dataloader_pin_memory=False, spectra_schedule="paper")


def parse_args(argv: list[str] | None = None) -> tuple[ImageArguments, TrainingArguments, hf_spectral.SpectralArguments,
                                                       hf_spectral.ExperimentArguments]:
    """The command line (or `argv`): the recipe's defaults for the model type and preset, then explicit flags."""
    known, _ = HfArgumentParser(ImageArguments, add_help=False).parse_known_args(argv)
    defaults = {**TRAINER_DEFAULTS, **OPTIMIZATION[known.model_type], "num_train_epochs": EPOCHS[known.model_preset][known.model_type],
                "spectra_alignment": known.model_type in ("vgg", "mlp"),  # the paper's sequential nets: consecutive layers
                # without use_cpu, every process of a CPU launch (torchrun, accelerate --multi_gpu) trains alone
                "use_cpu": not torch.accelerator.is_available()}
    types = (ImageArguments, TrainingArguments, hf_spectral.SpectralArguments, hf_spectral.ExperimentArguments)
    return hf_spectral.parse_recipe_args(types, argv, defaults=defaults, output_dir="runs/image_classification_{model_type}")


# --- 2. Data: one labelled image dataset, random labels before the split, an image processor -----


def digits_dataset() -> datasets.Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (16 grey levels) as 8-bit greyscale images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    return datasets.Dataset.from_dict({"image": list(images), "label": digits.target.tolist()}, features=features)


def load_images(args: ImageArguments) -> datasets.Dataset:
    """The full training set with columns "image" and "label" (digits, a Hub dataset or an imagefolder)."""
    if args.train_dir:
        data = datasets.load_dataset("imagefolder", data_dir=args.train_dir, split="train")
    elif args.dataset_name:
        data = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split="train")
    else:
        data = digits_dataset()
    image = args.image_column or next((c for c, f in data.features.items() if isinstance(f, datasets.Image)), None)
    for column, what in ((image, "--image_column"), (args.label_column, "--label_column")):
        if column not in data.column_names:
            raise hf_spectral.SpectralError(f"{args.train_dir or args.dataset_name or 'digits'}: no column {column!r} "
                                            f"(columns: {', '.join(data.column_names)}); pass {what}")
    data = data.select_columns([image, args.label_column]).rename_columns({image: "image", args.label_column: "label"})
    if not isinstance(data.features["label"], datasets.ClassLabel):  # ints or strings: ids 0..K-1 with names
        data = data.class_encode_column("label")
    if args.max_train_samples:
        data = data.select(range(min(args.max_train_samples, len(data))))
    return data


def make_splits(args: ImageArguments, seed: int) -> datasets.DatasetDict:
    """"train" / "validation"; --random_labels: one fixed permutation of ALL targets before the split (as the authors)."""
    data = load_images(args)
    if args.random_labels:
        data = hf_spectral.experiments.permute_labels(data, "label", seed=args.label_seed)
    splits = data.train_test_split(test_size=args.validation_fraction, seed=seed)
    return datasets.DatasetDict(train=splits["train"], validation=splits["test"])


def image_processor(size: int) -> ViTImageProcessorPil:
    """Resize, scale to [0, 1], normalize to [-1, 1]; saved with the model (AutoImageProcessor.from_pretrained)."""
    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


# --- 3. Models: ViT and ResNet from transformers; the paper's VGG and MLP as small PreTrainedModels ---


class PaperVGGConfig(PretrainedConfig):
    """The authors' CIFAR VGG: `plan` of 3x3 convs (+ BatchNorm, ReLU) and 2x2 max pools ("M"), global average pool, Linear."""
    model_type = "paper_vgg"

    def __init__(self, plan: list = VGG16, num_channels: int = 3, batch_norm: bool = True, **kwargs):
        self.plan, self.num_channels, self.batch_norm = list(plan), num_channels, batch_norm
        super().__init__(**kwargs)


class PaperMLPConfig(PretrainedConfig):
    """The authors' MLP: flattened pixels → `hidden_sizes` Linear+ReLU layers → a Linear to the labels."""
    model_type = "paper_mlp"

    def __init__(self, input_size: int = 3072, hidden_sizes: list = (256, 256, 256), **kwargs):
        self.input_size, self.hidden_sizes = input_size, list(hidden_sizes)
        super().__init__(**kwargs)


class PaperModel(PreTrainedModel):
    """What both paper models share: torch's default init (as the authors) and the classification loss."""
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):  # torch's reset_parameters, through transformers' init
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        else:
            super()._init_weights(module)  # BatchNorm: weight 1, bias 0, fresh running statistics

    def output(self, logits: torch.Tensor, labels: torch.Tensor | None) -> ImageClassifierOutput:
        return ImageClassifierOutput(loss=None if labels is None else F.cross_entropy(logits, labels), logits=logits)


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, batch_norm: bool, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bn(self.conv(x))))


class PaperVGGForImageClassification(PaperModel):
    config_class = PaperVGGConfig

    def __init__(self, config: PaperVGGConfig):
        super().__init__(config)
        widths = [c for c in config.plan if c != "M"]
        pools = [i + 1 < len(config.plan) and config.plan[i + 1] == "M" for i, c in enumerate(config.plan) if c != "M"]
        self.blocks = nn.Sequential(*(ConvBlock(a, b, config.batch_norm, p)
                                      for a, b, p in zip([config.num_channels] + widths, widths, pools)))
        self.classifier = nn.Linear(widths[-1], config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return self.output(self.classifier(F.adaptive_avg_pool2d(self.blocks(pixel_values), 1).flatten(1)), labels)


class PaperMLPForImageClassification(PaperModel):
    config_class = PaperMLPConfig

    def __init__(self, config: PaperMLPConfig):
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes, config.num_labels]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        x = pixel_values.flatten(1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.output(self.layers[-1](x), labels)


for _config, _model in ((PaperVGGConfig, PaperVGGForImageClassification), (PaperMLPConfig, PaperMLPForImageClassification)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForImageClassification.register(_config, _model, exist_ok=True)


def build_model(args: ImageArguments, labels: list[str]) -> PreTrainedModel:
    """A freshly initialized model of `args.model_type` and `args.model_preset` for these labels."""
    names = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    preset = MODELS[args.model_type][args.model_preset]
    if args.model_type == "vit":
        return ViTForImageClassification(ViTConfig(image_size=args.image_size, num_channels=3, **preset, **names))
    if args.model_type == "resnet":
        return ResNetForImageClassification(ResNetConfig(num_channels=3, **preset, **names))
    if args.model_type == "vgg":
        return PaperVGGForImageClassification(PaperVGGConfig(**preset, **names))
    return PaperMLPForImageClassification(PaperMLPConfig(input_size=3 * args.image_size**2, **preset, **names))


# --- 4. Training: all parameters decayed (as the paper), the paper's step decay, snapshots per epoch ----


def optimizer_and_schedule(args: ImageArguments, training_args: TrainingArguments, model: nn.Module, total_steps: int):
    """The optimizer --optim names (the Trainer's class and kwargs) over ALL parameters, as the authors (the Trainer's
    default exempts biases and norms from decay); --lr_schedule step: x0.1 at epochs 82/123/160 of 164, scaled to the run."""
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    optimizer = optimizer_cls(model.parameters(), **{"weight_decay": training_args.weight_decay, **kwargs})
    if args.lr_schedule != "step":
        return optimizer, None
    milestones = [round(epoch / 164 * total_steps) for epoch in (82, 123, 160)]
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)


def main(argv: list[str] | None = None) -> hf_spectral.RunSummary | None:
    """Train, save model + image processor; on the main process write the report, model card and summary."""
    args, training, spectral, experiment = parse_args(argv)
    set_seed(training.seed)
    splits = make_splits(args, training.seed if args.split_seed is None else args.split_seed)
    processor = image_processor(args.image_size)

    def transform(batch: dict) -> dict:
        pixels = processor([im.convert("RGB") for im in batch["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch["label"]}

    train, val = splits["train"].with_transform(transform), splits["validation"].with_transform(transform)
    model = build_model(args, splits["train"].features["label"].names)
    world = training.world_size * training.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(len(train) / (training.per_device_train_batch_size * world)))
    total = training.max_steps if training.max_steps > 0 else math.ceil(training.num_train_epochs * steps_per_epoch)
    trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=val, processing_class=processor,
                      compute_metrics=hf_spectral.accuracy_metrics, optimizers=optimizer_and_schedule(args, training, model, total),
                      callbacks=spectral.callbacks(steps_per_epoch=steps_per_epoch, epochs=math.ceil(total / steps_per_epoch)))
    hf_spectral.attach_console(trainer, "eval_accuracy", every=steps_per_epoch * max(1, total // steps_per_epoch // 25))
    start = time.time()
    experiment.train(trainer)  # from scratch, --resume_from_checkpoint, --branch_from or --rewind_to
    wall = time.time() - start
    trainer.save_model()  # model + config + image processor: from_pretrained(output_dir) works
    if not trainer.is_world_process_zero():
        return None
    setting = (f"{args.model_type} ({args.model_preset}), {args.train_dir or args.dataset_name or 'digits (8x8 -> 32x32)'}"
               f"{', random labels' if args.random_labels else ''}, "
               f"{training.optim.value} lr {training.learning_rate:g}, wd {training.weight_decay:g}, seed {training.seed}")
    details = (f"`recipes/image_classification.py`: {setting}; {training.num_train_epochs:g} epochs of batch "
               f"{training.per_device_train_batch_size}, lr schedule {args.lr_schedule or training.lr_scheduler_type.value}.")
    return hf_spectral.finish_run(
        training.output_dir, recipe="image_classification", metric="eval_accuracy", metric_label="validation accuracy",
        title=setting, log_history=trainer.state.log_history, alignment=spectral.spectra_alignment, train_seconds=wall,
        start_step=experiment.start_step, model_card_copy=spectral.model_card_copy,
        card_fields={"model_summary": f"A {type(model).__name__} trained {experiment.origin}, its weights' spectra tracked "
                     "by hf-spectral.", "model_type": type(model).__name__, "training_details": details},
        extra={"args": {**asdict(args), **asdict(spectral), **asdict(experiment), **training.to_dict()}})


if __name__ == "__main__":
    hf_spectral.run_main(main, sys.argv[1:])
