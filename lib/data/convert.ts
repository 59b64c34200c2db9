/**
 * Raw records in any supported format → canonical conversation records
 * (DESIGN §2–3), streamed: each record is converted, checked against the
 * schema, and handed on (or reported) before the next is read.
 */
import { count } from "../plural.ts";
import { located, UserError } from "../errors.ts";
import { JsonlSink, type JsonRecord, readJsonRecords } from "../jsonl.ts";
import { checkNotInput } from "../outdir.ts";
import { detectFormat, type FormatName, FORMATS } from "./formats/mod.ts";
import type { Converted } from "./formats/mod.ts";
import type { Conversation } from "./record.ts";
import { checkJsonValue } from "./limits.ts";
import { checkConversation, type Problem } from "./schema.ts";

export interface ConvertOptions {
  /** The input format, or "auto" (the default) to recognise it from the first record. */
  format?: FormatName | "auto";
}

export interface ConvertResult {
  /** The line the raw record starts on. */
  line: number;
  /** 0-based position among all converted records, good or bad (a raw ToolAlpaca API gives several). */
  index: number;
  /** The canonical record, when it has no problem. */
  record?: Conversation;
  /** Every problem of the record; empty when `record` is set. */
  problems: Problem[];
  /** A fault in the file's structure (a JSON array's trailing comma), not a record: `index` is -1. */
  structural?: boolean;
}

/** Rewrite a schema problem's canonical path into the raw record's own field path. */
function locate(p: Problem, c: Converted): Problem {
  const m = /^conversations(?:\[(\d+)\](.*))?$/.exec(p.field);
  if (!m) return p;
  if (m[1] === undefined) {
    const container = c.container ?? "conversations";
    return { field: container || c.at, message: p.message };
  }
  const src = c.sources?.[Number(m[1])];
  if (src === undefined) return p;
  // A message made from a differently named field (`instruction`) reports that field alone.
  const rest = /^\w+\[\d+\]$/.test(src.split(".").pop() ?? "") ? m[2] : "";
  return { field: src + rest, message: p.message };
}

/** Check a converted record and gather all its problems, each located in the raw record. */
export function finishRecord(c: Converted): { record?: Conversation; problems: Problem[] } {
  const problems = [...c.problems];
  if (c.record) {
    const seen = new Set(problems.map((p) => p.field));
    for (const p of checkConversation(c.record)) {
      const q = locate(p, c);
      // A field the converter already complained about need not be reported twice.
      if (!seen.has(q.field)) problems.push(q);
    }
  }
  if (problems.length || !c.record) return { problems };
  // `tools` first, as the format is documented and read.
  const record = c.record.tools !== undefined
    ? { tools: c.record.tools, conversations: c.record.conversations }
    : { conversations: c.record.conversations };
  return { record: record as Conversation, problems };
}

/**
 * Convert a stream of raw records. With format "auto", the first record whose
 * keys match a format decides it for the whole stream; a later record of
 * another recognisable format is reported, never silently misread.
 */
export async function* convertRecords(
  records: AsyncIterable<JsonRecord>,
  opts: ConvertOptions = {},
): AsyncGenerator<ConvertResult> {
  let format = opts.format && opts.format !== "auto" ? opts.format : undefined;
  const explicit = format !== undefined;
  let decidedAt = 0;
  let index = 0;
  for await (const r of records) {
    if (r.error !== undefined) {
      const problems = [{ field: "", message: r.error }];
      if (r.structural) yield { line: r.line, index: -1, problems, structural: true };
      else yield { line: r.line, index: index++, problems };
      continue;
    }
    const detected = explicit ? undefined : detectFormat(r.value);
    if (!format) {
      if (!detected) {
        yield {
          line: r.line,
          index: index++,
          problems: [{
            field: "",
            message: "not a record of any known format (expected the keys of one of: " +
              "conversations, messages, content+summary, instruction+output, Instances); " +
              "pass --format to name it",
          }],
        };
        continue;
      }
      format = detected;
      decidedAt = r.line;
    } else if (!explicit && detected && detected !== format) {
      yield {
        line: r.line,
        index: index++,
        problems: [{
          field: "",
          message: `this record is in the ${detected} format, but the file is ${format} ` +
            `(recognised at line ${decidedAt}); a file holds one format`,
        }],
      };
      continue;
    }
    // Too deep, out-of-range numbers, lone surrogates: reported in the raw record's own
    // fields, before a converter (some parse and render values) ever meets them.
    const limits = checkJsonValue(r.value);
    if (limits.length) {
      yield { line: r.line, index: index++, problems: limits };
      continue;
    }
    for (const c of FORMATS[format].convert(r.value)) {
      const { record, problems } = finishRecord(c);
      yield { line: r.line, index: index++, record, problems };
    }
  }
}

