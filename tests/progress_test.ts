/** lib/progress.ts (durations, the status line) and the trainer's progress lines built on it. */
import assert from "node:assert";
import { formatDuration, StatusLine } from "../lib/progress.ts";
import { Progress } from "../lib/train/progress.ts";

function sink(tty: boolean) {
  const written: string[] = [];
  return {
    written,
    out: {
      writeSync: (b: Uint8Array) => (written.push(new TextDecoder().decode(b)), b.length),
      isTerminal: () => tty,
    },
  };
}

Deno.test("progress: durations and a status line that is throttled off a terminal", () => {
  assert.strictEqual(formatDuration(5), "0:05");
  assert.strictEqual(formatDuration(3725), "1:02:05");
  assert.strictEqual(formatDuration(Infinity), "?");
  const off = sink(false);
  const log = new StatusLine(off.out, 60_000);
  log.update("a");
  log.update("b");
  log.update("c", true);
  log.note("n");
  log.end();
  assert.deepStrictEqual(off.written, ["a\n", "c\n", "n\n"]);
  const on = sink(true);
  const tty = new StatusLine(on.out);
  tty.update("a");
  tty.update("b");
  tty.note("n");
  tty.end();
  assert.deepStrictEqual(on.written, ["\r\x1b[2Ka", "\r\x1b[2Kb", "\r\x1b[2Kn\nb", "\n"]);
});

Deno.test("progress: the trainer's lines, one per log off a terminal, in place on one", () => {
  const entry = { step: 2, loss: 1.23456, lr: 1e-3, gradNorm: 0.5, tokensPerSec: 99.6, etaSec: 65 };
  const line = "step 2/4  loss 1.2346  lr 1.000e-3  grad_norm 0.5000  100 tok/s  ETA 1:05";
  const off = sink(false);
  const p = new Progress(4, off.out);
  p.start(1);
  p.tick(2);
  p.log(entry);
  p.log({ ...entry, step: 2 }); // never throttled: every log is a line
  p.eval(2, 0.5);
  p.end();
  assert.deepStrictEqual(off.written, [
    "resuming at step 1/4\n",
    line + "\n",
    line + "\n",
    "step 2/4  eval_loss 0.5000\n",
  ]);
  const on = sink(true);
  const q = new Progress(4, on.out);
  q.tick(1);
  q.log(entry);
  q.tick(3);
  q.end();
  assert.deepStrictEqual(on.written, [
    "\r\x1b[2Kstep 1/4",
    "\r\x1b[2K" + line,
    "\r\x1b[2K" + line + " | step 3/4",
    "\n",
  ]);
});
