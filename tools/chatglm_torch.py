"""The PyTorch ChatGLM3 model for the fixture generators and benchmark peers.

The model itself lives in engines/torch/chatglm.py (the torch engine trains
it); this module re-exports it with eager attention — the explicit f32
softmax the golden fixtures were made with, so regenerating them reproduces
the committed numbers — and adds what only the tools use: a greedy loop, the
seeded benchmark model, the tiny test config and the cross-check against
transformers' own GlmForCausalLM.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engines", "torch"))
import chatglm as _engine  # noqa: E402
from chatglm import (  # noqa: E402,F401
    ChatGLMConfig,
    ChatGLMModel,
    GLMBlock,
    PrefixEncoder,
    RMSNorm,
    apply_rope,
    rope_angles,
)


class ChatGLMForConditionalGeneration(_engine.ChatGLMForConditionalGeneration):
    """The engine's model with eager attention, plus a greedy loop."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer.set_attention("eager")

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
