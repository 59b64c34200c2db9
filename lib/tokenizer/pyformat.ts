/**
 * Python's renderings that ChatGLM3's data format depends on, restated:
 * `json.dumps(v, ensure_ascii=False[, indent=4])` for tool lists and
 * observations, and `repr(v)` for the keyword arguments of a `tool_call(...)`.
 *
 * A plain number is a safe integer (a Python int) or a float whose shortest
 * digits are Python's; the literals a double would print otherwise (`1.0`,
 * integers past 2^53) arrive kept as text (lib/data/pynumber.ts) and print as
 * Python prints them.
 */
import { isIntLiteral, isKeptNumber } from "../data/pynumber.ts";

/** `repr(float)`: shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16. */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, expStr] = x.toExponential().split("e");
  const exp = Number(expStr);
  const neg = mant.startsWith("-");
  const digits = mant.replace("-", "").replace(".", "");
  const sign = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp) < 10 ? `0${Math.abs(exp)}` : `${Math.abs(exp)}`;
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${e}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits}${"0".repeat(exp + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

function pythonNumber(x: number): string {
  return Number.isSafeInteger(x) ? String(x) : pythonFloatRepr(x);
}

/** A kept literal as Python prints what json.loads makes of it: an int's digits, a float's repr. */
function keptNumber(text: string): string {
  return isIntLiteral(text) ? BigInt(text).toString() : pythonFloatRepr(Number(text));
}

/** A JSON string as Python's json.dumps writes it with ensure_ascii=False. */
function jsonString(s: string): string {
  // JSON.stringify escapes exactly ", \, \b \f \n \r \t and other controls as \u00xx, like Python.
  return JSON.stringify(s);
}

/**
 * `json.dumps(value, ensure_ascii=False)` (separators ", " and ": "), or with
 * `indent` the multi-line form (item separator "," at line ends, ": " between key and value).
 */
export function pythonJsonDumps(value: unknown, indent?: number): string {
  const nl = indent === undefined ? "" : "\n";
  const itemSep = indent === undefined ? ", " : ",";
  const walk = (v: unknown, depth: number): string => {
    if (v === null || v === undefined) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (isKeptNumber(v)) return keptNumber(v.rawJSON);
    if (typeof v === "number") {
      if (Number.isNaN(v)) return "NaN";
      if (!Number.isFinite(v)) return v > 0 ? "Infinity" : "-Infinity";
      return pythonNumber(v);
    }
    if (typeof v === "string") return jsonString(v);
    const pad = indent === undefined ? "" : " ".repeat(indent * (depth + 1));
    const close = indent === undefined ? "" : " ".repeat(indent * depth);
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      return `[${nl}${v.map((x) => pad + walk(x, depth + 1)).join(itemSep + nl)}${nl}${close}]`;
    }
    if (typeof v === "object") {
      const entries = Object.entries(v as Record<string, unknown>);
      if (entries.length === 0) return "{}";
      const items = entries.map(([k, x]) => `${pad}${jsonString(k)}: ${walk(x, depth + 1)}`);
      return `{${nl}${items.join(itemSep + nl)}${nl}${close}}`;
    }
    throw new TypeError(`cannot render ${typeof v} as JSON`);
  };
  return walk(value, 0);
}

/** Characters `str.isprintable()` rejects: Unicode categories C* and Z* except the ASCII space. */
const NON_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** `repr(str)`: single quotes unless the text has ' and no ", escapes as Python writes them. */
export function pythonStrRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === quote || ch === "\\") out += "\\" + ch;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (cp < 0x20 || cp === 0x7f) out += "\\x" + cp.toString(16).padStart(2, "0");
    else if (cp < 0x7f) out += ch;
    else if (ch !== " " && NON_PRINTABLE.test(ch)) {
      out += cp <= 0xff
        ? "\\x" + cp.toString(16).padStart(2, "0")
        : cp <= 0xffff
        ? "\\u" + cp.toString(16).padStart(4, "0")
        : "\\U" + cp.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}

/** `repr(value)` of a JSON value as Python sees it after json.loads. */
export function pythonRepr(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return pythonNumber(v);
  if (isKeptNumber(v)) return keptNumber(v.rawJSON);
  if (typeof v === "string") return pythonStrRepr(v);
  if (Array.isArray(v)) return `[${v.map(pythonRepr).join(", ")}]`;
  if (typeof v === "object") {
    const items = Object.entries(v as Record<string, unknown>).map(([k, x]) =>
      `${pythonStrRepr(k)}: ${pythonRepr(x)}`
    );
    return `{${items.join(", ")}}`;
  }
  throw new TypeError(`cannot render ${typeof v} as a Python literal`);
}

/** The code block of a tool call: ```` ```python\ntool_call(k='v', n=1)\n``` ````. */
export function renderToolCall(parameters: Record<string, unknown>): string {
  const args = Object.entries(parameters).map(([k, v]) => `${k}=${pythonRepr(v)}`).join(", ");
  return "```python\ntool_call(" + args + ")\n```";
}
