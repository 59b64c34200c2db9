"""ChatGLM3-6B in PyTorch (THUDM/chatglm3-6b's modeling_chatglm.py, restated), for the torch engine.

Module and parameter names are those of the HF chatglm3 checkpoint, so a real
chatglm3-6b directory loads as it is, PEFT's LoRA targets (`query_key_value`,
`dense`, `dense_h_to_4h`, `dense_4h_to_h`) and the P-Tuning v2 prefix
(`transformer.prefix_encoder.*`) line up with the WebGPU engine's files, and
HF Trainer, PEFT, DeepSpeed ZeRO-3 and FSDP handle it like any PreTrainedModel
(`GLMBlock` is the unit FSDP wraps and gradient checkpointing recomputes).
tools/chatglm_torch.py re-exports it for the fixture generators.

Semantics that matter (and that upstream gets implicitly):
  * RMSNorm is computed in f32: x * rsqrt(mean(x²) + eps) * weight.
  * The fused query_key_value projection (with bias) splits into `heads` queries
    and `groups` keys and values of `kv_channels` each; query head h reads group
    h // (heads / groups).
  * Rotary embedding on the first kv_channels/2 dims of every head, rotating
    interleaved pairs (2i, 2i+1) by pos·θ_i, θ_i = (10000·rope_ratio)^(-2i/(kv_channels/2)),
    the angles computed in f32 as upstream's rotary cache.
  * Scores scaled by 1/sqrt(kv_channels) (upstream's query-key layer scaling
    multiplies and divides by the layer number, which cancels).
  * SwiGLU: silu(first half of dense_h_to_4h) * second half.
  * P-Tuning v2: prefix_encoder.embedding [pre_seq_len, num_layers*2*groups*kv]
    (optionally through Linear-tanh-Linear) viewed as [P, num_layers*2, groups, kv];
    layer l's past key is chunk 2l and its past value chunk 2l+1, not rotated;
    every token attends to all prefix positions; real positions start at 0.
  * Loss: logits[:, :-1] against labels[:, 1:], cross-entropy ignoring -100, mean.

Attention is PyTorch's scaled_dot_product_attention ("sdpa", the default: flash
or memory-efficient kernels on GPUs) or the explicit f32 softmax ("eager", what
the golden fixtures were made with); both compute the same function.

Padding: the project right-pads and gives each record positions 0..len-1, so a
row's result does not depend on what it is batched with. With right padding no
key mask is needed: pad tokens come after every real token, and causality
already keeps real tokens from seeing them.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer


class ChatGLMConfig(PreTrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        num_layers=28,
        padded_vocab_size=65024,
        hidden_size=4096,
        ffn_hidden_size=13696,
        kv_channels=128,
        num_attention_heads=32,
        seq_length=8192,
        hidden_dropout=0.0,
        classifier_dropout=None,
        attention_dropout=0.0,
        layernorm_epsilon=1e-5,
        rmsnorm=True,
        apply_residual_connection_post_layernorm=False,
        post_layer_norm=True,
        add_bias_linear=False,
        add_qkv_bias=True,
        bias_dropout_fusion=True,
        multi_query_attention=True,
        multi_query_group_num=2,
        rope_ratio=1,
        apply_query_key_layer_scaling=True,
        attention_softmax_in_fp32=True,
        fp32_residual_connection=False,
        original_rope=True,
        pre_seq_len=None,
        prefix_projection=False,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.classifier_dropout = classifier_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.rope_ratio = rope_ratio
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.original_rope = original_rope
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        ms = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(ms + self.eps))).to(dtype)


def rope_angles(positions: torch.Tensor, kv_channels: int, rope_ratio: float) -> torch.Tensor:
    """[..., rot/2, 2] cos/sin table for the given integer positions (f32, as upstream's cache)."""
    n_elem = kv_channels // 2
    base = 10000 * rope_ratio
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=positions.device) / n_elem))
    ang = positions.to(torch.float)[..., None] * theta
    return torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x [B, S, heads, D]; table [B, S, D/4, 2]. Rotates interleaved pairs of the first D/2 dims."""
    B, S, H, D = x.shape
    rot = D // 2
    xr, xp = x[..., :rot], x[..., rot:]
    pairs = xr.reshape(B, S, H, rot // 2, 2)
    c = table[:, :, None, :, 0].to(x.dtype)
    s = table[:, :, None, :, 1].to(x.dtype)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(3)
    return torch.cat([out, xp], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.groups = config.multi_query_group_num if config.multi_query_attention else self.heads
        self.d = config.kv_channels
        qkv = self.heads * self.d + 2 * self.groups * self.d
        self.query_key_value = nn.Linear(
            config.hidden_size, qkv, bias=config.add_bias_linear or config.add_qkv_bias
        )
        self.dense = nn.Linear(self.heads * self.d, config.hidden_size, bias=config.add_bias_linear)
        self.attention = "sdpa"

    def forward(self, x, table, past_kv=None):
        B, S, _ = x.shape
        H, G, D = self.heads, self.groups, self.d
        qkv = self.query_key_value(x)
        q, k, v = qkv.split([H * D, G * D, G * D], dim=-1)
        q = apply_rope(q.reshape(B, S, H, D), table)
        k = apply_rope(k.reshape(B, S, G, D), table)
        v = v.reshape(B, S, G, D)
        P = 0
        if past_kv is not None:
            pk, pv = past_kv  # [B, P, G, D]
            P = pk.shape[1]
            k = torch.cat([pk.to(k.dtype), k], dim=1)
            v = torch.cat([pv.to(v.dtype), v], dim=1)
        if self.attention == "sdpa":
            # [B, heads, S, D]; enable_gqa lets query head h read group h // (H / G) without copies.
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if P == 0:
                ctx = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=G != H)
            else:
                allowed = torch.ones(S, P + S, dtype=torch.bool, device=x.device).tril(diagonal=P)
                ctx = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed, enable_gqa=G != H)
            ctx = ctx.transpose(1, 2).reshape(B, S, H * D)
        else:
            rep = H // G
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
            scores = torch.einsum("bshd,bjhd->bhsj", q.float(), k.float()) / math.sqrt(D)
            allowed = torch.ones(S, P + S, dtype=torch.bool, device=x.device).tril(diagonal=P)
            scores = scores.masked_fill(~allowed, float("-inf"))
            probs = F.softmax(scores, dim=-1).to(v.dtype)
            ctx = torch.einsum("bhsj,bjhd->bshd", probs, v).reshape(B, S, H * D)
        return self.dense(ctx)


class MLP(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(
            config.hidden_size, config.ffn_hidden_size * 2, bias=config.add_bias_linear
        )
        self.dense_4h_to_h = nn.Linear(
            config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear
        )

    def forward(self, x):
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(GradientCheckpointingLayer):
    """One transformer layer; with gradient checkpointing on, its activations are recomputed in backward."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, table, past_kv=None):
        h = x + self.self_attention(self.input_layernorm(x), table, past_kv)
        return h + self.mlp(self.post_attention_layernorm(h))


