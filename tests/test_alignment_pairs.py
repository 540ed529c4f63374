"""Alignment pairs (docs/definitions.md §4): which matrices pair, with which slices, and that every pair's shared
dimension agrees."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_spectral.tensor_info import TensorInfo
from hf_spectral.views import (
    AlignmentPair,
    MatrixSlice,
    alignment_pairs,
    config_from_model,
    module_types_from_config,
    module_types_from_model,
    plan_matrices,
)
from tiny_models import TinyLSTM, TinyMLP, build_tiny, load_recipe, save_tiny


def infos_of(state):
    return [TensorInfo(k, tuple(v.shape), "F32" if v.is_floating_point() else "I64") for k, v in state.items()]


def plan(model, config=None, use_modules=True, **kw):
    types, _, buffers = module_types_from_model(model) if use_modules else (None, None, ())
    return plan_matrices(infos_of(model.state_dict()), config=config, module_types=types, buffers=buffers, **kw)[0]


def config_of(model):
    return config_from_model(model)


def checked_pairs(model, use_modules: bool = True):
    """The planned matrices and alignment pairs of ``model`` (or of the tiny model of that name), the
    pairs checked compatible."""
    model = build_tiny(model) if isinstance(model, str) else model
    cfg = config_of(model)
    specs = plan(model, cfg, use_modules=use_modules)
    pairs = alignment_pairs(specs, config=cfg)
    check_compatible(pairs, specs)
    return specs, pairs


def side_dims(s: MatrixSlice, shapes) -> tuple[int, int]:
    rows, cols = shapes[s.matrix]
    r = rows if s.rows is None else s.rows[1] - s.rows[0]
    c = cols if s.cols is None else s.cols[1] - s.cols[0]
    return r, c


def check_compatible(pairs: list[AlignmentPair], specs) -> None:
    """Independent check of each mode's shared dimension (the alignment math's preconditions)."""
    shapes = {s.name: s.shape for s in specs}
    labels = [p.label for p in pairs]
    assert len(labels) == len(set(labels)), "labels name the pairs in a snapshot: they must be unique"
    for p in pairs:
        assert p.prev.matrix in shapes and p.next.matrix in shapes, p
        pr, pc = side_dims(p.prev, shapes)
        nr, nc = side_dims(p.next, shapes)
        for s, (r, c) in ((p.prev, (pr, pc)), (p.next, (nr, nc))):
            full = shapes[s.matrix]
            if s.rows:
                assert 0 <= s.rows[0] < s.rows[1] <= full[0]
            if s.cols:
                assert 0 <= s.cols[0] < s.cols[1] <= full[1]
        if p.mode == "out_in":
            assert pr == nc, p
        elif p.mode == "in_in":
            assert pc == nc, p
        elif p.mode == "conv_centre":
            k = math.prod(p.extra["kernel_size"])
            assert nc % k == 0 and nc // k == pr, p
        elif p.mode == "qk_heads":
            assert pr == nr and (p.prev.heads is None or pr % p.prev.heads == 0), p
        else:
            raise AssertionError(f"unknown mode {p.mode}")
        assert p.label


def key(p: AlignmentPair):
    return (p.prev.matrix, p.prev.rows, p.next.matrix, p.next.rows, p.next.cols, p.mode)


# ------------------------------------------------------------------------------------------- GPT-2


def test_gpt2_pairs():
    model = build_tiny("gpt2")
    specs, pairs = checked_pairs(model)
    h = "transformer.h"
    expected = [
        ("transformer.wte.weight", None, f"{h}.0.attn.c_attn.weight", None, None, "in_in"),
        (f"{h}.0.attn.c_attn.weight", (0, 32), f"{h}.0.attn.c_attn.weight", (32, 64), None, "qk_heads"),
        (f"{h}.0.attn.c_attn.weight", (64, 96), f"{h}.0.attn.c_proj.weight", None, None, "out_in"),
        (f"{h}.0.attn.c_proj.weight", None, f"{h}.0.mlp.c_fc.weight", None, None, "out_in"),
        (f"{h}.0.mlp.c_fc.weight", None, f"{h}.0.mlp.c_proj.weight", None, None, "out_in"),
        (f"{h}.0.mlp.c_proj.weight", None, f"{h}.1.attn.c_attn.weight", None, None, "out_in"),
        (f"{h}.1.attn.c_attn.weight", (0, 32), f"{h}.1.attn.c_attn.weight", (32, 64), None, "qk_heads"),
        (f"{h}.1.attn.c_attn.weight", (64, 96), f"{h}.1.attn.c_proj.weight", None, None, "out_in"),
        (f"{h}.1.attn.c_proj.weight", None, f"{h}.1.mlp.c_fc.weight", None, None, "out_in"),
        (f"{h}.1.mlp.c_fc.weight", None, f"{h}.1.mlp.c_proj.weight", None, None, "out_in"),
        (f"{h}.1.mlp.c_proj.weight", None, "lm_head.weight", None, None, "out_in"),
    ]
    assert [key(p) for p in pairs] == expected
    qk = pairs[1]
    assert qk.prev.heads == qk.next.heads == 4
    # the same pairs from a checkpoint planned without module info (registry rules only)
    specs2 = plan(model, config_of(model), use_modules=False)
    assert sorted(map(key, alignment_pairs(specs2, config=config_of(model)))) == sorted(expected)


def test_pairs_only_between_planned_matrices():
    model = build_tiny("gpt2")
    cfg = config_of(model)
    specs = plan(model, cfg, exclude=[r"h\.1\.attn\.c_attn", "lm_head"])
    pairs = alignment_pairs(specs, config=cfg)
    names = {s.name for s in specs}
    assert all(p.prev.matrix in names and p.next.matrix in names for p in pairs)
    assert not any("h.1.attn.c_attn" in p.prev.matrix + p.next.matrix for p in pairs)
    assert len(pairs) == 11 - 4  # mlp.c_proj(0)→c_attn(1), Q↔K(1), V(1)→c_proj(1), mlp.c_proj(1)→lm_head
    # prefixed names (a model part of a pipeline) pair the same way
    pref = plan(model, cfg, prefix="text/")
    assert all(p.prev.matrix.startswith("text/") for p in alignment_pairs(pref, config=cfg))
    assert len(alignment_pairs(pref, config=cfg)) == 11


def test_gpt_neox_per_head_layout():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32,
                        vocab_size=30, max_position_embeddings=16, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg)
    cd = cfg.to_dict() | {"architectures": ["GPTNeoXForCausalLM"]}
    types, _, buffers = module_types_from_config(cd)
    state = model.state_dict()
    specs = plan_matrices(infos_of(state), config=cd, module_types=types, buffers=buffers)[0]
    qkv = next(s for s in specs if s.kind == "fused_qkv")
    hd = 8
    assert qkv.extra["qkv_split"]["q"] == ((0, hd), (3 * hd, 4 * hd))
    assert qkv.extra["qkv_split"]["v"] == ((2 * hd, 3 * hd), (5 * hd, 6 * hd))
    # independent check against the model's own split of the fused output: view(..., heads, 3·hd), chunk(3)
    layer = model.gpt_neox.layers[0].attention.query_key_value
    x = torch.randn(3, 16)
    out = layer(x).detach().view(3, 2, 3 * hd)
    q_model = out[..., :hd]  # (tokens, heads, hd)
    w = layer.weight.detach().double().numpy()
    b = layer.bias.detach().double().numpy()
    for head, (a, z) in enumerate(qkv.extra["qkv_split"]["q"]):
        np.testing.assert_allclose(x.double().numpy() @ w[a:z].T + b[a:z], q_model[:, head].double().numpy(),
                                   rtol=1e-5, atol=1e-5)
    pairs = alignment_pairs(specs, config=cd)
    check_compatible(pairs, specs)
    qk = [p for p in pairs if p.mode == "qk_heads"]
    assert [(p.prev.rows, p.next.rows) for p in qk] == [((0, hd), (hd, 2 * hd)), ((3 * hd, 4 * hd), (4 * hd, 5 * hd))]
    vo = [p for p in pairs if p.prev.matrix == qkv.name and p.mode == "out_in"]
    assert [(p.prev.rows, p.next.cols) for p in vo] == [((2 * hd, 3 * hd), (0, hd)), ((5 * hd, 6 * hd), (hd, 2 * hd))]


# ------------------------------------------------------------------------------------------- encoders


def _encoder_expected(emb, layer_fmt, roles, n_layers, emb_mode, head):
    out = []
    q, k, v, o, mi, mo = (roles[r] for r in ("q", "k", "v", "o", "mlp_in", "mlp_out"))
    prev, mode = emb, emb_mode
    for i in range(n_layers):
        L = layer_fmt.format(i)
        for x in (q, k, v):
            out.append((prev, None, L + x, None, None, mode))
        out.append((L + q, None, L + k, None, None, "qk_heads"))
        out.append((L + v, None, L + o, None, None, "out_in"))
        out.append((L + o, None, L + mi, None, None, "out_in"))
        out.append((L + mi, None, L + mo, None, None, "out_in"))
        prev, mode = L + mo, "out_in"
    out.extend((a, None, b, None, None, "out_in") for a, b in zip([prev] + head[:-1], head))
    return out


@pytest.mark.parametrize("use_modules", [True, False])
def test_bert_pairs(use_modules):
    specs, pairs = checked_pairs("bert", use_modules=use_modules)
    roles = {"q": "attention.self.query.weight", "k": "attention.self.key.weight", "v": "attention.self.value.weight",
             "o": "attention.output.dense.weight", "mlp_in": "intermediate.dense.weight", "mlp_out": "output.dense.weight"}
    expected = _encoder_expected("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.{}.", roles, 2, "in_in",
                                 ["cls.predictions.transform.dense.weight", "cls.predictions.decoder.weight"])
    assert sorted(map(key, pairs)) == sorted(expected)
    qk = next(p for p in pairs if p.mode == "qk_heads")
    assert qk.prev.heads == qk.next.heads == 4 and qk.prev.matrix != qk.next.matrix


def test_vit_pairs_live_and_checkpoint(tmp_path):
    model = save_tiny("vit", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    # live names (transformers 5: vit.layers.N.attention.q_proj ...)
    specs = plan(model, cfg)
    pairs = alignment_pairs(specs, config=cfg)
    check_compatible(pairs, specs)
    roles = {"q": "attention.q_proj.weight", "k": "attention.k_proj.weight", "v": "attention.v_proj.weight",
             "o": "attention.o_proj.weight", "mlp_in": "mlp.fc1.weight", "mlp_out": "mlp.fc2.weight"}
    expected = _encoder_expected("vit.embeddings.patch_embeddings.projection.weight", "vit.layers.{}.", roles, 2,
                                 "out_in", ["classifier.weight"])
    assert sorted(map(key, pairs)) == sorted(expected)
    # checkpoint names (saved in the classic layout)
    from safetensors import safe_open

    infos = []
    for f in tmp_path.glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            infos += [TensorInfo(k, tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()]
    types, _, buffers = module_types_from_config(cfg)
    specs = plan_matrices(infos, config=cfg, module_types=types, buffers=buffers)[0]
    pairs = alignment_pairs(specs, config=cfg)
    check_compatible(pairs, specs)
    roles = {"q": "attention.attention.query.weight", "k": "attention.attention.key.weight",
             "v": "attention.attention.value.weight", "o": "attention.output.dense.weight",
             "mlp_in": "intermediate.dense.weight", "mlp_out": "output.dense.weight"}
    expected = _encoder_expected("vit.embeddings.patch_embeddings.projection.weight", "vit.encoder.layer.{}.", roles, 2,
                                 "out_in", ["classifier.weight"])
    assert sorted(map(key, pairs)) == sorted(expected)


def test_wav2vec2_pairs():
    specs, pairs = checked_pairs("wav2vec2")
    fe = "wav2vec2.feature_extractor.conv_layers"
    keys = list(map(key, pairs))
    assert keys[0] == (f"{fe}.0.conv.weight", None, f"{fe}.1.conv.weight", None, None, "conv_centre")
    assert pairs[0].extra["kernel_size"] == (3,)
    assert keys[1] == (f"{fe}.1.conv.weight", None, "wav2vec2.feature_projection.projection.weight", None, None, "out_in")
    assert ("wav2vec2.feature_projection.projection.weight", None, "wav2vec2.encoder.layers.0.attention.q_proj.weight",
            None, None, "out_in") in keys
    assert keys[-1] == ("wav2vec2.encoder.layers.1.feed_forward.output_dense.weight", None, "lm_head.weight", None, None,
                        "out_in")
    assert not any("pos_conv" in p.prev.matrix + p.next.matrix for p in pairs)  # residual branch: ignored
    assert len(pairs) == 2 + 2 * (3 + 4) + 1  # stem, per layer (3 inputs, Q↔K, V→O, O→in, in→out), head


# ------------------------------------------------------------------------------------------- conv nets


@pytest.mark.parametrize("use_modules", [True, False])
def test_resnet_pairs(use_modules):
    specs, pairs = checked_pairs("resnet", use_modules=use_modules)
    st = "resnet.encoder.stages"
    chain = ["resnet.embedder.embedder.convolution.weight", f"{st}.0.layers.0.layer.0.convolution.weight",
             f"{st}.0.layers.0.layer.1.convolution.weight", f"{st}.1.layers.0.layer.0.convolution.weight",
             f"{st}.1.layers.0.layer.1.convolution.weight"]
    expected = [(a, None, b, None, None, "conv_centre") for a, b in zip(chain, chain[1:])]
    expected.append((chain[-1], None, "classifier.1.weight", None, None, "out_in"))
    assert list(map(key, pairs)) == expected
    assert all(p.extra["kernel_size"] == (3, 3) for p in pairs[:-1])


def test_unet_pairs():
    model = build_tiny("unet")
    cfg = config_of(model)
    assert cfg["_class_name"] == "UNet2DModel"
    specs = plan(model, cfg)
    pairs = alignment_pairs(specs, config=cfg)
    check_compatible(pairs, specs)
    keys = set(map(key, pairs))
    w = ".weight"
    cc = "conv_centre"
    # main path: down, mid, up
    for a, b in [("conv_in", "down_blocks.0.resnets.0.conv1"), ("down_blocks.0.resnets.0.conv2", "down_blocks.0.downsamplers.0.conv"),
                 ("down_blocks.0.downsamplers.0.conv", "down_blocks.1.resnets.0.conv1"),
                 ("down_blocks.1.resnets.0.conv2", "mid_block.resnets.0.conv1"), ("up_blocks.0.resnets.1.conv2", "up_blocks.0.upsamplers.0.conv"),
                 ("up_blocks.1.resnets.1.conv2", "conv_out")]:
        assert (a + w, None, b + w, None, None, cc) in keys, (a, b)
    # skips, last down output first: [hidden; skip] input channels of the up resnets' conv1 (3x3 kernels)
    for skip, up, hidden, skip_ch in [("down_blocks.1.resnets.0.conv2", "up_blocks.0.resnets.0.conv1", 32, 32),
                                      ("down_blocks.0.downsamplers.0.conv", "up_blocks.0.resnets.1.conv1", 32, 16),
                                      ("down_blocks.0.resnets.0.conv2", "up_blocks.1.resnets.0.conv1", 32, 16),
                                      ("conv_in", "up_blocks.1.resnets.1.conv1", 16, 16)]:
        assert (skip + w, None, up + w, None, (9 * hidden, 9 * (hidden + skip_ch)), cc) in keys, (skip, up)
    assert ("mid_block.resnets.1.conv2.weight", None, "up_blocks.0.resnets.0.conv1.weight", None, (0, 9 * 32), cc) in keys
    # time embedding → the conv it is added before
    assert ("time_embedding.linear_1.weight", None, "time_embedding.linear_2.weight", None, None, "out_in") in keys
    assert ("down_blocks.1.resnets.0.time_emb_proj.weight", None, "down_blocks.1.resnets.0.conv2.weight", None, None, cc) in keys
    assert ("mid_block.attentions.0.to_q.weight", None, "mid_block.attentions.0.to_k.weight", None, None, "qk_heads") in keys
    assert not any("conv_shortcut" in p.prev.matrix + p.next.matrix for p in pairs)
    # the same from a checkpoint without module info (registry order: up blocks before the mid block, as
    # named_parameters() lists them, not in data-flow order)
    specs2 = plan(model, cfg, use_modules=False)
    assert set(map(key, alignment_pairs(specs2, config=cfg))) == keys


def test_tiny_mlp_and_skip_mismatched_dims():
    model = TinyMLP((12, 16, 16, 5))
    specs = plan(model)
    pairs = alignment_pairs(specs, config=None)
    check_compatible(pairs, specs)
    assert list(map(key, pairs)) == [("net.0.weight", None, "net.2.weight", None, None, "out_in"),
                                     ("net.2.weight", None, "net.4.weight", None, None, "out_in")]
    # consecutive matrices whose dims don't agree are not paired
    specs = plan_matrices([TensorInfo("a.weight", (8, 4), "F32"), TensorInfo("b.weight", (3, 7), "F32"),
                           TensorInfo("c.weight", (2, 3), "F32")])[0]
    assert list(map(key, alignment_pairs(specs, config=None))) == [("b.weight", None, "c.weight", None, None, "out_in")]


def test_lstm_pairs_use_g_gate_and_direction_halves():
    model = TinyLSTM(n_in=8, hidden=6, n_out=5)
    specs = plan(model)
    pairs = alignment_pairs(specs, config=None)
    check_compatible(pairs, specs)
    keys = set(map(key, pairs))
    g = (12, 18)
    assert ("lstm.weight_ih_l0", g, "lstm.weight_hh_l0", None, None, "out_in") in keys
    assert ("lstm.weight_hh_l0_reverse", g, "lstm.weight_ih_l1", None, (6, 12), "out_in") in keys
    assert ("lstm.weight_hh_l1", g, "out.weight", None, (0, 6), "out_in") in keys
    assert len(pairs) == 4 + 8 + 4
    assert all(p.extra == {"gate": "g"} for p in pairs)


# ------------------------------------------------------------------------------- grokking recipe


def test_grokking_transformer_pairs():
    module = load_recipe("grokking")
    specs, pairs = checked_pairs(module.GrokkingTransformer(module.GrokkingConfig(p=11)))
    a = "layers.0.attn"
    expected = [
        ("embed_tokens.weight", None, f"{a}.q.weight", None, None, "in_in"),
        ("embed_tokens.weight", None, f"{a}.k.weight", None, None, "in_in"),
        ("embed_tokens.weight", None, f"{a}.v.weight", None, None, "in_in"),
        (f"{a}.q.weight", None, f"{a}.k.weight", None, None, "qk_heads"),
        (f"{a}.v.weight", None, f"{a}.o.weight", None, None, "out_in"),
        (f"{a}.o.weight", None, "layers.0.mlp.fc_in.weight", None, None, "out_in"),
        ("layers.0.mlp.fc_in.weight", None, "layers.0.mlp.fc_out.weight", None, None, "out_in"),
        ("layers.0.mlp.fc_out.weight", None, "unembed.weight", None, None, "out_in"),
    ]
    assert [key(p) for p in pairs] == expected
    assert pairs[3].prev.heads == 4


def test_every_alignment_mode_has_an_aligner():
    """The engine dispatches pairs by mode through one table: every mode the views emit is in it."""
    import typing

    from hf_spectral.engine import ALIGNERS
    from hf_spectral.views import AlignmentMode

    assert set(ALIGNERS) == set(typing.get_args(AlignmentMode)) == {"out_in", "in_in", "conv_centre", "qk_heads"}
