/**
 * Training and evaluation records from tokenized messages, as the ChatGLM3
 * finetune_demo builds them (finetune_hf.py process_batch /
 * process_batch_eval). Pure functions on ids: the special ids come in as
 * numbers, so nothing here reads a tokenizer.
 */
import { located, UserError } from "../errors.ts";
import { count } from "../plural.ts";
import { pythonStrRepr } from "../tokenizer/pyformat.ts";

export const IGNORE_INDEX = -100;

export interface MaskMessage {
  role: string;
  ids: readonly number[];
  loss: boolean;
}

export interface MaskIds {
  gmask: number;
  sop: number;
  eos: number;
}

export interface TrainRecord {
  input_ids: number[];
  labels: number[];
}

export interface EvalRecord {
  input_ids: number[];
  output_ids: number[];
}

export interface Limits {
  maxInputLength: number;
  maxOutputLength: number;
}

export interface TrainOptions {
  /** Learn only the last assistant turn (earlier turns are context). */
  maskHistory?: boolean;
}

/**
 * `[gMASK] sop` + every message + eos; a token's loss flag is its message's,
 * shifted right by one so the label at i is input_ids[i] when token i-1
 * carries loss; both cut to max_input_length + max_output_length + 1.
 */
export function trainRecord(
  messages: readonly MaskMessage[],
  ids: MaskIds,
  limits: Limits,
  options: TrainOptions = {},
): TrainRecord {
  let lastAssistant = -1;
  if (options.maskHistory) {
    for (let i = messages.length - 1; i >= 0; i--) {
      if (messages[i].role === "assistant") {
        lastAssistant = i;
        break;
      }
    }
  }
  const input = [ids.gmask, ids.sop];
  const flags = [false, false];
  messages.forEach((m, i) => {
    const loss = options.maskHistory ? i === lastAssistant && m.loss : m.loss;
    for (const id of m.ids) {
      input.push(id);
      flags.push(loss);
    }
  });
  input.push(ids.eos);
  // Shifted: the flag of position i is the flag of token i-1 (the eos's own flag is dropped).
  const labels = input.map((id, i) => (i > 0 && flags[i - 1] ? id : IGNORE_INDEX));
  const max = limits.maxInputLength + limits.maxOutputLength + 1;
  return { input_ids: input.slice(0, max), labels: labels.slice(0, max) };
}

/**
 * One record per assistant message: the conversation so far cut to
 * max_input_length, then the message's first id (its `<|assistant|>` role
 * token); the output is the rest of that
 * message + eos cut to max_output_length. Stops once the context reaches
 * max_input_length.
 */
export function evalRecords(
  messages: readonly MaskMessage[],
  ids: MaskIds,
  limits: Limits,
  onRecord?: (r: EvalRecord, inputCut: boolean, outputCut: boolean) => void,
): EvalRecord[] {
  const out: EvalRecord[] = [];
  let context = [ids.gmask, ids.sop];
  for (const m of messages) {
    if (context.length >= limits.maxInputLength) break;
    if (m.role === "assistant") {
      const output = [...m.ids.slice(1), ids.eos];
      const r = {
        input_ids: [...context.slice(0, limits.maxInputLength), ...m.ids.slice(0, 1)],
        output_ids: output.slice(0, limits.maxOutputLength),
      };
      out.push(r);
      onRecord?.(r, context.length > limits.maxInputLength, output.length > limits.maxOutputLength);
    }
    context = context.concat(m.ids);
  }
  return out;
}

/** True when any label is learned (a record cut before its answer teaches nothing). */
export function hasLoss(r: TrainRecord): boolean {
  return r.labels.some((l) => l !== IGNORE_INDEX);
}

/** A tokenized conversation as the tokenize stage writes it. */
export interface TokenizedRecord {
  messages: MaskMessage[];
  /** `[gMASK], sop`: the ids every sequence starts with. */
  prefix: [number, number];
  eos: number;
}

export const TOKENIZED_ROLES = ["system", "user", "assistant", "observation"];

/** A token id: a non-negative integer that fits the model's i32 id buffers. */
export function isTokenId(x: unknown): x is number {
  return Number.isInteger(x) && (x as number) >= 0 && (x as number) <= 0x7fffffff;
}

function isIdArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every(isTokenId);
}

