"""Benchmark peer: training steps of the bench ChatGLM3-layout model with PyTorch (CPU) + PEFT.

Args (JSON): {"config": {chatglm fields}, "batch": B, "seq": S, "mode": "lora"|"full",
"lora": {"r", "lora_alpha", "target_modules"}, "steps": n, "warmup": w, "seed": s}.
The model has random weights (seeded); each step is a full HF-Trainer-style
optimizer step: zero_grad, forward with labels (all positions valid), backward,
clip_grad_norm_(1.0), AdamW step. Prints one JSON line:
{"mode", "step_s" (median of the timed steps), "tokens_per_s", "losses", "threads"}.
Thread count comes from OMP_NUM_THREADS (the bench runner sets 2).
"""

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from chatglm_torch import seeded_bench_model  # noqa: E402


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = seeded_bench_model(a["config"], a.get("seed", 0))
    if a["mode"] == "lora":
        from peft import LoraConfig, get_peft_model

        lo = a["lora"]
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lo["r"], lora_alpha=lo["lora_alpha"],
                                                 lora_dropout=0.0, target_modules=lo["target_modules"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    B, S = a["batch"], a["seq"]
    g = torch.Generator().manual_seed(1)
    vocab = a["config"]["padded_vocab_size"]
    ids = torch.randint(0, vocab, (B, S), generator=g)
    model.train()
    times, losses = [], []
    for i in range(a.get("warmup", 1) + a.get("steps", 3)):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if i >= a.get("warmup", 1):
            times.append(dt)
    step = statistics.median(times)
    print(json.dumps({"mode": a["mode"], "step_s": step, "tokens_per_s": B * S / step, "losses": losses,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
