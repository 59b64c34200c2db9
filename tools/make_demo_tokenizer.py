"""Train the demo tokenizer and write the demo model's config.json.

Run from the repository root after `deno run -A data/make_demo.ts`:

    .venv-tools/bin/python tools/make_demo_tokenizer.py

A real SentencePiece BPE model, trained by the sentencepiece trainer on the
demo data's contents and summaries, with the settings of ChatGLM3's
tokenizer.model that change how text is encoded: BPE, byte fallback (so any
text encodes, bytes as <0x00>..<0xFF> at ids 3..258), identity normalization,
a dummy prefix, extra whitespace kept, <unk>=0, <s>=1, </s>=2 and no pad piece.
The vocabulary is small (1,024) so that the demo model's embedding is small,
and pieces are at most 4 characters long so that they stay word-like.

With --check-learnable, it then trains the PyTorch reference model
(tools/chatglm_torch.py) with this config from a random start, all weights,
300 AdamW steps of 8 records, and prints ROUGE-L / BLEU-4 of greedy answers on
40 dev records before and after: the evidence that the demo data is learnable.

config.json follows chatglm3-6b's config.json layout with the demo's tiny
sizes; padded_vocab_size = SentencePiece vocab + 9 ChatGLM3 specials, rounded
up to a multiple of 64. The weights are made elsewhere.
"""

import json
import os
import sys
import tempfile

import sentencepiece as spm

DATA = os.path.join("data", "demo")
OUT = os.path.join("data", "demo-model")
VOCAB_SIZE = 1024
N_SPECIAL = 9  # [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>


def read_records():
    records = []
    for name in ("train.json", "dev.json"):
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def train(records, workdir):
    """Train in `workdir` with relative names: the proto records its input and
    prefix paths, and fixed ones keep the output byte-identical across runs."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with open("corpus.txt", "w", encoding="utf-8") as f:
            for r in records:
                f.write(r["content"] + "\n")
                f.write(r["summary"] + "\n")
        spm.SentencePieceTrainer.train(
            input="corpus.txt",
            model_prefix="tokenizer",
            model_type="bpe",
            vocab_size=VOCAB_SIZE,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            # Pieces of at most 4 characters: on text this repetitive, longer ones
            # swallow whole phrases (and type + phrase pairs), which leaves the model
            # a lookup table of combinations instead of words it can compose.
            max_sentencepiece_length=4,
            num_threads=1,
            minloglevel=2,
        )
        with open("tokenizer.model", "rb") as f:
            return f.read()
    finally:
        os.chdir(cwd)


def config(n_vocab):
    padded = -(-(n_vocab + N_SPECIAL) // 64) * 64
    return {
        "_name_or_path": "glm-finetune/demo-model",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": 352,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": 128,
        "kv_channels": 32,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": 4,
        "num_layers": 4,
        "original_rope": True,
        "padded_vocab_size": padded,
        "post_layer_norm": True,
        "pre_seq_len": None,
        "prefix_projection": False,
        "rmsnorm": True,
        "rope_ratio": 1,
        "seq_length": 256,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def sequence_lengths(sp, records):
    """Training-sequence lengths per DESIGN §4: [gMASK] sop, user and assistant turns, eos."""
    def turn(text):
        return 1 + len(sp.encode("\n")) + len(sp.encode(text))
    return [2 + turn(r["content"]) + turn(r["summary"]) + 1 for r in records]


def check_learnable(sp, steps=300, lr=1e-3, n_eval=40):
    import random

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from chatglm_torch import ChatGLMConfig, ChatGLMForConditionalGeneration
    from make_metrics_fixtures import score

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with open(os.path.join(OUT, "config.json"), encoding="utf-8") as f:
        c = json.load(f)
    keys = ["num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size", "kv_channels",
            "num_attention_heads", "seq_length", "layernorm_epsilon", "multi_query_group_num", "rope_ratio"]
    model = ChatGLMForConditionalGeneration(ChatGLMConfig(**{k: c[k] for k in keys}, eos_token_id=2, pad_token_id=0))
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    n = sp.get_piece_size()
    gmask, sop, user, assistant = n + 1, n + 3, n + 6, n + 7

    def load(name):
        with open(os.path.join(DATA, name), encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    train_set, dev_set = load("train.json"), load("dev.json")

    def prompt(content):
        return [gmask, sop, user] + sp.encode("\n") + sp.encode(content) + [assistant]

    def evaluate():
        model.eval()
        totals = {"rouge-l": 0.0, "bleu-4": 0.0}
        with torch.no_grad():
            for r in dev_set[:n_eval]:
                ids, out = prompt(r["content"]), []
                for _ in range(48):
                    nxt = int(torch.argmax(model(torch.tensor([ids + out]))["logits"][0, -1]))
                    if nxt == 2 or nxt >= n:
                        break
                    out.append(nxt)
                s = score(sp.decode(out), r["summary"])["scores"]
                for k in totals:
                    totals[k] += s[k] / n_eval
        model.train()
        return {k: round(v, 4) for k, v in totals.items()}

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    rng = random.Random(42)
    for _ in range(steps):
        batch = []
        for r in (rng.choice(train_set) for _ in range(8)):
            p = prompt(r["content"])
            a = sp.encode("\n") + sp.encode(r["summary"]) + [2]
            batch.append((p + a, [-100] * len(p) + a))
        width = max(len(i) for i, _ in batch)
        ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in batch])
        loss = model(input_ids=ids, labels=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    print(json.dumps({"before": before, "after": evaluate(), "final_loss": round(loss.item(), 4)}))


def main():
    records = read_records()
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = train(records, tmp)
    with open(os.path.join(OUT, "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    with open(os.path.join(OUT, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config(n), f, indent=2)
        f.write("\n")
    lengths = sequence_lengths(sp, records)
    summary = {
        "vocab": n,
        "padded_vocab_size": config(n)["padded_vocab_size"],
        "records": len(records),
        "max_sequence": max(lengths),
        "mean_sequence": round(sum(lengths) / len(lengths), 2),
        "max_summary_tokens": max(len(sp.encode(r["summary"])) for r in records),
        "max_content_tokens": max(len(sp.encode(r["content"])) for r in records),
    }
    print(json.dumps(summary))
    if summary["max_sequence"] > 64:
        sys.exit("demo sequences exceed 64 tokens: %d" % summary["max_sequence"])
    if "--check-learnable" in sys.argv[1:]:
        check_learnable(sp)


if __name__ == "__main__":
    main()
