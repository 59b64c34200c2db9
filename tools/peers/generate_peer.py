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
from chatglm_torch import seeded_bench_model, to_transformers_glm  # noqa: E402


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    src = seeded_bench_model(a["config"], a.get("seed", 0)).eval()

    model = to_transformers_glm(src, a["prompt"] + a["new"], attn=None)

    g = torch.Generator().manual_seed(1)
    out = {"threads": torch.get_num_threads()}
    for B in a["batches"]:
        ids = torch.randint(3, src.config.padded_vocab_size, (B, a["prompt"]), generator=g)
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
