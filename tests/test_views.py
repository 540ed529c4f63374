"""Views: every ≥2-D tensor becomes a matrix or a reasoned skip; each matrix equals an independent numpy
reshape of the model's own module weight (paper-notes §1)."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from hf_spectral.errors import SpectralError
from hf_spectral.tensor_info import TensorInfo
from hf_spectral.views import (
    build_matrix,
    config_from_model,
    module_types_from_config,
    module_types_from_model,
    natural_key,
    plan_matrices,
    rules_for,
)
from hf_spectral.views.modules import _cached_module_types
from hf_spectral.views.registry import FAMILIES
from tiny_models import TinyLSTM, TinyMLP, build_tiny, load_recipe, save_tiny

HF_MODELS = ["gpt2", "bert", "vit", "resnet", "wav2vec2", "unet"]
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
           torch.int8: "I8", torch.bool: "BOOL", torch.uint8: "U8"}


# ----------------------------------------------------------------------------------------- helpers


def infos_of(state: dict[str, torch.Tensor]) -> list[TensorInfo]:
    return [TensorInfo(k, tuple(v.shape), _DTYPES[v.dtype]) for k, v in state.items()]


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    return out


def plan_live(model: nn.Module, config: dict | None = None, **kw):
    types, _, buffers = module_types_from_model(model)
    state = model.state_dict()
    specs, skipped = plan_matrices(infos_of(state), config=config, module_types=types, buffers=buffers, **kw)
    return specs, skipped, state


def module_and_leaf(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def reference(model: nn.Module, live_name: str) -> np.ndarray:
    """Independent float64 numpy matrix of the model's *effective* weight ``live_name`` (paper-notes §1)."""
    module, leaf = module_and_leaf(model, live_name)
    w = getattr(module, leaf).detach().to(torch.float64).numpy()  # parametrized/pruned: the effective weight
    cls = {c.__name__ for c in type(module).__mro__}
    if "Conv1D" in cls:  # HF GPT-2 Conv1D stores (in, out)
        return w.T
    if cls & {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}:
        w = np.swapaxes(w, 0, 1)
        return w.reshape(w.shape[0], -1)
    if w.ndim > 2 and cls & {"Conv1d", "Conv2d", "Conv3d"}:
        return w.reshape(w.shape[0], -1)
    if w.ndim > 2:  # bare parameter with leading 1-dims (ViT position table)
        w = w.reshape([d for d in w.shape if d != 1] if w.shape[0] == 1 else w.shape)
    return w


