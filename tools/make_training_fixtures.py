"""Golden training trajectories on the tiny model (tests/fixtures/tiny).

The loop is HF Trainer's for the ChatGLM3 finetune_demo settings, written out
so every number is visible: torch.optim.AdamW (β 0.9/0.999, ε 1e-8), weight
decay only on parameters HF's `get_decay_parameter_names` keeps (not biases,
not norm weights), `get_linear_schedule_with_warmup(0, max_steps)`,
`clip_grad_norm_(1.0)` with the norm before clipping logged, dropout 0, no
shuffling (step k takes the next consecutive records, cycling), right padding.
A micro-batch's loss is the mean over its non-ignored tokens and, as Trainer
does for a model whose forward takes no loss kwargs (upstream ChatGLM's), it is
divided by gradient_accumulation_steps before backward.

Writes tests/fixtures/tiny-train/:
  data.jsonl                  the 8 masked training records {input_ids, labels}
  trajectories.json           per run: settings, per-step loss / grad_norm / lr, final tensor stats
  lora_init.safetensors       the LoRA adapter before training (A from PEFT's init, B = 0), PEFT key names
  prefix_init.safetensors     the P-Tuning v2 prefix embedding before training
  prefix_proj_init.safetensors  the prefix embedding + projection MLP before training
and tests/fixtures/tiny-lora-peft/ (the 5-step LoRA run's adapter as PEFT's
save_pretrained writes it) and tests/fixtures/tiny-lora-minimal/ (the same
tensors with only the adapter_config.json keys PEFT needs to load them).

Run: .venv-tools/bin/python tools/make_training_fixtures.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import sentencepiece as spm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import get_linear_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatglm_torch import ChatGLMForConditionalGeneration, tiny_config  # noqa: E402
from make_tiny_model import pad_batch, record, r7  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
TINY = os.path.join(FIX, "tiny")
OUT = os.path.join(FIX, "tiny-train")

DIALOGUES = [
    ("你好", "你好，我们去公园吧"),
    ("What is the weather today", "the weather is good"),
    ("请告诉我答案", "the answer is 42"),
    ("Tell me a plan for music", "我们去北京 with music"),
    ("北京天气", "很好"),
    ("What do you think about food", "food is a good plan for today, 吃饭"),
    ("Hi", "你好"),
    ("学习模型训练数据", "please learn with clear friendly sentences about numbers 7 8 9"),
]


def decay_names(model) -> set[str]:
    """HF Trainer's rule: no decay for biases and norm weights (by name, as get_decay_parameter_names)."""
    import re
    pats = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return {n for n, _ in model.named_parameters() if not any(re.search(p, n.lower()) for p in pats)}


def base_model() -> ChatGLMForConditionalGeneration:
    m = ChatGLMForConditionalGeneration(tiny_config())
    m.load_state_dict(load_file(os.path.join(TINY, "model.safetensors")))
    return m


def saved_name(n: str) -> str:
    """PEFT parameter name → the key PEFT saves (adapter name dropped)."""
    return n.replace(".default", "")


def train(model, records, *, steps: int, batch: int, ga: int, lr: float, wd: float) -> dict:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = decay_names(model)
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": wd},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    model.train()
    log = []
    cursor = 0
    for step in range(1, steps + 1):
        lr_used = sched.get_last_lr()[0]
        opt.zero_grad()
        micro = []
        for _ in range(ga):
            recs = [records[(cursor + i) % len(records)] for i in range(batch)]
            cursor += batch
            ids, labels, _ = pad_batch(recs)
            loss = model(input_ids=ids, labels=labels)["loss"]
            (loss / ga).backward()
            micro.append(float(loss.detach()))
        norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0))
        opt.step()
        sched.step()
        log.append({"step": step, "loss": r7(sum(micro) / ga), "micro_losses": [r7(x) for x in micro],
                    "grad_norm": r7(norm), "learning_rate": r7(lr_used),
                    "logged_learning_rate": r7(sched.get_last_lr()[0])})
    final = {saved_name(n): {"sum": r7(float(p.detach().double().sum())),
                             "sumsq": r7(float((p.detach().double() ** 2).sum()))} for n, p in params}
    return {"steps": log, "final": final,
            "decay": sorted(saved_name(n) for n, _ in params if n in decay),
            "no_decay": sorted(saved_name(n) for n, _ in params if n not in decay)}


LORA = dict(r=4, lora_alpha=32, lora_dropout=0.0, target_modules=["query_key_value"])


def lora_model():
    m = base_model()
    # PEFT records this as base_model_name_or_path.
    m.name_or_path = "tests/fixtures/tiny"
    torch.manual_seed(42)
    return get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", **LORA))


