"""Training data for the torch engine: masked JSONL records, the record order of each epoch, batches.

The same rules as the WebGPU engine (lib/train/data.ts), so that both engines
see the same records in the same micro-batches:

  * records are `{"input_ids": [...], "labels": [...]}` lines as the mask stage
    writes them (the train stage has already checked every line);
  * the order of epoch e is file order, or a Fisher–Yates shuffle driven by the
    project's own generator seeded from (seed, e) — the port below of `Rng` and
    `epochOrder` — so it is a pure function of the two, identical in both
    engines, and a resumed run re-creates it without saving it;
  * batches are right-padded with id 0 and label -100 (DataCollatorForSeq2Seq).

With several processes, accelerate hands batch k of the sampler's order to
process k mod W, so the W per-device batches of one micro-step are exactly the
records one process with a W-times larger batch would take.

The dataset keeps only each line's byte offset and parses a record when it is
asked for, so a large file costs 8 bytes per record in every process (and
dataloader_num_workers parse in parallel).
"""

from __future__ import annotations

import json

import torch

PAD_ID = 0
IGNORE = -100
_M32 = 0xFFFFFFFF


def _imul(a: int, b: int) -> int:
    return (a * b) & _M32


class Rng:
    """splitmix32 seeding an xorshift128, bit for bit as lib/train/data.ts's Rng."""

    def __init__(self, seed: int, stream: int = 0):
        x = (seed & _M32) ^ _imul(stream + 1, 0x9E3779B9)
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B9) & _M32
            z = x
            z = _imul(z ^ (z >> 16), 0x85EBCA6B)
            z = _imul(z ^ (z >> 13), 0xC2B2AE35)
            s.append((z ^ (z >> 16)) & _M32)
        if all(v == 0 for v in s):
            s[0] = 1
        self.s = s

    def next_u32(self) -> int:
        s = self.s
        t = s[3]
        u = s[0]
        s[3] = s[2]
        s[2] = s[1]
        s[1] = u
        t ^= (t << 11) & _M32
        t ^= t >> 8
        s[0] = (t ^ u ^ (u >> 19)) & _M32
        return s[0]

    def below(self, n: int) -> int:
        """Uniform integer in [0, n), by rejection (unbiased)."""
        limit = (2**32 // n) * n
        while True:
            r = self.next_u32()
            if r < limit:
                return r % n


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The record order of `epoch`: file order, or a shuffle that depends only on (seed, epoch)."""
    order = list(range(n))
    if not shuffle:
        return order
    rng = Rng(seed, epoch)
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


class EpochSampler(torch.utils.data.Sampler):
    """Yields epoch_order(n, epoch, seed, shuffle); the trainer sets the epoch before each one."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(self.n, self.epoch, self.seed, self.shuffle))

    def __len__(self) -> int:
        return self.n


class MaskedJsonl(torch.utils.data.Dataset):
    """The records of a masked JSONL file, parsed on demand from their byte offsets."""

    def __init__(self, path: str):
        self.path = path
        self.offsets: list[int] = []
        with open(path, "rb") as f:
            pos = 0
            for line in f:
                if line.strip():
                    self.offsets.append(pos)
                pos += len(line)
        self._file = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict:
        # One handle per process (DataLoader workers are separate processes).
        if self._file is None:
            self._file = open(self.path, "rb")
        self._file.seek(self.offsets[i])
        rec = json.loads(self._file.readline())
        return {"input_ids": rec["input_ids"], "labels": rec["labels"]}

    def __getstate__(self):
        return {**self.__dict__, "_file": None}


def collate(records: list[dict]) -> dict:
    """Right-pad to the longest record (pad id 0, label -100), as the WebGPU engine's makeBatch."""
    seq = max(1, max(len(r["input_ids"]) for r in records))
    ids = torch.full((len(records), seq), PAD_ID, dtype=torch.long)
    labels = torch.full((len(records), seq), IGNORE, dtype=torch.long)
    for b, r in enumerate(records):
        ids[b, : len(r["input_ids"])] = torch.tensor(r["input_ids"], dtype=torch.long)
        labels[b, : len(r["labels"])] = torch.tensor(r["labels"], dtype=torch.long)
    return {"input_ids": ids, "labels": labels}
