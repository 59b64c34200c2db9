/**
 * Training data for the trainer: masked JSONL records (`{input_ids, labels}`,
 * as the mask stage writes them) held as typed arrays, the per-epoch order,
 * right-padded micro-batches, and the mapping from optimizer steps to
 * micro-batches (HF Trainer's epoch / gradient-accumulation arithmetic).
 *
 * Order. HF draws each epoch's order from torch's RandomSampler, whose RNG we
 * cannot reproduce. Ours is a Fisher–Yates shuffle driven by a small
 * deterministic generator seeded from (seed, epoch), so an epoch's order is a
 * pure function of the two: runs are reproducible and a resumed run re-creates
 * the order without saving it. `shuffle: false` keeps file order.
 */
import { createHash } from "node:crypto";
import { stepCounts } from "../config/config.ts";
import { readJsonlStrict } from "../jsonl.ts";
import { located, osError, UserError } from "../errors.ts";
import type { TrainBatch } from "../model/types.ts";

export const PAD_ID = 0;
export const IGNORE = -100;

export interface MaskedRecord {
  inputIds: Int32Array;
  labels: Int32Array;
  /** 1-based line in the source file (for messages). */
  line: number;
}

function isIntArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => Number.isInteger(x));
}

/**
 * Read a masked train JSONL file. Any bad record is a UserError naming file,
 * line and field; records of the wrong kind say which stage makes the right one.
 */
export async function readMaskedJsonl(
  path: string,
  opts: { vocabSize?: number } = {},
): Promise<MaskedRecord[]> {
  const out: MaskedRecord[] = [];
  for await (const r of maskedRecords(path, opts)) out.push(r);
  return out;
}

/** readMaskedJsonl's records one at a time, for a reader that need not hold them all. */
export async function* maskedRecords(
  path: string,
  opts: { vocabSize?: number } = {},
): AsyncGenerator<MaskedRecord> {
  await rejectJsonArray(path);
  for await (const { line, value } of readJsonlStrict(path)) {
    const where = (field: string | undefined, msg: string) =>
      new UserError(located(path, line, field, msg));
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw where(undefined, "expected a JSON object with input_ids and labels");
    }
    const rec = value as Record<string, unknown>;
    if (!("input_ids" in rec)) {
      if ("conversations" in rec || "messages" in rec) {
        throw where(
          undefined,
          "this is a conversation record; run the convert, tokenize and mask (--mode train) stages first",
        );
      }
      throw where("input_ids", "missing (expected a masked train record from `mask --mode train`)");
    }
    if (!("labels" in rec)) {
      throw where(
        "labels",
        "output_ids" in rec
          ? "missing: this is an eval record (input_ids/output_ids); make train records with `mask --mode train`"
          : "missing (expected a masked train record from `mask --mode train`)",
      );
    }
    const ids = rec.input_ids;
    const labels = rec.labels;
    if (!isIntArray(ids) || ids.length === 0) {
      throw where("input_ids", "expected a non-empty array of integer token ids");
    }
    if (!isIntArray(labels)) throw where("labels", "expected an array of integers");
    if (labels.length !== ids.length) {
      throw where(
        "labels",
        `length ${labels.length} differs from input_ids length ${ids.length}`,
      );
    }
    // Ids live in i32 buffers: past 2^31 - 1 they would wrap, so that is the bound without a vocabulary.
    const vocab = opts.vocabSize ?? 2 ** 31;
    const hint = opts.vocabSize === undefined
      ? ""
      : " of the model; was the data tokenized for another model?";
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0 || id >= vocab) {
        throw where(
          `input_ids[${i}]`,
          `token id ${id} is outside the vocabulary [0, ${vocab})${hint}`,
        );
      }
      const l = labels[i];
      if (l !== IGNORE && (l < 0 || l >= vocab)) {
        throw where(`labels[${i}]`, `${l} is neither -100 nor a token id in [0, ${vocab})${hint}`);
      }
    }
    yield { inputIds: Int32Array.from(ids), labels: Int32Array.from(labels), line };
  }
}

/**
 * The records of a run's `--train` or `--eval` file, checked against the
 * model's vocabulary (input_ids and labels, before any weight is loaded) and,
 * given it, its seq_length: ChatGLM's rotary table has that many positions, so
 * HF cannot run a longer record. A file without records, or one in which no
 * label is learned (every label past each record's first position is -100),
 * is an error naming it, not a run that trains on, or scores, nothing.
 */
