/**
 * `deno task stage report --train TRAIN_DIR [--before EVAL_DIR] [--after EVAL_DIR]
 *    [--config CFG] [--train-data masked_train.jsonl] [--run RUN_DIR] [--pipeline NAME]
 *    [--samples 5] --summary summary.json --report report.md`
 *
 * The end of a pipeline: summary.json (losses, metrics before/after, speed,
 * wall time), report.md (the same with a loss curve, sample predictions and
 * the config) and, with --html, report.html (one self-contained page with
 * interactive charts). See lib/pipeline/report.ts and report_html.ts.
 */
import { type CommandSpec, missingFlag, parseCommand } from "../lib/args.ts";
import { UserError } from "../lib/errors.ts";
import { writeReport } from "../lib/pipeline/report.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage report",
  summary:
    "the end of a pipeline: summary.json, report.md and report.html (losses, metrics before and after, samples)",
  usage: [
    "deno task stage report --train TRAIN_DIR [--before EVAL_DIR] [--after EVAL_DIR]",
    "  [--config CFG] [--train-data masked_train.jsonl] [--run RUN_DIR] [--pipeline NAME]",
    "  [--samples N] --summary summary.json --report report.md [--html report.html]",
  ],
  flags: {
    train: {
      type: "string",
      arg: "DIR",
      required: true,
      help: "the train stage's output dir (trainer_state.json, else metrics.jsonl)",
    },
    before: {
      type: "string",
      arg: "DIR",
      help: "evaluate's output dir for the base model (metrics.json, predictions.jsonl)",
    },
    after: {
      type: "string",
      arg: "DIR",
      help: "evaluate's output dir for the fine-tuned model",
    },
    config: {
      type: "string",
      arg: "CFG",
      help: "the training config that ran (shown; gives the mode and the batch for tokens/s)",
    },
    "train-data": {
      type: "string",
      arg: "FILE",
      help: "the masked train file (its mean record length gives tokens/s)",
    },
    run: {
      type: "string",
      arg: "DIR",
      help: "the pipeline's run folder (its step manifests give the step times)",
    },
    pipeline: { type: "string", arg: "NAME", help: "the pipeline's name, for the title" },
    samples: {
      type: "string",
      arg: "N",
      default: "5",
      help: "sample predictions shown beside their labels",
    },
    summary: { type: "string", arg: "FILE", required: true, help: "where summary.json goes" },
    report: { type: "string", arg: "FILE", required: true, help: "where report.md goes" },
    html: {
      type: "string",
      arg: "FILE",
      help:
        "where report.html goes: the same report as one self-contained page with interactive charts (default: none)",
    },
  },
};

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  for (const k of ["train", "summary", "report"]) {
    if (!values[k]) throw missingFlag(k, COMMAND);
  }
  const samples = Number(values.samples);
  if (!Number.isInteger(samples) || samples < 0) {
    throw new UserError(`--samples: expected a non-negative integer, got "${values.samples}"`);
  }
  const { summary: s, notes } = await writeReport({
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
    htmlPath: values.html as string | undefined,
  });
  const m = (x: typeof s.metrics_before, k: "rouge-l" | "bleu-4") =>
    x && x[k] !== null ? x[k]!.toFixed(k === "bleu-4" ? 4 : 2) : "–";
  for (const n of notes) console.error(`note: ${n}`);
  console.error(
    `report: loss ${s.train_loss_first?.toFixed(4) ?? "–"} → ${
      s.train_loss_last?.toFixed(4) ?? "–"
    }, ROUGE-L ${m(s.metrics_before, "rouge-l")} → ${m(s.metrics_after, "rouge-l")}, BLEU-4 ${
      m(s.metrics_before, "bleu-4")
    } → ${m(s.metrics_after, "bleu-4")}; ${values.report}${values.html ? `, ${values.html}` : ""}`,
  );
  return 0;
}