def saved_to_live(model: nn.Module, saved: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map checkpoint keys to live names by identical values (transformers 5 renames some keys on save)."""
    live = {n: p.detach() for n, p in model.state_dict().items()}
    out = {}
    for k, t in saved.items():
        if k in live and torch.equal(live[k], t):
            out[k] = k
            continue
        hits = [n for n, p in live.items() if p.shape == t.shape and p.dtype == t.dtype and torch.equal(p, t)]
        if len(hits) == 1:
            out[k] = hits[0]
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny HF model saved with save_pretrained (sharded), with its config and tensors read back."""
    out = {}
    for name in HF_MODELS:
        folder = tmp_path_factory.mktemp(name)
        model = save_tiny(name, folder)
        config = json.loads((folder / "config.json").read_text())
        out[name] = (model, config, read_folder(folder))
    return out


def check_accounted(state: dict[str, torch.Tensor], specs, skipped, prefix: str = "") -> None:
    used = [t for s in specs for t in s.tensors]
    assert len(used) == len(set(used)), "a tensor is used by two matrices"
    skipped_names = {s.name for s in skipped}
    for name, t in state.items():
        if t.dim() >= 2:
            assert name in used or prefix + name in skipped_names, f"{name} {tuple(t.shape)} not accounted for"
        else:
            assert name not in skipped_names and prefix + name not in skipped_names
    for s in skipped:
        assert s.reason, s


# ----------------------------------------------------------------------------------------- HF models


@pytest.mark.parametrize("name", HF_MODELS)
def test_live_model_matrices_equal_module_weights(name):
    model = build_tiny(name)
    specs, skipped, state = plan_live(model, config_from_model(model))
    check_accounted(state, specs, skipped)
    assert specs
    for spec in specs:
        mat = build_matrix(spec, state.__getitem__)
        assert mat.dim() == 2 and tuple(mat.shape) == spec.shape and mat.dtype == torch.float32
        np.testing.assert_allclose(mat.double().numpy(), reference(model, spec.name), rtol=1e-6, atol=1e-7,
                                   err_msg=spec.name)
        assert spec.view == "module"
        assert spec.cost == spec.shape[0] * spec.shape[1] * min(spec.shape)
        assert spec.dtype == "F32"


@pytest.mark.parametrize("name", HF_MODELS)
def test_checkpoint_with_config_module_info(name, saved):
    model, config, tensors = saved[name]
    info = module_types_from_config(config)
    assert info is not None, f"{name}: could not build the model on meta"
    types, order, buffers = info
    specs, skipped = plan_matrices(infos_of(tensors), config=config, module_types=types, buffers=buffers)
    check_accounted(tensors, specs, skipped)
    to_live = saved_to_live(model, tensors)
    for spec in specs:
        assert spec.view == "module", spec
        live = to_live.get(spec.tensors[0])
        if spec.extra.get("composed"):
            live = live.split(".parametrizations.")[0] + ".weight" if ".parametrizations." in live else live
        assert live is not None, spec.name
        np.testing.assert_allclose(build_matrix(spec, tensors.__getitem__).double().numpy(), reference(model, live),
                                   rtol=1e-6, atol=1e-7, err_msg=spec.name)
    # order = named_parameters order of the model (through the saved-name aliases)
    live_order = [n for n, _ in model.named_parameters()]
    positions = [live_order.index(to_live[s.tensors[0]]) for s in specs]
    assert positions == sorted(positions)


def test_checkpoint_without_module_info_uses_registry_and_defaults(saved):
    _, config, tensors = saved["gpt2"]
    specs, _ = plan_matrices(infos_of(tensors), config=config)
    by = {s.name: s for s in specs}
    c_fc = by["transformer.h.0.mlp.c_fc.weight"]
    assert (c_fc.kind, c_fc.view, c_fc.shape, c_fc.tensor_shape) == ("conv1d_hf", "registry", (128, 32), (32, 128))
    np.testing.assert_array_equal(build_matrix(c_fc, tensors.__getitem__).numpy(),
                                  tensors["transformer.h.0.mlp.c_fc.weight"].numpy().T)
    assert by["transformer.wte.weight"].kind == "embedding"
    # GPT-2 is known completely: its other 2-D weights are Linear layers, in named_parameters order
    assert (by["lm_head.weight"].view, by["lm_head.weight"].kind) == ("registry", "linear")
    names = [s.name for s in specs]
    assert names[:3] == ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight"]
    assert names[-1] == "lm_head.weight"

    # an unknown model type: 2-D as stored, ≥3-D a plain conv (the documented defaults), natural name order
    unknown = {**config, "model_type": "no_such_model_type"}
    specs, _ = plan_matrices(infos_of(tensors), config=unknown)
    by = {s.name: s for s in specs}
    assert (by["lm_head.weight"].view, by["lm_head.weight"].kind) == ("default", "matrix")
    names = [s.name for s in specs]
    # generic order: token then position embeddings first, heads last, natural order in between
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"] and names[-1] == "lm_head.weight"
    assert names[2:-1] == sorted(names[2:-1], key=natural_key)

    _, config, tensors = saved["unet"]
    specs, _ = plan_matrices(infos_of(tensors), config=config)
    conv = next(s for s in specs if s.name == "down_blocks.1.resnets.0.conv1.weight")
    assert (conv.kind, conv.view, conv.shape, conv.extra["kernel_size"]) == ("conv", "registry", (32, 144), (3, 3))
    np.testing.assert_array_equal(build_matrix(conv, tensors.__getitem__).numpy(),
                                  tensors[conv.name].numpy().reshape(32, -1))
    specs, _ = plan_matrices(infos_of(tensors), config={**config, "_class_name": "NoSuchUNet"})
    conv = next(s for s in specs if s.name == "down_blocks.1.resnets.0.conv1.weight")
    assert (conv.kind, conv.view, conv.shape) == ("conv", "default", (32, 144))


def live_reference(model: nn.Module, to_live: dict[str, str], spec) -> np.ndarray:
    live = to_live[spec.tensors[0]]
    if spec.extra.get("composed") and ".parametrizations." in live:
        live = live.split(".parametrizations.")[0] + ".weight"
    return reference(model, live)


def assert_planned_from_names_alone(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor],
                                    module_info: tuple | None) -> None:
    """The registry's plan of a checkpoint = the module classes' plan: same matrices, same kinds and shapes,
    each equal to the model's own weight, in ``named_parameters()`` order."""
    assert rules_for(config).complete
    specs, skipped = plan_matrices(infos_of(tensors), config=config)
    check_accounted(tensors, specs, skipped)
    to_live = saved_to_live(model, tensors)
    live_order = [n for n, _ in model.named_parameters()]
    positions = [live_order.index(to_live[s.tensors[0]]) for s in specs]
    assert positions == sorted(positions), [s.name for s in specs]
    for spec in specs:
        assert spec.view == "registry", spec
        np.testing.assert_allclose(build_matrix(spec, tensors.__getitem__).double().numpy(),
                                   live_reference(model, to_live, spec), rtol=1e-6, atol=1e-7, err_msg=spec.name)
    if module_info is not None:
        types, _, buffers = module_info
        expected, expected_skipped = plan_matrices(infos_of(tensors), config=config, module_types=types, buffers=buffers)
        assert [(s.name, s.kind, s.shape, s.tensors, s.extra) for s in specs] == \
               [(s.name, s.kind, s.shape, s.tensors, s.extra) for s in expected]
        assert [s.name for s in skipped] == [s.name for s in expected_skipped]


