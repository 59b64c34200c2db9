"""Golden losses at chatglm3-6b's padded vocabulary (65,024) and two sizes between.

A one-layer, 64-wide ChatGLM3-layout model with padded_vocab_size 40,960,
49,152 and 65,024 (the output layer alone 4 M values): the weights are not
stored but made from a seeded hash that tests/large_vocab_test.ts repeats
bit for bit (`hashed_values`), so the fixture is a few KB. Every value is
k·2^-13 with |k| ≤ 1024, exact in f16, so the f16 file the test writes and
the f32 model here hold the same numbers.

Per vocabulary size: 8 records (ids across the whole vocabulary, prompts
unlabelled) and PyTorch's per-record loss. At 65,024 also: 3 AdamW steps of
LoRA (r 4 on query_key_value, from a hashed non-zero adapter, HF Trainer's
loop as tools/make_training_fixtures.py writes it), the per-record losses of
the base merged with that initial adapter (PEFT's merge_and_unload, the
merged weight rounded to f16 as a merge into an f16 checkpoint stores it),
and greedy continuations of two prompts.

Writes tests/fixtures/vocab/expected.json.
Run: .venv-tools/bin/python tools/make_vocab_fixtures.py
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatglm_torch import ChatGLMConfig, ChatGLMForConditionalGeneration  # noqa: E402
from make_tiny_model import r7  # noqa: E402
from make_training_fixtures import saved_name, train  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "vocab")
SEED = 20240
VOCABS = [40960, 49152, 65024]
M32 = 0xFFFFFFFF


def lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) & M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def fnv1a(name: str) -> int:
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & M32
    return h


def hashed_values(name: str, n: int, seed: int = SEED) -> np.ndarray:
    """Value i of tensor `name`: ((h(i ^ salt) >> 21) − 1024)·2^-13, salt = h(fnv1a(name) ^ seed)."""
    salt = int(lowbias32(np.array([fnv1a(name) ^ seed]))[0])
    u = lowbias32(np.arange(n, dtype=np.uint64) ^ salt)
    return ((u >> 21).astype(np.int64) - 1024).astype(np.float32) * np.float32(2.0**-13)


def config(vocab: int) -> dict:
    return dict(num_layers=1, padded_vocab_size=vocab, hidden_size=64, ffn_hidden_size=128,
                kv_channels=16, num_attention_heads=4, multi_query_group_num=2, seq_length=256,
                layernorm_epsilon=1e-5, add_qkv_bias=True)


def model(vocab: int) -> ChatGLMForConditionalGeneration:
    m = ChatGLMForConditionalGeneration(ChatGLMConfig(**config(vocab)))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
            else:
                p.copy_(torch.from_numpy(hashed_values(n, p.numel())).reshape(p.shape))
    return m.eval()


def records(vocab: int) -> list[tuple[list[int], list[int]]]:
    """8 records of 6–36 tokens, ids over the whole vocabulary, the first third unlabelled."""
    out = []
    for r in range(8):
        n = 6 + 4 * r + (r % 3)
        ids = [int(v) for v in lowbias32(np.arange(n, dtype=np.uint64) + 1000 * r + vocab) % vocab]
        ids[-1] = vocab - 1 - r  # the top of the vocabulary, labelled
        cut = n // 3
        out.append((ids, [-100] * cut + ids[cut:]))
    return out


def losses(m, recs) -> list[float]:
    with torch.no_grad():
        return [r7(float(m(input_ids=torch.tensor([i]), labels=torch.tensor([l]))["loss"]))
                for i, l in recs]


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query_key_value"])


def lora_model(vocab: int):
    m = get_peft_model(model(vocab), LoraConfig(task_type="CAUSAL_LM", **LORA))
    init = {}
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                key = saved_name(n)
                p.copy_(torch.from_numpy(hashed_values(key, p.numel())).reshape(p.shape))
                init[key] = list(p.shape)
    return m, init


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    doc = {"seed": SEED, "values": "((lowbias32(i ^ lowbias32(fnv1a(name) ^ seed)) >> 21) - 1024) * 2^-13; "
                                    "norm weights 1",
           "vocabs": {}}
    for vocab in VOCABS:
        recs = records(vocab)
        entry = {"config": config(vocab), "records": [{"input_ids": i, "labels": l} for i, l in recs],
                 "losses": losses(model(vocab), recs)}
        if vocab == 65024:
            lm, init = lora_model(vocab)
            res = train(lm, recs, steps=3, batch=2, ga=1, lr=1e-2, wd=0.0)
            entry["lora"] = {**LORA, "init_shapes": init, "learning_rate": 1e-2, "max_steps": 3,
                             "per_device_train_batch_size": 2, "order": "no shuffle, records in order",
                             "step_losses": [s["loss"] for s in res["steps"]]}
            fresh, _ = lora_model(vocab)
            merged = fresh.merge_and_unload()
            with torch.no_grad():
                for n, p in merged.named_parameters():
                    if "query_key_value.weight" in n:
                        p.copy_(p.half().float())
            entry["merged_losses"] = losses(merged.eval(), recs)
            base = model(vocab)
            prompts = [recs[2][0][:9], recs[5][0][:17]]
            entry["greedy"] = [{"prompt": p, "tokens": base.greedy(p, 6)} for p in prompts]
        doc["vocabs"][str(vocab)] = entry
        print(vocab, entry["losses"], entry.get("lora", {}).get("step_losses"), entry.get("greedy"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
