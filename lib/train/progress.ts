/**
 * What a run shows and records: a progress line on stderr (rewritten in
 * place on a terminal, one line per log otherwise) and metrics.jsonl, one JSON
 * object per log_history entry, appended as the run goes so it can be plotted
 * or tailed while training.
 */
import { join } from "node:path";
import type { LogEntry } from "./checkpoint.ts";

export interface ProgressLog {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSec: number;
  etaSec: number;
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "?";
  s = Math.round(s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0
    ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`
    : `${m}:${String(sec).padStart(2, "0")}`;
}

export class Progress {
  private tty: boolean;
  private enc = new TextEncoder();
  private last = "";
  constructor(
    private total: number,
    private out: { writeSync(b: Uint8Array): number; isTerminal(): boolean } = Deno.stderr,
  ) {
    this.tty = out.isTerminal();
  }
  private write(s: string) {
    this.out.writeSync(this.enc.encode(s));
  }
  private line(s: string) {
    if (this.tty) this.write(`\r\x1b[2K${s}`);
    else this.write(`${s}\n`);
    this.last = s;
  }
  start(step: number) {
    if (step > 0) this.note(`resuming at step ${step}/${this.total}`);
  }
  tick(step: number) {
    if (this.tty) {
      this.write(`\r\x1b[2K${this.last ? this.last + " | " : ""}step ${step}/${this.total}`);
    }
  }
  log(p: ProgressLog) {
    this.line(
      `step ${p.step}/${this.total}  loss ${p.loss.toFixed(4)}  lr ${p.lr.toExponential(3)}  ` +
        `grad_norm ${p.gradNorm.toFixed(4)}  ${p.tokensPerSec.toFixed(0)} tok/s  ETA ${
          fmtTime(p.etaSec)
        }`,
    );
  }
  eval(step: number, loss: number) {
    this.note(`step ${step}/${this.total}  eval_loss ${loss.toFixed(4)}`);
  }
  note(s: string) {
    if (this.tty) this.write(`\r\x1b[2K${s}\n${this.last}`);
    else this.write(`${s}\n`);
  }
  end() {
    if (this.tty && this.last) this.write("\n");
  }
}

/** metrics.jsonl in the output dir: rewritten from the restored log history on resume, then appended. */
export class MetricsLog {
  private enc = new TextEncoder();
  private constructor(private file: Deno.FsFile) {}
  static async open(outDir: string, history: readonly LogEntry[]): Promise<MetricsLog> {
    const path = join(outDir, "metrics.jsonl");
    await Deno.writeTextFile(path, history.map((e) => JSON.stringify(e) + "\n").join(""));
    const file = await Deno.open(path, { append: true });
    return new MetricsLog(file);
  }
  async append(e: LogEntry): Promise<void> {
    const b = this.enc.encode(JSON.stringify(e) + "\n");
    let off = 0;
    while (off < b.length) off += await this.file.write(b.subarray(off));
  }
  close(): void {
    try {
      this.file.close();
    } catch { /* already closed */ }
  }
}
