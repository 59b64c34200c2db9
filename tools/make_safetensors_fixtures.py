"""Safetensors fixtures, made with the real `safetensors` library.

Writes tests/fixtures/safetensors/:
  f32.safetensors, f16.safetensors, bf16.safetensors  small tensors per dtype (with __metadata__)
  mixed.safetensors                                     an I64 tensor beside an F32 one
  sharded/                                              two shards + model.safetensors.index.json
  expected.json                                         names, dtypes, shapes, values as torch reads them
  roundtrip.json                                        inputs for our writer, and what Python's
                                                        safetensors read back from the file it wrote

The round trip: this script runs lib/safetensors/write.ts (through deno) on
the inputs in roundtrip.json, reads the file with safetensors.safe_open, and
records the file's sha256 with what Python saw. tests/safetensors_test.ts
writes the same file again and asserts the same sha256, so the bytes Python
accepted are the bytes our writer produces.

Run: .venv-tools/bin/python tools/make_safetensors_fixtures.py
"""

import hashlib
import json
import os
import subprocess
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "safetensors")
DENO = os.path.join(ROOT, "node_modules", ".bin", "deno")


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "transformer.layer.weight": torch.randn(3, 5, generator=g),
        "bias": torch.randn(7, generator=g) * 100,
        # Values at the edges of the half formats: rounding ties, subnormals, big numbers.
        "edge": torch.tensor([0.0, -0.0, 1.0, -2.5, 65504.0, 6.0e-8, 1.0e-5, 3.140625, 1.0009765625, 1e30]),
        "scalar": torch.tensor(0.75),
        "empty": torch.zeros(0, 4),
    }


def num(x):
    # JSON has no Inf/NaN: spell them as strings the test maps back.
    x = float(x)
    return x if x == x and abs(x) != float("inf") else str(x)


def describe(path):
    out = {}
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        for name in f.keys():
            t = f.get_tensor(name)
            out[name] = {
                "dtype": str(t.dtype).replace("torch.", ""),
                "shape": list(t.shape),
                "values": [num(x) for x in t.float().flatten().tolist()]
                if t.is_floating_point()
                else t.flatten().tolist(),
            }
    return {"metadata": meta, "tensors": out}


def main():
    os.makedirs(os.path.join(OUT, "sharded"), exist_ok=True)
    expected = {}
    base = tensors(1)
    for name, dtype in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
        path = os.path.join(OUT, f"{name}.safetensors")
        save_file({k: v.to(dtype) for k, v in base.items()}, path, metadata={"format": "pt", "note": name})
        expected[name] = describe(path)

    mixed = os.path.join(OUT, "mixed.safetensors")
    save_file({"ids": torch.arange(6, dtype=torch.int64).reshape(2, 3), "w": torch.ones(2)}, mixed)
    expected["mixed"] = describe(mixed)

    # Sharded as transformers writes it: each shard a full safetensors file, an index mapping names.
    sh = tensors(2)
    names = list(sh.keys())
    parts = [names[:2], names[2:]]
    weight_map = {}
    total = 0
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: sh[k] for k in part}, os.path.join(OUT, "sharded", fname), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += sh[k].numel() * 4
    with open(os.path.join(OUT, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    expected["sharded"] = {
        "tensors": {
            k: {"dtype": "float32", "shape": list(v.shape), "values": v.flatten().tolist()} for k, v in sh.items()
        }
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, allow_nan=False)

    # Our writer, read back by the reference library.
    g = torch.Generator().manual_seed(3)
    inputs = {
        "metadata": {"format": "pt"},
        "tensors": [
            {"name": "z.last", "dtype": "F32", "shape": [2, 3], "values": torch.randn(6, generator=g).tolist()},
            {"name": "a.first", "dtype": "F16", "shape": [5], "values": (torch.randn(5, generator=g) * 10).tolist()},
            {"name": "m.bf16", "dtype": "BF16", "shape": [2, 2], "values": torch.randn(4, generator=g).tolist()},
            {"name": "odd", "dtype": "F16", "shape": [3, 1], "values": [0.1, -65504.0, 2.0**-20]},
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "in.json")
        out = os.path.join(tmp, "ours.safetensors")
        with open(inp, "w") as f:
            json.dump(inputs, f)
        code = (
            "import { writeSafetensors } from '" + os.path.join(ROOT, "lib/safetensors/write.ts") + "';"
            "const j = JSON.parse(Deno.readTextFileSync(Deno.args[0]));"
            "await writeSafetensors(Deno.args[1], j.tensors.map((t) => ({...t, data: new Float32Array(t.values)})), j.metadata);"
        )
        subprocess.run([DENO, "eval", "--ext=ts", code, inp, out], check=True, cwd=ROOT)
        with open(out, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        back = describe(out)
        with safe_open(out, "pt") as f:
            order = list(f.keys())
    # What torch gets when it rounds the inputs itself: our conversion must agree bit for bit.
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    agree = all(
        back["tensors"][t["name"]]["values"]
        == torch.tensor(t["values"], dtype=torch.float32).to(torch_dtype[t["dtype"]]).float().tolist()
        for t in inputs["tensors"]
    )
    with open(os.path.join(OUT, "roundtrip.json"), "w") as f:
        json.dump(
            {
                "inputs": inputs,
                "python_read": {"sha256": digest, "keys": order, "rounding_matches_torch": agree, **back},
            },
            f,
            indent=1,
        )
    print(f"wrote fixtures to {OUT}; python read our file: rounding_matches_torch={agree}")


if __name__ == "__main__":
    main()