export async function* runRecords(
  path: string,
  vocabSize: number,
  seqLength = Infinity,
): AsyncGenerator<MaskedRecord> {
  let n = 0, learned = false;
  for await (const r of maskedRecords(path, { vocabSize })) {
    n++;
    if (r.inputIds.length > seqLength) {
      throw new UserError(
        located(
          path,
          r.line,
          "input_ids",
          `${r.inputIds.length} tokens, more than the model's seq_length ${seqLength} ` +
            `(config.json: its rotary positions); mask with smaller max_input_length / max_output_length`,
        ),
      );
    }
    for (let i = 1; i < r.labels.length && !learned; i++) learned = r.labels[i] !== IGNORE;
    yield r;
  }
  if (n === 0) throw new UserError(`${path}: holds no records`);
  if (!learned) {
    throw new UserError(
      `${path}: no record has a label to learn (every label past the first position is -100); ` +
        `was it masked with \`mask --mode train\`?`,
    );
  }
}

/**
 * A fingerprint of a run's train records: their ids and labels in file order
 * (not the file's bytes, so re-serialising the same records keeps it). A
 * resume checks it, so a run does not go on over other data of the same size.
 */
export class RecordsDigest {
  private h = createHash("sha256");

  add(r: MaskedRecord): void {
    const n = new Uint32Array([r.inputIds.length]);
    for (const a of [n, r.inputIds, r.labels]) {
      this.h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    }
  }

  hex(): string {
    return this.h.digest("hex");
  }
}

/** The digest of `records`. */
export function recordsDigest(records: Iterable<MaskedRecord>): string {
  const d = new RecordsDigest();
  for (const r of records) d.add(r);
  return d.hex();
}

/** A raw `.json` array (upstream's data files) is not masked JSONL: say what to run. */
async function rejectJsonArray(path: string): Promise<void> {
  let head = "";
  try {
    const f = await Deno.open(path);
    const buf = new Uint8Array(64);
    const n = await f.read(buf);
    f.close();
    head = new TextDecoder().decode(buf.subarray(0, n ?? 0)).replace(/^\uFEFF/, "").trimStart();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    throw osError(e, path, "read");
  }
  if (head.startsWith("[")) {
    throw new UserError(
      located(
        path,
        1,
        undefined,
        "a JSON array, not masked JSONL; run the convert, tokenize and mask (--mode train) stages first",
      ),
    );
  }
}

/** Labels the loss counts: position i ≥ 1 of each row with labels[i] ≠ -100 (the model shifts by one). */
export function validTokens(labels: Int32Array, batch: number, seq: number): number {
  let n = 0;
  for (let b = 0; b < batch; b++) {
    for (let i = 1; i < seq; i++) if (labels[b * seq + i] !== IGNORE) n++;
  }
  return n;
}

export interface HostBatch extends TrainBatch {
  validTokens: number;
}

/** Right-pad records to the longest (pad id 0, label -100), as DataCollatorForSeq2Seq does. */
export function makeBatch(records: readonly MaskedRecord[]): HostBatch {
  const batch = records.length;
  let seq = 1;
  for (const r of records) seq = Math.max(seq, r.inputIds.length);
  const inputIds = new Int32Array(batch * seq).fill(PAD_ID);
  const labels = new Int32Array(batch * seq).fill(IGNORE);
  records.forEach((r, b) => {
    inputIds.set(r.inputIds, b * seq);
    labels.set(r.labels, b * seq);
  });
  return { batch, seq, inputIds, labels, validTokens: validTokens(labels, batch, seq) };
}

/**
 * Rows [r0, r0+rows) of a batch as a batch of their own, trimmed to their longest
 * record. The passes of one micro-batch keep its `validTokens`: each pass's
 * gradient is seeded with 1/(valid tokens of the whole micro-batch), so the
 * passes add up to exactly the micro-batch's gradient.
 */
export function splitRows(b: HostBatch, rowsPerPass: number): HostBatch[] {
  if (rowsPerPass >= b.batch) return [b];
  const out: HostBatch[] = [];
  for (let r0 = 0; r0 < b.batch; r0 += rowsPerPass) {
    const rows = Math.min(rowsPerPass, b.batch - r0);
    let seq = 1;
    for (let r = r0; r < r0 + rows; r++) {
      for (let t = b.seq - 1; t >= seq; t--) {
        if (b.inputIds[r * b.seq + t] !== PAD_ID || b.labels[r * b.seq + t] !== IGNORE) {
          seq = t + 1;
          break;
        }
      }
    }
    const inputIds = new Int32Array(rows * seq);
    const labels = new Int32Array(rows * seq);
    for (let r = 0; r < rows; r++) {
      const from = (r0 + r) * b.seq;
      inputIds.set(b.inputIds.subarray(from, from + seq), r * seq);
      labels.set(b.labels.subarray(from, from + seq), r * seq);
    }
    out.push({ batch: rows, seq, inputIds, labels, validTokens: b.validTokens });
  }
  return out;
}

