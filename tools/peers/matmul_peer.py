"""Benchmark peer: float32 matrix products in PyTorch (CPU), for bench/matmul.ts.

Args (JSON): {"shapes": [{"name", "M", "N", "K", "transA", "transB"}], "reps": n}.
A is [M,K] (or [K,M] when transA), B is [K,N] (or [N,K] when transB); the
product of the transposed views is what is timed, as a framework computes it.
Prints one JSON line: {"threads", "results": [{"name", "ms", "gflops"}]} with
the median of `reps` timed runs after a warm-up. Threads from OMP_NUM_THREADS
(the bench runner sets 2).
"""

import json
import os
import statistics
import sys
import time

import torch


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    g = torch.Generator().manual_seed(0)
    reps = a.get("reps", 5)
    out = []
    for s in a["shapes"]:
        M, N, K = s["M"], s["N"], s["K"]
        A = torch.randn(*((K, M) if s.get("transA") else (M, K)), generator=g)
        B = torch.randn(*((N, K) if s.get("transB") else (K, N)), generator=g)
        opA = A.t() if s.get("transA") else A
        opB = B.t() if s.get("transB") else B
        C = torch.empty(M, N)
        torch.matmul(opA, opB, out=C)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(opA, opB, out=C)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        out.append({"name": s["name"], "ms": t * 1e3, "gflops": 2 * M * N * K / t / 1e9})
    print(json.dumps({"threads": torch.get_num_threads(), "results": out}))


if __name__ == "__main__":
    main()