/** Check a tokenized record, throwing a UserError that names file, line and field. */
export function checkTokenizedRecord(value: unknown, file: string, line: number): TokenizedRecord {
  const fail = (field: string, msg: string): never => {
    throw new UserError(located(file, line, field, msg));
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail(
      "",
      "expected a tokenized record {messages, prefix, eos} (written by the tokenize stage)",
    );
  }
  const r = value as Record<string, unknown>;
  if (!Array.isArray(r.messages)) return fail("messages", "expected an array of {role, ids, loss}");
  r.messages.forEach((m: unknown, i: number) => {
    const at = `messages[${i}]`;
    if (typeof m !== "object" || m === null || Array.isArray(m)) {
      return fail(at, "expected an object {role, ids, loss}");
    }
    const msg = m as Record<string, unknown>;
    if (typeof msg.role !== "string" || !TOKENIZED_ROLES.includes(msg.role)) {
      fail(
        `${at}.role`,
        `expected one of ${TOKENIZED_ROLES.join(", ")}, found ${JSON.stringify(msg.role)}`,
      );
    }
    if (!Array.isArray(msg.ids) || msg.ids.length === 0) {
      fail(`${at}.ids`, "expected a non-empty array of token ids");
    }
    (msg.ids as unknown[]).forEach((id, k) => {
      if (!isTokenId(id)) {
        fail(
          `${at}.ids[${k}]`,
          `expected a token id (an integer from 0 to 2^31 - 1), found ${JSON.stringify(id)}`,
        );
      }
    });
    if (typeof msg.loss !== "boolean") fail(`${at}.loss`, "expected true or false");
  });
  if (!isIdArray(r.prefix) || r.prefix.length !== 2) {
    return fail("prefix", "expected the two ids [gMASK, sop] (re-run the tokenize stage)");
  }
  if (!isTokenId(r.eos)) return fail("eos", "expected the eos id");
  return value as TokenizedRecord;
}

/** A conversation that gave no eval record (or no learned token), and why. */
export interface Unproductive {
  line: number;
  /** eval: tokens before the first assistant message; train: the record's full length */
  tokens: number;
  /** the messages before the first answer, as `role N` (eval), for the message */
  before: string;
}

/** How many examples a message lists before "and N more". */
const SHOWN = 3;

/** Summary figures of a mask run. */
export class MaskStats {
  records = 0;
  conversations = 0;
  tokens = 0;
  lossTokens = 0;
  truncated = 0;
  /** Train records left with no learned token (their answer was cut off). */
  noLoss = 0;
  outputTruncated = 0;
  /** Eval: assistant messages that gave no record (the context before them reached max_input_length). */
  answersLeftOut = 0;
  /** Conversations that gave nothing to learn or predict: how many, and the first few. */
  unproductive = 0;
  examples: Unproductive[] = [];
  private lengths: number[] = [];

  addTrain(r: TrainRecord, fullLength: number): void {
    this.records++;
    this.tokens += r.input_ids.length;
    for (const l of r.labels) if (l !== IGNORE_INDEX) this.lossTokens++;
    if (fullLength > r.input_ids.length) this.truncated++;
    if (!hasLoss(r)) this.noLoss++;
    this.lengths.push(r.input_ids.length);
  }

  addEval(r: EvalRecord, inputCut: boolean, outputCut: boolean): void {
    this.records++;
    this.tokens += r.input_ids.length + r.output_ids.length;
    this.lossTokens += r.output_ids.length;
    if (inputCut) this.truncated++;
    if (outputCut) this.outputTruncated++;
    this.lengths.push(r.input_ids.length + r.output_ids.length);
  }

  /** A conversation that gave no eval record, or a train record with nothing to learn. */
  addUnproductive(u: Unproductive): void {
    this.unproductive++;
    if (this.examples.length < SHOWN) this.examples.push(u);
  }

  /**
   * Why conversations gave nothing, naming the limit and the lengths: upstream's
   * rules (process_batch_eval) drop an answer whose context has already reached
   * max_input_length, and a train record cut before its answer learns nothing.
   */
  explain(mode: "train" | "eval", limits: Limits): string | undefined {
    if (this.unproductive === 0) return undefined;
    const more = this.unproductive > this.examples.length
      ? `, and ${this.unproductive - this.examples.length} more`
      : "";
    if (mode === "eval") {
      const shown = this.examples.map((u) => `line ${u.line}: ${u.tokens} tokens (${u.before})`);
      return `${this.unproductive} of ${
        count(this.conversations, "conversation")
      } gave no eval record: the tokens before ` +
        `the first assistant message already reach max_input_length (${limits.maxInputLength}), ` +
        `and upstream's process_batch_eval stops there — ${shown.join("; ")}${more}. ` +
        `Raise max_input_length or shorten the system prompt and first messages`;
    }
    const total = limits.maxInputLength + limits.maxOutputLength + 1;
    const shown = this.examples.map((u) => `line ${u.line}: ${u.tokens} tokens`);
    return `${this.unproductive} of ${
      count(this.records, "train record")
    } learn nothing: the record is cut to ` +
      `max_input_length + max_output_length + 1 = ${total} tokens before its first learned token — ` +
      `${shown.join("; ")}${more}. Raise the lengths or shorten the conversations`;
  }