/** `FILE:LINE: field: message` for a problem, as every report prints it. */
export function formatProblem(file: string, line: number, p: Problem): string {
  return located(file, line, printable(p.field) || undefined, printable(p.message));
}

/**
 * A problem's field and message as one line of plain text: control characters
 * from the data (a key holding a newline, a role with terminal escapes) are
 * written as JSON escapes, so a record cannot forge a line of the report.
 */
export function printable(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/[\u0000-\u001f\u007f]/g, (c) => JSON.stringify(c).slice(1, -1));
}

export interface SplitSpec {
  /** Named parts and their fractions; the rest goes to "train". */
  parts: { name: string; fraction: number }[];
  seed: number;
}

/** `dev=0.05` or `dev=0.05,test=0.05` → the split's parts. */
export function parseSplit(spec: string, seed: number): SplitSpec {
  const parts: { name: string; fraction: number }[] = [];
  for (const item of spec.split(",")) {
    const m = /^\s*([A-Za-z][\w-]*)\s*=\s*([0-9.eE+-]+)\s*$/.exec(item);
    const fraction = m ? Number(m[2]) : NaN;
    if (!m || !(fraction >= 0 && fraction <= 1)) {
      throw new UserError(
        `--split: "${item}" is not NAME=FRACTION with a fraction in [0, 1] (e.g. dev=0.05)`,
      );
    }
    if (m[1] === "train") throw new UserError(`--split: "train" takes what the other parts leave`);
    if (parts.some((p) => p.name === m[1])) throw new UserError(`--split: "${m[1]}" given twice`);
    parts.push({ name: m[1], fraction });
  }
  const total = parts.reduce((a, p) => a + p.fraction, 0);
  if (total > 1 + 1e-12) {
    throw new UserError(`--split: the fractions add up to ${total}, more than 1`);
  }
  if (!Number.isSafeInteger(seed)) {
    throw new UserError(`--seed: expected an integer, found ${seed}`);
  }
  return { parts, seed };
}

/**
 * A uniform number in [0, 1) from (seed, index) alone, so that the split of a
 * record depends on nothing else and a stream can be split without reading ahead.
 * (SplitMix64's finaliser over the two 32-bit halves.)
 */
