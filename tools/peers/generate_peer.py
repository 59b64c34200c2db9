"""Benchmark peer: greedy generation with a KV cache for the bench ChatGLM3-layout model in PyTorch (CPU).

Args (JSON): {"config": {chatglm fields}, "batches": [1, 8], "prompt": P, "new": N, "runs": n, "seed": s}.
The model is tools/chatglm_torch.py's statement with seeded N(0, 0.02) weights
(norms 1), moved into transformers' GlmForCausalLM (the same math; see
glm_crosscheck there) so that `generate(use_cache=True)` runs it with a KV
cache: greedy, exactly N new tokens (no stop token), prompts of P random ids.
Prints one JSON line: per batch size the median seconds of a whole generate
call (prefill included) and new tokens per second; the thread count.
Thread count comes from OMP_NUM_THREADS (the bench runner sets 2).
"""

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from chatglm_torch import ChatGLMConfig, ChatGLMForConditionalGeneration, to_glm_state_dict  # noqa: E402


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(a.get("seed", 0))
    c = ChatGLMConfig(**a["config"])
    src = ChatGLMForConditionalGeneration(c).eval()
    with torch.no_grad():
        for n, p in src.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)

    from transformers import GlmConfig, GlmForCausalLM

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
        max_position_embeddings=max(c.seq_length, a["prompt"] + a["new"]),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * c.rope_ratio,
                         "partial_rotary_factor": 0.5},
        pad_token_id=0,
        eos_token_id=2,
    )
    model = GlmForCausalLM(gc).eval()
    missing, unexpected = model.load_state_dict(to_glm_state_dict(src.state_dict(), c), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GLM layout mismatch: missing {missing}, unexpected {unexpected}")

    g = torch.Generator().manual_seed(1)
    out = {"threads": torch.get_num_threads()}
    for B in a["batches"]:
        ids = torch.randint(3, c.padded_vocab_size, (B, a["prompt"]), generator=g)
        mask = torch.ones_like(ids)
        times = []
        with torch.no_grad():
            for i in range(1 + a.get("runs", 3)):
                t0 = time.perf_counter()
                res = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=a["new"],
                    min_new_tokens=a["new"],
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )
                if i > 0:
                    times.append(time.perf_counter() - t0)
        assert res.shape[1] == a["prompt"] + a["new"], res.shape
        t = statistics.median(times)
        out[str(B)] = {"seconds": t, "tokens_per_s": B * a["new"] / t}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
