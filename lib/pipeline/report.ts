/**
 * The end-of-pipeline report: what a fine-tuning run did, from the files its
 * steps left behind (the trainer's log history, the evaluate dirs before and
 * after training, the step manifests), as `summary.json` for machines and
 * `report.md` (with an inline SVG loss curve) for people.
 */
import { count } from "../plural.ts";
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../atomic.ts";
import { checkNotInput } from "../outdir.ts";
import { finetuneMode, loadConfig } from "../config/mod.ts";
import { UserError } from "../errors.ts";
import { readJsonl } from "../jsonl.ts";
import { isObject } from "../data/schema.ts";
import { lineChart } from "./svg.ts";

/** One entry of the trainer's `log_history` (HF trainer_state.json). */
export interface LogEntry {
  step: number;
  epoch?: number;
  loss?: number;
  eval_loss?: number;
  learning_rate?: number;
  grad_norm?: number;
  train_runtime?: number;
  train_loss?: number;
  [key: string]: unknown;
}

export const METRIC_KEYS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"] as const;
/** A metric is null when metrics.json has none (an evaluation of 0 records, or a teacher-forced one). */
export type Metrics = Record<typeof METRIC_KEYS[number], number | null> & { examples: number };

/** One prediction of an evaluate dir's predictions.jsonl. */
export interface Prediction {
  index: number;
  prompt?: string;
  prediction: string;
  label: string;
}

export interface EvalData {
  dir: string;
  metrics: Metrics;
  predictions: Prediction[];
  /** Why metrics are missing, for the report (one line), or undefined when all are there. */
  missing?: string;
}

export interface ReportData {
  pipeline?: string;
  runDir?: string;
  configPath?: string;
  /** the training config's text, shown in the report */
  configText?: string;
  mode?: string;
  trainDir: string;
  logHistory: LogEntry[];
  /** records per optimizer step (batch size × accumulation), for tokens/s */
  recordsPerStep?: number;
  /** mean input tokens of a training record, for tokens/s */
  meanRecordTokens?: number;
  before?: EvalData;
  after?: EvalData;
  /** seconds each step of the run took, from the step manifests */
  stepSeconds: Record<string, number | null>;
}

export interface Summary {
  pipeline: string | null;
  run_dir: string | null;
  config: string | null;
  mode: string | null;
  train_steps: number;
  train_loss_first: number | null;
  train_loss_last: number | null;
  /** train_loss_last / train_loss_first */
  train_loss_ratio: number | null;
  eval_loss_first: number | null;
  eval_loss_last: number | null;
  metrics_before: Metrics | null;
  metrics_after: Metrics | null;
  train_runtime_seconds: number | null;
  /** training input tokens per second of train_runtime (estimated from the mean record length) */
  tokens_per_second: number | null;
  /** sum of the seconds of the run's steps that made the current outputs */
  wall_seconds: number | null;
  step_seconds: Record<string, number | null>;
}

const num = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

export function buildSummary(d: ReportData): Summary {
  const losses = d.logHistory.filter((e) => num(e.loss));
  const evals = d.logHistory.filter((e) => num(e.eval_loss));
  const final = [...d.logHistory].reverse().find((e) => num(e.train_runtime));
  const steps = Math.max(0, ...d.logHistory.map((e) => (num(e.step) ? e.step : 0)));
  const first = losses.length ? losses[0].loss! : null;
  const last = losses.length ? losses[losses.length - 1].loss! : null;
  const runtime = final ? final.train_runtime! : null;
  const tokensPerSecond = runtime && runtime > 0 && num(d.recordsPerStep) && num(d.meanRecordTokens)
    ? (steps * d.recordsPerStep * d.meanRecordTokens) / runtime
    : null;
  const secs = Object.values(d.stepSeconds);
  return {
    pipeline: d.pipeline ?? null,
    run_dir: d.runDir ?? null,
    config: d.configPath ?? null,
    mode: d.mode ?? null,
    train_steps: steps,
    train_loss_first: first,
    train_loss_last: last,
    train_loss_ratio: first !== null && last !== null && first !== 0 ? last / first : null,
    eval_loss_first: evals.length ? evals[0].eval_loss! : null,
    eval_loss_last: evals.length ? evals[evals.length - 1].eval_loss! : null,
    metrics_before: d.before?.metrics ?? null,
    metrics_after: d.after?.metrics ?? null,
    train_runtime_seconds: runtime,
    tokens_per_second: tokensPerSecond,
    wall_seconds: secs.length && secs.every(num)
      ? (secs as number[]).reduce((a, b) => a + b, 0)
      : null,
    step_seconds: d.stepSeconds,
  };
}

