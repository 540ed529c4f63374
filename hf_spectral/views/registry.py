"""All architecture knowledge of hf_spectral, as data: one entry per model family, keyed by ``model_type``
(transformers) or ``_class_name`` (diffusers), over a generic fallback.

An entry says which weights are HF ``Conv1D`` (stored in×out), which are fused Q/K/V and in what row
layout, which stored tensors are buffers, which are bare parameter tensors, which are embeddings, how to
count attention heads, in what order the model registers its modules (``named_parameters()`` order, the
depth axis of the paper's heat maps), and how matrices pair for alignment (a rule from
``hf_spectral.views.pairs``). Patterns are regexes matched with ``re.search`` against tensor names
(checkpoint keys, unprefixed). Nothing outside this file may test a name for an architecture; a
user's own model (or a recipe's) joins with ``register_architecture`` (public as
``hf_spectral.register_architecture``), never by an entry here.

A family marked ``complete`` names every weight that is not a ``Linear`` or a plain convolution, so a
checkpoint of it is planned from its names alone; other checkpoints are planned with the module classes
of the model built on the meta device (``views.modules.module_types_from_config``), which needs the
model's code (transformers / diffusers imports of ~2.5 s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Mapping, Sequence

from hf_spectral.views.naming import natural_key
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
    # named_parameters() order from names: a module lists its own parameters, then its children in the
    # order its __init__ registers them. ``first`` / ``last``: child names registered before / after their
    # siblings, in this order; other children keep a natural name order between them (``h.2`` < ``h.10``).
    first: tuple[str, ...] = ()
    last: tuple[str, ...] = ()
    # complete: every other 2-D weight is a Linear and every ≥3-D one a plain (not transposed) conv, and the
    # order above is named_parameters() order, for every config that passes ``complete_when`` (config key,
    # regex every value must match; list values item by item; an absent key passes): checkpoints are then
    # planned from names alone. Checked against the models built from their classes (tests/test_views.py).
    complete: bool = False
    complete_when: tuple[tuple[str, str], ...] = ()


GENERIC = Family(
    name="generic",
    # torch.nn.MultiheadAttention, timm/DiT-style ``qkv``: all [Q; K; V] blocks.
    fused_qkv=(r"(^|\.)in_proj_weight$", r"(^|\.)(qkv|qkv_proj|Wqkv|c_qkv)\.weight$"),
    buffers=(r"(^|\.)(position_ids|token_type_ids|causal_mask|masked_bias|inv_freq)$",),
    bare=(r"(^|\.)(cls_token|mask_token|dist_token|distillation_token|register_tokens)$",
          r"(^|\.)embeddings\.position_embeddings$"),
    embeddings=((r"(^|\.)(embed_tokens|word_embeddings|wte|wpe|tokens_embed|positions_embed|embed_positions|embed_in|"
                 r"shared)\.weight$"),
                r"(^|\.)(position|token_type)_embeddings\.weight$"),
    head_keys=("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"),
    # token embeddings, then positions, then token types, then the encoder of an encoder-decoder; heads last
    first=("weight", "embed_tokens", "word_embeddings", "wte", "tokens_embed", "embed_in", "shared", "embeddings",
           "embed_positions", "position_embeddings", "wpe", "positions_embed", "token_type_embeddings", "encoder"),
    last=("pooler", "lm_head", "cls", "classifier", "score", "qa_outputs", "unembed", "embed_out", "head"),
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

# the model classes of the BERT-like families whose modules are checked (tests/test_views.py)
_BERT_CLASSES = ("Model|ForPreTraining|LMHeadModel|ForCausalLM|ForMaskedLM|ForNextSentencePrediction|"
                 "ForSequenceClassification|ForMultipleChoice|ForTokenClassification|ForQuestionAnswering")

_BERT = Family(
    name="bert",
    keys=("bert", "electra"),
    embeddings=(r"(^|\.)distance_embedding\.weight$",),  # relative position tables
    pairing=Transformer(
        layer=r"(^|\.)encoder\.layer\.(?P<i>\d+)\.",
        roles={"q": r"^attention\.self\.query\.weight$", "k": r"^attention\.self\.key\.weight$",
               "v": r"^attention\.self\.value\.weight$", "o": r"^attention\.output\.dense\.weight$",
               "mlp_in": r"^intermediate\.dense\.weight$", "mlp_out": r"^output\.dense\.weight$"},
        stem=(r"(^|\.)embeddings\.word_embeddings\.weight$", r"(^|\.)embeddings_project\.weight$"),
        heads=_BERT_HEADS,
    ),
    # q, k, v; an LM head's transform (dense) before its decoder; ELECTRA's heads last
    first=("word_embeddings", "position_embeddings", "token_type_embeddings", "embeddings", "embeddings_project",
           "encoder", "self", "query", "key", "value", "transform", "dense"),
    last=("discriminator_predictions", "generator_predictions", "generator_lm_head"),
    complete=True,
    complete_when=(("architectures", rf"(Bert|Electra)({_BERT_CLASSES})"),),
)

# diffusers' module registration order (UNets and VAEs alike): attentions before resnets, before the
# down/upsampler; a resnet's time projection between its convs; up blocks before the mid block.
_DIFFUSERS_FIRST = ("encoder", "decoder", "quant_conv", "post_quant_conv", "conv_in", "time_proj", "time_embedding",
                    "class_embedding", "down_blocks", "up_blocks", "mid_block", "attentions", "resnets",
                    "conv1", "time_emb_proj", "conv2", "proj_in", "transformer_blocks", "to_q", "to_k", "to_v", "to_out")
_DIFFUSERS_EMBEDDINGS = (r"(^|\.)(class_embedding|time_proj)\.weight$",)  # nn.Embedding when 2-D
# block types whose modules are checked (tests/test_views.py); other blocks are planned with module classes
_DOWN_BLOCKS = r"(Attn|CrossAttn)?DownBlock2D|(Attn)?DownEncoderBlock2D"
_UP_BLOCKS = r"(Attn|CrossAttn)?UpBlock2D|(Attn)?UpDecoderBlock2D"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="gpt2",
        keys=("gpt2", "openai-gpt", "imagegpt", "decision_transformer"),
        conv1d=(r"(^|\.)(c_attn|q_attn|c_proj|c_fc)\.weight$",),
        fused_qkv=(r"(^|\.)attn\.c_attn\.weight$",),
        buffers=(r"(^|\.)attn\.(bias|masked_bias)$",),
        embeddings=(r"(^|\.)embed_timestep\.weight$",),
        head_keys=("n_head",),
        pairing=Transformer(
            layer=r"(^|\.)h\.(?P<i>\d+)\.",
            roles={"qkv": r"^attn\.c_attn\.weight$", "o": r"^attn\.c_proj\.weight$",
                   "mlp_in": r"^mlp\.c_fc\.weight$", "mlp_out": r"^mlp\.c_proj\.weight$"},
            stem=(r"(^|\.)(wte|tokens_embed)\.weight$",),
            heads=((r"(^|\.)lm_head\.weight$",), (r"(^|\.)score\.weight$",)),
        ),
        # decision_transformer: the GPT-2 encoder, then the embeddings of its inputs, then its predictors
        first=("encoder", "embed_timestep", "embed_return", "embed_state", "embed_action", "c_attn", "q_attn"),
        last=("lm_head", "multiple_choice_head", "predict_state", "predict_action", "predict_return"),
        complete=True,
        complete_when=(("architectures", (r"(GPT2|OpenAIGPT|ImageGPT)(Model|LMHeadModel|DoubleHeadsModel|"
                                          r"ForCausalImageModeling|ForImageClassification|ForSequenceClassification|"
                                          r"ForTokenClassification|ForQuestionAnswering)|DecisionTransformerModel")),),
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
        first=("self_attention", "query_key_value", "dense_h_to_4h"),
        complete=True,
        complete_when=(("architectures", (r"(GPTNeoX|Bloom)(Model|ForCausalLM|ForSequenceClassification|"
                                          r"ForTokenClassification|ForQuestionAnswering)")),),
    ),
    _BERT,
    # RoBERTa registers token types before positions; XLM-R and CamemBERT also register their heads first
    replace(_BERT, name="roberta", keys=("roberta",),
            first=("word_embeddings", "token_type_embeddings", "position_embeddings") + _BERT.first, last=(),
            complete_when=(("architectures", rf"Roberta({_BERT_CLASSES})"),)),
    replace(_BERT, name="xlm_roberta", keys=("xlm-roberta", "camembert"),
            first=("lm_head", "classifier", "qa_outputs", "word_embeddings", "token_type_embeddings",
                   "position_embeddings") + _BERT.first, last=(),
            complete_when=(("architectures", rf"(XLMRoberta|Camembert)({_BERT_CLASSES})"),)),
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
        first=("query", "key", "value", "q_proj", "k_proj", "v_proj", "o_proj"),
        last=("decoder",),  # ViTForMaskedImageModeling's pixel decoder
        complete=True,
        complete_when=(("architectures", r"ViT(Model|ForImageClassification|ForMaskedImageModeling)"),),
    ),
    Family(
        name="wav2vec2",
        keys=("wav2vec2", "hubert", "data2vec-audio"),
        bare=(r"(^|\.)quantizer\.codevectors$",),
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
        first=("feature_extractor", "feature_projection", "pos_conv_embed", "k_proj", "v_proj", "q_proj", "out_proj"),
        last=("lm_head", "projector", "classifier", "quantizer", "project_hid", "project_q"),
        complete=True,
        # ForXVector (TDNN head, AM-softmax weight) and the adapters have their own module order
        complete_when=(("architectures", (r"(Wav2Vec2|Hubert|Data2VecAudio)(Model|ForCTC|ForSequenceClassification|"
                                          r"ForAudioFrameClassification|ForPreTraining)")),
                       ("add_adapter", r"False|None"), ("adapter_attn_dim", r"None")),
    ),
    Family(
        name="resnet",
        keys=("resnet",),
        # residual shortcuts are ignored (definitions §4); stages fix the order when names sort badly
        pairing=Sequential(
            stages=(r"(^|\.)embedder\.", r"(^|\.)encoder\.", r"(^|\.)classifier\."),
            exclude=(r"\.shortcut\.",),
        ),
        first=("embedder", "shortcut"),
        complete=True,
        complete_when=(("architectures", r"ResNet(Model|ForImageClassification|Backbone)"),),
    ),
    Family(
        name="unet",
        keys=("UNet2DModel",),
        embeddings=_DIFFUSERS_EMBEDDINGS,
        head_dim_keys=("attention_head_dim",),
        pairing=_UNET_PAIRING,
        first=_DIFFUSERS_FIRST,
        complete=True,
        complete_when=(("down_block_types", _DOWN_BLOCKS), ("up_block_types", _UP_BLOCKS),
                       ("time_embedding_type", r"positional|fourier|learned"),
                       ("class_embed_type", r"None|timestep|identity")),
    ),
    # same grammar; its legacy ``attention_head_dim`` holds the number of heads
    Family(
        name="unet_conditional",
        keys=("UNet2DConditionModel",),
        embeddings=_DIFFUSERS_EMBEDDINGS,
        head_keys=("attention_head_dim",),
        pairing=_UNET_PAIRING,
        first=_DIFFUSERS_FIRST,
        complete=True,
        complete_when=(("down_block_types", _DOWN_BLOCKS), ("up_block_types", _UP_BLOCKS),
                       ("mid_block_type", r"UNetMidBlock2DCrossAttn|UNetMidBlock2D|None"),
                       ("time_embedding_type", r"positional|fourier"), ("class_embed_type", r"None|timestep|identity"),
                       ("encoder_hid_dim_type", r"None"), ("addition_embed_type", r"None"),
                       ("time_cond_proj_dim", r"None"), ("dual_cross_attention", r"False"),
                       ("attention_type", r"default")),
    ),
    Family(
        name="autoencoder_kl",
        keys=("AutoencoderKL",),
        head_dim_keys=("attention_head_dim",),
        pairing=ConvPath(
            path=_diffusers_path("encoder.") + (Stage(r"^quant_conv\.weight$"), Stage(r"^post_quant_conv\.weight$"))
            + _diffusers_path("decoder."),
            attention=_DIFFUSERS_ATTENTION,
        ),
        first=_DIFFUSERS_FIRST,
        complete=True,
        complete_when=(("down_block_types", _DOWN_BLOCKS), ("up_block_types", _UP_BLOCKS)),
    ),
)

_BY_KEY: dict[str, Family] = {key: fam for fam in FAMILIES for key in fam.keys}
_BUILT_IN = dict(_BY_KEY)


def register_architecture(name: str, *, keys: Sequence[str] | None = None, pairing: Rule | None = None,
                          replace: bool = False, **fields: Any) -> Family:
    """Tell hf_spectral about a model family of your own (public as ``hf_spectral.register_architecture``).

    ``keys``: the ``model_type`` (transformers) or ``_class_name`` (diffusers) values of its configs
    (default: ``(name,)``). ``pairing``: how its matrices pair for alignment — a
    ``TransformerPairing``, ``SequentialPairing`` or ``ConvPathPairing`` (default: sequential).
    Other keywords are ``Family`` fields: ``conv1d``, ``fused_qkv``, ``qkv_layout``, ``buffers``,
    ``bare``, ``embeddings``, ``head_keys``, ``head_dim_keys``, ``first``, ``last``, ``complete``,
    ``complete_when`` (regexes on tensor names; see ``Family``). Registering the same family again is
    a no-op; a key another family holds needs ``replace=True``. Lasts for the process: a snapshot
    records the family it was planned with, and a CLI run loads registrations with ``--register``.
    """
    from hf_spectral.errors import SpectralError

    try:
        family = Family(name=name, keys=tuple(keys) if keys is not None else (name,), pairing=pairing, **fields)
    except TypeError as exc:
        raise SpectralError(f"register_architecture({name!r}): {exc}; see hf_spectral.views.registry.Family") from None
    for key in family.keys:
        held = _BY_KEY.get(key)
        if held is not None and held != family and not replace:
            raise SpectralError(f"register_architecture({name!r}): model type {key!r} is already registered "
                                f"(family {held.name!r}); pass replace=True to replace it")
    for key in family.keys:
        _BY_KEY[key] = family
    _RANKS.pop(family.name, None)
    return family


def registered_families() -> tuple[Family, ...]:
    """The families registered with ``register_architecture`` in this process (not the built-in ones)."""
    found: list[Family] = []
    for key, fam in _BY_KEY.items():
        if _BUILT_IN.get(key) is not fam and all(fam is not f for f in found):
            found.append(fam)
    return tuple(found)


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

    @property
    def complete(self) -> bool:
        """Whether names alone plan this config's checkpoints exactly (no module classes needed)."""
        if not self.family.complete:
            return False
        cfg = self.config or {}
        for key, pattern in self.family.complete_when:
            if key in cfg:
                values = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
                if not all(_compile(pattern).fullmatch(str(v)) for v in values):
                    return False
        return True

    def order_key(self, name: str) -> tuple[Any, ...]:
        """Sort key that puts names in ``named_parameters()`` order: depth first, a module's own parameters
        before its children, children in the family's ``first`` / ``last`` order, else natural order."""
        ranks = _ranks(self.family)
        segments = name.split(".")
        last = len(segments) - 1
        return tuple((i < last, *ranks.get(seg, (1, 0, 0)), natural_key(seg)) for i, seg in enumerate(segments))

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


