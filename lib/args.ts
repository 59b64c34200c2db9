/**
 * Command-line flags, the same way for every command (the stages, validate,
 * chat, pipeline): node:util's parseArgs in strict mode. A command line that
 * does not parse (an unknown flag, a flag without its value) is a UsageError
 * (exit 2) ending with the command's usage; a flag whose value is wrong is a
 * UserError (exit 1) naming the flag.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError, UserError } from "./errors.ts";

export type FlagValues = Record<string, string | boolean | string[] | undefined>;

export function parseFlags(
  args: string[],
  options: NonNullable<ParseArgsConfig["options"]>,
  usage: string,
  allowPositionals = false,
): { values: FlagValues; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals, strict: true });
    return { values: values as FlagValues, positionals };
  } catch (e) {
    const err = e as Error & { code?: string };
    const unknown = err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && err.message.match(/'([^']+)'/);
    throw new UsageError(`${unknown ? `unknown flag ${unknown[1]}` : err.message}\n${usage}`);
  }
}

/**
 * A numeric flag's value, or undefined when the flag was not given: an integer
 * when `integer`, and at least `min`; anything else is a UserError naming the
 * flag.
 */
export function numberFlag(
  v: string | boolean | string[] | undefined,
  flag: string,
  o: { integer: boolean; min: number },
): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n) || (o.integer && !Number.isInteger(n)) || n < o.min) {
    const want = o.integer && o.min === 1
      ? "a positive integer"
      : `${o.integer ? "an integer" : "a number"} ≥ ${o.min}`;
    throw new UserError(`${flag}: expected ${want}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** numberFlag for the common case: a positive integer. */
export function positiveIntFlag(
  v: string | boolean | string[] | undefined,
  flag: string,
): number | undefined {
  return numberFlag(v, flag, { integer: true, min: 1 });
}
