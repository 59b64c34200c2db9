/**
 * Streaming JSON Lines: read line by line with line numbers (CRLF and a BOM
 * tolerated, invalid UTF-8 reported, lines of many MB fine), and write
 * atomically. Nothing here holds a whole data set in memory.
 */
import { parseKeepingNumbers } from "./data/pynumber.ts";
import { AtomicFile } from "./atomic.ts";
import { located, osError, UserError } from "./errors.ts";

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
  /** The error is in the file's structure (a JSON array's commas and brackets), not in one record. */
  structural?: boolean;
}

/** Open a path for reading; "-" is standard input. */
export async function openInput(path: string): Promise<ReadableStream<Uint8Array>> {
  if (path === "-") return Deno.stdin.readable;
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${path}: is a directory, expected a file`);
    }
    throw osError(e, path, "read");
  }
  // Opening a directory for reading succeeds on Linux; only the first read fails.
  if ((await f.stat()).isDirectory) {
    f.close();
    throw new UserError(`${path}: is a directory, expected a file`);
  }
  return f.readable;
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

/** How a record's text becomes its value (JSON.parse, or one that keeps number literals). */
export type JsonParse = (text: string) => unknown;

/** Parse JSON Lines: one record (or error) per non-blank line. */
export async function* readJsonl(
  input: ReadableStream<Uint8Array> | string,
  parse: JsonParse = JSON.parse,
): AsyncGenerator<JsonRecord> {
  for await (const l of readLines(input)) {
    if (l.error !== undefined) {
      yield { line: l.line, error: l.error };
      continue;
    }
    const text = l.text!;
    if (text.trim() === "") continue;
    try {
      yield { line: l.line, value: parse(text) };
    } catch (e) {
      yield { line: l.line, error: `malformed JSON: ${(e as Error).message}` };
    }
  }
}

/** Parse JSON Lines, stopping with a UserError naming file and line at the first bad line. */
export async function* readJsonlStrict(
  path: string,
  parse: JsonParse = JSON.parse,
): AsyncGenerator<{ line: number; value: unknown }> {
  const name = path === "-" ? "<stdin>" : path;
  for await (const r of readJsonl(path, parse)) {
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

const B_LBRACKET = 0x5b, B_RBRACKET = 0x5d, B_LBRACE = 0x7b, B_RBRACE = 0x7d;
const B_COMMA = 0x2c, B_QUOTE = 0x22, B_BACKSLASH = 0x5c;

function isJsonSpace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

function describeByte(b: number): string {
  return b >= 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}'` : `byte 0x${b.toString(16)}`;
}

/** The 1-based line, inside `text` that starts at `startLine`, of a JSON.parse error. */
function parseErrorLine(text: string, startLine: number, message: string): number {
  const m = /position (\d+)/.exec(message);
  if (!m) return startLine;
  const pos = Math.min(Number(m[1]), text.length);
  let n = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < pos; i = text.indexOf("\n", i + 1)) n++;
  return startLine + n;
}

/**
 * Stream the elements of a top-level JSON array (`[ {...}, {...} ]`), each with
 * the line it starts on, without holding the array in memory: a byte scanner
 * finds each element's extent and only that element is decoded and parsed.
 * Structural faults (a trailing comma, a missing comma, a bracket that does not
 * match, an unclosed array) come out as `{line, error}` at the line where they
 * are; after a fault that leaves the structure unknowable, reading stops.
 */