@pytest.mark.parametrize("name", HF_MODELS)
def test_known_family_checkpoint_planned_from_names_alone(name, saved):
    model, config, tensors = saved[name]
    assert_planned_from_names_alone(model, config, tensors, module_types_from_config(config))



@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_grokking_checkpoint_planned_from_names_alone(positions, tmp_path):
    recipe = load_recipe("grokking")
    torch.manual_seed(0)
    model = recipe.GrokkingTransformer(recipe.GrokkingConfig(p=11, hidden_size=16, intermediate_size=32, layer_norm=True,
                                                             num_hidden_layers=2, position_embedding_type=positions))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "grokking_transformer"
    types, order, buffers = module_types_from_model(model)
    assert_planned_from_names_alone(model, config, read_folder(tmp_path), (types, order, buffers))
    specs, _ = plan_matrices(infos_of(read_folder(tmp_path)), config=config)
    assert specs[0].name == "embed_tokens.weight" and specs[0].kind == "embedding"
    if positions == "learned":  # registered after the tokens: natural name order would put it first
        assert specs[1].name == "embed_positions.weight" and specs[1].kind == "embedding"
    assert [s.name for s in specs[-5:]] == ["layers.1.attn.v.weight", "layers.1.attn.o.weight",
                                            "layers.1.mlp.fc_in.weight", "layers.1.mlp.fc_out.weight", "unembed.weight"]


def test_complete_only_for_configs_whose_modules_were_checked(saved):
    _, config, _ = saved["wav2vec2"]
    assert rules_for(config).complete
    assert not rules_for({**config, "architectures": ["Wav2Vec2ForXVector"]}).complete  # TDNN head, own order
    assert not rules_for({**config, "add_adapter": True}).complete
    assert rules_for({k: v for k, v in config.items() if k != "architectures"}).complete  # AutoModel: checked
    _, config, _ = saved["unet"]
    assert rules_for(config).complete
    assert not rules_for({**config, "down_block_types": ["DownBlock2D", "SkipDownBlock2D"]}).complete
    assert not rules_for({"model_type": "llama"}).complete and not rules_for(None).complete


