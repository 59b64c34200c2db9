/**
 * Command-line flags, the same way for every command (the stages, validate,
 * chat, pipeline): node:util's parseArgs in strict mode. A command line that
 * does not parse (an unknown flag, a flag without its value) is a UsageError
 * (exit 2) ending with the command's usage; a flag whose value is wrong is a
 * UserError (exit 1) naming the flag.
 *
 * A command is described once, as a `CommandSpec`: its flags with a one-line
 * description and default each. The parser and `--help` both read that one
 * description, so the help cannot list a flag the parser does not accept or
 * miss one it does (tests/help_test.ts checks every command).
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError, UserError } from "./errors.ts";

export type FlagValues = Record<string, string | boolean | string[] | undefined>;

/** One flag of a command: how it parses, and what `--help` says about it. */
export interface FlagSpec {
  type: "string" | "boolean";
  /** the flag may be repeated; its values come as a list */
  multiple?: boolean;
  /** a one-letter alias (`-h`) */
  short?: string;
  /** the value's name in the help (`FILE`, `N`); default `VALUE` */
  arg?: string;
  /** one line: what the flag does */
  help: string;
  /** the value when the flag is not given (parsed as if given, and shown in the help) */
  default?: string | boolean;
  /** the default in words, when it is not a literal value (`the whole batch`) */
  defaultText?: string;
  /** the command fails without it (shown in the help; the command still checks it) */
  required?: boolean;
}

/** A command: its name, what it does, its synopsis, its positionals and its flags. */
export interface CommandSpec {
  /** as typed: `deno task stage convert` */
  name: string;
  /** one line: what the command does */
  summary: string;
  /** synopsis lines, without the leading `usage: `; a line starting with a space continues the one before */
  usage: string[];
  /** positional arguments: [name, description] */
  positionals?: [string, string][];
  flags: Record<string, FlagSpec>;
  /** paragraphs after the flags (forms, interactive commands) */
  notes?: string;
}

/** `-h`/`--help`, which every command accepts. */
export const HELP_FLAG: FlagSpec = {
  type: "boolean",
  short: "h",
  help: "print this help and exit",
};

/** The usage lines of a command: what a usage error ends with. */
export function usageOf(spec: CommandSpec): string {
  return `${synopsis(spec)}\n(${spec.name} --help describes every flag)`;
}

/** `usage: …` lines: each form after the first as `or: …`, continuations indented. */
function synopsis(spec: CommandSpec): string {
  return spec.usage.map((u, i) =>
    i === 0 ? `usage: ${u}` : u.startsWith(" ") ? `       ${u.trimStart()}` : `   or: ${u}`
  ).join("\n");
}

/** Wrap `text` to `width` columns, continuation lines indented by `indent`. */
function wrap(text: string, width: number, indent: number): string {
  const words = text.split(" ");
  const lines: string[] = [];
  let line = "";
  for (const w of words) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join("\n" + " ".repeat(indent));
}

/** The full help: summary, usage, positionals, every flag with its description and default. */
export function helpText(spec: CommandSpec): string {
  const out = [`${spec.name}: ${spec.summary}`, ""];
  out.push(synopsis(spec));
  const col = 26;
  const row = (left: string, text: string) =>
    left.length + 2 <= col
      ? `  ${left.padEnd(col - 2)}${wrap(text, 100 - col, col)}`
      : `  ${left}\n${" ".repeat(col)}${wrap(text, 100 - col, col)}`;
  if (spec.positionals?.length) {
    out.push("", "arguments:");
    for (const [name, text] of spec.positionals) out.push(row(name, text));
  }
  out.push("", "flags:");
  for (const [name, f] of Object.entries({ ...spec.flags, help: HELP_FLAG })) {
    const left = `${f.short ? `-${f.short}, ` : ""}--${name}${
      f.type === "string" ? ` ${f.arg ?? "VALUE"}` : ""
    }`;
    const extra = [
      f.required ? "required" : "",
      f.multiple ? "repeatable" : "",
      f.defaultText !== undefined
        ? `default: ${f.defaultText}`
        : f.default !== undefined && f.type === "string"
        ? `default: ${f.default}`
        : "",
    ].filter(Boolean);
    out.push(row(left, f.help + (extra.length ? ` (${extra.join("; ")})` : "")));
  }
  if (spec.notes) out.push("", spec.notes);
  return out.join("\n");
}

/**
 * Parse `args` by `spec`. With `-h`/`--help` anywhere, prints the help and
 * returns `help: true` (the command then exits 0), whatever else is missing.
 */
export function parseCommand(
  args: string[],
  spec: CommandSpec,
): { values: FlagValues; positionals: string[]; help: boolean } {
  // --help wins over every other mistake on the line (`stage train --help --bogus`).
  if (args.includes("--help") || args.includes("-h")) {
    console.log(helpText(spec));
    return { values: {}, positionals: [], help: true };
  }
  return { ...parseSpecFlags(args, spec), help: false };
}

/**
 * Parse `args` by `spec`'s flags alone (no help): a line that does not parse
 * is a UsageError (`unknown flag --x`, …) followed by the usage. The pipeline
 * runner checks its steps' command lines with it before running any.
 */
export function parseSpecFlags(
  args: string[],
  spec: CommandSpec,
): { values: FlagValues; positionals: string[] } {
  const options: NonNullable<ParseArgsConfig["options"]> = {};
  for (const [name, f] of Object.entries({ ...spec.flags, help: HELP_FLAG })) {
    options[name] = {
      type: f.type,
      ...(f.multiple ? { multiple: true } : {}),
      ...(f.short ? { short: f.short } : {}),
      ...(f.default !== undefined ? { default: f.default } : {}),
    } as NonNullable<ParseArgsConfig["options"]>[string];
  }
  return parseFlags(args, options, usageOf(spec), (spec.positionals?.length ?? 0) > 0);
}

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

/** A UsageError for a required flag that is missing. */
export function missingFlag(flag: string, spec: CommandSpec, extra = ""): UsageError {
  return new UsageError(`--${flag} is required${extra}\n${usageOf(spec)}`);
}

/**
 * A numeric flag's value, or undefined when the flag was not given: an integer
 * when `integer`, and at least `min`; anything else is a UserError naming the
 * flag.
 */
export function numberFlag(
  v: string | boolean | string[] | undefined,
  flag: string,
  o: { integer: boolean; min: number; max?: number },
): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (
    !Number.isFinite(n) || (o.integer && !Number.isInteger(n)) || n < o.min ||
    (o.max !== undefined && n > o.max)
  ) {
    const want = o.max !== undefined
      ? `${o.integer ? "an integer" : "a number"} from ${o.min} to ${o.max}`
      : o.integer && o.min === 1
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
