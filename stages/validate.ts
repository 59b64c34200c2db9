/**
 * `deno task validate FILE... [--format text|github|json] [--input-format auto|...]`
 *
 * The CI check for data files: every bad record is reported with its file,
 * line and field, then a summary; exit 1 if any record is bad. Writes nothing.
 */
import { UsageError, UserError } from "../lib/errors.ts";
import { parseFlags } from "../lib/args.ts";
import { validateFile } from "../lib/data/convert.ts";
import { FORMAT_NAMES, parseFormatName } from "../lib/data/formats/mod.ts";
import { Reporter, type ReportFormat } from "../lib/data/report.ts";

export { validateFile } from "../lib/data/convert.ts";

const USAGE =
  `usage: deno task validate FILE|-... [--format text|github|json] [--input-format auto|${
    FORMAT_NAMES.join("|")
  }]`;

export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(
    args,
    {
      format: { type: "string", default: "text" },
      "input-format": { type: "string", default: "auto" },
      help: { type: "boolean", short: "h" },
    },
    USAGE,
    true,
  );
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const out = values.format as string;
  if (!["text", "github", "json"].includes(out)) {
    throw new UserError(`--format: unknown report format "${out}"; expected text, github or json`);
  }
  if (positionals.length === 0) throw new UsageError(`no file to validate\n${USAGE}`);
  const format = parseFormatName(values["input-format"] as string, "--input-format");
  const reporter = new Reporter(out as ReportFormat);
  let bad = 0;
  for (const path of positionals) {
    const name = path === "-" ? "<stdin>" : path;
    const report = await validateFile(path, { format, onBad: (r) => reporter.bad(name, r) });
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
