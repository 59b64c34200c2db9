/**
 * What a run shows and records: a progress line on stderr (rewritten in
 * place on a terminal, one line per log otherwise) and metrics.jsonl, one JSON
 * object per log_history entry, appended as the run goes so it can be plotted
 * or tailed while training.
 */
import { join } from "node:path";
import { writeAll, writeFileAtomic } from "../atomic.ts";
import { osError } from "../errors.ts";
import { formatDuration, StatusLine } from "../progress.ts";
import type { LogEntry } from "./checkpoint.ts";

export interface ProgressLog {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSec: number;
  etaSec: number;
}

/** The trainer's lines on a StatusLine: a step line per log, notes for resume and eval. */
export class Progress {
  private status: StatusLine;
  private last = "";
  constructor(
    private total: number,
    out: { writeSync(b: Uint8Array): number; isTerminal(): boolean } = Deno.stderr,
  ) {
    this.status = new StatusLine(out);
  }
  start(step: number) {
    if (step > 0) this.note(`resuming at step ${step}/${this.total}`);
  }
  /** On a terminal, the step in progress after the last logged line; off a terminal, nothing. */
  tick(step: number) {
    if (this.status.isTerminal) {
      this.status.update(`${this.last ? this.last + " | " : ""}step ${step}/${this.total}`);
    }
  }
  log(p: ProgressLog) {
    this.last =
      `step ${p.step}/${this.total}  loss ${p.loss.toFixed(4)}  lr ${p.lr.toExponential(3)}  ` +
      `grad_norm ${p.gradNorm.toFixed(4)}  ${p.tokensPerSec.toFixed(0)} tok/s  ETA ${
        formatDuration(p.etaSec)
      }`;
    this.status.update(this.last, true);
  }
  eval(step: number, loss: number) {
    this.note(`step ${step}/${this.total}  eval_loss ${loss.toFixed(4)}`);
  }
  note(s: string) {
    this.status.note(s);
  }
  end() {
    this.status.end();
  }
}

/**
 * Something that gets each log entry besides metrics.jsonl: the TensorBoard
 * writer (lib/train/tensorboard_log.ts).
 */
export interface LogSink {
  /** Before the first entry: the step the run starts from (0, or a resumed checkpoint's). */
  open(startStep: number): Promise<void>;
  /** An entry of log_history, with figures that are not part of it (tokens_per_second). */
  append(e: LogEntry, extra?: Record<string, number>): Promise<void>;
  close(): void;
}

/** metrics.jsonl in the output dir: rewritten from the restored log history on resume, then appended. */
export class MetricsLog {
  private enc = new TextEncoder();
  private constructor(
    private file: Deno.FsFile,
    private path: string,
    private sinks: LogSink[],
  ) {}
  static async open(
    outDir: string,
    history: readonly LogEntry[],
    o: { sinks?: LogSink[]; startStep?: number } = {},
  ): Promise<MetricsLog> {
    const path = join(outDir, "metrics.jsonl");
    let log: MetricsLog;
    try {
      // A new file renamed over the old: a kill mid-write leaves the old log whole, not a part.
      await writeFileAtomic(path, history.map((e) => JSON.stringify(e) + "\n").join(""));
      log = new MetricsLog(await Deno.open(path, { append: true }), path, o.sinks ?? []);
    } catch (e) {
      throw osError(e, path, "write");
    }
    try {
      for (const s of log.sinks) await s.open(o.startStep ?? 0);
    } catch (e) {
      log.close();
      throw e;
    }
    return log;
  }
  async append(e: LogEntry, extra?: Record<string, number>): Promise<void> {
    const b = this.enc.encode(JSON.stringify(e) + "\n");
    try {
      await writeAll(this.file, b);
    } catch (err) {
      throw osError(err, this.path, "write");
    }
    for (const s of this.sinks) await s.append(e, extra);
  }
  close(): void {
    try {
      this.file.close();
    } catch { /* already closed */ }
    for (const s of this.sinks) s.close();
  }
}
