"""Load a LoRA adapter dir onto the tiny PyTorch ChatGLM3 model with PEFT and report.

  .venv-tools/bin/python tools/check_peft_load.py ADAPTER_DIR [--model tests/fixtures/tiny] [--ids 248,250,...]

Prints one JSON line: the adapter's config as PEFT read it, the adapter keys
PEFT could not place (unexpected) and the LoRA weights it left at their
initial values (missing), and the logits (per row: first 8, sum) with the
adapter applied and without, so a caller can check that what we wrote loads in
PEFT and changes the model as intended. Exit status 1 if any key is missing
or unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatglm_torch import ChatGLMConfig, ChatGLMForConditionalGeneration  # noqa: E402


def load_base(model_dir: str) -> ChatGLMForConditionalGeneration:
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    keep = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("auto_map", "architectures")}
    model = ChatGLMForConditionalGeneration(ChatGLMConfig(**keep))
    state = {}
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            for shard in sorted(set(json.load(f)["weight_map"].values())):
                state.update(load_file(os.path.join(model_dir, shard)))
    else:
        state = load_file(os.path.join(model_dir, "model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.float().eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tiny"))
    ap.add_argument("--ids", default="248,250,253,30,40,50,254,60,70")
    args = ap.parse_args()
    ids = torch.tensor([[int(x) for x in args.ids.split(",")]])

    base = load_base(args.model)
    with torch.no_grad():
        before = base(ids)["logits"][0]
    adapter_keys = set(load_file(os.path.join(args.adapter, "adapter_model.safetensors")).keys())
    peft = PeftModel.from_pretrained(base, args.adapter).eval()
    # Keys PEFT holds for the adapter, in the saved spelling (without the adapter name).
    placed = {n.replace(".default", "") for n, _ in peft.named_parameters() if "lora_" in n}
    with torch.no_grad():
        after = peft(input_ids=ids)["logits"][0]

    def rows(t):
        return [{"head": [round(v, 6) for v in r[:8].tolist()], "sum": round(float(r.sum()), 5)} for r in t]

    report = {
        "adapter_config": peft.peft_config["default"].to_dict(),
        "missing": sorted(placed - adapter_keys),
        "unexpected": sorted(adapter_keys - placed),
        "n_adapter_tensors": len(adapter_keys),
        "max_abs_logit_change": float((after - before).abs().max()),
        "logits": rows(after),
        "base_logits": rows(before),
    }
    print(json.dumps(report, default=str))
    return 1 if report["missing"] or report["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
