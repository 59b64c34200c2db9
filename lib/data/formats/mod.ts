/** The input formats convert understands, and how a file's format is recognised. */
import { UserError } from "../../errors.ts";
import { isObject } from "../schema.ts";
import { advertisegen } from "./advertisegen.ts";
import { alpaca } from "./alpaca.ts";
import { chatglm3 } from "./chatglm3.ts";
import { messages } from "./messages.ts";
import { sharegpt } from "./sharegpt.ts";
import { toolalpaca } from "./toolalpaca.ts";
import { FORMAT_NAMES, type FormatName, type InputFormat } from "./types.ts";

export { FORMAT_NAMES };
export type { Converted, FormatName, InputFormat } from "./types.ts";

export const FORMATS: Record<FormatName, InputFormat> = {
  chatglm3,
  messages,
  advertisegen,
  alpaca,
  sharegpt,
  toolalpaca,
};

/**
 * The format a raw record's keys say it is in, or undefined. The order matters
 * where shapes overlap: `conversations` of `{from, value}` turns is ShareGPT,
 * of `{role, ...}` messages ChatGLM3.
 */
export function detectFormat(value: unknown): FormatName | undefined {
  if (!isObject(value)) return undefined;
  for (
    const name of [
      "messages",
      "toolalpaca",
      "sharegpt",
      "chatglm3",
      "alpaca",
      "advertisegen",
    ] as const
  ) {
    if (FORMATS[name].detect(value)) return name;
  }
  return undefined;
}

export function parseFormatName(s: string, flag: string): FormatName | "auto" {
  if (s === "auto" || (FORMAT_NAMES as readonly string[]).includes(s)) {
    return s as FormatName | "auto";
  }
  throw new UserError(`${flag}: unknown format "${s}"; expected auto, ${FORMAT_NAMES.join(", ")}`);
}