class GLMTransformer(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(config) for _ in range(config.num_layers)])
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)


class Embedding(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)


class PrefixEncoder(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        kv_size = config.num_layers * config.kv_channels * config.multi_query_group_num * 2
        self.prefix_projection = config.prefix_projection
        self.embedding = nn.Embedding(config.pre_seq_len, kv_size)
        if self.prefix_projection:
            # PEFT's encoder_hidden_size when given (prefix_hidden_size), else the model's hidden size as upstream
            hidden = getattr(config, "prefix_hidden_size", None) or config.hidden_size
            self.trans = nn.Sequential(
                nn.Linear(kv_size, hidden),
                nn.Tanh(),
                nn.Linear(hidden, kv_size),
            )

    def forward(self, tokens):
        e = self.embedding(tokens)
        return self.trans(e) if self.prefix_projection else e


class ChatGLMModel(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.pre_seq_len = config.pre_seq_len
        if self.pre_seq_len is not None:
            # As upstream: with a prefix, only the prefix encoder trains.
            for p in self.parameters():
                p.requires_grad = False
            self.prefix_encoder = PrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)

    def set_attention(self, kind: str) -> None:
        """"sdpa" or "eager" for every layer."""
        if kind not in ("sdpa", "eager"):
            raise ValueError(f"attention must be sdpa or eager, not {kind!r}")
        for layer in self.encoder.layers:
            layer.self_attention.attention = kind

    def prompt(self, batch: int):
        c = self.config
        tokens = torch.arange(self.pre_seq_len, device=self.prefix_encoder.embedding.weight.device)
        kv = self.prefix_encoder(tokens)
        kv = kv.view(self.pre_seq_len, c.num_layers * 2, c.multi_query_group_num, c.kv_channels)
        kv = self.prefix_dropout(kv)
        kv = kv[None].expand(batch, -1, -1, -1, -1)
        return [(kv[:, :, 2 * l], kv[:, :, 2 * l + 1]) for l in range(c.num_layers)]

    def forward(self, input_ids, position_ids=None):
        B, S = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(S, device=input_ids.device)[None].expand(B, S)
        table = rope_angles(position_ids, self.config.kv_channels, self.config.rope_ratio)
        x = self.embedding.word_embeddings(input_ids)
        past = self.prompt(B) if self.pre_seq_len is not None else [None] * self.config.num_layers
        for layer, kv in zip(self.encoder.layers, past):
            x = layer(x, table, kv)
        return self.output_layer(self.encoder.final_layernorm(x))


class ChatGLMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["GLMBlock"]
    supports_gradient_checkpointing = True
    # chatglm3-6b's checkpoint stores the rotary inverse frequencies; they are recomputed here.
    _keys_to_ignore_on_load_unexpected = [r"rotary_pos_emb\.inv_freq"]

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)

    def _init_weights(self, module):
        # Modules built here keep PyTorch's default initialisation (nn.Embedding N(0, 1),
        # nn.Linear U(±1/√in)): the prefix encoder starts as upstream's does, and every
        # other weight is overwritten by the checkpoint.
        return

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def forward(self, input_ids, position_ids=None, labels=None, **kwargs):
        logits = self.transformer(input_ids, position_ids).float()
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return {"loss": loss, "logits": logits}