export async function* readJsonArray(
  input: ReadableStream<Uint8Array> | string,
  parse: JsonParse = JSON.parse,
): AsyncGenerator<JsonRecord> {
  const stream = typeof input === "string" ? await openInput(input) : input;
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  type Phase = "start" | "first" | "next" | "value" | "after" | "done";
  let phase: Phase = "start";
  let line = 1;
  let arrayLine = 1;
  let commaLine = 0;
  // The element being collected.
  let parts: Uint8Array[] = [];
  let startLine = 0;
  const stack: number[] = [];
  let inString = false;
  let escaped = false;
  let atFileStart = true;

  const finish = (tail: Uint8Array): JsonRecord => {
    parts.push(tail);
    let len = 0;
    for (const p of parts) len += p.length;
    const bytes = parts.length === 1 ? parts[0] : new Uint8Array(len);
    if (parts.length > 1) {
      let o = 0;
      for (const p of parts) {
        bytes.set(p, o);
        o += p.length;
      }
    }
    parts = [];
    let text: string;
    try {
      text = decoder.decode(bytes);
    } catch {
      const bad = firstInvalidUtf8(bytes);
      let nl = 0;
      let col = bad;
      for (let i = 0; i < bad; i++) {
        if (bytes[i] === NL) {
          nl++;
          col = bad - i - 1;
        }
      }
      return {
        line: startLine + nl,
        error: `invalid UTF-8 (first bad byte at column ${col + 1})`,
      };
    }
    try {
      return { line: startLine, value: parse(text) };
    } catch (e) {
      const msg = (e as Error).message;
      return { line: parseErrorLine(text, startLine, msg), error: `malformed JSON: ${msg}` };
    }
  };

  for await (const chunk of stream) {
    let i = 0;
    if (atFileStart && chunk.length > 0) {
      atFileStart = false;
      if (chunk.length >= 3 && chunk[0] === 0xef && chunk[1] === 0xbb && chunk[2] === 0xbf) i = 3;
    }
    let valueFrom = phase === "value" ? 0 : -1;
    const out: JsonRecord[] = [];
    let fatal = false;
    for (; i < chunk.length; i++) {
      const b = chunk[i];
      if (phase === "value") {
        if (inString) {
          if (escaped) escaped = false;
          else if (b === B_BACKSLASH) escaped = true;
          else if (b === B_QUOTE) {
            inString = false;
            if (stack.length === 0) {
              out.push(finish(chunk.subarray(valueFrom, i + 1)));
              phase = "after";
            }
          } else if (b === NL) line++;
          continue;
        }
        if (b === B_QUOTE) {
          inString = true;
        } else if (b === B_LBRACE || b === B_LBRACKET) {
          stack.push(b);
        } else if (b === B_RBRACE || b === B_RBRACKET) {
          if (stack.length === 0) {
            // The end of a bare scalar element, and of the array.
            out.push(finish(chunk.subarray(valueFrom, i)));
            if (b === B_RBRACKET) phase = "done";
            else {
              out.push({
                structural: true,
                line,
                error: `unexpected '}' after the element that starts at line ${startLine}`,
              });
              fatal = true;
              break;
            }
            continue;
          }
          const open = stack.pop()!;
          if ((open === B_LBRACE) !== (b === B_RBRACE)) {
            out.push({
              structural: true,
              line,
              error:
                `mismatched ${describeByte(b)}: it does not close the ${
                  describeByte(open)
                } still open ` +
                `in the element that starts at line ${startLine}`,
            });
            parts = [];
            fatal = true;
            break;
          }
          if (stack.length === 0) {
            out.push(finish(chunk.subarray(valueFrom, i + 1)));
            phase = "after";
          }
        } else if (stack.length === 0 && (b === B_COMMA || isJsonSpace(b))) {
          // The end of a bare scalar element (a number, true, false, null).
          out.push(finish(chunk.subarray(valueFrom, i)));
          phase = "after";
          i--;
          continue;
        } else if (b === NL) line++;
        continue;
      }
      if (b === NL) {
        line++;
        continue;
      }
      if (isJsonSpace(b)) continue;
      switch (phase) {
        case "start":
          if (b !== B_LBRACKET) {
            out.push({
              structural: true,
              line,
              error: `expected a JSON array ('[') at the top level, found ${describeByte(b)}`,
            });
            fatal = true;
          } else {
            arrayLine = line;
            phase = "first";
          }
          break;
        case "first":
        case "next":
          if (b === B_RBRACKET) {
            if (phase === "next") {
              out.push({
                structural: true,
                line: commaLine,
                error: "trailing comma after the last element of the array",
              });
            }
            phase = "done";
          } else if (b === B_COMMA) {
            out.push({ structural: true, line, error: "expected an element, found ','" });
            commaLine = line;
          } else if (b === B_RBRACE) {
            // A stray '}' starts no element: reported, then skipped.
            out.push({ structural: true, line, error: "expected an element, found '}'" });
          } else {
            phase = "value";
            startLine = line;
            valueFrom = i;
            i--;
          }
          break;
        case "after":
          if (b === B_COMMA) {
            phase = "next";
            commaLine = line;
          } else if (b === B_RBRACKET) {
            phase = "done";
          } else if (b === B_RBRACE) {
            // A stray '}' (one too many closing an element): reported, then skipped.
            out.push({
              structural: true,
              line,
              error: `unexpected '}' after the element that starts at line ${startLine}`,
            });
          } else {
            out.push({
              structural: true,
              line,
              error: `expected ',' or ']' after the element that starts at line ${startLine}`,
            });
            phase = "value";
            startLine = line;
            valueFrom = i;
            i--;
          }
          break;
        case "done":
          out.push({
            structural: true,
            line,
            error: `unexpected ${describeByte(b)} after the closing ']' of the array`,
          });
          fatal = true;
          break;
      }
      if (fatal) break;
    }
    if (!fatal && phase === "value") {
      // Copy: the stream may reuse its chunk buffer.
      parts.push(chunk.slice(valueFrom));
    }
    yield* out;
    if (fatal) return;
  }
  if (phase === "value") {
    yield {
      structural: true,
      line,
      error: `unexpected end of file inside the element that starts at line ${startLine}`,
    };
  } else if (phase === "first" || phase === "next" || phase === "after") {
    yield {
      structural: true,
      line,
      error: `unexpected end of file: the array opened at line ${arrayLine} is not closed`,
    };
  }
}

