"""recipes/image_classification.py: data, the paper's models (vs float64 numpy), presets, and tiny end-to-end runs
(ViT, ResNet, VGG, MLP; an imagefolder as --train_dir and as --dataset_name; --random_labels)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import load_recipe

import hf_spectral


@pytest.fixture(scope="module")
def ic():
    return load_recipe("image_classification")


TINY = ["--max_train_samples", "60", "--image_size", "16", "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "32", "--disable_tqdm", "true"]


def run(ic, tmp_path, *flags: str):
    out = tmp_path / "run"
    summary = ic.main(["--output_dir", str(out), *TINY, *flags])
    return out, summary


def assert_wrote_a_tracked_run(out, summary, min_snapshots: int = 3) -> None:
    """The contract of every recipe's smoke test: record, report, model card, a finite eval metric."""
    dynamics = hf_spectral.dynamics_from_source(str(out / "spectral"))
    assert len(dynamics.summary) >= min_snapshots and dynamics.summary["step"].iloc[0] == 0  # init is tracked
    assert (out / "report" / "index.html").is_file()
    card = (out / "README.md").read_text()
    assert "effective rank" in card.lower()
    assert math.isfinite(summary.final_metric) and 0.0 <= summary.final_metric <= 1.0
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()


# --- data ------------------------------------------------------------------------------------------


def test_digits_upsampled_to_rgb_and_normalized(ic):
    from sklearn.datasets import load_digits

    args, *_ = ic.parse_args([])
    data = ic.load_images(args)
    digits = load_digits()
    assert len(data) == 1797 and data.features["label"].names == [str(d) for d in range(10)]
    assert list(data["label"])[:50] == digits.target[:50].tolist()
    pixels = ic.image_processor(32)([data[i]["image"].convert("RGB") for i in range(5)], return_tensors="pt")
    x = pixels["pixel_values"].double().numpy()
    assert x.shape == (5, 3, 32, 32) and x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x[:, 0], x[:, 1])  # grey: three equal channels
    # 4x4 average pooling of the upsampled image recovers the 8x8 digit (scaled 0..16 -> -1..1)
    pooled = x[:, 0].reshape(5, 8, 4, 8, 4).mean(axis=(2, 4))
    original = digits.images[:5] / 16 * 2 - 1
    assert np.corrcoef(pooled.ravel(), original.ravel())[0, 1] > 0.97
    assert np.abs(pooled - original).mean() < 0.2  # bilinear upsampling smooths the strokes


def test_random_labels_are_permuted_before_the_split(ic):
    args, targs, *_ = ic.parse_args(["--random_labels", "--max_train_samples", "300"])
    got = ic.make_splits(args, seed=targs.seed)
    full = ic.load_images(args)
    expected = hf_spectral.experiments.permute_labels(full, seed=12345).train_test_split(test_size=0.1, seed=targs.seed)
    assert list(got["train"]["label"]) == list(expected["train"]["label"])
    assert list(got["validation"]["label"]) == list(expected["test"]["label"])
    # not the same as permuting the training split after splitting
    split_first = full.train_test_split(test_size=0.1, seed=targs.seed)
    assert list(got["train"]["label"]) != list(hf_spectral.experiments.permute_labels(split_first["train"])["label"])
    # the same images, the same multiset of labels over both splits, most labels changed
    true = ic.make_splits(ic.parse_args(["--max_train_samples", "300"])[0], seed=targs.seed)
    assert sorted(list(got["train"]["label"]) + list(got["validation"]["label"])) == sorted(list(full["label"]))
    assert np.mean(np.array(list(got["train"]["label"])) != np.array(list(true["train"]["label"]))) > 0.7


# --- models ----------------------------------------------------------------------------------------


def test_mlp_forward_matches_numpy(ic):
    args, *_ = ic.parse_args(["--model_type", "mlp", "--model_preset", "paper"])
    model = ic.build_model(args, [str(d) for d in range(10)]).eval()
    sizes = [(p.shape[0], p.shape[1]) for n, p in model.named_parameters() if n.endswith("weight")]
    assert sizes == [(256, 3072), (256, 256), (256, 256), (10, 256)]  # the paper's 3072→256→256→256→10
    x = torch.randn(4, 3, 32, 32)
    h = x.double().numpy().reshape(4, -1)
    for i, layer in enumerate(model.layers):
        h = h @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        h = np.maximum(h, 0) if i < 3 else h
    np.testing.assert_allclose(model(pixel_values=x).logits.detach().double().numpy(), h, rtol=1e-4, atol=1e-5)


