"""All architecture knowledge of hf_spectral, as data: one entry per model family, keyed by ``model_type``
(transformers) or ``_class_name`` (diffusers), over a generic fallback.

An entry says which weights are HF ``Conv1D`` (stored in×out), which are fused Q/K/V and in what row
layout, which stored tensors are buffers, which are bare parameter tensors, which are embeddings, how to
count attention heads, and how matrices pair for alignment (a rule from ``hf_spectral.views.pairs``).
Patterns are regexes matched with ``re.search`` against tensor names (checkpoint keys, unprefixed).
Nothing outside this file may test a name for an architecture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from hf_spectral.views.pairs import ConvPath, Rule, Sequential, Stage, Transformer


@dataclass(frozen=True)
class Family:
    """What one model family needs beyond the generic rules (fields are added to the generic ones)."""

    name: str
    keys: tuple[str, ...] = ()  # model_type / _class_name values
    conv1d: tuple[str, ...] = ()  # HF Conv1D weights, stored (in, out)
    fused_qkv: tuple[str, ...] = ()  # fused Q/K/V input projections
    qkv_layout: str = "blocks"  # "blocks": [Q; K; V]; "per_head": [q_h; k_h; v_h] for each head h
    buffers: tuple[str, ...] = ()  # stored tensors that are buffers, not parameters
    bare: tuple[str, ...] = ()  # bare nn.Parameters (cls tokens, ViT position tables): leading 1-dims dropped
    embeddings: tuple[str, ...] = ()  # embedding tables (vocab, d), for when the module class is unknown
    head_keys: tuple[str, ...] = ()  # config keys holding the number of attention heads
    head_dim_keys: tuple[str, ...] = ()  # config keys holding the head size (heads = rows // size)
    pairing: Rule | None = None  # None: the generic sequential rule


GENERIC = Family(
    name="generic",
    # torch.nn.MultiheadAttention, timm/DiT-style ``qkv``: all [Q; K; V] blocks.
    fused_qkv=(r"(^|\.)in_proj_weight$", r"(^|\.)(qkv|qkv_proj|Wqkv|c_qkv)\.weight$"),
    buffers=(r"(^|\.)(position_ids|token_type_ids|causal_mask|masked_bias|inv_freq)$",),
    bare=(r"(^|\.)(cls_token|mask_token|dist_token|distillation_token|register_tokens)$",
          r"(^|\.)embeddings\.position_embeddings$"),
    embeddings=(r"(^|\.)(embed_tokens|word_embeddings|wte|wpe|tokens_embed|positions_embed|embed_in|shared)\.weight$",
                r"(^|\.)(position|token_type)_embeddings\.weight$"),
    head_keys=("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"),
)


def _diffusers_path(root: str) -> tuple[Stage, ...]:
    """conv_in, down blocks (resnets then downsampler), mid block, up blocks (resnets then upsampler), conv_out."""
    r = re.escape(root)
    return (
        Stage(rf"^{r}conv_in\.weight$"),
        Stage(rf"^{r}down_blocks\.(?P<i>\d+)\.", (r"^resnets\.\d+\.conv[12]\.weight$", r"^downsamplers\.\d+\.conv\.weight$")),
        Stage(rf"^{r}mid_block\.", (r"^resnets\.\d+\.conv[12]\.weight$",)),
        Stage(rf"^{r}up_blocks\.(?P<i>\d+)\.", (r"^resnets\.\d+\.conv[12]\.weight$", r"^upsamplers\.\d+\.conv\.weight$")),
        Stage(rf"^{r}conv_out\.weight$"),
    )


_DIFFUSERS_ATTENTION = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")

_UNET_PAIRING = ConvPath(
    path=_diffusers_path(""),
    # the down path's outputs (conv_in, every resnet, every downsampler) are concatenated, last first,
    # to the inputs of the up path's resnets
    skip_from=(r"^conv_in\.weight$", r"^down_blocks\.\d+\.resnets\.\d+\.conv2\.weight$",
               r"^down_blocks\.\d+\.downsamplers\.\d+\.conv\.weight$"),
    skip_into=r"^up_blocks\.\d+\.resnets\.\d+\.conv1\.weight$",
    feeds=((".time_emb_proj.weight", ".conv2.weight"),),
    chains=((r"^time_embedding\.linear_1\.weight$", r"^time_embedding\.linear_2\.weight$"),),
    attention=_DIFFUSERS_ATTENTION,
)

_BERT_HEADS = (
    (r"(^|\.)pooler\.dense\.weight$", r"(^|\.)(classifier|seq_relationship|qa_outputs)(\.dense)?\.weight$",
     r"(^|\.)classifier\.out_proj\.weight$"),
    (r"(^|\.)(cls\.predictions\.transform|lm_head)\.dense\.weight$", r"(^|\.)(cls\.predictions|lm_head)\.decoder\.weight$"),
)

FAMILIES: tuple[Family, ...] = (
    Family(
        name="gpt2",
        keys=("gpt2", "openai-gpt", "imagegpt", "decision_transformer"),
        conv1d=(r"(^|\.)(c_attn|q_attn|c_proj|c_fc)\.weight$",),
        fused_qkv=(r"(^|\.)attn\.c_attn\.weight$",),
        buffers=(r"(^|\.)attn\.(bias|masked_bias)$",),
        head_keys=("n_head",),
        pairing=Transformer(
            layer=r"(^|\.)h\.(?P<i>\d+)\.",
            roles={"qkv": r"^attn\.c_attn\.weight$", "o": r"^attn\.c_proj\.weight$",
                   "mlp_in": r"^mlp\.c_fc\.weight$", "mlp_out": r"^mlp\.c_proj\.weight$"},
            stem=(r"(^|\.)(wte|tokens_embed)\.weight$",),
            heads=((r"(^|\.)lm_head\.weight$",), (r"(^|\.)score\.weight$",)),
        ),
    ),
    Family(name="clvp", keys=("clvp", "clvp_decoder"), conv1d=(r"(^|\.)mlp\.(c_fc|c_proj)\.weight$",)),
    Family(
        name="gpt_neox",
        keys=("gpt_neox", "bloom"),
        fused_qkv=(r"(^|\.)(attention|self_attention)\.query_key_value\.weight$",),
        qkv_layout="per_head",
        pairing=Transformer(
            layer=r"(^|\.)(layers|h)\.(?P<i>\d+)\.",
            roles={"qkv": r"^(attention|self_attention)\.query_key_value\.weight$",
                   "o": r"^(attention|self_attention)\.dense\.weight$",
                   "mlp_in": r"^mlp\.dense_h_to_4h\.weight$", "mlp_out": r"^mlp\.dense_4h_to_h\.weight$"},
            stem=(r"(^|\.)(embed_in|word_embeddings)\.weight$",),
            heads=((r"(^|\.)(embed_out|lm_head)\.weight$",),),
        ),
    ),
    Family(
        name="bert",
        keys=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        pairing=Transformer(
            layer=r"(^|\.)encoder\.layer\.(?P<i>\d+)\.",
            roles={"q": r"^attention\.self\.query\.weight$", "k": r"^attention\.self\.key\.weight$",
                   "v": r"^attention\.self\.value\.weight$", "o": r"^attention\.output\.dense\.weight$",
                   "mlp_in": r"^intermediate\.dense\.weight$", "mlp_out": r"^output\.dense\.weight$"},
            stem=(r"(^|\.)embeddings\.word_embeddings\.weight$", r"(^|\.)embeddings_project\.weight$"),
            heads=_BERT_HEADS,
        ),
    ),
    Family(
        name="vit",
        keys=("vit",),
        # transformers 5 names the layers ``vit.layers.N.attention.q_proj`` but saves the classic names
        pairing=Transformer(
            layer=r"(^|\.)(encoder\.layer|layers)\.(?P<i>\d+)\.",
            roles={"q": r"^attention\.(attention\.query|q_proj)\.weight$",
                   "k": r"^attention\.(attention\.key|k_proj)\.weight$",
                   "v": r"^attention\.(attention\.value|v_proj)\.weight$",
                   "o": r"^attention\.(output\.dense|o_proj)\.weight$",
                   "mlp_in": r"^(intermediate\.dense|mlp\.fc1)\.weight$",
                   "mlp_out": r"^(output\.dense|mlp\.fc2)\.weight$"},
            stem=(r"(^|\.)patch_embeddings\.projection\.weight$",),
            heads=((r"(^|\.)pooler\.dense\.weight$", r"(^|\.)classifier\.weight$"),),
        ),
    ),
    Family(
        name="wav2vec2",
        keys=("wav2vec2", "hubert", "data2vec-audio"),
        pairing=Transformer(
            layer=r"(^|\.)encoder\.layers\.(?P<i>\d+)\.",
            roles={"q": r"^attention\.q_proj\.weight$", "k": r"^attention\.k_proj\.weight$",
                   "v": r"^attention\.v_proj\.weight$", "o": r"^attention\.out_proj\.weight$",
                   "mlp_in": r"^feed_forward\.intermediate_dense\.weight$",
                   "mlp_out": r"^feed_forward\.output_dense\.weight$"},
            # the feature encoder's conv chain, then the projection into the Transformer
            stem=(r"(^|\.)feature_extractor\.conv_layers\.\d+\.conv\.weight$",
                  r"(^|\.)feature_projection\.projection\.weight$"),
            heads=((r"(^|\.)lm_head\.weight$",), (r"(^|\.)projector\.weight$", r"(^|\.)classifier\.weight$")),
        ),
    ),
    Family(
        # recipes/grokking.py: the authors' 1-layer grokking Transformer (separate q/k/v/o, untied unembed)
        name="grokking_transformer",
        keys=("grokking_transformer",),
        pairing=Transformer(
            layer=r"(^|\.)layers\.(?P<i>\d+)\.",
            roles={"q": r"^attn\.q\.weight$", "k": r"^attn\.k\.weight$", "v": r"^attn\.v\.weight$",
                   "o": r"^attn\.o\.weight$", "mlp_in": r"^mlp\.fc_in\.weight$", "mlp_out": r"^mlp\.fc_out\.weight$"},
            stem=(r"(^|\.)embed_tokens\.weight$",),
            heads=((r"(^|\.)unembed\.weight$",),),
        ),
    ),
    Family(
        name="resnet",
        keys=("resnet",),
        # residual shortcuts are ignored (paper-notes §2); stages fix the order when names sort badly
        pairing=Sequential(
            stages=(r"(^|\.)embedder\.", r"(^|\.)encoder\.", r"(^|\.)classifier\."),
            exclude=(r"\.shortcut\.",),
        ),
    ),
    Family(
        name="unet",
        keys=("UNet2DModel",),
        head_dim_keys=("attention_head_dim",),
        pairing=_UNET_PAIRING,
    ),
    # same grammar; its legacy ``attention_head_dim`` holds the number of heads
    Family(name="unet_conditional", keys=("UNet2DConditionModel",), head_keys=("attention_head_dim",),
           pairing=_UNET_PAIRING),
    Family(
        name="autoencoder_kl",
        keys=("AutoencoderKL",),
        head_dim_keys=("attention_head_dim",),
        pairing=ConvPath(
            path=_diffusers_path("encoder.") + (Stage(r"^quant_conv\.weight$"), Stage(r"^post_quant_conv\.weight$"))
            + _diffusers_path("decoder."),
            attention=_DIFFUSERS_ATTENTION,
        ),
    ),
)

_BY_KEY: dict[str, Family] = {key: fam for fam in FAMILIES for key in fam.keys}


@dataclass(frozen=True)
class Rules:
    """The compiled rules for one config: a family merged over the generic fallback."""

    family: Family
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return self.family.name

    def _any(self, attr: str, name: str) -> bool:
        return _matches(getattr(self.family, attr) + (getattr(GENERIC, attr) if self.family is not GENERIC else ()), name)

    def is_conv1d(self, name: str) -> bool:
        return _matches(self.family.conv1d, name)

    def is_fused_qkv(self, name: str) -> bool:
        return self._any("fused_qkv", name)

    def qkv_layout(self, name: str) -> str:
        return self.family.qkv_layout if _matches(self.family.fused_qkv, name) else "blocks"

    def is_buffer(self, name: str) -> bool:
        return self._any("buffers", name)

    def is_bare(self, name: str) -> bool:
        return self._any("bare", name)

    def is_embedding(self, name: str) -> bool:
        return self._any("embeddings", name)

    @property
    def pairing(self) -> Rule:
        return self.family.pairing or Sequential()

    def num_heads(self, rows: int | None = None) -> int | None:
        """Attention heads from the config; from the head size when only that is given (needs ``rows``)."""
        cfg = self.config or {}
        for key in self.family.head_keys + GENERIC.head_keys:
            value = cfg.get(key)
            if isinstance(value, int) and value > 0:
                return value
        for key in self.family.head_dim_keys:
            value = cfg.get(key)
            if isinstance(value, int) and value > 0 and rows and rows % value == 0:
                return rows // value
        return None

    def num_kv_heads(self) -> int | None:
        value = (self.config or {}).get("num_key_value_heads")
        return value if isinstance(value, int) and value > 0 else None

    def head_dim(self) -> int | None:
        value = (self.config or {}).get("head_dim")
        return value if isinstance(value, int) and value > 0 else None


def rules_for(config: Mapping[str, Any] | None) -> Rules:
    """The rules for a model config (``model_type`` or diffusers ``_class_name``); generic when unknown."""
    cfg = dict(config or {})
    key = cfg.get("model_type") or cfg.get("_class_name")
    return Rules(_BY_KEY.get(str(key), GENERIC) if key else GENERIC, cfg)


def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(_compile(p).search(name) for p in patterns)


@lru_cache(maxsize=None)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
