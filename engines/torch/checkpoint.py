"""The files a training run leaves, in the WebGPU engine's layout (lib/train/checkpoint.ts).

Both engines write and read the same files, so every later stage reads either
engine's output, and either engine resumes the other's checkpoints:

  checkpoint-N/ (built under a temporary name, renamed when complete)
    the trainable tensors in their user-facing format:
      LoRA     adapter_model.safetensors (PEFT key names) + adapter_config.json
      prefix   prefix_encoder.safetensors (`transformer.prefix_encoder.*`) + prefix_config.json
      full     model.safetensors, or model-0000i-of-0000n.safetensors shards with
               model.safetensors.index.json, beside the base model's config and tokenizer
    optimizer.safetensors  AdamW moments `{name}.exp_avg` / `{name}.exp_avg_sq`
    scheduler.json, rng_state.json, resume_state.json, trainer_state.json, training_args.json
    rng_state_R.safetensors  (torch engine only) each process's generator state, for dropout

Nothing here is a pickle: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PREFIX_CONFIG = "prefix_config.json"
PREFIX_WEIGHTS = "prefix_encoder.safetensors"
FULL_WEIGHTS = "model.safetensors"
FULL_INDEX = "model.safetensors.index.json"
# HF save_pretrained's long-standing default shard size.
SHARD_BYTES = 5 * 10**9

# Files of the base model dir copied beside full weights (config, tokenizer, remote code), as the WebGPU engine does.
COPY_FROM_BASE = re.compile(
    r"^(config\.json|generation_config\.json|tokenizer.*|special_tokens_map\.json|.*\.py|.*\.tiktoken)$"
)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _tmp_name(path: str) -> str:
    """`.NAME.PID.RAND.tmp` beside `path`: the pattern lib/atomic.ts uses and the trainers clean up."""
    d, b = os.path.split(path)
    return os.path.join(d, f".{b}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync(path: str) -> None:
    """Flush a file or directory to the disk (docs/reliability.md: durable before published)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync(os.path.dirname(path) or ".")
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, value) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def save_tensors_atomic(path: str, tensors: dict[str, torch.Tensor]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
        # safetensors creates files owner-only; give them the mode every other output has.
        os.chmod(tmp, 0o666 & ~_UMASK)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(os.path.dirname(path) or ".")
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_dir_atomic(path: str, fill) -> None:
    """Build a directory under a temporary name with fill(tmp), then put it in place of `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    os.makedirs(tmp)
    try:
        fill(tmp)
        _fsync(tmp)
        old = None
        if os.path.exists(path):
            old = _tmp_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(os.path.dirname(path) or ".")
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class CheckpointError(Exception):
    """A checkpoint or adapter file that cannot be used; the message names it."""


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, as f32."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing")
    out = {}
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            out[k] = t.float() if t.is_floating_point() else t
    return out


# ---- the trainable tensors, by kind of training ----


def peft_lora_config(a: dict, base_model: str) -> dict:
    """adapter_config.json as the WebGPU engine writes it (the keys PEFT writes and reads)."""
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": a["alpha"],
        "lora_dropout": a["dropout"],
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": a["r"],
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(a["target_modules"]),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": a.get("use_rslora", False),
    }


def prefix_config(a: dict, base_model: str, model_config) -> dict:
    c = model_config
    return {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "pre_seq_len": a["pre_seq_len"],
        "num_virtual_tokens": a["pre_seq_len"],
        "prefix_projection": a["prefix_projection"],
        "num_layers": c.num_layers,
        "kv_channels": c.kv_channels,
        "multi_query_group_num": c.multi_query_group_num if c.multi_query_attention else c.num_attention_heads,
        "weights": PREFIX_WEIGHTS,
    }


def _shards(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in name order, cut into groups of at most `limit` bytes (a bigger tensor alone)."""
    groups, cur, size = [], {}, 0
    for k in sorted(tensors):
        n = tensors[k].numel() * tensors[k].element_size()
        if cur and size + n > limit:
            groups.append(cur)
            cur, size = {}, 0
        cur[k] = tensors[k]
        size += n
    if cur:
        groups.append(cur)
    return groups


def write_full_model(d: str, tensors: dict[str, torch.Tensor], base_dir: str, shard_bytes: int = SHARD_BYTES) -> None:
    """An HF model dir: f32 safetensors (sharded past shard_bytes), the base model's config
    (torch_dtype float32) and tokenizer."""
    groups = _shards(tensors, shard_bytes)
    if len(groups) == 1:
        save_tensors_atomic(os.path.join(d, FULL_WEIGHTS), groups[0])
        # A previous shard index would point at stale shards.
        if os.path.exists(os.path.join(d, FULL_INDEX)):
            os.remove(os.path.join(d, FULL_INDEX))
    else:
        weight_map, total = {}, 0
        for i, g in enumerate(groups):
            name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            save_tensors_atomic(os.path.join(d, name), g)
            for k, t in g.items():
                weight_map[k] = name
                total += t.numel() * t.element_size()
        write_json_atomic(os.path.join(d, FULL_INDEX), {"metadata": {"total_size": total}, "weight_map": weight_map})
    for name in sorted(os.listdir(base_dir)):
        src = os.path.join(base_dir, name)
        if not os.path.isfile(src) or not COPY_FROM_BASE.match(name):
            continue
        if name == "config.json":
            with open(src, encoding="utf-8") as f:
                cfg = json.load(f)
            cfg["torch_dtype"] = "float32"
            write_json_atomic(os.path.join(d, name), cfg)
        else:
            with open(src, "rb") as f:
                write_bytes_atomic(os.path.join(d, name), f.read())


def write_trainables(d: str, job: dict, tensors: dict[str, torch.Tensor], model_config) -> None:
    """The trainable tensors (saved names → f32 tensors) in the user-facing format of the job's adapter;
    adapters name the base model as the user gave it (job["base_model"])."""
    a = job["adapter"]
    if a["kind"] == "lora":
        save_tensors_atomic(os.path.join(d, PEFT_WEIGHTS), tensors)
        write_json_atomic(os.path.join(d, PEFT_CONFIG), peft_lora_config(a, job["base_model"]))
    elif a["kind"] == "prefix":
        save_tensors_atomic(os.path.join(d, PREFIX_WEIGHTS), tensors)
        write_json_atomic(os.path.join(d, PREFIX_CONFIG), prefix_config(a, job["base_model"], model_config))
    else:
        write_full_model(d, tensors, job["model_dir"])


def read_trainables(d: str, kind: str) -> dict[str, torch.Tensor]:
    """What write_trainables wrote (or the WebGPU engine's equivalent), by saved name."""
    if kind == "lora":
        t = read_tensors(os.path.join(d, PEFT_WEIGHTS))
        # PEFT saves without the adapter name; a raw state_dict's ".default." is accepted too.
        return {re.sub(r"\.default\.weight$", ".weight", k): v for k, v in t.items()}
    if kind == "prefix":
        return read_tensors(os.path.join(d, PREFIX_WEIGHTS))
    index = os.path.join(d, FULL_INDEX)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for name in files:
            out.update(read_tensors(os.path.join(d, name)))
        return out
    return read_tensors(os.path.join(d, FULL_WEIGHTS))


# ---- optimizer state, schedule, RNG and run state ----


def write_moments(path: str, moments: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """AdamW moments, flattened as the WebGPU engine stores them."""
    out = {}
    for name, (m, v) in moments.items():
        out[f"{name}.exp_avg"] = m.float().reshape(-1)
        out[f"{name}.exp_avg_sq"] = v.float().reshape(-1)
    save_tensors_atomic(path, out)


def read_moments(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if not os.path.exists(path):
        raise CheckpointError(
            f"{path}: missing (a checkpoint saved with save_only_model, or by DeepSpeed, cannot be resumed "
            "by the other engine)"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in read_tensors(path).items():
        m = re.match(r"^(.*)\.exp_avg(_sq)?$", key)
        if not m:
            raise CheckpointError(f"{path}: unexpected tensor {key}")
        parts.setdefault(m.group(1), {})["v" if m.group(2) else "m"] = t
    return {k: (p["m"], p["v"]) for k, p in parts.items()}


def scheduler_json(lr_type: str, base_lr: float, step: int, next_lr: float) -> dict:
    return {
        "lr_scheduler_type": lr_type,
        "base_lrs": [base_lr],
        "last_epoch": step,
        "_step_count": step + 1,
        "_last_lr": [next_lr],
    }


def rng_json(seed: int, shuffle: bool, step: int) -> dict:
    return {
        "seed": seed,
        "shuffle": shuffle,
        "order": "Fisher-Yates over record indices, generator seeded from (seed, epoch)" if shuffle else "file order",
        "dropout": "torch generators, each process's state in rng_state_RANK.safetensors",
        "next_step": step,
    }


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_tensors(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["cpu"].to(torch.uint8))
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda"].to(torch.uint8))


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoint-N dirs (they hold trainer_state.json), oldest first."""
    found = []
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            m = re.match(r"^checkpoint-(\d+)$", name)
            d = os.path.join(out_dir, name)
            if m and os.path.isdir(d) and os.path.exists(os.path.join(d, "trainer_state.json")):
                found.append((int(m.group(1)), d))
    return sorted(found)


# The last file of a checkpoint, as lib/train/checkpoint.ts writes it: every other file and its size.
COMPLETE_MARKER = "checkpoint_complete.json"


def mark_complete(d: str, step: int) -> None:
    files = {n: os.path.getsize(os.path.join(d, n)) for n in sorted(os.listdir(d))
             if not n.startswith(".") and os.path.isfile(os.path.join(d, n))}
    write_json_atomic(os.path.join(d, COMPLETE_MARKER), {"step": step, "files": files})


def rotate_checkpoints(out_dir: str, limit: int) -> None:
    """save_total_limit: delete the oldest complete checkpoints beyond `limit`, by step; each is
    renamed aside first, so a checkpoint half deleted never keeps its name."""
    found = list_checkpoints(out_dir)
    for _, d in found[: max(0, len(found) - limit)]:
        aside = _tmp_name(d)
        os.replace(d, aside)
        shutil.rmtree(aside)
