/**
 * What every record must be, whatever its format, before any stage looks
 * inside it: nested at most MAX_DEPTH levels of arrays and objects, numbers
 * that a double can hold (or integers of at most MAX_INT_DIGITS digits, kept
 * as their literal: lib/data/pynumber.ts), and text that is valid Unicode. validate, convert
 * and tokenize all check records with `checkJsonValue`, so they agree on what
 * is bad, and nothing downstream (the Python-literal renderer, JSON output)
 * meets a value it would crash on or silently change: JSON.parse reads 1e999
 * as Infinity, which JSON.stringify writes as null, and a lone surrogate
 * (`"\ud800"`) becomes U+FFFD when text is encoded for the tokenizer.
 */
import type { Problem } from "./problem.ts";
import { isIntLiteral, isKeptNumber } from "./pynumber.ts";

/**
 * Levels of arrays and objects a record may nest, the record itself counting
 * as one (docs/data-formats.md). Real tool schemas nest about ten deep.
 */
export const MAX_DEPTH = 100;

/** The most digits CPython's int() (and so json.loads) takes by default (sys.int_info). */
export const MAX_INT_DIGITS = 4300;

/** At most this many problems are listed per record; a record with more is bad anyway. */
const MAX_PROBLEMS = 20;

function fieldOf(path: (string | number)[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += /^[A-Za-z_][\w]*$/.test(p) ? (out ? `.${p}` : p) : `[${JSON.stringify(p)}]`;
  }
  return out;
}

/** `s` with its first lone surrogate, for the message. */
function loneSurrogate(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const high = c >= 0xd800 && c <= 0xdbff;
    const low = c >= 0xdc00 && c <= 0xdfff;
    if (high && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
    }
    if (high || low) {
      return `holds a lone surrogate (\\u${
        c.toString(16)
      }) at character ${i}, which is not Unicode text (half of an escaped pair?)`;
    }
  }
  return "is not valid Unicode text";
}

/**
 * Every problem of a JSON value (a raw or canonical record): too deep, a
 * number out of range, a string or key with a lone surrogate. Fields are
 * named by their path; a too-deep part is named by its path down to MAX_DEPTH
 * levels' first three steps, which is where the user can find it.
 */
export function checkJsonValue(value: unknown): Problem[] {
  const problems: Problem[] = [];
  const path: (string | number)[] = [];
  const add = (field: string, message: string) => {
    if (problems.length < MAX_PROBLEMS) problems.push({ field, message });
    else if (problems.length === MAX_PROBLEMS) {
      // Said, not silently cut: the record has more, which are not looked for.
      problems.push({
        field: "",
        message: `more problems past these ${MAX_PROBLEMS} are not listed`,
      });
    }
  };
  // Recursion is bounded by MAX_DEPTH: a deeper value is reported, not entered.
  const walk = (v: unknown, level: number): void => {
    if (problems.length > MAX_PROBLEMS) return;
    if (typeof v === "string") {
      if (!v.isWellFormed()) add(fieldOf(path), loneSurrogate(v));
      return;
    }
    if (typeof v === "number") {
      if (!Number.isFinite(v)) {
        add(fieldOf(path), "number out of range (larger than a 64-bit float holds, about 1.8e308)");
      }
      return;
    }
    // A number kept as its literal (pynumber.ts) is a number, not a level of nesting.
    if (isKeptNumber(v)) {
      const digits = v.rawJSON.replace("-", "").length;
      if (isIntLiteral(v.rawJSON) && digits > MAX_INT_DIGITS) {
        add(
          fieldOf(path),
          `an integer of ${digits} digits (Python's json.loads reads at most ${MAX_INT_DIGITS})`,
        );
      }
      return;
    }
    if (typeof v !== "object" || v === null) return;
    if (level >= MAX_DEPTH) {
      add(
        fieldOf(path.slice(0, 3)),
        `nested more than ${MAX_DEPTH} levels of arrays and objects deep (the limit for a record)`,
      );
      return;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        path.push(i);
        walk(v[i], level + 1);
        path.pop();
      }
      return;
    }
    for (const [k, x] of Object.entries(v)) {
      path.push(k);
      if (!k.isWellFormed()) add(fieldOf(path), `the key ${loneSurrogate(k)}`);
      walk(x, level + 1);
      path.pop();
    }
  };
  walk(value, 0);
  return problems;
}