def meta_checkpoint(config: dict) -> list[TensorInfo]:
    """What a checkpoint of the model ``config`` describes holds (names as saved, shapes, dtypes), from the
    model built on the meta device (no memory, no weights)."""
    from hf_spectral.tensor_info import dtype_code
    from hf_spectral.views.modules import _build_on_meta, _quiet, _saved_names

    with _quiet():
        model = _build_on_meta(config)
    state = model.state_dict()
    saved = _saved_names(model, list(state))
    return [TensorInfo(saved.get(k, k), tuple(v.shape), dtype_code(v.dtype)) for k, v in state.items()]


def assert_registry_plans_like_modules(config: dict) -> int:
    """Registry alone vs the module classes of the built model: same matrices, kinds, shapes, order, skips."""
    infos = meta_checkpoint(config)
    types, _, buffers = module_types_from_config(config)
    by_modules, skipped_m = plan_matrices(infos, config=config, module_types=types, buffers=buffers)
    by_names, skipped_n = plan_matrices(infos, config=config)
    label = config.get("_class_name") or config["architectures"][0]
    assert [(s.name, s.kind, s.shape, s.tensors, s.extra) for s in by_names] == \
           [(s.name, s.kind, s.shape, s.tensors, s.extra) for s in by_modules], label
    # skip reasons name the owning class only when it is known ("vector stored as (1, 1, d) in ViTEmbeddings")
    assert [(s.name, re.sub(r" in \w+", "", s.reason)) for s in skipped_n] == \
           [(s.name, re.sub(r" in \w+", "", s.reason)) for s in skipped_m], label
    return len(by_names)


def transformers_classes(model_type: str) -> list[str]:
    """Every model class transformers exports for ``model_type`` (its config class)."""
    import importlib

    import transformers

    config_class = type(transformers.AutoConfig.for_model(model_type))
    module = importlib.import_module(config_class.__module__.replace(".configuration_", ".modeling_"))
    return sorted(name for name, obj in vars(module).items()
                  if isinstance(obj, type) and getattr(obj, "config_class", None) is config_class
                  and hasattr(transformers, name) and not name.endswith("PreTrainedModel"))


COMPLETE_MODEL_TYPES = [key for fam in FAMILIES if fam.complete for key in fam.keys
                        if key != "grokking_transformer" and not key[0].isupper()]


@pytest.mark.parametrize("model_type", COMPLETE_MODEL_TYPES)
def test_registry_plans_every_checked_class_like_its_modules(model_type):
    """Each transformers class of a family the registry claims to know completely, with default config."""
    import transformers

    base = transformers.AutoConfig.for_model(model_type).to_dict()
    checked = 0
    for arch in transformers_classes(model_type):
        config = {**base, "architectures": [arch]}
        if rules_for(config).complete:  # else planned with module classes: nothing to compare
            checked += assert_registry_plans_like_modules(config) > 0
    assert checked >= 1