/** Put bytes already read back in front of the rest of a stream. */
function prepend(
  head: Uint8Array[],
  reader: ReadableStreamDefaultReader<Uint8Array>,
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = head.shift();
      if (next) {
        controller.enqueue(next);
        return;
      }
      return reader.read().then(({ done, value }) => {
        if (done) controller.close();
        else controller.enqueue(value);
      });
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/**
 * `stream` without a UTF-8 byte-order mark at its start, also when a pipe
 * delivers the mark's three bytes in more than one chunk (the readers below
 * look for it in their first chunk only).
 */
async function withoutBom(stream: ReadableStream<Uint8Array>): Promise<ReadableStream<Uint8Array>> {
  const reader = stream.getReader();
  const head: Uint8Array[] = [];
  let n = 0;
  while (n < 3) {
    const { done, value } = await reader.read();
    if (done) break;
    head.push(value.slice());
    n += value.length;
  }
  const start = new Uint8Array(Math.min(n, 3));
  let o = 0;
  for (const c of head) {
    for (let i = 0; i < c.length && o < start.length; i++) start[o++] = c[i];
  }
  if (start.length === 3 && start[0] === 0xef && start[1] === 0xbb && start[2] === 0xbf) {
    // Drop the first three bytes across the chunks they came in.
    let drop = 3;
    while (drop > 0 && head.length) {
      const c = head[0];
      if (c.length <= drop) {
        drop -= c.length;
        head.shift();
      } else {
        head[0] = c.subarray(drop);
        drop = 0;
      }
    }
  }
  return prepend(head, reader);
}

/**
 * Read the records of a data file, whichever way it holds them: a `.jsonl`
 * file is JSON Lines; a `.json` file or standard input is a JSON array when its
 * first non-blank character is `[` and JSON Lines otherwise (as the Hugging Face
 * `json` loader accepts both). Number literals a double would print otherwise
 * than Python are kept as text (lib/data/pynumber.ts).
 */
export async function* readJsonRecords(
  input: ReadableStream<Uint8Array> | string,
  kind: "auto" | "array" | "lines" = "auto",
): AsyncGenerator<JsonRecord> {
  if (kind === "auto" && typeof input === "string" && /\.jsonl$/i.test(input)) kind = "lines";
  const stream = await withoutBom(typeof input === "string" ? await openInput(input) : input);
  const parse = parseKeepingNumbers;
  if (kind === "array") return yield* readJsonArray(stream, parse);
  if (kind === "lines") return yield* readJsonl(stream, parse);
  const reader = stream.getReader();
  const head: Uint8Array[] = [];
  let first = -1;
  while (first < 0) {
    const { done, value } = await reader.read();
    if (done) break;
    // Copy: the stream may reuse its chunk buffer.
    const chunk = value.slice();
    head.push(chunk);
    for (let i = 0; i < chunk.length; i++) {
      if (!isJsonSpace(chunk[i])) {
        first = chunk[i];
        break;
      }
    }
  }
  const rest = prepend(head, reader);
  if (first === B_LBRACKET) return yield* readJsonArray(rest, parse);
  let firstRecord = true;
  for await (const r of readJsonl(rest, parse)) {
    if (firstRecord && r.error?.startsWith("malformed JSON") && first === B_LBRACE) {
      // Most likely one pretty-printed object, which is neither of the two layouts.
      r.error += " (a data file is a JSON array of records or one JSON record per line)";
    }
    firstRecord = false;
    yield r;
  }
}

/**
 * A buffered JSON Lines output: standard output for "-", otherwise a file
 * written atomically (it appears under its name only on `commit()`).
 */
export class JsonlSink {
  private enc = new TextEncoder();
  private buf: string[] = [];
  private bufLen = 0;
  count = 0;
  private constructor(
    private file: AtomicFile | undefined,
    private stdout: WritableStreamDefaultWriter<Uint8Array> | undefined,
  ) {}
  static async create(path: string): Promise<JsonlSink> {
    if (path === "-") return new JsonlSink(undefined, Deno.stdout.writable.getWriter());
    return new JsonlSink(await AtomicFile.create(path), undefined);
  }
  async write(record: unknown): Promise<void> {
    const s = JSON.stringify(record) + "\n";
    this.buf.push(s);
    this.bufLen += s.length;
    this.count++;
    if (this.bufLen >= 1 << 20) await this.flush();
  }
  private async flush(): Promise<void> {
    if (this.buf.length === 0) return;
    const bytes = this.enc.encode(this.buf.join(""));
    this.buf = [];
    this.bufLen = 0;
    if (this.file) await this.file.write(bytes);
    else {
      try {
        await this.stdout!.write(bytes);
      } catch (e) {
        if (e instanceof Deno.errors.BrokenPipe) {
          throw new UserError("standard output was closed before every record was written");
        }
        throw e;
      }
    }
  }
  async commit(): Promise<void> {
    await this.flush();
    if (this.file) await this.file.commit();
    else this.stdout!.releaseLock();
  }
  async abort(): Promise<void> {
    this.buf = [];
    if (this.file) await this.file.abort();
    else this.stdout!.releaseLock();
  }
}