/** The loss curve: training loss (every logged step) and eval loss vs step. */
export function lossChart(log: LogEntry[]): string {
  return lineChart([
    {
      name: "training loss",
      points: log.filter((e) => num(e.loss)).map((e) => [e.step, e.loss!]),
    },
    {
      name: "eval loss",
      points: log.filter((e) => num(e.eval_loss)).map((e) => [e.step, e.eval_loss!]),
      markers: true,
    },
  ], { title: "Loss", xLabel: "step", yLabel: "loss" });
}

function f(v: number | null | undefined, digits = 2): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits);
}

function duration(s: number | null): string {
  if (s === null) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

/** Text in an inline code span: backticks would end it, newlines would break it. */
function code(s: string): string {
  const t = s.replaceAll("\n", "\\n");
  const fence = t.includes("`") ? "`` " : "`";
  return `${fence}${t}${fence.split("").reverse().join("")}`;
}

function quote(s: string): string {
  return s.length === 0 ? "(empty)" : s.replaceAll("\n", " ⏎ ").replace(/[\\`*_<>|[\]]/g, "\\$&");
}

export function renderReport(s: Summary, d: ReportData, samples = 5): string {
  const out: string[] = [];
  out.push(`# ${s.pipeline ? `Pipeline ${s.pipeline}` : "Training run"}: report`, "");
  const notes = missingNotes(d);
  const facts = [
    s.run_dir && `run directory ${code(s.run_dir)}`,
    s.mode && `mode **${s.mode}**`,
    s.config && `config ${code(s.config)}`,
  ].filter(Boolean);
  if (facts.length) out.push(facts.join(", ") + ".", "");

  out.push("## Results", "");
  out.push("| | before training | after training |", "|---|---:|---:|");
  for (const k of METRIC_KEYS) {
    const digits = k === "bleu-4" ? 4 : 2;
    out.push(
      `| ${k.toUpperCase()}${k === "bleu-4" ? " (0–1)" : ""} | ${
        f(s.metrics_before?.[k], digits)
      } | ${f(s.metrics_after?.[k], digits)} |`,
    );
  }
  out.push(
    `| examples | ${s.metrics_before?.examples ?? "–"} | ${s.metrics_after?.examples ?? "–"} |`,
    "",
  );
  for (const n of notes) out.push(`- **note:** ${quote(n)}`);
  if (notes.length) out.push("");
  out.push(
    `- training loss: ${f(s.train_loss_first, 4)} (first log) → ${
      f(s.train_loss_last, 4)
    } (last), ${s.train_loss_ratio === null ? "–" : `×${s.train_loss_ratio.toFixed(3)}`} over ${
      count(s.train_steps, "step")
    }`,
    `- eval loss (teacher-forced, dev records): ${f(s.eval_loss_first, 4)} → ${
      f(s.eval_loss_last, 4)
    }`,
    `- training: ${duration(s.train_runtime_seconds)}, ${
      s.tokens_per_second === null ? "–" : Math.round(s.tokens_per_second)
    } tokens/s`,
    `- wall time of the steps: ${duration(s.wall_seconds)}`,
    "",
  );

  out.push("## Loss curve", "", lossChart(d.logHistory), "");

  const before = new Map((d.before?.predictions ?? []).map((p) => [p.index, p]));
  const after = new Map((d.after?.predictions ?? []).map((p) => [p.index, p]));
  const indices = [...new Set([...after.keys(), ...before.keys()])].sort((a, b) => a - b)
    .slice(0, samples);
  if (indices.length) {
    out.push("## Sample predictions", "");
    for (const i of indices) {
      const b = before.get(i);
      const a = after.get(i);
      const p = a ?? b!;
      out.push(`**Record ${i}**${p.prompt !== undefined ? ` — prompt ${code(p.prompt)}` : ""}`, "");
      out.push(`- label: ${quote(p.label)}`);
      out.push(`- before: ${b ? quote(b.prediction) : "–"}`);
      out.push(`- after: ${a ? quote(a.prediction) : "–"}`, "");
    }
  }

  const timed = Object.entries(s.step_seconds);
  if (timed.length) {
    out.push("## Steps", "", "| step | seconds |", "|---|---:|");
    for (const [name, sec] of timed) out.push(`| ${name} | ${f(sec, 1)} |`);
    out.push("");
  }
  if (d.configText !== undefined) {
    out.push("## Config", "", "```yaml", d.configText.trimEnd(), "```", "");
  }
  return out.join("\n");
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not valid JSON: ${(e as Error).message}`);
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The trainer's log history: trainer_state.json (final) or, failing that, metrics.jsonl. */
export async function readLogHistory(trainDir: string): Promise<LogEntry[]> {
  const state = join(trainDir, "trainer_state.json");
  if (await exists(state)) {
    const v = await readJson(state) as { log_history?: unknown };
    if (!Array.isArray(v.log_history)) {
      throw new UserError(`${state}: log_history: expected an array`);
    }
    v.log_history.forEach((e, i) => {
      if (!isObject(e)) throw new UserError(`${state}: log_history[${i}]: expected an object`);
    });
    return v.log_history as LogEntry[];
  }
  const metrics = join(trainDir, "metrics.jsonl");
  if (!(await exists(metrics))) {
    throw new UserError(
      `${trainDir}: no trainer_state.json or metrics.jsonl (not a train output dir)`,
    );
  }
  const out: LogEntry[] = [];
  for await (const r of readJsonl(metrics)) {
    if (r.error !== undefined) throw new UserError(`${metrics}:${r.line}: ${r.error}`);
    if (!isObject(r.value)) throw new UserError(`${metrics}:${r.line}: expected a JSON object`);
    out.push(r.value as LogEntry);
  }
  return out;
}

/** The report's lines about missing metrics, before then after. */
export function missingNotes(d: Pick<ReportData, "before" | "after">): string[] {
  return [d.before?.missing, d.after?.missing].filter((x): x is string => !!x);
}

/** metrics.json and the first `limit` predictions of an evaluate dir. */
export async function readEvalDir(dir: string, limit: number): Promise<EvalData> {
  const path = join(dir, "metrics.json");
  const m = await readJson(path) as Record<string, unknown>;
  if (typeof m !== "object" || m === null || Array.isArray(m)) {
    throw new UserError(`${path}: expected a JSON object (evaluate's metrics)`);
  }
  const metrics = { examples: num(m.examples) ? m.examples : 0 } as Metrics;
  const absent: string[] = [];
  for (const k of METRIC_KEYS) {
    const v = m[k];
    if (v === undefined || v === null) {
      // evaluate writes no scores for 0 records, nor for teacher-forced (labels) records.
      metrics[k] = null;
      absent.push(k);
    } else if (!num(v)) {
      throw new UserError(`${path}: ${k}: expected a number, found ${JSON.stringify(v)}`);
    } else metrics[k] = v;
  }
  const why = metrics.examples === 0
    ? "no record was evaluated (examples: 0)"
    : num(m.eval_loss)
    ? "the records were scored by loss (teacher forcing), not generated"
    : "the evaluation wrote none";
  const missing = absent.length
    ? `${path} has no ${absent.join(", ")}: ${why}; shown as –`
    : undefined;
  const predictions: Prediction[] = [];
  const pf = join(dir, "predictions.jsonl");
  if (limit > 0 && await exists(pf)) {
    for await (const r of readJsonl(pf)) {
      if (r.error !== undefined) throw new UserError(`${pf}:${r.line}: ${r.error}`);
      if (!isObject(r.value)) throw new UserError(`${pf}:${r.line}: expected a JSON object`);
      const v = r.value;
      if (typeof v.prediction !== "string" || typeof v.label !== "string") continue;
      predictions.push({
        index: num(v.index) ? v.index : predictions.length,
        prompt: typeof v.prompt === "string" ? v.prompt : undefined,
        prediction: v.prediction,
        label: v.label,
      });
      if (predictions.length >= limit) break;
    }
  }
  return { dir, metrics, predictions, missing };
}

/**
 * Seconds per step from `<run dir>/.manifests/*.json` (written by the runner,
 * atomically), in finishing order. A run dir without manifests has none.
 */
export async function readStepSeconds(
  runDir: string,
  exclude: string[] = [],
): Promise<Record<string, number | null>> {
  try {
    if (!(await Deno.stat(runDir)).isDirectory) {
      throw new UserError(`--run ${runDir}: not a directory`);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`--run ${runDir}: no such directory`);
    }
    throw e;
  }
  const dir = join(runDir, ".manifests");
  const rows: { step: string; finished: string; seconds: number | null }[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile || !e.name.endsWith(".json")) continue;
      const path = join(dir, e.name);
      let m: unknown;
      try {
        m = JSON.parse(await Deno.readTextFile(path));
      } catch (err) {
        throw new UserError(`${path}: not valid JSON (${(err as Error).message})`);
      }
      if (!isObject(m)) throw new UserError(`${path}: expected a JSON object (a step manifest)`);
      const step = typeof m.step === "string" ? m.step : e.name.slice(0, -5);
      if (exclude.includes(step)) continue;
      rows.push({
        step,
        finished: String(m.finished ?? ""),
        seconds: num(m.seconds) ? m.seconds : null,
      });
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  rows.sort((a, b) => a.finished.localeCompare(b.finished) || a.step.localeCompare(b.step));
  return Object.fromEntries(rows.map((r) => [r.step, r.seconds]));
}

/** Mean input_ids length of a masked train file (for tokens/s). */
export async function meanRecordTokens(path: string): Promise<number> {
  let n = 0;
  let total = 0;
  for await (const r of readJsonl(path)) {
    if (r.error !== undefined) throw new UserError(`${path}:${r.line}: ${r.error}`);
    if (!isObject(r.value)) throw new UserError(`${path}:${r.line}: expected a JSON object`);
    const ids = r.value.input_ids;
    if (!Array.isArray(ids)) {
      throw new UserError(`${path}:${r.line}: input_ids: expected an array (a masked train file)`);
    }
    total += ids.length;
    n++;
  }
  if (n === 0) throw new UserError(`${path}: no records`);
  return total / n;
}

export interface ReportOptions {
  trainDir: string;
  beforeDir?: string;
  afterDir?: string;
  configPath?: string;
  trainData?: string;
  runDir?: string;
  pipeline?: string;
  samples?: number;
  /** step names left out of the wall time (the report step itself) */
  excludeSteps?: string[];
}

export async function collectReport(o: ReportOptions): Promise<ReportData> {
  const samples = o.samples ?? 5;
  const d: ReportData = {
    pipeline: o.pipeline,
    runDir: o.runDir,
    configPath: o.configPath,
    trainDir: o.trainDir,
    logHistory: await readLogHistory(o.trainDir),
    stepSeconds: o.runDir ? await readStepSeconds(o.runDir, o.excludeSteps ?? []) : {},
  };
  if (o.configPath) {
    const cfg = await loadConfig(o.configPath);
    d.configText = await Deno.readTextFile(o.configPath);
    d.mode = finetuneMode(cfg);
    d.recordsPerStep = cfg.training_args.per_device_train_batch_size *
      cfg.training_args.gradient_accumulation_steps;
  }
  if (o.trainData) d.meanRecordTokens = await meanRecordTokens(o.trainData);
  if (o.beforeDir) d.before = await readEvalDir(o.beforeDir, samples);
  if (o.afterDir) d.after = await readEvalDir(o.afterDir, samples);
  return d;
}

/** Collect, then write summary.json, report.md and report.html (atomically); returns the summary and notes. */
export async function writeReport(
  o: ReportOptions & { summaryPath: string; reportPath: string; htmlPath?: string },
): Promise<{ summary: Summary; notes: string[] }> {
  // The two files are the report's own; they must not replace what it reads.
  const inputs: [string, string | undefined][] = [
    ["--config", o.configPath],
    ["--train-data", o.trainData],
    // the files it reads from the dirs it is given
    ["--train dir's trainer_state.json", join(o.trainDir, "trainer_state.json")],
    ["--train dir's metrics.jsonl", join(o.trainDir, "metrics.jsonl")],
    ...[["--before", o.beforeDir], ["--after", o.afterDir]].flatMap(([flag, dir]) =>
      dir
        ? ["metrics.json", "predictions.jsonl"].map((f): [string, string] => [
          `${flag} dir's ${f}`,
          join(dir, f),
        ])
        : []
    ),
  ];
  await checkNotInput(o.summaryPath, "--summary", [
    ...inputs,
    ["--report", o.reportPath],
    ["--html", o.htmlPath],
  ]);
  await checkNotInput(o.reportPath, "--report", [...inputs, ["--html", o.htmlPath]]);
  if (o.htmlPath) await checkNotInput(o.htmlPath, "--html", inputs);
  const d = await collectReport(o);
  const s = buildSummary(d);
  await writeJsonAtomic(o.summaryPath, s);
  await writeFileAtomic(o.reportPath, renderReport(s, d, o.samples ?? 5));
  if (o.htmlPath) {
    // Imported here: the page needs uPlot from npm, which summary and markdown do not.
    const { renderReportHtml } = await import("./report_html.ts");
    await writeFileAtomic(o.htmlPath, await renderReportHtml(s, d, o.samples ?? 5));
  }
  return { summary: s, notes: missingNotes(d) };
}
