"""P-Tuning v2 settings for the demo, tried quickly with the PyTorch reference.

Run from the repository root after `deno task pipeline ptuning` has written
runs/ptuning/data/ (the tokenized, masked demo records):

    .venv-tools/bin/python tools/ptuning_sweep.py '{"tokens": 64, "lr": 0.1, "steps": 300}'

One JSON object of settings per argument; each run prints one JSON line with
the training loss (step 1 and the mean of the last 10 logged steps, as the
report), the dev eval loss and greedy ROUGE-L / BLEU-4 on the first 50 dev
records. The training loop is HF Trainer's (AdamW, betas 0.9/0.999, eps 1e-8,
no weight decay, clip to norm 1.0, linear decay, shuffled batches of 8) over
tools/chatglm_torch.py's model with the demo weights frozen; scoring is
tools/make_metrics_fixtures.py's restatement of the finetune_demo metrics.

Settings: tokens (pre_seq_len), lr, steps, batch, dropout (prefix dropout,
upstream 0.1), init_std (std of the prefix embedding, upstream 1.0 as
nn.Embedding), init_from ("records" or "response": the base model's own keys
and values of training text instead, Li & Liang's init), projection
(prefix_projection) and hidden (its width, default hidden_size), warmup,
constant (no decay), seed, eval_limit (0: no generation), show (print that many
predictions to stderr), threads (1 by default: the machine's other core is
usually busy).

Findings are in docs/demo.md (the P-Tuning v2 bullet).
"""

import json
import os
import random
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatglm_torch import ChatGLMConfig, ChatGLMForConditionalGeneration  # noqa: E402
from make_metrics_fixtures import score  # noqa: E402

