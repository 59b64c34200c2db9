"""Make the tiny ChatGLM3-layout test model and its golden outputs.

Writes, under tests/fixtures/:
  tiny/            config.json (model_type chatglm, every chatglm field), model.safetensors (f32),
                   tokenizer.model (SentencePiece BPE with byte fallback, trained here by the real
                   trainer) — a complete model dir.
  tiny-f16/        the same weights cast to float16 by torch.
  tiny-bf16/       the same weights cast to bfloat16 by torch.
  tiny-sharded/    the f32 weights split by `save_pretrained(max_shard_size=...)` into shards
                   with model.safetensors.index.json.
  tiny-expected/   forward.json (logits, losses, greedy continuations, the transformers
                   GlmForCausalLM cross-check) and grads_*.safetensors (initial trainable tensors
                   as "init/NAME" and gradients of the mean loss as "grad/NAME").

The vocabulary: SentencePiece needs 256 byte pieces for byte fallback, so the
piece vocabulary is 375 (3 control pieces + 256 bytes + 116 learned) and with
ChatGLM3's 9 special tokens the padded vocabulary is exactly 384.

Run: .venv-tools/bin/python tools/make_tiny_model.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
import sys

import sentencepiece as spm
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatglm_torch import ChatGLMForConditionalGeneration, glm_crosscheck, tiny_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SP_VOCAB = 375
SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
            "<|observation|>"]
SPECIAL = {name: SP_VOCAB + i for i, name in enumerate(SPECIALS)}
EOS = 2

EN = ("the model learns to answer short questions about weather travel food music and numbers "
      "with clear friendly sentences please tell me what you think is a good plan for today").split()
ZH = list("你好今天天气很好我们去公园吧这个问题的答案是什么请告诉我北京上海吃饭学习模型训练数据广告裙子")


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        en = " ".join(rng.choice(EN) for _ in range(rng.randint(4, 10)))
        zh = "".join(rng.choice(ZH) for _ in range(rng.randint(4, 12)))
        lines.append(f"{en.capitalize()}. {zh}。 {rng.randint(0, 999)}")
    return lines


def train_tokenizer() -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(400, 0)),
        model_writer=model,
        model_type="bpe",
        vocab_size=SP_VOCAB,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def init_weights(model: ChatGLMForConditionalGeneration, seed: int) -> None:
    """Seeded weights large enough that attention and logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "prefix_encoder" in name:
                continue
            if name.endswith("layernorm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "word_embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "output_layer" in name:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def config_json(config, dtype: str) -> dict:
    """config.json as the THUDM/chatglm3-6b checkpoint writes it, with the tiny dimensions."""
    return {
        "_name_or_path": "tiny-chatglm3",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": config.add_bias_linear,
        "add_qkv_bias": config.add_qkv_bias,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": config.ffn_hidden_size,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": config.hidden_size,
        "kv_channels": config.kv_channels,
        "layernorm_epsilon": config.layernorm_epsilon,
        "multi_query_attention": True,
        "multi_query_group_num": config.multi_query_group_num,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_layers,
        "original_rope": True,
        "padded_vocab_size": config.padded_vocab_size,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": config.rope_ratio,
        "seq_length": config.seq_length,
        "pre_seq_len": None,
        "prefix_projection": False,
        "use_cache": True,
        "torch_dtype": dtype,
        "transformers_version": "4.30.2",
        "tie_word_embeddings": False,
        "eos_token_id": EOS,
        "pad_token_id": 0,
    }


def write_dir(name: str, state: dict, config, dtype: str, sp_model: bytes) -> None:
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(config, dtype), f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(sp_model)


def write_sharded(model, config, sp_model: bytes) -> None:
    d = os.path.join(ROOT, "tiny-sharded")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, max_shard_size="200KB", safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(config, "float32"), f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(sp_model)
    shards = [n for n in os.listdir(d) if n.endswith(".safetensors")]
    if len(shards) < 2 or not os.path.exists(os.path.join(d, "model.safetensors.index.json")):
        raise RuntimeError(f"expected a sharded save, got {sorted(os.listdir(d))}")


def record(sp, user: str, answer: str) -> tuple[list[int], list[int]]:
    """A training record as finetune_hf.py builds it: prompt tokens unlabelled, answer + eos labelled."""
    prompt = [SPECIAL["[gMASK]"], SPECIAL["sop"], SPECIAL["<|user|>"]] + sp.encode("\n") + sp.encode(user)
    prompt += [SPECIAL["<|assistant|>"]] + sp.encode("\n")
    out = sp.encode(answer) + [EOS]
    ids = prompt + out
    labels = [-100] * len(prompt) + out
    return ids, labels


def pad_batch(records: list[tuple[list[int], list[int]]]):
    S = max(len(r[0]) for r in records)
    ids = [r[0] + [0] * (S - len(r[0])) for r in records]
    labels = [r[1] + [-100] * (S - len(r[1])) for r in records]
    return torch.tensor(ids), torch.tensor(labels), [len(r[0]) for r in records]


def b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().float().contiguous().numpy().astype("<f4").tobytes()).decode()


