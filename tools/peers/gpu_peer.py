"""Benchmark peer for bench/gpu.sh: upstream's jobs with PyTorch + PEFT on the same checkpoints.

finetune_demo's way: the base in bf16 on a GPU (f32 on a CPU), trainable
parameters in f32 (its `_prepare_model_for_training`), gradient checkpointing
per layer, torch's fused attention (engines/torch/chatglm.py, the torch engine's model), AdamW, clip_grad_norm_(1.0). Jobs, as
bench/gpu_jobs.ts runs them:
  lora     LoRA r 8, alpha 32, query_key_value on the checkpoint `lora_dir`
  ptuning  P-Tuning v2, pre_seq_len 128, on the same checkpoint
  sft      full fine-tuning of `sft_dir` (the 2-layer shape)
each on `batch` × `seq` random tokens, one step to warm up, then `steps` timed.
Prints one JSON line per job: samples/s, tokens/s, peak memory (CUDA's max
allocated; on a CPU the process's peak RSS, so bench/gpu.sh runs a process per job)
and the losses.

Run: python tools/peers/gpu_peer.py '{"lora_dir": D, "sft_dir": D2, "batch": 4, "seq": 769, "steps": 2}'
"""

import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "engines", "torch"))
from chatglm import load_model  # noqa: E402


def job(name: str, a: dict, device: str, dtype) -> dict:
    if name == "sft":
        model = load_model(a["sft_dir"], base_dtype=dtype)
    elif name == "ptuning":
        model = load_model(a["lora_dir"], pre_seq_len=128, base_dtype=dtype)
    else:
        model = load_model(a["lora_dir"], base_dtype=dtype)
    # Recompute each layer in backward, as finetune_hf.py asks for.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if name == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=["query_key_value"]))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # trainable parameters in f32, as finetune_hf.py prepares them
    inner = model.base_model.model if name == "lora" else model
    model.to(device).train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    B, S = a["batch"], a["seq"]
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, inner.config.padded_vocab_size, (B, S), generator=g).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(1 + a.get("steps", 2)):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if i > 0:
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del model, opt, params
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"job": name, "device": device, "dtype": str(dtype).replace("torch.", ""), "step_s": step,
            "samples_per_s": B / step, "tokens_per_s": B * S / step, "peak_mib": peak / 2**20,
            "losses": losses}


def main():
    a = json.loads(sys.argv[1])
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for name in a.get("jobs", ["lora", "ptuning", "sft"]):
        print(json.dumps(job(name, a, device, dtype)), flush=True)


if __name__ == "__main__":
    main()