def test_paper_vgg16_bn_shape_and_torch_default_init(ic):
    args, *_ = ic.parse_args(["--model_type", "vgg", "--model_preset", "paper"])
    model = ic.build_model(args, [str(d) for d in range(10)])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [c.out_channels for c in convs] == widths
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    expected = sum(o * i * 9 + o + 2 * o for i, o in zip([3] + widths, widths)) + 512 * 10 + 10  # conv + BN + fc
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)
    w = convs[5].weight  # torch's default init: kaiming-uniform(a=√5) = U(±1/√fan_in), not N(0, 0.02)
    bound = 1 / math.sqrt(w[0].numel())
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_saved_vgg_matrices_and_batchnorm_buffers(ic, tmp_path):
    """Analyzed from its folder (its model type unknown to transformers: the generic rules), a VGG gives its 13
    flattened convs + the classifier; BatchNorm weights and running statistics are never matrices; alignment
    pairs consecutive layers (conv → conv at the kernel centre, last conv → classifier)."""
    args, *_ = ic.parse_args(["--model_type", "vgg"])
    model = ic.build_model(args, [str(d) for d in range(10)])
    model.save_pretrained(tmp_path / "vgg")
    snapshot = hf_spectral.analyze(str(tmp_path / "vgg"), alignment=True, progress=False)
    rows = snapshot.matrices.set_index("name")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert list(rows.index) == [f"blocks.{i}.conv.weight" for i in range(13)] + ["classifier.weight"]
    assert [(r, c) for r, c in zip(rows["rows"], rows["cols"])][:13] == [(m.out_channels, m.in_channels * 9) for m in convs]
    assert not any(".bn." in name for name in snapshot.table["name"])  # neither as matrices nor as skipped rows
    modes = list(snapshot.alignment["mode"])
    assert modes == ["conv_centre"] * 12 + ["out_in"]
    assert list(snapshot.alignment["next"])[-1] == "classifier.weight"


def test_presets_and_explicit_flags(ic):
    _, vgg, *_ = ic.parse_args(["--model_type", "vgg", "--model_preset", "paper"])
    assert (vgg.optim, vgg.learning_rate, vgg.weight_decay, vgg.num_train_epochs) == ("sgd", 0.1, 1e-4, 164)
    assert vgg.optim_args == "momentum=0.9" and vgg.per_device_train_batch_size == 128 and vgg.max_grad_norm == 0.0
    _, mlp, *_ = ic.parse_args(["--model_type", "mlp", "--model_preset", "paper", "--learning_rate", "0.01"])
    assert (mlp.learning_rate, mlp.weight_decay, mlp.num_train_epochs, mlp.lr_scheduler_type) == (0.01, 0.0, 300, "constant")
    _, vit, *_ = ic.parse_args(["--model_type", "vit", "--weight_decay", "0"])
    assert vit.optim == "adamw_torch" and vit.weight_decay == 0.0


def test_sgd_momentum_decay_on_all_parameters_and_step_schedule(ic):
    args, targs, *_ = ic.parse_args(["--model_type", "vgg"])
    model = ic.build_model(args, [str(d) for d in range(10)])
    optimizer, schedule = ic.optimizer_and_schedule(args, targs, model, total_steps=164)
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["lr"]) == (0.9, 1e-4, 0.1)
    assert len(group["params"]) == len(list(model.parameters()))  # biases and BatchNorm decayed too (the paper)
    lrs = []
    for _ in range(164):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[81] == pytest.approx(0.1) and lrs[82] == pytest.approx(0.01)  # x0.1 at epochs 82/123/160 of 164
    assert lrs[123] == pytest.approx(1e-3) and lrs[160] == pytest.approx(1e-4)


# --- tiny runs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["vit", "resnet", "vgg", "mlp"])
def test_tiny_run(ic, tmp_path, model_type):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out, summary = run(ic, tmp_path, "--model_type", model_type)
    assert_wrote_a_tracked_run(out, summary)
    model = AutoModelForImageClassification.from_pretrained(out).eval()  # model, config and processor reload
    processor = AutoImageProcessor.from_pretrained(out)
    x = processor([Image.new("RGB", (8, 8), (255, 255, 255))], return_tensors="pt")["pixel_values"]
    assert x.shape == (1, 3, 16, 16) and model(pixel_values=x).logits.shape == (1, 10)


def write_imagefolder(root, classes=("circle", "square"), per_class: int = 10):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((12, 12, 3)) * 80 + 160 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_imagefolder_run_with_random_labels(ic, tmp_path):
    folder = write_imagefolder(tmp_path / "shapes")
    out, summary = run(ic, tmp_path, "--model_type", "mlp", "--train_dir", str(folder), "--random_labels")
    assert_wrote_a_tracked_run(out, summary)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "circle", "1": "square"}


def test_dataset_name_loads_a_local_folder_like_train_dir(ic, tmp_path):
    """--dataset_name goes through datasets.load_dataset (a Hub id, or here a local imagefolder)."""
    folder = write_imagefolder(tmp_path / "shapes", per_class=4)
    by_name = ic.load_images(ic.parse_args(["--dataset_name", str(folder)])[0])
    by_dir = ic.load_images(ic.parse_args(["--train_dir", str(folder)])[0])
    assert len(by_name) == 8 and by_name.column_names == ["image", "label"]
    assert list(by_name["label"]) == list(by_dir["label"]) and sorted(list(by_name["label"])) == [0] * 4 + [1] * 4
    expected = np.asarray(Image.open(sorted((folder / "square").glob("*.png"))[0]))
    assert any(np.array_equal(np.asarray(im), expected) for im in by_name["image"])
    with pytest.raises(hf_spectral.SpectralError, match="no column 'fine_label'.*--label_column"):
        ic.load_images(ic.parse_args(["--dataset_name", str(folder), "--label_column", "fine_label"])[0])


def test_track_spectra_false_trains_without_record(ic, tmp_path):
    out, summary = run(ic, tmp_path, "--model_type", "mlp", "--track_spectra", "false")
    assert (out / "model.safetensors").is_file() and not (out / "spectral").exists()
