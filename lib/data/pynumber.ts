/**
 * Number literals in conversation data as Python sees them. ChatGLM3 renders
 * tool parameters with `repr` and observations and tool lists with
 * `json.dumps`, on what `json.loads` made of the file: an `int` keeps every
 * digit, a `float` written `1.0` prints as `1.0`. JavaScript's doubles lose
 * both. So where a literal's double would print otherwise — an integer past
 * 2^53, or a float literal with an integral value (`1.0`, `-0.0`, `1e16`) —
 * the literal's text is kept, as a `JSON.rawJSON` value: `JSON.stringify`
 * writes it back as it was read, and lib/tokenizer/pyformat.ts renders it as
 * Python does. Every other number stays a plain number.
 */

/** A number kept as its JSON literal. */
export interface KeptNumber {
  readonly rawJSON: string;
}

const RAW = JSON as unknown as {
  rawJSON(text: string): KeptNumber;
  isRawJSON(v: unknown): boolean;
};

/** Whether `v` is a number kept as its literal. */
export function isKeptNumber(v: unknown): v is KeptNumber {
  return RAW.isRawJSON(v);
}

/** Whether a kept literal is an integer (a Python `int`), not a float. */
export function isIntLiteral(text: string): boolean {
  return /^-?\d+$/.test(text);
}

/** `v` as read from the JSON literal `source`: kept as text where a double would print otherwise. */
export function keepNumber(v: number, source: string): number | KeptNumber {
  const keep = isIntLiteral(source) ? !Number.isSafeInteger(v) : Number.isInteger(v);
  return keep ? RAW.rawJSON(source) : v;
}

/** A kept literal of a number given as text that is valid JSON (`1.0`, `12345678901234567890`). */
export function keptNumber(text: string): KeptNumber {
  return RAW.rawJSON(text);
}

/** The numeric value of a plain or kept number, else undefined. */
export function numberValue(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  if (isKeptNumber(v)) return Number(v.rawJSON);
  return undefined;
}

/**
 * Text that may hold a literal to keep: `x.0…`, an exponent, or 16 digits (a point among them
 * allowed: a fraction can round away only past a double's 15–17 digits). It may also match inside
 * a string; what matters is that every literal to keep matches.
 */
const MAY_KEEP = /\d\.0|\d[eE]|(?:\d\.?){16}/;

/** JSON.parse, keeping the literals of the numbers a double would print otherwise (above). */
export function parseKeepingNumbers(text: string): unknown {
  // The reviver costs a call per value: only text that may need it pays for it.
  if (!MAY_KEEP.test(text)) return JSON.parse(text);
  return JSON.parse(
    text,
    (_key: string, v: unknown, ctx?: { source?: string }) =>
      typeof v === "number" && ctx?.source !== undefined ? keepNumber(v, ctx.source) : v,
  );
}
