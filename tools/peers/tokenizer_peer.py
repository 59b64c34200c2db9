"""Benchmark peer: the sentencepiece library encoding a text file line by line.

Args (JSON): {"model": path, "text": path, "repeat": n}. Prints one JSON line:
{"tokens", "seconds" (best of `repeat`), "tokens_per_s", "checksum"}; the checksum
(sum of id * position mod 2^32 over all lines) lets the caller check the ids agree.
"""
import json
import sys
import time

import sentencepiece as spm


def main():
    args = json.loads(sys.argv[1])
    sp = spm.SentencePieceProcessor(model_file=args["model"])
    with open(args["text"], encoding="utf-8") as f:
        lines = f.read().split("\n")
    best = None
    tokens = 0
    checksum = 0
    for _ in range(args.get("repeat", 3)):
        t0 = time.perf_counter()
        out = [sp.encode(line) for line in lines]
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    tokens = sum(len(ids) for ids in out)
    for ids in out:
        for i, v in enumerate(ids):
            checksum = (checksum + v * (i + 1)) & 0xFFFFFFFF
    print(json.dumps({"tokens": tokens, "seconds": best, "tokens_per_s": tokens / best, "checksum": checksum}))


if __name__ == "__main__":
    main()