@pytest.mark.parametrize("config", [
    {"_class_name": "UNet2DModel"},
    {"_class_name": "UNet2DModel", "block_out_channels": [32, 64, 64], "norm_num_groups": 8, "num_class_embeds": 10,
     "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
     "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]},
    {"_class_name": "UNet2DModel", "block_out_channels": [32, 64], "norm_num_groups": 8, "time_embedding_type": "learned",
     "num_train_timesteps": 10, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
     "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "downsample_type": "resnet", "upsample_type": "resnet"},
    {"_class_name": "UNet2DConditionModel"},
    {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64], "norm_num_groups": 8,
     "cross_attention_dim": 16, "use_linear_projection": True, "num_class_embeds": 5, "transformer_layers_per_block": 2,
     "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
    {"_class_name": "AutoencoderKL"},
    {"_class_name": "AutoencoderKL", "block_out_channels": [32, 64], "norm_num_groups": 8,
     "down_block_types": ["AttnDownEncoderBlock2D"] * 2, "up_block_types": ["AttnUpDecoderBlock2D"] * 2},
], ids=lambda c: c["_class_name"] + ("" if len(c) == 1 else "-variant"))
def test_registry_plans_diffusers_models_like_their_modules(config):
    """No transposed convs or unlisted embeddings in the checked diffusers configs (``complete_when``)."""
    assert rules_for(config).complete
    assert assert_registry_plans_like_modules(config) > 10


def test_vit_bare_parameters(saved):
    model, config, tensors = saved["vit"]
    for types in (None, module_types_from_config(config)[0]):
        specs, skipped = plan_matrices(infos_of(tensors), config=config, module_types=types)
        pos = next(s for s in specs if s.name == "vit.embeddings.position_embeddings")
        assert pos.shape == (17, 32) and pos.kind == "matrix"
        np.testing.assert_array_equal(build_matrix(pos, tensors.__getitem__).numpy(),
                                      model.vit.embeddings.position_embeddings.detach().numpy()[0])
        cls = next(s for s in skipped if s.name == "vit.embeddings.cls_token")
        assert "vector" in cls.reason


def test_gpt2_fused_qkv_split_matches_the_attention_forward():
    model = build_tiny("gpt2")
    specs, _, state = plan_live(model, model.config.to_dict())
    spec = next(s for s in specs if s.name == "transformer.h.0.attn.c_attn.weight")
    assert spec.kind == "fused_qkv" and spec.extra["num_heads"] == 4 and spec.shape == (96, 32)
    assert spec.extra["qkv_split"] == {"q": ((0, 32),), "k": ((32, 64),), "v": ((64, 96),)}
    mat = build_matrix(spec, state.__getitem__).double().numpy()
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(5, 32)
    out = layer(x).detach().double().numpy()  # GPT-2 splits this output into query, key, value along the last dim
    bias = layer.bias.detach().double().numpy()
    for part, ((a, b),) in spec.extra["qkv_split"].items():
        np.testing.assert_allclose(x.double().numpy() @ mat[a:b].T + bias[a:b], out[:, a:b], rtol=1e-5, atol=1e-5)


def test_square_conv1d_transposed_by_module_type():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_inner=16, n_head=2, vocab_size=20, n_positions=8))
    specs, _, state = plan_live(model, model.config.to_dict())
    by = {s.name: s for s in specs}
    for name in ("transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"):
        spec = by[name]
        assert spec.tensor_shape == (16, 16) and spec.kind == "conv1d_hf" and spec.view == "module"
        w = state[name].double().numpy()
        got = build_matrix(spec, state.__getitem__).double().numpy()
        np.testing.assert_array_equal(got, w.T)
        assert not np.allclose(got, w)
    # no module info and no model type: a 2-D tensor is never transposed on a guess from its shape
    specs, _ = plan_matrices(infos_of(state))
    spec = next(s for s in specs if s.name == "transformer.h.0.mlp.c_fc.weight")
    assert spec.view == "default" and spec.kind == "matrix"
    np.testing.assert_array_equal(build_matrix(spec, state.__getitem__).numpy(), state[spec.name].numpy())


class _Deconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 5, kernel_size=(3, 2))
        self.conv3d = nn.Conv3d(2, 4, kernel_size=(1, 2, 3))


def test_conv_transpose_swaps_first_axes():
    torch.manual_seed(0)
    model = _Deconv()
    specs, _, state = plan_live(model)
    up = next(s for s in specs if s.name == "up.weight")
    assert (up.kind, up.tensor_shape, up.shape) == ("conv_transpose", (3, 5, 3, 2), (5, 18))
    w = state["up.weight"].double().numpy()
    np.testing.assert_array_equal(build_matrix(up, state.__getitem__).double().numpy(),
                                  np.transpose(w, (1, 0, 2, 3)).reshape(5, -1))
    c3 = next(s for s in specs if s.name == "conv3d.weight")
    assert (c3.kind, c3.shape, c3.extra["kernel_size"]) == ("conv", (4, 12), (1, 2, 3))
    # without module info a ≥3-D tensor is assumed a plain conv (documented default)
    specs, _ = plan_matrices(infos_of(state))
    up = next(s for s in specs if s.name == "up.weight")
    assert (up.kind, up.view, up.shape) == ("conv", "default", (3, 30))


