/**
 * `deno task stage convert --in RAW --out conv.jsonl [--format auto|...]
 *  [--split dev=0.05 --seed 42] [--skip-invalid] [--check]`
 *
 * Raw data (ChatGLM3, ZhipuAI/OpenAI messages, AdvertiseGen, Alpaca, ShareGPT,
 * ToolAlpaca; `.json` arrays or `.jsonl`; "-" for stdin/stdout) → canonical
 * conversation records, streamed and written atomically.
 */
import { type CommandSpec, missingFlag, parseCommand } from "../lib/args.ts";
import { convertFile, parseSplit, validateFile } from "../lib/data/convert.ts";
import { FORMAT_NAMES, parseFormatName } from "../lib/data/formats/mod.ts";
import { formatProblem } from "../lib/data/convert.ts";
import { Reporter } from "../lib/data/report.ts";
import { count } from "../lib/plural.ts";

export { convertFile, convertRecords } from "../lib/data/convert.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage convert",
  summary:
    "raw data (ChatGLM3, messages, AdvertiseGen, Alpaca, ShareGPT, ToolAlpaca) → canonical conversation records (JSONL)",
  usage: [
    `deno task stage convert --in RAW|- --out FILE|DIR|- [--format auto|${FORMAT_NAMES.join("|")}]`,
    "  [--split dev=0.05[,test=0.05] [--seed 42]] [--skip-invalid] [--check]",
  ],
  flags: {
    in: {
      type: "string",
      arg: "RAW",
      required: true,
      help: "the raw data file, a .json array or .jsonl; - reads stdin",
    },
    out: {
      type: "string",
      arg: "FILE|DIR",
      help:
        "the canonical JSONL file (- for stdout); with --split a directory that gets one file per part (required unless --check)",
    },
    format: {
      type: "string",
      arg: "NAME",
      default: "auto",
      help: `the input format: ${
        FORMAT_NAMES.join(", ")
      }, or auto (recognised from the first record)`,
    },
    split: {
      type: "string",
      arg: "NAME=F,...",
      help:
        "split the records at random into parts (dev=0.05 puts 5% in dev.jsonl, the rest in train.jsonl)",
    },
    seed: {
      type: "string",
      arg: "N",
      default: "42",
      help: "the seed of --split: the same seed puts every record in the same part",
    },
    "skip-invalid": {
      type: "boolean",
      help:
        "leave bad records out (each still reported) instead of writing nothing when one is bad",
    },
    check: {
      type: "boolean",
      help: "only check the records, as validate does; write nothing",
    },
  },
};

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  const input = values.in as string | undefined;
  if (!input) throw missingFlag("in", COMMAND);
  const format = parseFormatName(values.format as string, "--format");
  if (values.check) {
    const reporter = new Reporter("text");
    const name = input === "-" ? "<stdin>" : input;
    const report = await validateFile(input, { format, onBad: (r) => reporter.bad(name, r) });
    reporter.fileDone(report);
    return report.problems > 0 ? 1 : 0;
  }
  const output = values.out as string | undefined;
  if (!output) throw missingFlag("out", COMMAND, " (or --check to only validate)");
  const seed = Number(values.seed);
  const split = values.split !== undefined ? parseSplit(values.split as string, seed) : undefined;
  const name = input === "-" ? "<stdin>" : input;
  const report = await convertFile(input, output, {
    format,
    split,
    skipInvalid: !!values["skip-invalid"],
    onBad: (r) => {
      for (const p of r.problems) console.error(formatProblem(name, r.line, p));
    },
  });
  const written = Object.values(report.written).reduce((a, n) => a + n, 0);
  const parts = Object.entries(report.written).map(([p, n]) => `${n} → ${p}`).join(", ");
  const skipped = report.badRecords ? ` (${count(report.badRecords, "bad record")} left out)` : "";
  console.error(
    `convert: read ${count(report.records, "record")} from ${name}${skipped}; wrote ${
      count(written, "record")
    }: ${parts}`,
  );
  return 0;
}