MODEL = "data/demo-model"
DATA = "runs/ptuning/data"
DEFAULTS = {"tokens": 64, "lr": 0.1, "steps": 300, "batch": 8, "dropout": 0.1, "init_std": 1.0,
            "projection": False, "init_from": None, "warmup": 0, "seed": 42, "eval_limit": 50, "max_new_tokens": 64,
            "threads": 1}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build(s):
    cfg = json.load(open(os.path.join(MODEL, "config.json")))
    cfg.pop("torch_dtype", None)
    cfg["pre_seq_len"] = s["tokens"]
    cfg["prefix_projection"] = s["projection"]
    model = ChatGLMForConditionalGeneration(ChatGLMConfig(**cfg))
    torch.manual_seed(s["seed"])
    t = model.transformer
    enc = t.prefix_encoder
    with torch.no_grad():
        enc.embedding.weight.normal_(0.0, s["init_std"])
        if s["projection"]:
            kv, hid = enc.embedding.weight.shape[1], s.get("hidden") or cfg["hidden_size"]
            enc.trans = torch.nn.Sequential(torch.nn.Linear(kv, hid), torch.nn.Tanh(), torch.nn.Linear(hid, kv))
            for m in enc.trans:
                if isinstance(m, torch.nn.Linear):
                    m.reset_parameters()
    weights = {k: v.float() for k, v in load_file(os.path.join(MODEL, "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all("prefix_encoder" in k for k in missing), (missing, unexpected)
    t.prefix_dropout.p = s["dropout"]
    if s.get("init_from"):
        init_from_activations(model, s)
    return model


def init_from_activations(model, s):
    """Li & Liang's init: the base model's own keys and values of real text (training records)."""
    c = model.config
    H, G, D, P = c.num_attention_heads, c.multi_query_group_num, c.kv_channels, s["tokens"]
    recs = read_jsonl(os.path.join(DATA, "train.masked.jsonl"))
    ids = []
    for r in recs[1000:]:
        ids.extend(r["input_ids"] if s["init_from"] == "records" else
                   [i for i, lab in zip(r["input_ids"], r["labels"]) if lab != -100])
        if len(ids) >= P:
            break
    ids = torch.tensor([ids[:P]])
    kv = []
    t = model.transformer

    def hook(mod, inp, o):
        q, k, v = o.split([H * D, G * D, G * D], dim=-1)
        kv.append((k[0].reshape(P, G, D), v[0].reshape(P, G, D)))

    hs = [ly.self_attention.query_key_value.register_forward_hook(hook) for ly in t.encoder.layers]
    saved = t.pre_seq_len
    t.pre_seq_len = None
    with torch.no_grad():
        model(ids)
        t.pre_seq_len = saved
        for h in hs:
            h.remove()
        w = torch.stack([x for pair in kv for x in pair], dim=1)  # [P, 2L, G, D]
        t.prefix_encoder.embedding.weight.copy_(w.reshape(P, -1))


def batches(records, batch, seed):
    epoch = 0
    while True:
        order = list(range(len(records)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            yield [records[j] for j in order[i:i + batch]]
        epoch += 1


def collate(rows):
    S = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    labels = torch.full((len(rows), S), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
    pos = torch.arange(S)[None].expand(len(rows), S)
    return ids, labels, pos


def eval_loss(model, records):
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(records), 16):
            ids, labels, pos = collate(records[i:i + 16])
            logits = model(ids, pos)["logits"]
            lp = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum")
            tot += float(lp)
            n += int((labels[:, 1:] != -100).sum())
    return tot / n


def generate_scores(model, records, sp, max_new, show=0):
    model.eval()
    stop = {2} | set(range(sp.vocab_size(), model.config.padded_vocab_size))
    rl, bl = [], []
    with torch.no_grad():
        for r in records:
            ids = list(r["input_ids"])
            out = []
            for _ in range(max_new):
                nxt = int(torch.argmax(model(torch.tensor([ids]))["logits"][0, -1]))
                if nxt in stop:
                    break
                out.append(nxt)
                ids.append(nxt)
            label = [i for i in r["output_ids"] if i not in stop]
            sc = score(sp.decode(out).strip(), sp.decode(label).strip())["scores"]
            if show and len(rl) < show:
                print("P:", sp.decode(out).strip(), "\nL:", sp.decode(label).strip(), file=sys.stderr)
            rl.append(sc["rouge-l"])
            bl.append(sc["bleu-4"])
    return sum(rl) / len(rl), sum(bl) / len(bl)


def run(s):
    import sentencepiece as spm

    torch.set_num_threads(s["threads"])
    model = build(s)
    train = read_jsonl(os.path.join(DATA, "train.masked.jsonl"))
    dev = read_jsonl(os.path.join(DATA, "dev.masked.jsonl"))
    dev_eval = read_jsonl(os.path.join(DATA, "dev.eval.jsonl"))[: s["eval_limit"]]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps, warm = s["steps"], s["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: k / max(1, warm) if k < warm else
        1.0 if s.get("constant") else max(0.0, (steps - k) / max(1, steps - warm)))
    t0 = time.perf_counter()
    losses = []
    it = batches(train, s["batch"], s["seed"])
    for _ in range(steps):
        model.train()
        ids, labels, pos = collate(next(it))
        loss = model(ids, pos, labels=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    out = {**s, "loss_first": losses[0], "loss_last10": sum(losses[-10:]) / 10,
           "eval_loss": eval_loss(model, dev), "train_s": round(train_s, 1),
           "curve": [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 3) for i in range(0, steps, 50)]}
    if s["eval_limit"] > 0:
        sp = spm.SentencePieceProcessor(model_file=os.path.join(MODEL, "tokenizer.model"))
        out["rouge_l"], out["bleu4"] = generate_scores(model, dev_eval, sp, s["max_new_tokens"], s.get("show", 0))
    out["ratio"] = out["loss_last10"] / out["loss_first"]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}), flush=True)
    return model


def main():
    for arg in sys.argv[1:] or ["{}"]:
        run({**DEFAULTS, **json.loads(arg)})


if __name__ == "__main__":
    main()