def test_lstm_shapes_and_gates():
    model = TinyLSTM()
    for types in (module_types_from_model(model)[0], None):
        specs, skipped = plan_matrices(infos_of(model.state_dict()), module_types=types)
        by = {s.name: s for s in specs}
        assert not skipped
        assert (by["lstm.weight_ih_l0"].kind, by["lstm.weight_ih_l0"].shape) == ("lstm_ih", (24, 8))
        assert (by["lstm.weight_hh_l0_reverse"].kind, by["lstm.weight_hh_l0_reverse"].shape) == ("lstm_hh", (24, 6))
        assert by["lstm.weight_ih_l1"].shape == (24, 12)
        assert by["lstm.weight_ih_l1"].extra["gates"] == "ifgo" and by["lstm.weight_ih_l1"].extra["hidden_size"] == 6
        assert by["out.weight"].shape == (5, 12)
    gru = nn.GRU(4, 3)
    specs, _ = plan_matrices(infos_of(gru.state_dict()))
    assert {s.extra.get("gates") for s in specs} == {"rzn"} and all(s.kind == "matrix" for s in specs)


def test_pruned_weight_composed(tmp_path):
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    model = TinyMLP()
    conv = nn.Conv2d(3, 4, 3)
    model.add_module("conv", conv)
    prune.l1_unstructured(model.net[0], "weight", amount=0.5)
    prune.l1_unstructured(conv, "weight", amount=0.3)
    from safetensors.torch import load_file, save_file

    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    state = load_file(str(tmp_path / "m.safetensors"))
    assert "net.0.weight_orig" in state and "net.0.weight_mask" in state and "net.0.weight" not in state
    types, _, buffers = module_types_from_model(model)
    specs, skipped = plan_matrices(infos_of(state), module_types=types, buffers=buffers)
    assert not skipped
    by = {s.name: s for s in specs}
    spec = by["net.0.weight"]
    assert spec.extra["composed"] == "prune" and spec.tensors == ("net.0.weight_orig", "net.0.weight_mask")
    assert spec.kind == "linear" and spec.view == "module"
    got = build_matrix(spec, state.__getitem__).double().numpy()
    np.testing.assert_array_equal(got, model.net[0].weight.detach().double().numpy())
    assert (got == 0).sum() == 16 * 12 // 2
    cspec = by["conv.weight"]
    np.testing.assert_array_equal(build_matrix(cspec, state.__getitem__).double().numpy(),
                                  conv.weight.detach().double().numpy().reshape(4, -1))
    # order: the pruned weight sits where its parameter sits in named_parameters
    assert [s.name for s in specs] == ["net.0.weight", "net.2.weight", "net.4.weight", "conv.weight"]
    # a lone half is skipped with a reason
    lone = [i for i in infos_of(state) if i.name != "net.0.weight_orig"]
    specs, skipped = plan_matrices(lone, module_types=types, buffers=buffers)
    assert "net.0.weight" not in {s.name for s in specs}
    assert [s.name for s in skipped] == ["net.0.weight_mask"] and "pruned" in skipped[0].reason


def test_weight_norm_composed():
    torch.manual_seed(0)
    model = nn.Module()
    with warnings.catch_warnings():  # the deprecated API still writes weight_g / weight_v into checkpoints
        warnings.simplefilter("ignore")
        model.old = torch.nn.utils.weight_norm(nn.Conv1d(3, 4, 5), dim=2)
    model.lin = torch.nn.utils.parametrizations.weight_norm(nn.Linear(6, 7), dim=0)
    model.conv = torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 8, 3), dim=2)
    with torch.no_grad():  # make the magnitudes differ from ‖v‖ so that the composition is visible
        model.lin.parametrizations.weight.original0.mul_(3.0)
        model.conv.parametrizations.weight.original0.mul_(0.5)
        model.old.weight_g.mul_(2.0)
        model.old(torch.randn(1, 3, 9))  # recompute old-style weight
    specs, skipped, state = plan_live(model)
    assert not skipped
    by = {s.name: s for s in specs}
    assert set(by) == {"old.weight", "lin.weight", "conv.weight"}
    for name, module in (("old.weight", model.old), ("lin.weight", model.lin), ("conv.weight", model.conv)):
        spec = by[name]
        assert spec.extra["composed"] == "weight_norm" and spec.view == "module"
        w = module.weight.detach().double().numpy()
        np.testing.assert_allclose(build_matrix(spec, state.__getitem__).double().numpy(), w.reshape(w.shape[0], -1),
                                   rtol=1e-5, atol=1e-6)
    assert by["conv.weight"].shape == (8, 12) and by["lin.weight"].kind == "linear"


