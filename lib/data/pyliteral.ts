/**
 * Reading the tool calls of ChatGLM3's native chat format back into JSON:
 * an assistant message whose metadata names a tool holds
 * ```` ```python\ntool_call(k='v', n=1)\n``` ```` — Python keyword arguments
 * with literal values, as `ast.unparse`/`astunparse` write them.
 */

import { MAX_DEPTH } from "./limits.ts";
import { isKeptNumber, type KeptNumber, keptNumber } from "./pynumber.ts";
import { pythonFloatRepr } from "../tokenizer/pyformat.ts";

export class PyLiteralError extends Error {}

/** Parse a `tool_call(...)` block (with or without the ```python fence) into its keyword arguments. */
export function parseToolCall(text: string): Record<string, unknown> {
  let s = text.trim();
  const fence = /^```(?:python)?[ \t]*\r?\n([\s\S]*?)\r?\n?```$/.exec(s);
  if (fence) s = fence[1].trim();
  const p = new Parser(s);
  p.ws();
  const name = p.identifier();
  if (name === undefined) throw new PyLiteralError(`expected tool_call(...), found ${p.excerpt()}`);
  p.ws();
  p.expect("(");
  const args: Record<string, unknown> = {};
  p.ws();
  while (!p.eat(")")) {
    const key = p.identifier();
    if (key === undefined) {
      throw new PyLiteralError(`expected a keyword argument name at ${p.excerpt()}`);
    }
    // Python refuses the call (SyntaxError); keeping the last would lose the first without a word.
    if (Object.hasOwn(args, key)) throw new PyLiteralError(`keyword argument repeated: ${key}`);
    p.ws();
    p.expect("=");
    p.ws();
    args[key] = p.value();
    p.ws();
    if (!p.eat(",")) {
      p.ws();
      p.expect(")");
      break;
    }
    p.ws();
  }
  p.ws();
  if (!p.atEnd()) throw new PyLiteralError(`unexpected text after the call: ${p.excerpt()}`);
  return args;
}

/** Parse one Python literal expression (str, int, float, bool, None, list, tuple, dict). */
export function parsePyLiteral(text: string): unknown {
  const p = new Parser(text.trim());
  const v = p.value();
  p.ws();
  if (!p.atEnd()) throw new PyLiteralError(`unexpected text: ${p.excerpt()}`);
  return v;
}

