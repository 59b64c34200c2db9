/**
 * The trainer's logs as TensorBoard event files, as HF Trainer's
 * TensorBoardCallback writes them: at each log, every number of the
 * log_history entry as a scalar tagged HF's way (`eval_loss` → `eval/loss`,
 * anything else `train/<key>`: train/loss, train/learning_rate,
 * train/grad_norm, train/epoch; at the end train/train_runtime …), at the
 * entry's step, with the wall time; plus train/tokens_per_second, which this
 * trainer measures, and the training arguments as the text `args`.
 *
 * Written when training_args.report_to is "all" (the default, HF 4.x's) or
 * includes "tensorboard", into training_args.logging_dir, by default
 * `OUT/runs/<Mon DD_HH-MM-SS>_<host>` as HF's default_logdir(). A resumed run
 * writes a new file there that starts with a SessionLog START at the resumed
 * step, so TensorBoard drops what the interrupted run logged after its
 * checkpoint.
 */
import { hostname } from "node:os";
import { join } from "node:path";
import type { TrainingArgs } from "../config/config.ts";
import {
  EventFileWriter,
  scalarEvent,
  sessionStartEvent,
  type TbEvent,
  textEvent,
} from "../tensorboard/events.ts";
import type { LogEntry } from "./checkpoint.ts";
import type { LogSink } from "./progress.ts";

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** HF's default_logdir() below `outDir`: `runs/<%b%d_%H-%M-%S>_<hostname>`, local time. */
export function defaultLoggingDir(outDir: string, now = new Date(), host = hostname()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  const stamp = `${MONTHS[now.getMonth()]}${p(now.getDate())}_${p(now.getHours())}-${
    p(now.getMinutes())
  }-${p(now.getSeconds())}`;
  return join(outDir, "runs", `${stamp}_${host}`);
}

/** Whether report_to asks for TensorBoard: "all" (or null, HF 4.x's "all") or a list naming it. */
export function reportsToTensorBoard(reportTo: unknown): boolean {
  const list = reportTo === null || reportTo === undefined
    ? ["all"]
    : Array.isArray(reportTo)
    ? reportTo
    : [reportTo];
  if (list.includes("none")) return false;
  return list.includes("all") || list.includes("tensorboard");
}

/** HF's rewrite_logs: `eval_x` → `eval/x`, `test_x` → `test/x`, anything else `train/x`. */
export function tagOf(key: string): string {
  if (key.startsWith("eval_")) return `eval/${key.slice(5)}`;
  if (key.startsWith("test_")) return `test/${key.slice(5)}`;
  return `train/${key}`;
}

/** The TensorBoard writer for a run, or undefined when report_to leaves TensorBoard out. */
export function tensorBoardLog(
  args: TrainingArgs,
  outDir: string,
): TensorBoardLog | undefined {
  if (!reportsToTensorBoard(args.report_to)) return undefined;
  const dir = typeof args.logging_dir === "string" && args.logging_dir
    ? args.logging_dir
    : defaultLoggingDir(outDir);
  return new TensorBoardLog(dir, JSON.stringify(args, null, 2));
}

export class TensorBoardLog implements LogSink {
  private writer?: EventFileWriter;
  constructor(readonly dir: string, private argsText: string) {}

  /** The event file being written (once the run has started). */
  get path(): string | undefined {
    return this.writer?.path;
  }

  async open(startStep: number): Promise<void> {
    const now = Date.now() / 1000;
    this.writer = await EventFileWriter.create(this.dir, now);
    const events: TbEvent[] = [];
    if (startStep > 0) events.push(sessionStartEvent(startStep + 1, now));
    events.push(textEvent("args", this.argsText, startStep, now));
    await this.writer.write(events);
  }

  async append(e: LogEntry, extra: Record<string, number> = {}): Promise<void> {
    if (!this.writer) return;
    const now = Date.now() / 1000;
    const events: TbEvent[] = [];
    for (const [k, v] of Object.entries({ ...e, ...extra })) {
      if (k === "step" || typeof v !== "number") continue;
      events.push(scalarEvent(tagOf(k), v, e.step, now));
    }
    await this.writer.write(events);
  }

  close(): void {
    this.writer?.close();
  }
}