def test_skips_with_reasons():
    infos = [
        TensorInfo("q.weight", (8, 8), "I8"),
        TensorInfo("h.0.attn.bias", (1, 1, 16, 16), "F32"),  # old GPT-2 causal mask saved in checkpoints
        TensorInfo("emb.position_ids", (1, 16), "I64"),
        TensorInfo("norm.weight", (4, 4), "F32"),
        TensorInfo("ok.weight", (3, 4), "BF16"),
        TensorInfo("ok.bias", (3,), "F32"),
        TensorInfo("scale", (), "F32"),
    ]
    specs, skipped = plan_matrices(infos, config={"model_type": "gpt2"},
                                   module_types={"norm.weight": "LayerNorm", "ok.weight": "Linear"})
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["q.weight"].startswith("integer/quantized dtype I8")
    assert reasons["h.0.attn.bias"].startswith("buffer")
    assert reasons["emb.position_ids"].startswith("buffer")
    assert reasons["norm.weight"].startswith("normalization")
    assert set(reasons) == {"q.weight", "h.0.attn.bias", "emb.position_ids", "norm.weight"}
    assert [(s.name, s.dtype, s.shape) for s in specs] == [("ok.weight", "BF16", (3, 4))]
    skipped_buf = plan_matrices([TensorInfo("mask", (4, 4), "F32")], buffers={"mask"})[1]
    assert skipped_buf[0].reason.startswith("buffer")


def test_build_keeps_dtype_and_checks_shape():
    spec = plan_matrices([TensorInfo("a.weight", (3, 4), "BF16")])[0][0]
    w = torch.randn(3, 4).to(torch.bfloat16)
    out = build_matrix(spec, {"a.weight": w}.__getitem__)
    assert out.dtype == torch.bfloat16 and torch.equal(out, w)
    with pytest.raises(SpectralError, match="a.weight"):
        build_matrix(spec, {"a.weight": torch.randn(4, 4)}.__getitem__)


# ----------------------------------------------------------------------------------------- selection, order


def test_include_exclude_and_prefix():
    model = build_tiny("gpt2")
    cfg = model.config.to_dict()
    specs, _, _ = plan_live(model, cfg, include=r"attn\.c_attn")
    assert [s.name for s in specs] == ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"]
    specs, _, _ = plan_live(model, cfg, include=[r"wte", r"lm_head"], exclude=r"h\.1\.")
    assert [s.name for s in specs] == ["transformer.wte.weight", "lm_head.weight"]
    specs, _, _ = plan_live(model, cfg, exclude=[r"\.mlp\.", r"attn"])
    assert [s.name for s in specs] == ["transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"]
    specs, _, _ = plan_live(model, cfg, prefix="part/", include=r"^part/lm_head")
    assert [(s.name, s.tensors) for s in specs] == [("part/lm_head.weight", ("lm_head.weight",))]
    with pytest.raises(SpectralError, match=r"select no weight matrix.*transformer\.wte\.weight") as err:
        plan_live(model, cfg, include="no_such_layer")
    assert "\n" not in str(err.value)
    with pytest.raises(SpectralError, match=r"'\(unclosed'"):
        plan_live(model, cfg, exclude="(unclosed")


def test_order_is_named_parameters_order_else_natural():
    for name in ("gpt2", "bert", "wav2vec2", "unet"):
        model = build_tiny(name)
        specs, _, _ = plan_live(model)
        order = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        positions = [order.index(s.tensors[0]) for s in specs]
        assert positions == sorted(positions), name
    infos = [TensorInfo(f"h.{i}.w", (2, 2), "F32") for i in (10, 2, 1, 0)]
    assert [s.name for s in plan_matrices(infos)[0]] == ["h.0.w", "h.1.w", "h.2.w", "h.10.w"]


