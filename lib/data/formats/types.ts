/** What every input format module provides: recognising a raw record and converting it. */
import { type Problem, typeName } from "../schema.ts";
import { parseKeepingNumbers } from "../pynumber.ts";

export const FORMAT_NAMES = [
  "chatglm3",
  "messages",
  "advertisegen",
  "alpaca",
  "sharegpt",
  "toolalpaca",
] as const;
export type FormatName = typeof FORMAT_NAMES[number];

/** One canonical record made from (part of) a raw record, or the problems that stopped it. */
export interface Converted {
  /** Where inside the raw record this one came from ("Instances[2]"); "" when it is the whole record. */
  at: string;
  /** The canonical record, still to be checked against the schema; absent when conversion failed outright. */
  record?: { tools?: unknown; conversations: unknown };
  /** Problems found while converting, located by the raw record's own field paths. */
  problems: Problem[];
  /** For each message of `record.conversations`, the raw field it came from (`messages[3]`). */
  sources?: string[];
  /** The raw field that plays the part of `conversations` ("messages"); "" when there is none. */
  container?: string;
}

export interface InputFormat {
  name: FormatName;
  /** Whether a raw record has this format's shape (by its keys; contents are not checked). */
  detect(value: Record<string, unknown>): boolean;
  convert(value: unknown): Converted[];
}

export function fieldPath(base: string, key: string | number): string {
  if (typeof key === "number") return `${base}[${key}]`;
  const k = /^[A-Za-z_][\w]*$/.test(key) ? key : JSON.stringify(key);
  return base ? `${base}.${k}` : k;
}

/**
 * A tool result's text as the observation: JSON objects and arrays are parsed
 * (so they render as JSON again), anything else stays the string it was.
 */
export function observationFromText(text: string): unknown {
  const t = text.trim();
  if (t.startsWith("{") || t.startsWith("[")) {
    try {
      return parseKeepingNumbers(t);
    } catch { /* not JSON after all: keep the text */ }
  }
  return text;
}

/** What converting a raw record that is not a JSON object gives, in every format. */
export function notAnObject(value: unknown): Converted[] {
  return [{
    at: "",
    problems: [{ field: "", message: `a record must be a JSON object, found ${typeName(value)}` }],
  }];
}
