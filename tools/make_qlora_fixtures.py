"""Golden QLoRA trajectories on the tiny model (tests/fixtures/tiny): PyTorch + PEFT on a 4-bit base.

bitsandbytes is not in the package mirror these machines reach, so the 4-bit
base is made the way QLoRA computes with it: each layer's four linear
weights (query_key_value, dense, dense_h_to_4h, dense_4h_to_h) quantized with
bitsandbytes' algorithm (tools/bnb_quant.py, bit for bit its CUDA kernels)
and dequantized to float32 — what bitsandbytes' MatMul4Bit multiplies by,
before its cast to the compute dtype (here the compute dtype is float32, so
there is no cast). The embedding, output layer, norms and the qkv bias stay
as they are, as transformers' bitsandbytes integration leaves them
(docs/qlora.md). Then the same HF-Trainer-style loop as
tools/make_training_fixtures.py: LoRA r 4, alpha 32, dropout 0 on
query_key_value, from the same initial adapter (tiny-train/lora_init), AdamW
lr 1e-3, batch 2, 5 steps, the linear schedule, clipping at 1.0, no shuffling.

Writes tests/fixtures/tiny-train/qlora.json: per run (NF4 with double
quantization, LLaMA-Factory's quantization_bit: 4; FP4 without, transformers'
BitsAndBytesConfig defaults) the quantization settings, the sha256 of each
dequantized weight (float32 little-endian, so a test can check it dequantizes
the very same base), the per-step loss / grad_norm / learning rate and the
final tensors' sums, as trajectories.json holds them.

Run: .venv-tools/bin/python tools/make_qlora_fixtures.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bnb_quant as bq  # noqa: E402
import make_training_fixtures as mtf  # noqa: E402

LINEARS = ["self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h",
           "mlp.dense_4h_to_h"]
RUNS = {
    "qlora_nf4_dq_5": {"quant_type": "nf4", "double_quant": True},
    "qlora_fp4_5": {"quant_type": "fp4", "double_quant": False},
}


def quantized_base(quant_type: str, double_quant: bool):
    """The tiny model with its layers' linear weights replaced by their 4-bit dequantization."""
    m = mtf.base_model()
    sd = m.state_dict()
    hashes = {}
    for i in range(m.config.num_layers):
        for lin in LINEARS:
            name = f"transformer.encoder.layers.{i}.{lin}.weight"
            w = sd[name].detach().numpy().astype(np.float32)
            state = bq.quantize_4bit(w.reshape(-1), quant_type, 64, double_quant)
            deq = bq.dequantize_4bit(state).reshape(w.shape)
            hashes[name] = hashlib.sha256(deq.astype("<f4").tobytes()).hexdigest()
            sd[name] = torch.from_numpy(deq.copy())
    m.load_state_dict(sd)
    return m, hashes


def main() -> None:
    with open(os.path.join(mtf.OUT, "data.jsonl")) as f:
        records = [(r["input_ids"], r["labels"]) for r in map(json.loads, f)]
    init = load_file(os.path.join(mtf.OUT, "lora_init.safetensors"))
    runs = {}
    for name, q in RUNS.items():
        base, hashes = quantized_base(q["quant_type"], q["double_quant"])
        base.name_or_path = "tests/fixtures/tiny"
        torch.manual_seed(42)
        m = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **mtf.LORA))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if p.requires_grad:
                    p.copy_(init[mtf.saved_name(n)])
        res = mtf.train(m, records, steps=5, batch=2, ga=1, lr=1e-3, wd=0.0)
        runs[name] = {"adapter": {"kind": "lora", **mtf.LORA}, "init": "lora_init.safetensors",
                      "quantization": {**q, "blocksize": 64}, "dequantized_sha256": hashes,
                      "max_steps": 5, "gradient_accumulation_steps": 1, "weight_decay": 0.0,
                      "learning_rate": 1e-3, "per_device_train_batch_size": 2, **res}
    doc = {
        "model": "tests/fixtures/tiny",
        "data": "data.jsonl",
        "base": "each layer's four linear weights quantized with tools/bnb_quant.py and dequantized "
                "to float32; embedding, output layer, norms and qkv bias unchanged (float32)",
        "order": "no shuffle: step k (1-based) uses the next batch records in file order, cycling",
        "runs": runs,
    }
    with open(os.path.join(mtf.OUT, "qlora.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(json.dumps({k: [s["loss"] for s in v["steps"]] for k, v in runs.items()}))


if __name__ == "__main__":
    main()