class Parser {
  i = 0;
  /** Lists, tuples and dicts open around the current position (bounded, so is the recursion). */
  depth = 0;
  constructor(readonly s: string) {}
  enter(): void {
    if (++this.depth > MAX_DEPTH) {
      throw new PyLiteralError(`values nested more than ${MAX_DEPTH} levels deep`);
    }
  }
  atEnd(): boolean {
    return this.i >= this.s.length;
  }
  excerpt(): string {
    if (this.atEnd()) return "the end of the text";
    return JSON.stringify(this.s.slice(this.i, this.i + 20));
  }
  ws(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++;
  }
  eat(c: string): boolean {
    if (this.s.startsWith(c, this.i)) {
      this.i += c.length;
      return true;
    }
    return false;
  }
  expect(c: string): void {
    if (!this.eat(c)) throw new PyLiteralError(`expected "${c}" at ${this.excerpt()}`);
  }
  identifier(): string | undefined {
    const m = /^[A-Za-z_\p{L}][\w\p{L}\p{N}]*/u.exec(this.s.slice(this.i, this.i + 256));
    if (!m) return undefined;
    this.i += m[0].length;
    return m[0];
  }
  value(): unknown {
    this.ws();
    const c = this.s[this.i];
    if (c === undefined) throw new PyLiteralError("unexpected end of the text, expected a value");
    if (c === "'" || c === '"') return this.strings();
    if (/[rRbBuUfF]/.test(c) && /^[rRbBuUfF]{1,2}['"]/.test(this.s.slice(this.i, this.i + 3))) {
      return this.strings();
    }
    if (c === "-" || c === "+") {
      // Signs in a row (`--1`) are read in a loop, not by recursion.
      let negative = false;
      while (this.s[this.i] === "-" || this.s[this.i] === "+") {
        if (this.s[this.i] === "-") negative = !negative;
        this.i++;
        this.ws();
      }
      const v = this.value();
      if (isKeptNumber(v)) {
        if (!negative) return v;
        const t = v.rawJSON;
        return keptNumber(t.startsWith("-") ? t.slice(1) : "-" + t);
      }
      if (typeof v !== "number") throw new PyLiteralError(`sign before a non-number`);
      return negative ? -v : v;
    }
    if (/[0-9.]/.test(c)) return this.number();
    if (c === "[" || c === "(" || c === "{") {
      this.enter();
      const v = this.nested(c);
      this.depth--;
      return v;
    }
    const id = this.identifier();
    if (id === "True") return true;
    if (id === "False") return false;
    if (id === "None") return null;
    if (id === "inf" || id === "nan") return id === "inf" ? Infinity : NaN;
    throw new PyLiteralError(`not a Python literal at ${this.excerpt()}`);
  }
  /** A list, a tuple (or a parenthesised value) or a dict, starting at `c`. */
  nested(c: string): unknown {
    if (c === "[") return this.sequence("[", "]");
    if (c === "{") return this.dict();
    // `(- 1)` is how astunparse writes a negative constant; `(1, 2)` is a tuple.
    this.i++;
    this.ws();
    if (this.eat(")")) return [];
    const first = this.value();
    this.ws();
    if (this.eat(")")) return first;
    this.expect(",");
    this.i--;
    const rest = this.sequenceTail(")");
    return [first, ...rest];
  }
  /** A number: kept as its Python spelling where a double would print otherwise (pynumber.ts). */
  number(): number | KeptNumber {
    const m =
      /^(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?\.?)/
        .exec(this.s.slice(this.i, this.i + 400));
    if (!m || m[0] === "") throw new PyLiteralError(`bad number at ${this.excerpt()}`);
    this.i += m[0].length;
    const t = m[0].replace(/_/g, "");
    if (/^0[oObBxX]/.test(t)) {
      const n = BigInt(t); // Python's int keeps every digit
      return Number.isSafeInteger(Number(n)) ? Number(n) : keptNumber(n.toString());
    }
    const v = Number(t);
    if (Number.isNaN(v)) throw new PyLiteralError(`bad number ${JSON.stringify(m[0])}`);
    if (/^\d+$/.test(t)) {
      return Number.isSafeInteger(v) ? v : keptNumber(BigInt(t).toString());
    }
    // a float literal (`1.`, `1.0`, `1e16`) with an integral value prints as Python's float repr
    return Number.isInteger(v) ? keptNumber(pythonFloatRepr(v)) : v;
  }
  sequence(open: string, close: string): unknown[] {
    this.expect(open);
    this.ws();
    if (this.eat(close)) return [];
    const first = this.value();
    return [first, ...this.sequenceTail(close)];
  }
  /** After the first element: `, v, v ]` (a trailing comma allowed, as in Python). */
  sequenceTail(close: string): unknown[] {
    const out: unknown[] = [];
    for (;;) {
      this.ws();
      if (this.eat(close)) return out;
      this.expect(",");
      this.ws();
      if (this.eat(close)) return out;
      out.push(this.value());
    }
  }
  dict(): Record<string, unknown> {
    this.expect("{");
    const out: Record<string, unknown> = {};
    this.ws();
    while (!this.eat("}")) {
      const k = this.value();
      const kept = isKeptNumber(k);
      if (
        !kept && typeof k !== "string" && typeof k !== "number" && typeof k !== "boolean" &&
        k !== null
      ) {
        throw new PyLiteralError("dict keys must be strings or numbers to become JSON");
      }
      this.ws();
      this.expect(":");
      // json.dumps writes a number key as its repr, which is what a kept number holds
      out[kept ? k.rawJSON : String(k)] = this.value();
      this.ws();
      if (!this.eat(",")) {
        this.ws();
        this.expect("}");
        break;
      }
      this.ws();
    }
    return out;
  }
  /** One or more adjacent string literals, concatenated as Python does. */
  strings(): string {
    let out = this.string();
    for (;;) {
      const save = this.i;
      this.ws();
      const c = this.s[this.i];
      if (c === "'" || c === '"') out += this.string();
      else {
        this.i = save;
        return out;
      }
    }
  }
  string(): string {
    let raw = false;
    while (/[rRbBuUfF]/.test(this.s[this.i])) {
      if (this.s[this.i] === "r" || this.s[this.i] === "R") raw = true;
      this.i++;
    }
    const q = this.s[this.i];
    const triple = this.s.startsWith(q.repeat(3), this.i);
    const delim = triple ? q.repeat(3) : q;
    this.i += delim.length;
    let out = "";
    for (;;) {
      if (this.atEnd()) throw new PyLiteralError("unterminated string");
      if (this.s.startsWith(delim, this.i)) {
        this.i += delim.length;
        return out;
      }
      const c = this.s[this.i++];
      if (c === "\n" && !triple) throw new PyLiteralError("newline inside a one-line string");
      if (c !== "\\" || raw) {
        out += c;
        continue;
      }
      const e = this.s[this.i++];
      switch (e) {
        case "n":
          out += "\n";
          break;
        case "t":
          out += "\t";
          break;
        case "r":
          out += "\r";
          break;
        case "\\":
        case "'":
        case '"':
          out += e;
          break;
        case "\n":
          break;
        case "a":
          out += "\x07";
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "v":
          out += "\v";
          break;
        case "0":
        case "1":
        case "2":
        case "3":
        case "4":
        case "5":
        case "6":
        case "7": {
          const m = /^[0-7]{1,3}/.exec(this.s.slice(this.i - 1, this.i + 2))!;
          out += String.fromCodePoint(parseInt(m[0], 8));
          this.i += m[0].length - 1;
          break;
        }
        case "x":
        case "u":
        case "U": {
          const n = e === "x" ? 2 : e === "u" ? 4 : 8;
          const hex = this.s.slice(this.i, this.i + n);
          if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) {
            throw new PyLiteralError(`bad \\${e} escape`);
          }
          out += String.fromCodePoint(parseInt(hex, 16));
          this.i += n;
          break;
        }
        default:
          // Python keeps unknown escapes verbatim.
          out += "\\" + e;
      }
    }
  }
}