  /** Lines for stderr: counts, loss share, a power-of-two length histogram. */
  summary(mode: "train" | "eval"): string[] {
    const pct = (a: number, b: number) => (b === 0 ? "0.0" : ((100 * a) / b).toFixed(1));
    const lines = [
      `${count(this.conversations, "conversation")} -> ${count(this.records, `${mode} record`)}, ${
        count(this.tokens, "token")
      }`,
      mode === "train"
        ? `tokens with loss: ${this.lossTokens} (${
          pct(this.lossTokens, this.tokens)
        }%); truncated: ${this.truncated}; no loss left: ${this.noLoss}`
        : `output tokens: ${this.lossTokens} (${
          pct(this.lossTokens, this.tokens)
        }%); input truncated: ${this.truncated}; output truncated: ${this.outputTruncated}; ` +
          `answers left out (context at max_input_length): ${this.answersLeftOut}`,
    ];
    if (this.lengths.length) {
      const sorted = [...this.lengths].sort((a, b) => a - b);
      const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
      lines.push(
        `length: min ${sorted[0]}, median ${q(0.5)}, p90 ${q(0.9)}, max ${
          sorted[sorted.length - 1]
        }`,
      );
      const buckets = new Map<number, number>();
      for (const l of this.lengths) {
        const b = l <= 1 ? 1 : 2 ** Math.ceil(Math.log2(l));
        buckets.set(b, (buckets.get(b) ?? 0) + 1);
      }
      const most = Math.max(...buckets.values());
      for (const b of [...buckets.keys()].sort((x, y) => x - y)) {
        const n = buckets.get(b)!;
        const bar = "#".repeat(Math.max(1, Math.round((40 * n) / most)));
        lines.push(`  <= ${String(b).padStart(6)}: ${String(n).padStart(7)} ${bar}`);
      }
    }
    return lines;
  }
}

/**
 * The finetune demo's sanity table: one line per token, `'text': id -> label`
 * (text as Python's repr, right-aligned to 20), padding ids (0) skipped.
 */
export function sanityTable(
  inputIds: readonly number[],
  labels: readonly number[],
  text: (id: number) => string,
): string[] {
  const out: string[] = [];
  for (let i = 0; i < inputIds.length && i < labels.length; i++) {
    const id = inputIds[i];
    if (id === 0) continue;
    const r = pythonStrRepr(text(id));
    const width = [...r].length;
    out.push(`${" ".repeat(Math.max(0, 20 - width))}${r}: ${id} -> ${labels[i]}`);
  }
  return out;
}

export interface MaskOptions extends Limits, TrainOptions {
  mode: "train" | "eval";
}

/**
 * Mask a stream of tokenized records from `file`: one train record per
 * conversation, or one eval record per assistant message. Counts go to `stats`.
 */
export async function* maskRecords(
  records: AsyncIterable<{ line: number; value: unknown }>,
  file: string,
  options: MaskOptions,
  stats: MaskStats = new MaskStats(),
): AsyncGenerator<TrainRecord | EvalRecord> {
  for await (const { line, value } of records) {
    const rec = checkTokenizedRecord(value, file, line);
    const ids = { gmask: rec.prefix[0], sop: rec.prefix[1], eos: rec.eos };
    stats.conversations++;
    if (options.mode === "train") {
      const r = trainRecord(rec.messages, ids, options, options);
      const full = 3 + rec.messages.reduce((s, m) => s + m.ids.length, 0);
      stats.addTrain(r, full);
      if (!hasLoss(r)) stats.addUnproductive({ line, tokens: full, before: "" });
      yield r;
    } else {
      const out = evalRecords(
        rec.messages,
        ids,
        options,
        (r, inCut, outCut) => stats.addEval(r, inCut, outCut),
      );
      const answers = rec.messages.filter((m) => m.role === "assistant").length;
      stats.answersLeftOut += answers - out.length;
      if (out.length === 0) {
        const first = rec.messages.findIndex((m) => m.role === "assistant");
        const before = rec.messages.slice(0, first < 0 ? rec.messages.length : first);
        stats.addUnproductive({
          line,
          tokens: 2 + before.reduce((s, m) => s + m.ids.length, 0),
          before: ["[gMASK] sop 2", ...before.map((m) => `${m.role} ${m.ids.length}`)].join(
            " + ",
          ),
        });
      }
      yield* out;
    }
  }
}
