"""Benchmark peer: a scoring forward (logits + loss) of the bench ChatGLM3-layout model in PyTorch (CPU).

Args (JSON): {"config": {chatglm fields}, "batch": B, "seq": S, "runs": n, "seed": s}.
Random weights (seeded N(0, 0.02), norms 1), eval mode, no_grad; labels = input ids.
Prints one JSON line: {"forward_s" (median of the timed runs), "tokens_per_s", "loss", "threads"}.
Thread count comes from OMP_NUM_THREADS (the bench runner sets 2).
"""

import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from chatglm_torch import seeded_bench_model  # noqa: E402


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = seeded_bench_model(a["config"], a.get("seed", 0)).eval()
    B, S = a["batch"], a["seq"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, a["config"]["padded_vocab_size"], (B, S), generator=g)
    times, loss = [], 0.0
    with torch.no_grad():
        for i in range(1 + a.get("runs", 3)):
            t0 = time.perf_counter()
            loss = float(model(input_ids=ids, labels=ids)["loss"])
            if i > 0:
                times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(json.dumps({"forward_s": t, "tokens_per_s": B * S / t, "loss": loss, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