def r7(x: float) -> float:
    return float(f"{x:.7g}")


def row_stats(logits: torch.Tensor) -> list[dict]:
    """Per token row: the first 8 logits, the sum and the sum of squares (f64)."""
    rows = []
    for row in logits.reshape(-1, logits.shape[-1]).double():
        rows.append({"head": [r7(v) for v in row[:8].tolist()], "sum": r7(float(row.sum())),
                     "sumsq": r7(float((row * row).sum()))})
    return rows


def forward_cases(model, sp) -> list[tuple[str, list]]:
    specs = [
        ("two_rows", [("What is the weather", "the weather is good"), ("Hi", "你好")]),
        ("longer", [("Tell me a plan for music", "我们去公园吧 with music"), ("北京天气", "很好 42")]),
        ("single", [("Hi", "ok")]),
    ]
    return [(name, [record(sp, u, a) for u, a in recs]) for name, recs in specs]


def main() -> None:
    torch.manual_seed(0)
    sp_model = train_tokenizer()
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    assert sp.vocab_size() == SP_VOCAB, sp.vocab_size()

    config = tiny_config()
    model = ChatGLMForConditionalGeneration(config).eval()
    init_weights(model, 1234)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    write_dir("tiny", state, config, "float32", sp_model)
    write_dir("tiny-f16", {k: v.half() for k, v in state.items()}, config, "float16", sp_model)
    write_dir("tiny-bf16", {k: v.bfloat16() for k, v in state.items()}, config, "bfloat16", sp_model)
    write_sharded(model, config, sp_model)

    exp_dir = os.path.join(ROOT, "tiny-expected")
    shutil.rmtree(exp_dir, ignore_errors=True)
    os.makedirs(exp_dir)

    # Forward: logits statistics per row, loss, full logits for the short case.
    cases = []
    for name, recs in forward_cases(model, sp):
        ids, labels, lengths = pad_batch(recs)
        with torch.no_grad():
            out = model(ids, labels=labels)
        case = {"name": name, "batch": ids.shape[0], "seq": ids.shape[1], "lengths": lengths,
                "input_ids": ids.tolist(), "labels": labels.tolist(), "loss": r7(float(out["loss"].detach())),
                "rows": row_stats(out["logits"]), "max_abs": r7(float(out["logits"].abs().max()))}
        if name == "single":
            case["logits_f32_b64"] = b64(out["logits"])
        cases.append(case)

    # rope_ratio ≠ 1: same weights, a longer-context rotary base.
    rope_model = ChatGLMForConditionalGeneration(tiny_config(rope_ratio=4)).eval()
    rope_model.load_state_dict(state)
    ids, labels, lengths = pad_batch(forward_cases(model, sp)[1][1])
    with torch.no_grad():
        out = rope_model(ids, labels=labels)
    rope_case = {"name": "rope_ratio_4", "rope_ratio": 4, "batch": ids.shape[0], "seq": ids.shape[1],
                 "lengths": lengths, "input_ids": ids.tolist(), "labels": labels.tolist(),
                 "loss": r7(float(out["loss"].detach())), "rows": row_stats(out["logits"]),
                 "max_abs": r7(float(out["logits"].abs().max()))}

    # Greedy continuations, 32 tokens, no stop.
    prompts = [
        [SPECIAL["[gMASK]"], SPECIAL["sop"], SPECIAL["<|user|>"]] + sp.encode("\n") + sp.encode("你好")
        + [SPECIAL["<|assistant|>"]],
        [SPECIAL["[gMASK]"], SPECIAL["sop"], SPECIAL["<|user|>"]] + sp.encode("\n")
        + sp.encode("What is a good plan for today") + [SPECIAL["<|assistant|>"]],
    ]
    greedy = [{"prompt": p, "tokens": model.greedy(p, 32)} for p in prompts]

    # Cross-check against transformers' own GLM implementation.
    xids, _, _ = pad_batch(forward_cases(model, sp)[1][1])
    glm_diff = glm_crosscheck(model, xids)
    glm_diff_rope = glm_crosscheck(rope_model, xids)
    if max(glm_diff, glm_diff_rope) > 1e-5:
        raise RuntimeError(f"chatglm_torch disagrees with GlmForCausalLM: {glm_diff}, {glm_diff_rope}")

    grad_batch = cases[0]
    ids = torch.tensor(grad_batch["input_ids"])
    labels = torch.tensor(grad_batch["labels"])
    grads_meta = {"input_ids": grad_batch["input_ids"], "labels": grad_batch["labels"], "kinds": {}}

    def dump(kind: str, m, extra: dict, with_init: bool = True) -> None:
        m.zero_grad()
        out = m(input_ids=ids, labels=labels)
        out["loss"].backward()
        tensors = {}
        for n, p in m.named_parameters():
            if p.requires_grad:
                if with_init:
                    tensors["init/" + n] = p.detach().clone()
                tensors["grad/" + n] = p.grad.detach().clone()
        save_file(tensors, os.path.join(exp_dir, f"grads_{kind}.safetensors"))
        grads_meta["kinds"][kind] = {"loss": r7(float(out["loss"].detach())), **extra,
                                     "params": sorted(n[5:] for n in tensors if n.startswith("grad/"))}

    # LoRA with B initialised non-zero so dA is non-trivial (PEFT initialises B = 0).
    for kind, targets in (("lora_qkv", ["query_key_value"]),
                          ("lora_all", ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])):
        base = ChatGLMForConditionalGeneration(config).eval()
        base.load_state_dict(state)
        torch.manual_seed(7)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.0,
                                               target_modules=targets, task_type="CAUSAL_LM"))
        g = torch.Generator().manual_seed(8)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        # PEFT's parameter names carry the adapter name; the saved (PEFT file) names do not.
        peft.zero_grad()
        out = peft(input_ids=ids, labels=labels)
        out["loss"].backward()
        tensors = {}
        for n, p in peft.named_parameters():
            if p.requires_grad:
                saved = n.replace(".default", "")
                tensors["init/" + saved] = p.detach().clone()
                tensors["grad/" + saved] = p.grad.detach().clone()
        save_file(tensors, os.path.join(exp_dir, f"grads_{kind}.safetensors"))
        grads_meta["kinds"][kind] = {
            "loss": r7(float(out["loss"].detach())), "r": 4, "alpha": 32, "target_modules": targets,
            "params": sorted(n[5:] for n in tensors if n.startswith("grad/"))}

    for kind, proj in (("prefix", False), ("prefix_proj", True)):
        pc = tiny_config(pre_seq_len=4, prefix_projection=proj)
        # The prefix encoder keeps torch's default init (embedding N(0, 1), Linear kaiming-uniform).
        torch.manual_seed(11)
        pm = ChatGLMForConditionalGeneration(pc).eval()  # eval: prefix dropout off
        missing, unexpected = pm.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("transformer.prefix_encoder") for k in missing)
        dump(kind, pm, {"pre_seq_len": 4, "prefix_projection": proj})

    full = ChatGLMForConditionalGeneration(config).eval()
    full.load_state_dict(state)
    # Full SFT starts from the tiny model's own weights, so only gradients are stored.
    dump("full", full, {}, with_init=False)

    forward = {
        "model": "tiny",
        "special": SPECIAL,
        "padding": "right; positions 0..len-1 per record; pad id 0, label -100",
        "cases": cases,
        "rope_case": rope_case,
        "greedy": greedy,
        "glm_crosscheck": {"transformers_model": "GlmForCausalLM", "max_abs_diff": glm_diff,
                           "max_abs_diff_rope_ratio_4": glm_diff_rope},
        "grads": grads_meta,
    }
    with open(os.path.join(exp_dir, "forward.json"), "w") as f:
        json.dump(forward, f, separators=(",", ":"))
        f.write("\n")
    print(json.dumps({"glm_crosscheck": forward["glm_crosscheck"],
                      "losses": [c["loss"] for c in cases],
                      "grad_losses": {k: v["loss"] for k, v in grads_meta["kinds"].items()}}))


if __name__ == "__main__":
    main()
