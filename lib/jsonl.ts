/**
 * Streaming JSON Lines: read line by line with line numbers (CRLF and a BOM
 * tolerated, invalid UTF-8 reported, lines of many MB fine), and write
 * atomically. Nothing here holds a whole data set in memory.
 */
import { AtomicFile } from "./atomic.ts";
import { located, UserError } from "./errors.ts";

export interface Line {
  line: number;
  /** The decoded text, without the line ending; undefined when `error` is set. */
  text?: string;
  error?: string;
}

export interface JsonRecord {
  line: number;
  value?: unknown;
  error?: string;
}

/** Open a path for reading; "-" is standard input. */
export async function openInput(path: string): Promise<ReadableStream<Uint8Array>> {
  if (path === "-") return Deno.stdin.readable;
  try {
    const f = await Deno.open(path, { read: true });
    return f.readable;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${path}: is a directory, expected a file`);
    }
    throw e;
  }
}

const NL = 0x0a;

/** Split a byte stream into lines, decoding each as strict UTF-8. */
export async function* readLines(input: ReadableStream<Uint8Array> | string): AsyncGenerator<Line> {
  const stream = typeof input === "string" ? await openInput(input) : input;
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  let parts: Uint8Array[] = [];
  let partsLen = 0;
  let lineNo = 0;
  const emit = (bytes: Uint8Array): Line => {
    lineNo++;
    let end = bytes.length;
    if (end > 0 && bytes[end - 1] === 0x0d) end--;
    let start = 0;
    if (lineNo === 1 && end >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
      start = 3;
    }
    try {
      return { line: lineNo, text: decoder.decode(bytes.subarray(start, end)) };
    } catch {
      const bad = firstInvalidUtf8(bytes.subarray(start, end));
      return { line: lineNo, error: `invalid UTF-8 (first bad byte at column ${bad + 1})` };
    }
  };
  const join = (tail: Uint8Array): Uint8Array => {
    if (parts.length === 0) return tail;
    const out = new Uint8Array(partsLen + tail.length);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    out.set(tail, o);
    parts = [];
    partsLen = 0;
    return out;
  };
  for await (const chunk of stream) {
    let start = 0;
    for (let i = chunk.indexOf(NL); i !== -1; i = chunk.indexOf(NL, start)) {
      yield emit(join(chunk.subarray(start, i)));
      start = i + 1;
    }
    if (start < chunk.length) {
      // Copy: the stream may reuse its chunk buffer.
      parts.push(chunk.slice(start));
      partsLen += chunk.length - start;
    }
  }
  if (partsLen > 0) yield emit(join(new Uint8Array(0)));
}

/** Byte offset of the first invalid UTF-8 sequence in `b` (or b.length). */
function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    const n = c < 0x80
      ? 0
      : (c & 0xe0) === 0xc0 && c >= 0xc2
      ? 1
      : (c & 0xf0) === 0xe0
      ? 2
      : (c & 0xf8) === 0xf0 && c <= 0xf4
      ? 3
      : -1;
    if (n < 0) return i;
    for (let k = 1; k <= n; k++) if (i + k >= b.length || (b[i + k] & 0xc0) !== 0x80) return i;
    i += n + 1;
  }
  return b.length;
}

/** Parse JSON Lines: one record (or error) per non-blank line. */
export async function* readJsonl(
  input: ReadableStream<Uint8Array> | string,
): AsyncGenerator<JsonRecord> {
  for await (const l of readLines(input)) {
    if (l.error !== undefined) {
      yield { line: l.line, error: l.error };
      continue;
    }
    const text = l.text!;
    if (text.trim() === "") continue;
    try {
      yield { line: l.line, value: JSON.parse(text) };
    } catch (e) {
      yield { line: l.line, error: `malformed JSON: ${(e as Error).message}` };
    }
  }
}

/** Parse JSON Lines, stopping with a UserError naming file and line at the first bad line. */
export async function* readJsonlStrict(
  path: string,
): AsyncGenerator<{ line: number; value: unknown }> {
  const name = path === "-" ? "<stdin>" : path;
  for await (const r of readJsonl(path)) {
    if (r.error !== undefined) throw new UserError(located(name, r.line, undefined, r.error));
    yield { line: r.line, value: r.value };
  }
}

/**
 * Write records as JSON Lines to `path` ("-" for stdout) atomically: the file
 * appears under its name only when every record was written.
 */
export async function writeJsonl(
  path: string,
  records: AsyncIterable<unknown> | Iterable<unknown>,
): Promise<number> {
  const enc = new TextEncoder();
  let n = 0;
  if (path === "-") {
    const w = Deno.stdout.writable.getWriter();
    try {
      for await (const r of records) {
        await w.write(enc.encode(JSON.stringify(r) + "\n"));
        n++;
      }
    } finally {
      w.releaseLock();
    }
    return n;
  }
  const out = await AtomicFile.create(path);
  try {
    const buf: string[] = [];
    let bufLen = 0;
    for await (const r of records) {
      const s = JSON.stringify(r) + "\n";
      buf.push(s);
      bufLen += s.length;
      n++;
      if (bufLen > 1 << 20) {
        await out.write(enc.encode(buf.join("")));
        buf.length = 0;
        bufLen = 0;
      }
    }
    if (buf.length) await out.write(enc.encode(buf.join("")));
    await out.commit();
  } catch (e) {
    await out.abort();
    throw e;
  }
  return n;
}

/** An incremental JSONL writer, for outputs produced one at a time (predictions). */
export class JsonlWriter {
  private enc = new TextEncoder();
  private constructor(private out: AtomicFile) {}
  static async create(path: string): Promise<JsonlWriter> {
    return new JsonlWriter(await AtomicFile.create(path));
  }
  /** The temporary file, readable while writing (predictions are visible as they come). */
  get tmpPath(): string {
    return this.out.tmp;
  }
  write(record: unknown): Promise<void> {
    return this.out.write(this.enc.encode(JSON.stringify(record) + "\n"));
  }
  commit(): Promise<void> {
    return this.out.commit();
  }
  abort(): Promise<void> {
    return this.out.abort();
  }
}