class ModelDirError(Exception):
    """A model directory that cannot be loaded; the message says what to do."""


# config.json fields the model reads (the rest of a real chatglm3-6b config is kept by ChatGLMConfig's kwargs).
_CONFIG_KEYS = (
    "num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size", "kv_channels",
    "num_attention_heads", "seq_length", "layernorm_epsilon", "rmsnorm", "post_layer_norm",
    "add_bias_linear", "add_qkv_bias", "multi_query_attention", "multi_query_group_num",
    "rope_ratio", "eos_token_id", "pad_token_id",
)


def read_config(model_dir: str, pre_seq_len: int | None = None, prefix_projection: bool = False) -> ChatGLMConfig:
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ModelDirError(f"{path}: missing (expected a ChatGLM3 model dir)") from None
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("num_layers", "hidden_size", "padded_vocab_size") if k not in raw]
    if missing:
        raise ModelDirError(f"{path}: not a ChatGLM3 config (missing {', '.join(missing)})")
    kw = {k: raw[k] for k in _CONFIG_KEYS if k in raw}
    return ChatGLMConfig(**kw, pre_seq_len=pre_seq_len, prefix_projection=prefix_projection)


def weight_files(model_dir: str) -> list[str]:
    """The safetensors files of a model dir: one file, or the shards its index names."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, s) for s in shards]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    found = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if found:
        return [os.path.join(model_dir, n) for n in found]
    if any(n.endswith(".bin") for n in os.listdir(model_dir)):
        raise ModelDirError(
            f"{model_dir}: holds only PyTorch .bin weights, which are pickles and are not loaded; convert "
            "them to safetensors once (e.g. AutoModel.from_pretrained(dir, trust_remote_code=True)"
            ".save_pretrained(out, safe_serialization=True))"
        )
    raise ModelDirError(f"{model_dir}: no model.safetensors (or shards with model.safetensors.index.json)")


def load_model(
    model_dir: str,
    *,
    pre_seq_len: int | None = None,
    prefix_projection: bool = False,
    prefix_hidden_size: int | None = None,
    base_dtype: torch.dtype = torch.float32,
) -> ChatGLMForConditionalGeneration:
    """The model with a dir's weights in `base_dtype` (f32, f16 or bf16 on disk) and, with
    pre_seq_len, a fresh prefix encoder in f32.

    The model is built on the meta device and each safetensors file's tensors are
    assigned as its parameters, so host memory holds the weights once and the
    6B model is never initialised randomly first.
    """
    from safetensors import safe_open

    config = read_config(model_dir, pre_seq_len, prefix_projection)
    if prefix_hidden_size:
        config.prefix_hidden_size = prefix_hidden_size
    files = weight_files(model_dir)
    with torch.device("meta"):
        model = ChatGLMForConditionalGeneration(config)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    loaded = set()
    for path in files:
        part = {}
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if "rotary_pos_emb" in key:
                    continue
                if key not in shapes or key.startswith("transformer.prefix_encoder."):
                    raise ModelDirError(f"{path}: tensor {key} does not belong to a ChatGLM3 model")
                t = f.get_tensor(key)
                if tuple(t.shape) != shapes[key]:
                    raise ModelDirError(
                        f"{path}: {key} has shape {list(t.shape)}, config.json implies {list(shapes[key])}"
                    )
                part[key] = t.to(base_dtype)
        # assign=True keeps each parameter's requires_grad and takes the tensor as it is.
        model.load_state_dict(part, strict=False, assign=True)
        loaded.update(part)
    missing = [k for k in shapes if k not in loaded and not k.startswith("transformer.prefix_encoder.")]
    if missing:
        raise ModelDirError(f"{model_dir}: weights missing from the safetensors files: {', '.join(missing[:3])}")
    if pre_seq_len is not None:
        # PyTorch's default initialisation, as upstream's prefix encoder starts.
        model.transformer.prefix_encoder = PrefixEncoder(config)
    return model
