"""Fidelity at chatglm3-6b's real widths: the 2-layer shaped checkpoint against PyTorch.

The checkpoint (bench/shaped_checkpoint.ts --layers 2: hidden 4096, ffn
13696, 32 heads of 128, 2 groups, vocabulary 65,024; 0.93 B parameters in
f16) is loaded by the PyTorch statement of the model (tools/chatglm_torch.py,
in f32 from the same f16 values) and by the project's stages, from the same
files. Compared:
  * the teacher-forced loss of 8 records (16–64 tokens, ids over the whole
    vocabulary, the first third unlabelled): `deno task stage evaluate`;
  * the first 3 AdamW steps of LoRA at upstream's settings (r 8, alpha 32,
    query_key_value, lr 1e-3, batch 2, no shuffle, from the same initial
    adapter, PEFT's init with B = 0): `deno task stage train --init-adapter`.
Passes when every value agrees within 1e-3 relative. Prints the table that
docs/engine.md records. Needs ~8 GB of memory and some minutes on a CPU.

With --quantization-bit 4 both sides run QLoRA's base (NF4 with double
quantization, `--set quantization_bit=4`): the stages quantize the layers'
linear weights as they load, and PyTorch gets the same weights quantized by
tools/bnb_quant.py and dequantized (docs/qlora.md).

With --rslora both sides scale the LoRA by lora_alpha/sqrt(r) (PEFT's use_rslora).

Run: .venv-tools/bin/python tools/check_scale_fidelity.py [--checkpoint DIR] [--deno deno]
       [--quantization-bit 4] [--rslora]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "engines", "torch"))
import bnb_quant as bq  # noqa: E402
from chatglm import load_model  # noqa: E402
from make_qlora_fixtures import LINEARS  # noqa: E402
from make_training_fixtures import saved_name, train  # noqa: E402

TOL = 1e-3
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["query_key_value"])
LR, STEPS, BATCH = 1e-3, 3, 2


def records(vocab: int) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(5)
    out = []
    for r in range(8):
        n = 16 + 6 * r
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        cut = n // 3
        out.append((ids, [-100] * cut + ids[cut:]))
    return out


def dequantize_linears(model) -> None:
    """Each layer's linear weights replaced by their NF4 (double quantization) dequantization."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f".{lin}.weight" in name for lin in LINEARS):
                w = p.detach().numpy().astype(np.float32).reshape(-1)
                state = bq.quantize_4bit(w, "nf4", 64, True)
                p.copy_(torch.from_numpy(bq.dequantize_4bit(state).reshape(p.shape)))


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def compare(name: str, ours: list[float], ref: list[float]) -> bool:
    ok = True
    print(f"\n{name}")
    print(f"  {'#':>2}  {'PyTorch':>10}  {'ours':>10}  relative")
    for i, (a, b) in enumerate(zip(ours, ref)):
        rel = abs(a - b) / abs(b)
        ok &= rel <= TOL
        print(f"  {i + 1:>2}  {b:>10.6f}  {a:>10.6f}  {rel:.1e}{'' if rel <= TOL else '  FAIL'}")
    return ok and len(ours) == len(ref)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "runs", "shaped", "chatglm3-6b-L2-s1"))
    ap.add_argument("--deno", default="deno")
    ap.add_argument("--quantization-bit", type=int, choices=[4])
    ap.add_argument("--rslora", action="store_true", help="LoRA scaled by lora_alpha/sqrt(r) (PEFT's use_rslora)")
    a = ap.parse_args()
    lora = dict(LORA, use_rslora=True) if a.rslora else LORA
    quant = ["--set", "quantization_bit=4"] if a.quantization_bit else []
    if not os.path.exists(os.path.join(a.checkpoint, "config.json")):
        run([a.deno, "run", "-A", "bench/shaped_checkpoint.ts", "--layers", "2", "--out", a.checkpoint])
    torch.manual_seed(0)
    base = load_model(a.checkpoint).eval()  # f32 from the f16 file, torch's fused attention
    if a.quantization_bit:
        dequantize_linears(base)
    vocab = base.config.padded_vocab_size
    recs = records(vocab)
    with torch.no_grad():
        ref_losses = [float(base(input_ids=torch.tensor([i]), labels=torch.tensor([l]))["loss"])
                      for i, l in recs]

    torch.manual_seed(42)
    peft = get_peft_model(base.train(), LoraConfig(task_type="CAUSAL_LM", **lora))
    init = {saved_name(n): p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    ref_steps = [s["loss"] for s in train(peft, recs, steps=STEPS, batch=BATCH, ga=1, lr=LR, wd=0.0)["steps"]]
    del peft, base

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "records.jsonl")
        with open(data, "w") as f:
            for i, l in recs:
                f.write(json.dumps({"input_ids": i, "labels": l}) + "\n")
        adapter = os.path.join(tmp, "init-adapter")
        os.makedirs(adapter)
        save_file(init, os.path.join(adapter, "adapter_model.safetensors"))
        with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", **lora}, f)
        cfg = os.path.join(tmp, "lora.yaml")
        with open(cfg, "w") as f:
            f.write(f"""data_config: {{train_file: records.jsonl}}
max_input_length: 64
max_output_length: 64
training_args:
  output_dir: ./out
  max_steps: {STEPS}
  learning_rate: {LR}
  per_device_train_batch_size: {BATCH}
  logging_steps: 1
  save_strategy: "no"
peft_config: {{peft_type: LORA, task_type: CAUSAL_LM, r: {LORA['r']}, lora_alpha: {LORA['lora_alpha']},
  lora_dropout: 0.0, target_modules: [query_key_value], use_rslora: {str(a.rslora).lower()}}}
""")
        run([a.deno, "task", "stage", "evaluate", "--model", a.checkpoint, "--in", data,
             "--out", os.path.join(tmp, "eval"), *quant])
        with open(os.path.join(tmp, "eval", "predictions.jsonl")) as f:
            our_losses = [json.loads(line)["loss"] for line in f]
        run([a.deno, "task", "stage", "train", "--model", a.checkpoint, "--config", cfg, "--train", data,
             "--out", os.path.join(tmp, "train"), "--init-adapter", adapter, "--no-shuffle", *quant])
        with open(os.path.join(tmp, "train", "metrics.jsonl")) as f:
            our_steps = [r["loss"] for r in map(json.loads, f) if "loss" in r and "step" in r
                         and "eval_loss" not in r]

    ok = compare("per-record loss (8 records)", our_losses, ref_losses)
    kind = ", rsLoRA" if a.rslora else ""
    ok &= compare(f"LoRA AdamW steps (r 8, alpha 32{kind}, qkv, lr {LR}, batch {BATCH})", our_steps, ref_steps)
    print(f"\n{'PASS' if ok else 'FAIL'}: every value within {TOL:g} relative of PyTorch" if ok
          else f"\nFAIL: some values differ by more than {TOL:g} relative")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
