/**
 * `deno task stage convert --in RAW --out conv.jsonl [--format auto|...]
 *  [--split dev=0.05 --seed 42] [--skip-invalid] [--check]`
 *
 * Raw data (ChatGLM3, ZhipuAI/OpenAI messages, AdvertiseGen, Alpaca, ShareGPT,
 * ToolAlpaca; `.json` arrays or `.jsonl`; "-" for stdin/stdout) → canonical
 * conversation records, streamed and written atomically.
 */
import { UsageError } from "../lib/errors.ts";
import { parseFlags } from "../lib/args.ts";
import { convertFile, parseSplit, validateFile } from "../lib/data/convert.ts";
import { FORMAT_NAMES, parseFormatName } from "../lib/data/formats/mod.ts";
import { formatProblem } from "../lib/data/convert.ts";
import { Reporter } from "../lib/data/report.ts";

export { convertFile, convertRecords } from "../lib/data/convert.ts";

const USAGE = `usage: deno task stage convert --in RAW|- --out FILE|DIR|- [--format auto|${
  FORMAT_NAMES.join("|")
}]
       [--split dev=0.05[,test=0.05] [--seed 42]] [--skip-invalid] [--check]`;

export async function main(args: string[]): Promise<number> {
  const { values } = parseFlags(args, {
    in: { type: "string" },
    out: { type: "string" },
    format: { type: "string", default: "auto" },
    split: { type: "string" },
    seed: { type: "string", default: "42" },
    "skip-invalid": { type: "boolean", default: false },
    check: { type: "boolean", default: false },
    help: { type: "boolean", short: "h" },
  }, USAGE);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const input = values.in as string | undefined;
  if (!input) throw new UsageError(`--in is required\n${USAGE}`);
  const format = parseFormatName(values.format as string, "--format");
  if (values.check) {
    const reporter = new Reporter("text");
    const name = input === "-" ? "<stdin>" : input;
    const report = await validateFile(input, { format, onBad: (r) => reporter.bad(name, r) });
    reporter.fileDone(report);
    return report.problems > 0 ? 1 : 0;
  }
  const output = values.out as string | undefined;
  if (!output) throw new UsageError(`--out is required (or --check to only validate)\n${USAGE}`);
  const seed = Number(values.seed);
  const split = values.split !== undefined ? parseSplit(values.split as string, seed) : undefined;
  const name = input === "-" ? "<stdin>" : input;
  const report = await convertFile(input, output, {
    format,
    split,
    skipInvalid: values["skip-invalid"] as boolean,
    onBad: (r) => {
      for (const p of r.problems) console.error(formatProblem(name, r.line, p));
    },
  });
  const parts = Object.entries(report.written).map(([p, n]) => `${n} → ${p}`).join(", ");
  const skipped = report.badRecords ? `, ${report.badRecords} bad records left out` : "";
  console.error(`convert: ${report.records} records from ${name}${skipped}: ${parts}`);
  return 0;
}