_RANKS: dict[str, dict[str, tuple[int, int, int]]] = {}


def _ranks(family: Family) -> dict[str, tuple[int, int, int]]:
    """Child name -> (band, level, position): band 0 = registered first, 1 = the rest, 2 = registered last;
    level 0 = the family's lists, 1 = the generic ones, which fill in what the family does not say."""
    if family.name in _RANKS:
        return _RANKS[family.name]
    ranks = _RANKS[family.name] = {}
    for level, fam in enumerate((family,) if family is GENERIC else (family, GENERIC)):
        for band, names in ((0, fam.first), (2, fam.last)):
            for position, name in enumerate(names):
                ranks.setdefault(name, (band, level, position))
    return ranks


def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(_compile(p).search(name) for p in patterns)


@lru_cache(maxsize=None)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def base_model_prefix(config: Mapping[str, Any] | None) -> str | None:
    """The attribute name under which transformers' head models hold the base model of this
    ``model_type`` (``BertPreTrainedModel.base_model_prefix == "bert"``), or None when unknown.

    Imports the base model's class (its modeling module) from transformers: call it only where
    names of a base and a head model must be matched, as ``from_pretrained`` does.
    """
    model_type = (config or {}).get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return None
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        class_name = MODEL_MAPPING_NAMES.get(model_type)
        model_class = getattr(transformers, class_name) if isinstance(class_name, str) else None
    except Exception:  # transformers without this architecture, or a class that fails to import
        return None
    prefix = getattr(model_class, "base_model_prefix", "")
    return prefix if isinstance(prefix, str) and prefix else None
