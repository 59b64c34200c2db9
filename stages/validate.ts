/**
 * `deno task validate FILE... [--format text|github|json] [--input-format auto|...] [--allow-empty]`
 *
 * The CI check for data files: every bad record is reported with its file,
 * line and field, then a summary; exit 1 if any record is bad, or a file
 * holds no record at all. Writes nothing.
 */
import { UsageError, UserError } from "../lib/errors.ts";
import { type CommandSpec, parseCommand, usageOf } from "../lib/args.ts";
import { type FileReport, validateFile } from "../lib/data/convert.ts";
import { FORMAT_NAMES, parseFormatName } from "../lib/data/formats/mod.ts";
import { Reporter, type ReportFormat } from "../lib/data/report.ts";

export { validateFile } from "../lib/data/convert.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage validate",
  summary:
    "check raw data files and report every bad record as FILE:LINE: field: message; writes nothing",
  usage: [
    `deno task validate FILE|-... [--format text|github|json] [--input-format auto|${
      FORMAT_NAMES.join("|")
    }] [--allow-empty]`,
  ],
  positionals: [[
    "FILE...",
    "data files (.json arrays or .jsonl); - reads stdin. Exit 0 when all are good, 1 otherwise",
  ]],
  flags: {
    format: {
      type: "string",
      arg: "text|github|json",
      default: "text",
      help:
        "how problems are reported: FILE:LINE lines, GitHub Actions ::error annotations, or one JSON document",
    },
    "input-format": {
      type: "string",
      arg: "NAME",
      default: "auto",
      help: `the data format: ${
        FORMAT_NAMES.join(", ")
      }, or auto (recognised from the first record)`,
    },
    "allow-empty": {
      type: "boolean",
      help: "accept a file with no records (by default an empty file is an error)",
    },
  },
};

export async function main(args: string[]): Promise<number> {
  const { values, positionals, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  const out = values.format as string;
  if (!["text", "github", "json"].includes(out)) {
    throw new UserError(`--format: unknown report format "${out}"; expected text, github or json`);
  }
  if (positionals.length === 0) throw new UsageError(`no file to validate\n${usageOf(COMMAND)}`);
  if (positionals.filter((p) => p === "-").length > 1) {
    throw new UsageError("- (standard input) may be named once");
  }
  const format = parseFormatName(values["input-format"] as string, "--input-format");
  const reporter = new Reporter(out as ReportFormat);
  let bad = 0;
  for (const path of positionals) {
    const name = path === "-" ? "<stdin>" : path;
    let report: FileReport;
    try {
      report = await validateFile(path, {
        format,
        allowEmpty: !!values["allow-empty"],
        onBad: (r) => reporter.bad(name, r),
      });
    } catch (e) {
      // A file that cannot be read (missing, a directory) fails; the other files are still checked.
      if (!(e instanceof UserError)) throw e;
      const msg = e.message.startsWith(`${name}: `) ? e.message.slice(name.length + 2) : e.message;
      reporter.unreadable(name, msg);
      bad++;
      continue;
    }
    reporter.fileDone(report);
    bad += report.problems;
  }
  reporter.finish();
  return bad > 0 ? 1 : 0;
}

if (import.meta.main) {
  const { runCli } = await import("../lib/errors.ts");
  await runCli(() => main(Deno.args));
}
