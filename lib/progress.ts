/**
 * A status line on stderr: rewritten in place on a terminal, one line per
 * update otherwise (so logs and CI output stay readable).
 */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  s = Math.round(s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0
    ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`
    : `${m}:${String(sec).padStart(2, "0")}`;
}

export class StatusLine {
  private enc = new TextEncoder();
  private tty: boolean;
  private shown = "";
  private lastPrint = -Infinity;
  constructor(
    private out: { writeSync(b: Uint8Array): number; isTerminal(): boolean } = Deno.stderr,
    /** Least interval between lines when not on a terminal. */
    private minIntervalMs = 2000,
  ) {
    this.tty = out.isTerminal();
  }
  /** Whether the line is rewritten in place (a terminal). */
  get isTerminal(): boolean {
    return this.tty;
  }
  update(text: string, force = false): void {
    if (this.tty) {
      this.out.writeSync(this.enc.encode(`\r\x1b[2K${text}`));
      this.shown = text;
      return;
    }
    const now = performance.now();
    if (!force && now - this.lastPrint < this.minIntervalMs) return;
    this.lastPrint = now;
    this.out.writeSync(this.enc.encode(text + "\n"));
  }
  /** A line that stays (above the status line on a terminal), never throttled. */
  note(text: string): void {
    this.out.writeSync(this.enc.encode(this.tty ? `\r\x1b[2K${text}\n${this.shown}` : `${text}\n`));
  }
  end(): void {
    if (this.tty && this.shown) this.out.writeSync(this.enc.encode("\n"));
    this.shown = "";
  }
}
