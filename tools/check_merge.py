"""Merge the PEFT-written LoRA fixture into the tiny model with PEFT and record the result.

  .venv-tools/bin/python tools/check_merge.py

Loads tests/fixtures/tiny with tools/chatglm_torch.py, applies
tests/fixtures/tiny-lora-peft with PeftModel.from_pretrained, runs
merge_and_unload() and writes into tests/fixtures/merge/:

- merged.safetensors: the weights merge_and_unload changed (f32), under their HF names;
- expected.json: the names of changed and unchanged tensors, the LoRA scale,
  and logits (per row the first 8 and the sum) for a fixed input, from the
  PEFT model before merging and from the merged model.

tests/merge_adapter_test.ts compares lib/model/merge.ts against these.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_peft_load import load_base  # noqa: E402

ROOT = os.path.join(HERE, "..")
TINY = os.path.join(ROOT, "tests", "fixtures", "tiny")
ADAPTER = os.path.join(ROOT, "tests", "fixtures", "tiny-lora-peft")
OUT = os.path.join(ROOT, "tests", "fixtures", "merge")
IDS = [376, 378, 381, 283, 13, 283, 363, 293, 287, 286, 382, 283, 13]


def rows(t: torch.Tensor) -> list:
    return [{"head": [float(v) for v in r[:8].tolist()], "sum": float(r.double().sum())} for r in t]


def main() -> None:
    torch.manual_seed(0)
    ids = torch.tensor([IDS])
    base = load_base(TINY)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    peft = PeftModel.from_pretrained(base, ADAPTER).eval()
    with torch.no_grad():
        adapter_logits = peft(input_ids=ids)["logits"][0]
    merged_model = peft.merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = merged_model(input_ids=ids)["logits"][0]
    after = merged_model.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    unchanged = sorted(k for k in after if k not in changed)
    os.makedirs(OUT, exist_ok=True)
    save_file({k: after[k].contiguous() for k in changed}, os.path.join(OUT, "merged.safetensors"), metadata={"format": "pt"})
    cfg = peft.peft_config["default"]
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(
            {
                "generator": "tools/check_merge.py",
                "peft": __import__("peft").__version__,
                "torch": torch.__version__,
                "scale": cfg.lora_alpha / cfg.r,
                "changed": changed,
                "unchanged": unchanged,
                "input_ids": IDS,
                "adapter_logits": rows(adapter_logits),
                "merged_logits": rows(merged_logits),
                "max_abs_merged_vs_adapter": float((merged_logits - adapter_logits).abs().max()),
            },
            f,
            indent=1,
        )
        f.write("\n")
    print(json.dumps({"changed": changed, "max_abs_merged_vs_adapter": float((merged_logits - adapter_logits).abs().max())}))


if __name__ == "__main__":
    main()
