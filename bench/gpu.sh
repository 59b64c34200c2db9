#!/usr/bin/env bash
# One-call GPU check at chatglm3-6b's real shape (docs/engine.md, "At the real size").
#
#   bench/gpu.sh [--layers N] [--small]
#
# Makes the shaped checkpoints (bench/shaped_checkpoint.ts: N layers, 28 by default, and the
# 2-layer one for full SFT), runs upstream's LoRA job (batch 4 × 256 + 512 tokens, in the passes
# the memory plan needs to stay within PyTorch's 14,082 MiB), a P-Tuning v2 step (pre_seq_len 128)
# and full SFT of the 2-layer shape on this machine's WebGPU device (bench/gpu_jobs.ts), then the
# same jobs with PyTorch + PEFT in bf16 on the same GPU (tools/peers/gpu_peer.py), and prints
# samples/s, tokens/s and peak GPU memory for each with the ratios. Without an NVIDIA GPU (or with
# --small) the jobs run at batch 1 × 65 tokens and the peer on the CPU, so the script can be tried
# on llvmpipe: `bench/gpu.sh --layers 2`. No network. The summary goes to $OUT/gpu-summary.json
# when OUT is set, else to runs/gpu/.
#
# Deno: `deno` on the PATH, or $DENO, or .tools/deno.xz (an xz-compressed binary carried along);
# npm packages from DENO_DIR=.deno_dir when that folder exists, else from a carried
# .tools/npm.tar.xz. bench/gpu_carry.sh makes .tools/ and .gl/ for a machine without network.
# Python: $PYTHON or $GLM_PEER_PYTHON, else .venv-tools/bin/python where it exists, else python3
# (torch, transformers, peft).
set -euo pipefail
cd "$(dirname "$0")/.."
layers=28
small=""
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers="$2"; shift 2 ;;
    --small) small="--small"; shift ;;
    *) echo "usage: bench/gpu.sh [--layers N] [--small]" >&2; exit 2 ;;
  esac
done
out="${OUT:-runs/gpu}"
mkdir -p "$out"

gpu=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi
[ -z "$gpu" ] && small="--small"

# Vulkan loader packages carried as .gl/*.deb (the machine may have none).
if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -n "$gpu" ]; then
  export DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}"
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}"
fi

deno="${DENO:-}"
if [ -z "$deno" ]; then
  if command -v deno >/dev/null 2>&1; then deno=deno
  elif [ -f .tools/deno.xz ]; then xz -dc .tools/deno.xz >/tmp/deno && chmod +x /tmp/deno && deno=/tmp/deno
  else echo "bench/gpu.sh: no deno (put it on the PATH, set DENO, or carry .tools/deno.xz)" >&2; exit 1
  fi
fi
if [ -d .deno_dir ]; then export DENO_DIR="$PWD/.deno_dir"
elif [ -f .tools/npm.tar.xz ]; then # carried by bench/gpu_carry.sh
  export DENO_DIR=/tmp/glm-deno-dir
  unset NPM_CONFIG_REGISTRY # the cache is npmjs.org's, as it was made
  mkdir -p "$DENO_DIR" && xz -dc .tools/npm.tar.xz | tar -C "$DENO_DIR" -xf -
fi
python="${PYTHON:-${GLM_PEER_PYTHON:-}}"
if [ -z "$python" ]; then
  if [ -x .venv-tools/bin/python ]; then python=.venv-tools/bin/python; else python=python3; fi
fi

# The highest GPU memory in use while a command runs (MiB; empty without nvidia-smi).
sampled() {
  local file="$1"; shift
  if [ -n "$gpu" ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$file" &
    local smi=$!
    "$@" || { kill "$smi"; return 1; }
    kill "$smi"
  else
    : >"$file"
    "$@"
  fi
}

echo "== checkpoints"
"$deno" run -A bench/shaped_checkpoint.ts --layers "$layers"
"$deno" run -A bench/shaped_checkpoint.ts --layers 2
dir="$PWD/runs/shaped/chatglm3-6b-L$layers-s1" # shapedDir() in bench/shaped_checkpoint.ts
dir2="$PWD/runs/shaped/chatglm3-6b-L2-s1"

echo "== WebGPU (this project)"
sampled "$out/ours-smi.txt" "$deno" run -A bench/gpu_jobs.ts --layers "$layers" $small --json "$out/ours.json"

echo "== PyTorch + PEFT"
if [ -n "$small" ]; then batch=1 seq=65; else batch=4 seq=769; fi
: >"$out/peer.jsonl"
for job in lora ptuning sft; do # a process per job: each its own peak memory
  args="{\"lora_dir\": \"$dir\", \"sft_dir\": \"$dir2\", \"batch\": $batch, \"seq\": $seq, \"steps\": 2, \"jobs\": [\"$job\"]}"
  sampled "$out/peer-smi-$job.txt" env PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
    "$python" tools/peers/gpu_peer.py "$args" | tee -a "$out/peer.jsonl"
done
cat "$out"/peer-smi-*.txt >"$out/peer-smi.txt"

"$deno" run -A bench/gpu_summary.ts "$out"