def test_checkpoint_keys_match_module_names_by_suffix():
    """A bare GPT2Model checkpoint (``h.0...``) against a GPT2LMHeadModel config (``transformer.h.0...``)."""
    model = build_tiny("gpt2")
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k.startswith("transformer.")}
    types, _, buffers = module_types_from_config(model.config.to_dict() | {"architectures": ["GPT2LMHeadModel"]})
    specs, _ = plan_matrices(infos_of(state), config=model.config.to_dict(), module_types=types, buffers=buffers)
    assert [s.name for s in specs][:3] == ["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"]
    assert all(s.view == "module" for s in specs)
    # and the reverse: extra prefix in the checkpoint
    state2 = {"model." + k: v for k, v in model.state_dict().items()}
    specs2, _ = plan_matrices(infos_of(state2), config=model.config.to_dict(), module_types=types)
    assert all(s.view == "module" for s in specs2) and specs2[0].name == "model.transformer.wte.weight"


def test_module_types_from_config_cache_and_failures(saved):
    _, config, _ = saved["gpt2"]
    module_types_from_config(config)
    hits = _cached_module_types.cache_info().hits
    t0 = time.perf_counter()
    types, order, buffers = module_types_from_config(config)
    assert time.perf_counter() - t0 < 0.05 and _cached_module_types.cache_info().hits == hits + 1
    assert types["transformer.h.0.attn.c_attn.weight"] == "Conv1D" and types["lm_head.weight"] == "Linear"
    assert order[0] == "transformer.wte.weight"
    types["x"] = "mutated"  # callers get copies
    assert "x" not in module_types_from_config(config)[0]
    assert module_types_from_config({"model_type": "no_such_model_type"}) is None
    assert module_types_from_config({"_class_name": "DDPMScheduler", "num_train_timesteps": 10}) is None
    assert module_types_from_config({}) is None
    assert module_types_from_config({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 30,
                                     "n_head": 4}) is None  # 30 not divisible by 4: the model refuses, no raise
    _, config, _ = saved["unet"]
    types, _, _ = module_types_from_config(config)
    assert types["conv_in.weight"] == "Conv2d" and types["time_embedding.linear_1.weight"] == "Linear"


def test_module_types_from_model_names():
    model = build_tiny("wav2vec2")
    types, order, buffers = module_types_from_model(model)
    base = "wav2vec2.encoder.pos_conv_embed.conv"
    assert types[f"{base}.parametrizations.weight.original0"] == "Conv1d"
    assert types[f"{base}.weight"] == "Conv1d"
    assert order == [n for n, _ in model.named_parameters(remove_duplicate=False)]
    bert = build_tiny("bert")
    types, _, buffers = module_types_from_model(bert)
    assert types["cls.predictions.decoder.weight"] == "Linear"  # tied to the word embeddings, listed anyway
    assert "bert.embeddings.position_ids" in buffers


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.experts = nn.Parameter(torch.randn(3, 4, 5))  # stacked expert matrices: no generic view
        self.table = nn.Parameter(torch.randn(1, 6, 4))


def test_multihead_attention_and_custom_parameters():
    torch.manual_seed(0)
    model = _Custom()
    specs, skipped, state = plan_live(model, {"num_attention_heads": 2})
    by = {s.name: s for s in specs}
    qkv = by["attn.in_proj_weight"]
    assert (qkv.kind, qkv.shape, qkv.extra["num_heads"]) == ("fused_qkv", (24, 8), 2)
    assert qkv.extra["qkv_split"] == {"q": ((0, 8),), "k": ((8, 16),), "v": ((16, 24),)}
    np.testing.assert_array_equal(build_matrix(qkv, state.__getitem__).numpy(), model.attn.in_proj_weight.detach().numpy())
    assert by["attn.out_proj.weight"].kind == "linear"
    assert (by["table"].kind, by["table"].shape) == ("matrix", (6, 4))
    np.testing.assert_array_equal(build_matrix(by["table"], state.__getitem__).numpy(), model.table.detach().numpy()[0])
    assert [s.name for s in skipped] == ["experts"] and "no known matrix view" in skipped[0].reason


def test_select_not_strict_for_per_part_planning():
    from hf_spectral.views import select

    specs = plan_matrices([TensorInfo("a.weight", (2, 3), "F32")], prefix="vae/")[0]
    assert select(specs, include="unet/", strict=False) == ([], [])
    with pytest.raises(SpectralError, match="vae/a.weight"):
        select(specs, include="unet/")
