"""Train the demo tokenizer and write the demo model's config.json.

Run from the repository root after `deno run -A data/make_demo.ts`:

    .venv-tools/bin/python tools/make_demo_tokenizer.py

A real SentencePiece BPE model, trained by the sentencepiece trainer on the
demo data's contents and summaries, with the settings of ChatGLM3's
tokenizer.model that change how text is encoded: BPE, byte fallback (so any
text encodes, bytes as <0x00>..<0xFF> at ids 3..258), identity normalization,
a dummy prefix, extra whitespace kept, <unk>=0, <s>=1, </s>=2 and no pad piece.
The vocabulary is small (1,024) so that the demo model's embedding is small.

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


if __name__ == "__main__":
    main()