export function splitUniform(seed: number, index: number): number {
  let h = (BigInt.asUintN(64, BigInt(seed)) * 0x9e3779b97f4a7c15n + BigInt(index)) &
    0xffffffffffffffffn;
  h = ((h ^ (h >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  h = ((h ^ (h >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  h = h ^ (h >> 31n);
  return Number(h >> 11n) / 2 ** 53;
}

/** Which part of a split record `index` falls in. */
export function splitPart(split: SplitSpec, index: number): string {
  const u = splitUniform(split.seed, index);
  let acc = 0;
  for (const p of split.parts) {
    acc += p.fraction;
    if (u < acc) return p.name;
  }
  return "train";
}

/**
 * Where each part of a split goes: `--out DIR` (an existing directory, or a
 * path ending in "/") → `DIR/<part>.jsonl`; `--out data.jsonl` →
 * `data.<part>.jsonl` beside it.
 */
export async function splitPaths(out: string, split: SplitSpec): Promise<Record<string, string>> {
  if (out === "-") {
    throw new UserError("--split writes several files; --out must be a file name or directory");
  }
  let isDir = out.endsWith("/");
  if (!isDir) {
    try {
      isDir = (await Deno.stat(out)).isDirectory;
    } catch { /* a new file name */ }
  }
  const names = ["train", ...split.parts.map((p) => p.name)];
  const paths: Record<string, string> = {};
  for (const n of names) {
    paths[n] = isDir
      ? `${out.replace(/\/+$/, "")}/${n}.jsonl`
      : `${out.replace(/\.jsonl?$/i, "")}.${n}.jsonl`;
  }
  return paths;
}

export interface FileOptions extends ConvertOptions {
  /** Called for every record that has problems, as soon as it is found. */
  onBad?: (result: ConvertResult) => void | Promise<void>;
}

export interface FileReport {
  file: string;
  records: number;
  badRecords: number;
  /** All problems, those of bad records and those of the file's structure. */
  problems: number;
}

/** Convert and check a file without writing anything (the `validate` command, `convert --check`). */
export async function validateFile(
  path: string,
  opts: FileOptions & { allowEmpty?: boolean } = {},
): Promise<FileReport> {
  const report: FileReport = {
    file: path === "-" ? "<stdin>" : path,
    records: 0,
    badRecords: 0,
    problems: 0,
  };
  for await (const r of convertRecords(readJsonRecords(path), opts)) {
    if (!r.structural) report.records++;
    if (r.problems.length) {
      if (!r.structural) report.badRecords++;
      report.problems += r.problems.length;
      await opts.onBad?.(r);
    }
  }
  // An empty file is almost always a mistake (a failed export, the wrong path of a
  // split); it would otherwise pass here and fail steps later, or train on nothing.
  if (report.records === 0 && report.problems === 0 && !opts.allowEmpty) {
    report.problems++;
    await opts.onBad?.({
      line: 1,
      index: -1,
      structural: true,
      problems: [{
        field: "",
        message: "the file holds no records (validate --allow-empty accepts an empty file)",
      }],
    });
  }
  return report;
}

export interface ConvertFileOptions extends FileOptions {
  split?: SplitSpec;
  /** Leave bad records out (each still reported) instead of failing. */
  skipInvalid?: boolean;
}

export interface ConvertFileReport extends FileReport {
  /** Records written to each output path. */
  written: Record<string, number>;
}

/**
 * Convert `input` to canonical JSONL at `output` (or the split's files),
 * streaming. The outputs appear only when every record converted (or, with
 * `skipInvalid`, when the bad ones have been left out); otherwise nothing is
 * written and a UserError says how many records were bad.
 */
export async function convertFile(
  input: string,
  output: string,
  opts: ConvertFileOptions = {},
): Promise<ConvertFileReport> {
  const paths = opts.split ? await splitPaths(output, opts.split) : { all: output };
  // Replacing the input with its own conversion would lose the original.
  for (const p of Object.values(paths)) await checkNotInput(p, "--out", [["--in", input]]);
  const sinks: Record<string, JsonlSink> = {};
  const report: ConvertFileReport = {
    file: input === "-" ? "<stdin>" : input,
    records: 0,
    badRecords: 0,
    problems: 0,
    written: {},
  };
  try {
    for (const [part, path] of Object.entries(paths)) sinks[part] = await JsonlSink.create(path);
    let structural = 0;
    for await (const r of convertRecords(readJsonRecords(input), opts)) {
      if (r.structural) {
        structural++;
        report.problems += r.problems.length;
        await opts.onBad?.(r);
        continue;
      }
      report.records++;
      if (!r.record) {
        report.badRecords++;
        report.problems += r.problems.length;
        await opts.onBad?.(r);
        continue;
      }
      // Once a record is bad the output will be thrown away; keep reading only to report.
      if ((report.badRecords > 0 && !opts.skipInvalid) || structural > 0) continue;
      const part = opts.split ? splitPart(opts.split, r.index) : "all";
      await sinks[part].write(r.record);
    }
    if (structural > 0) {
      // A broken array may hide records; no option makes that safe to ignore.
      throw new UserError(
        `${report.file}: the file's JSON structure is broken (${
          count(structural, "problem")
        }); nothing written`,
      );
    }
    if (report.badRecords > 0 && !opts.skipInvalid) {
      throw new UserError(
        `${report.file}: ${report.badRecords} of ${count(report.records, "record")} ` +
          `${report.badRecords === 1 ? "is" : "are"} bad (${
            count(report.problems, "problem")
          }); nothing written (--skip-invalid leaves them out instead)`,
      );
    }
    // An empty output would only fail a later step (--check says the same of an empty input).
    if (report.records === 0) {
      throw new UserError(`${report.file}: holds no records; nothing written`);
    }
    const empty = Object.keys(sinks).filter((part) => sinks[part].count === 0);
    if (empty.length === Object.keys(sinks).length) {
      throw new UserError(
        `${report.file}: ${
          report.records === 1 ? "its one record is" : `all ${report.records} records are`
        } bad; nothing written`,
      );
    }
    if (empty.length > 0) {
      const good = report.records - report.badRecords;
      throw new UserError(
        `--split: ${empty.join(", ")} ${empty.length === 1 ? "gets" : "get"} none of the ${
          count(good, good === report.records ? "record" : "good record")
        }; nothing written (give ${empty.length === 1 ? "it" : "them"} a larger share)`,
      );
    }
    for (const [part, sink] of Object.entries(sinks)) {
      await sink.commit();
      report.written[paths[part]] = sink.count;
    }
    return report;
  } catch (e) {
    for (const sink of Object.values(sinks)) await sink.abort();
    throw e;
  }
}
