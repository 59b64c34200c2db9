/**
 * `deno task stage report --train TRAIN_DIR [--before EVAL_DIR] [--after EVAL_DIR]
 *    [--config CFG] [--train-data masked_train.jsonl] [--run RUN_DIR] [--pipeline NAME]
 *    [--samples 5] --summary summary.json --report report.md`
 *
 * The end of a pipeline: summary.json (losses, metrics before/after, speed,
 * wall time) and report.md (the same with a loss curve, sample predictions and
 * the config). See lib/pipeline/report.ts.
 */
import { parseFlags } from "../lib/args.ts";
import { UsageError, UserError } from "../lib/errors.ts";
import { writeReport } from "../lib/pipeline/report.ts";

const USAGE =
  `usage: deno task stage report --train TRAIN_DIR [--before EVAL_DIR] [--after EVAL_DIR]
         [--config CFG] [--train-data masked_train.jsonl] [--run RUN_DIR] [--pipeline NAME]
         [--samples N] --summary summary.json --report report.md`;

export async function main(args: string[]): Promise<number> {
  const { values } = parseFlags(args, {
    train: { type: "string" },
    before: { type: "string" },
    after: { type: "string" },
    config: { type: "string" },
    "train-data": { type: "string" },
    run: { type: "string" },
    pipeline: { type: "string" },
    samples: { type: "string" },
    summary: { type: "string" },
    report: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, USAGE);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  for (const k of ["train", "summary", "report"]) {
    if (!values[k]) throw new UsageError(`report: --${k} is required\n${USAGE}`);
  }
  const samples = values.samples === undefined ? 5 : Number(values.samples);
  if (!Number.isInteger(samples) || samples < 0) {
    throw new UserError(`--samples: expected a non-negative integer, got "${values.samples}"`);
  }
  const s = await writeReport({
    trainDir: values.train as string,
    beforeDir: values.before as string | undefined,
    afterDir: values.after as string | undefined,
    configPath: values.config as string | undefined,
    trainData: values["train-data"] as string | undefined,
    runDir: values.run as string | undefined,
    pipeline: values.pipeline as string | undefined,
    samples,
    excludeSteps: ["report"],
    summaryPath: values.summary as string,
    reportPath: values.report as string,
  });
  const m = (x: typeof s.metrics_before, k: "rouge-l" | "bleu-4") =>
    x ? x[k].toFixed(k === "bleu-4" ? 4 : 2) : "–";
  console.error(
    `report: loss ${s.train_loss_first?.toFixed(4) ?? "–"} → ${
      s.train_loss_last?.toFixed(4) ?? "–"
    }, ROUGE-L ${m(s.metrics_before, "rouge-l")} → ${m(s.metrics_after, "rouge-l")}, BLEU-4 ${
      m(s.metrics_before, "bleu-4")
    } → ${m(s.metrics_after, "bleu-4")}; ${values.report}`,
  );
  return 0;
}