def prefix_model(proj: bool, init: dict | None):
    torch.manual_seed(42)
    m = ChatGLMForConditionalGeneration(tiny_config(pre_seq_len=4, prefix_projection=proj))
    m.load_state_dict(load_file(os.path.join(TINY, "model.safetensors")), strict=False)
    m.transformer.prefix_dropout.p = 0.0
    if init is not None:
        m.load_state_dict(init, strict=False)
    return m


def main() -> None:
    sp = spm.SentencePieceProcessor(model_file=os.path.join(TINY, "tokenizer.model"))
    records = [record(sp, u, a) for u, a in DIALOGUES]
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    with open(os.path.join(OUT, "data.jsonl"), "w") as f:
        for ids, labels in records:
            f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")

    runs = {}
    common = {"learning_rate": 1e-3, "per_device_train_batch_size": 2, "adam_beta1": 0.9,
              "adam_beta2": 0.999, "adam_epsilon": 1e-8, "max_grad_norm": 1.0,
              "lr_scheduler_type": "linear", "warmup_steps": 0, "shuffle": False, "dropout": 0.0}

    # LoRA: the initial adapter (A from PEFT's kaiming-uniform init, B = 0) is saved so a run
    # elsewhere can start from the very same tensors.
    lm = lora_model()
    lora_init = {saved_name(n): p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
    save_file(lora_init, os.path.join(OUT, "lora_init.safetensors"))

    def lora_from_init():
        m = lora_model()
        with torch.no_grad():
            for n, p in m.named_parameters():
                if p.requires_grad:
                    p.copy_(lora_init[saved_name(n)])
        return m

    for name, steps, ga, wd in (("lora_5", 5, 1, 0.0), ("lora_20", 20, 1, 0.0), ("lora_5_ga2", 5, 2, 0.0)):
        m = lora_from_init()
        res = train(m, records, steps=steps, batch=2, ga=ga, lr=1e-3, wd=wd)
        runs[name] = {"adapter": {"kind": "lora", **LORA}, "init": "lora_init.safetensors",
                      "max_steps": steps, "gradient_accumulation_steps": ga, "weight_decay": wd,
                      **common, **res}
        if name == "lora_5":
            peft_dir = os.path.join(FIX, "tiny-lora-peft")
            shutil.rmtree(peft_dir, ignore_errors=True)
            m.save_pretrained(peft_dir)
            os.remove(os.path.join(peft_dir, "README.md"))  # PEFT's generated model card
            write_minimal(peft_dir, os.path.join(FIX, "tiny-lora-minimal"))

    for name, proj in (("prefix_5", False), ("prefix_proj_5", True)):
        init_file = "prefix_init.safetensors" if not proj else "prefix_proj_init.safetensors"
        m = prefix_model(proj, None)
        init = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
        save_file(init, os.path.join(OUT, init_file))
        res = train(m, records, steps=5, batch=2, ga=1, lr=1e-3, wd=0.0)
        runs[name] = {"adapter": {"kind": "prefix", "pre_seq_len": 4, "prefix_projection": proj},
                      "init": init_file, "max_steps": 5, "gradient_accumulation_steps": 1,
                      "weight_decay": 0.0, **common, **res}

    for name, wd in (("full_5", 0.0), ("full_5_wd", 0.01)):
        m = base_model()
        res = train(m, records, steps=5, batch=2, ga=1, lr=1e-3, wd=wd)
        runs[name] = {"adapter": {"kind": "full"}, "init": "../tiny/model.safetensors", "max_steps": 5,
                      "gradient_accumulation_steps": 1, "weight_decay": wd, **common, **res}

    doc = {
        "model": "tests/fixtures/tiny",
        "data": "data.jsonl",
        "order": "no shuffle: step k (1-based) uses the next batch*gradient_accumulation_steps records "
                 "in file order, cycling",
        "learning_rate_note": "learning_rate is the rate used for that step's update, lr*(1-(k-1)/max_steps); "
                              "logged_learning_rate is what HF Trainer's log_history shows for step k "
                              "(read after the scheduler step), lr*(1-k/max_steps)",
        "loss_note": "loss is the mean of the step's micro-batch losses (each the mean over its non-ignored "
                     "shifted labels); gradients are of sum(micro_loss)/gradient_accumulation_steps",
        "runs": runs,
    }
    with open(os.path.join(OUT, "trajectories.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(json.dumps({k: [s["loss"] for s in v["steps"]] for k, v in runs.items()}))


def write_minimal(peft_dir: str, out_dir: str) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    shutil.copy(os.path.join(peft_dir, "adapter_model.safetensors"), out_dir)
    with open(os.path.join(peft_dir, "adapter_config.json")) as f:
        full = json.load(f)
    keep = ["peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
            "base_model_name_or_path", "fan_in_fan_out", "inference_mode"]
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump({k: full[k] for k in keep}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