/** A 32-bit generator (splitmix32 seeding an xorshift128); deterministic across platforms. */
export class Rng {
  private s: Uint32Array;
  constructor(seed: number, stream = 0) {
    this.s = new Uint32Array(4);
    let x = (seed >>> 0) ^ Math.imul(stream + 1, 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (this.s.every((v) => v === 0)) this.s[0] = 1;
  }
  nextU32(): number {
    const s = this.s;
    let t = s[3];
    const u = s[0];
    s[3] = s[2];
    s[2] = s[1];
    s[1] = u;
    t ^= t << 11;
    t ^= t >>> 8;
    s[0] = (t ^ u ^ (u >>> 19)) >>> 0;
    return s[0];
  }
  /** Uniform integer in [0, n), by rejection (unbiased). */
  below(n: number): number {
    const limit = Math.floor(2 ** 32 / n) * n;
    for (;;) {
      const r = this.nextU32();
      if (r < limit) return r % n;
    }
  }
}

/** The record order of `epoch`: file order, or a shuffle that depends only on (seed, epoch). */
export function epochOrder(n: number, epoch: number, seed: number, shuffle: boolean): Int32Array {
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  if (!shuffle) return order;
  const rng = new Rng(seed, epoch);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}

export interface PlanOptions {
  batchSize: number;
  accumulation: number;
  /** max_steps > 0 wins over epochs (HF) */
  maxSteps: number;
  numTrainEpochs: number;
  dropLast: boolean;
  shuffle: boolean;
  seed: number;
}

/** One optimizer step: which micro-batches, and where the run stands after it. */
export interface StepPlan {
  /** 0-based optimizer step */
  step: number;
  epoch: number;
  /** micro-batch indices within the epoch */
  micro: number[];
  /** HF's float epoch after the step: epoch + micro-batches done / micro-batches per epoch */
  epochAfter: number;
  /** the step ends an epoch */
  endsEpoch: boolean;
}

/**
 * Which micro-batches each optimizer step takes, by HF Trainer's (transformers
 * 5.x) step arithmetic (stepCounts in lib/config/config.ts): the last step of
 * an epoch takes the remainder.
 */
export class DataPlan {
  readonly microPerEpoch: number;
  readonly updatesPerEpoch: number;
  readonly maxSteps: number;
  readonly numEpochs: number;
  private orderCache: { epoch: number; order: Int32Array } | undefined;

  constructor(readonly records: readonly MaskedRecord[], readonly opts: PlanOptions) {
    const n = records.length;
    const counts = stepCounts({ numExamples: n, ...opts });
    if (counts.microPerEpoch === 0) {
      throw new UserError(
        n === 0
          ? "the training file holds no records"
          : `${n} training records make no full batch of ${opts.batchSize} with dataloader_drop_last`,
      );
    }
    this.microPerEpoch = counts.microPerEpoch;
    this.updatesPerEpoch = counts.updatesPerEpoch;
    this.maxSteps = counts.maxSteps;
    this.numEpochs = counts.numEpochs;
  }

  step(step: number): StepPlan {
    const epoch = Math.floor(step / this.updatesPerEpoch);
    const u = step % this.updatesPerEpoch;
    const start = u * this.opts.accumulation;
    const end = Math.min(start + this.opts.accumulation, this.microPerEpoch);
    const micro: number[] = [];
    for (let i = start; i < end; i++) micro.push(i);
    return {
      step,
      epoch,
      micro,
      epochAfter: epoch + end / this.microPerEpoch,
      endsEpoch: u === this.updatesPerEpoch - 1,
    };
  }

  order(epoch: number): Int32Array {
    if (this.orderCache?.epoch !== epoch) {
      this.orderCache = {
        epoch,
        order: epochOrder(this.records.length, epoch, this.opts.seed, this.opts.shuffle),
      };
    }
    return this.orderCache.order;
  }

  /** Micro-batch `index` of `epoch`, padded. */
  microBatch(epoch: number, index: number): HostBatch {
    const order = this.order(epoch);
    const b = this.opts.batchSize;
    const rows: MaskedRecord[] = [];
    for (let i = index * b; i < Math.min((index + 1) * b, order.length); i++) {
      rows.push(this.records[order[i]]);
    }
    return makeBatch(rows);
  }
}

/** Evaluation batches: consecutive records in file order. */
export function* evalBatches(
  records: readonly MaskedRecord[],
  batchSize: number,
): Generator<HostBatch> {
  for (let i = 0; i < records.length; i += batchSize) {
    yield makeBatch(records.slice(i, i + batchSize));
  }
}

/** Longest record (buffers are sized for it). */
export function maxLength(records: readonly MaskedRecord[]): number {
  let m = 1;
  for (const r of records) m = Math.max(m, r.inputIds.length);
  return m;
}
