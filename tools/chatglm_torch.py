"""A PyTorch statement of the ChatGLM3-6B model (THUDM/chatglm3-6b, modeling_chatglm.py).

It is the reference the project's TypeScript models are checked against: the
fixture generators in tools/ build a tiny random model with it, and it has the
same module names as the HF chatglm3 checkpoint, so `save_pretrained` keys,
PEFT LoRA targets (`query_key_value`, `dense`, `dense_h_to_4h`,
`dense_4h_to_h`) and P-Tuning v2 prefix weights line up with the real model.

Semantics that matter (and that upstream gets implicitly):
  * RMSNorm is computed in f32: x * rsqrt(mean(x²) + eps) * weight.
  * The fused query_key_value projection (with bias) splits into `heads` queries
    and `groups` keys and values of `kv_channels` each; query head h reads group
    h // (heads / groups).
  * Rotary embedding on the first kv_channels/2 dims of every head, rotating
    interleaved pairs (2i, 2i+1) by pos·θ_i, θ_i = (10000·rope_ratio)^(-2i/(kv_channels/2)),
    the angles computed in f32 as upstream's rotary cache.
  * Scores scaled by 1/sqrt(kv_channels) (upstream's query-key layer scaling
    multiplies and divides by the layer number, which cancels in f32).
  * SwiGLU: silu(first half of dense_h_to_4h) * second half.
  * P-Tuning v2: prefix_encoder.embedding [pre_seq_len, num_layers*2*groups*kv]
    (optionally through Linear-tanh-Linear) viewed as [P, num_layers*2, groups, kv];
    layer l's past key is chunk 2l and its past value chunk 2l+1, not rotated;
    every token attends to all prefix positions; real positions start at 0.
  * Loss: logits[:, :-1] against labels[:, 1:], cross-entropy ignoring -100, mean.

Padding: the project right-pads and gives each record positions 0..len-1, so a
row's result does not depend on what it is batched with (upstream's tokenizer
left-pads and then uses positions 0..S-1 over the padded row). With right
padding no key mask is needed: pad tokens come after every real token, and
causality already keeps real tokens from seeing them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel


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
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float) / n_elem))
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
    # torch's fused scaled_dot_product_attention, as upstream's CoreAttention uses it on torch 2
    # (the benchmark peers on a GPU); off, the scores are written out in f32 as the fixtures expect.
    use_sdpa = False

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
        rep = H // G
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        allowed = torch.ones(S, P + S, dtype=torch.bool, device=x.device).tril(diagonal=P)
        if self.use_sdpa:
            ctx = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=allowed)
            return self.dense(ctx.transpose(1, 2).reshape(B, S, H * D))
        scores = torch.einsum("bshd,bjhd->bhsj", q.float(), k.float()) / math.sqrt(D)
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


class GLMBlock(nn.Module):
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
            self.trans = nn.Sequential(
                nn.Linear(kv_size, config.hidden_size),
                nn.Tanh(),
                nn.Linear(config.hidden_size, kv_size),
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

    def prompt(self, batch: int):
        c = self.config
        tokens = torch.arange(self.pre_seq_len, device=self.output_layer.weight.device)
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
    _no_split_modules = ["GLMBlock"]

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)

    def _init_weights(self, module):
        # Weights come from the fixture generator's own seeded initialiser.
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

    @torch.no_grad()
    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation by re-forwarding the whole sequence (no stop token)."""
        ids = list(prompt)
        out = []
        for _ in range(max_new_tokens):
            logits = self.forward(torch.tensor([ids]))["logits"][0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            ids.append(nxt)
        return out


def load_checkpoint(model_dir: str, dtype=torch.float32, **overrides) -> "ChatGLMForConditionalGeneration":
    """A model dir's config.json and safetensors (one file or shards), in `dtype` on the CPU."""
    import json
    import os

    from safetensors.torch import load_file

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    fields = ("num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size", "kv_channels",
              "num_attention_heads", "seq_length", "layernorm_epsilon", "add_qkv_bias",
              "multi_query_group_num", "rope_ratio")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in `dtype`: 6 B parameters in f32 first would take 25 GB
    try:
        model = ChatGLMForConditionalGeneration(ChatGLMConfig(**{k: cfg[k] for k in fields if k in cfg},
                                                              **overrides))
    finally:
        torch.set_default_dtype(default)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
        else ["model.safetensors"]
    state = {}
    for fn in files:
        state.update({k: v.to(dtype) for k, v in load_file(os.path.join(model_dir, fn)).items()
                      if "rotary_pos_emb" not in k})
    model.to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("prefix_encoder" in k for k in missing), (missing, unexpected)
    return model


def seeded_bench_model(config: dict, seed: int) -> "ChatGLMForConditionalGeneration":
    """A model with random weights as the benchmarks use: seeded N(0, 0.02), norm weights 1."""
    torch.manual_seed(seed)
    model = ChatGLMForConditionalGeneration(ChatGLMConfig(**config))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model


def tiny_config(**overrides) -> ChatGLMConfig:
    """The tiny test model: the chatglm3-6b config with every dimension shrunk."""
    kw = dict(
        num_layers=2,
        padded_vocab_size=384,
        hidden_size=64,
        ffn_hidden_size=96,
        kv_channels=16,
        num_attention_heads=4,
        seq_length=128,
        layernorm_epsilon=1e-5,
        multi_query_group_num=2,
        rope_ratio=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    kw.update(overrides)
    return ChatGLMConfig(**kw)


def to_glm_state_dict(sd: dict, config: ChatGLMConfig) -> dict:
    """Rename/split a chatglm3 state dict into transformers' GlmForCausalLM layout."""
    H, G, D = config.num_attention_heads, config.multi_query_group_num, config.kv_channels
    out = {
        "model.embed_tokens.weight": sd["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": sd["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": sd["transformer.output_layer.weight"],
    }
    for i in range(config.num_layers):
        p = f"transformer.encoder.layers.{i}."
        q = f"model.layers.{i}."
        w = sd[p + "self_attention.query_key_value.weight"]
        b = sd[p + "self_attention.query_key_value.bias"]
        qw, kw, vw = w.split([H * D, G * D, G * D], dim=0)
        qb, kb, vb = b.split([H * D, G * D, G * D], dim=0)
        out.update({
            q + "self_attn.q_proj.weight": qw, q + "self_attn.q_proj.bias": qb,
            q + "self_attn.k_proj.weight": kw, q + "self_attn.k_proj.bias": kb,
            q + "self_attn.v_proj.weight": vw, q + "self_attn.v_proj.bias": vb,
            q + "self_attn.o_proj.weight": sd[p + "self_attention.dense.weight"],
            q + "mlp.gate_up_proj.weight": sd[p + "mlp.dense_h_to_4h.weight"],
            q + "mlp.down_proj.weight": sd[p + "mlp.dense_4h_to_h.weight"],
            q + "input_layernorm.weight": sd[p + "input_layernorm.weight"],
            q + "post_attention_layernorm.weight": sd[p + "post_attention_layernorm.weight"],
        })
    return out


def to_transformers_glm(model: ChatGLMForConditionalGeneration, max_positions: int | None = None,
                        attn: str | None = "eager"):
    """The same weights in transformers' GlmForCausalLM (the same math: interleaved rotary on half of each head).

    attn: the attention implementation to force ("eager" for the exact cross-check), None for transformers' default.
    """
    from transformers import GlmConfig, GlmForCausalLM

    c = model.config
    gc = GlmConfig(
        vocab_size=c.padded_vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.ffn_hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.multi_query_group_num,
        head_dim=c.kv_channels,
        rms_norm_eps=c.layernorm_epsilon,
        attention_bias=True,
        max_position_embeddings=max(c.seq_length, max_positions or 0),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * c.rope_ratio,
                         "partial_rotary_factor": 0.5},
        pad_token_id=0,
        eos_token_id=2,
    )
    if attn is not None:
        gc._attn_implementation = attn
    glm = GlmForCausalLM(gc).eval()
    missing, unexpected = glm.load_state_dict(to_glm_state_dict(model.state_dict(), c), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GLM layout mismatch: missing {missing}, unexpected {unexpected}")
    return glm


def glm_crosscheck(model: ChatGLMForConditionalGeneration, input_ids: torch.Tensor) -> float:
    """Max |logits| difference between this model and transformers' GlmForCausalLM on the same weights."""
    glm = to_transformers_glm(model)
    with torch.no_grad():
        ours = model(input_ids)["logits"]
        theirs = glm(input_ids=input_ids).logits.float()
    return float((ours - theirs).abs().max())
