/**
 * The torch engine's metrics follower (lib/train/follow_metrics.ts): it
 * forwards what this run's writer appends, once each, in order, and nothing
 * of the metrics.jsonl the output dir held before the launch.
 */
import { deepStrictEqual } from "node:assert";
import { join } from "node:path";
import type { LogEntry } from "../lib/train/checkpoint.ts";
import { followMetrics } from "../lib/train/follow_metrics.ts";
import type { LogSink } from "../lib/train/progress.ts";
import { withTempDir } from "./test_util.ts";

const line = (e: LogEntry) => JSON.stringify(e) + "\n";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function collector(): LogSink & { got: LogEntry[]; opened: number[]; closed: number } {
  const s = {
    got: [] as LogEntry[],
    opened: [] as number[],
    closed: 0,
    open(step: number) {
      s.opened.push(step);
      return Promise.resolve();
    },
    append(e: LogEntry) {
      s.got.push(e);
      return Promise.resolve();
    },
    close() {
      s.closed++;
    },
  };
  return s;
}

/** What the torch trainer does: the history into a new file renamed over metrics.jsonl, then appends. */
async function startWriter(dir: string, history: LogEntry[]): Promise<Deno.FsFile> {
  const fresh = join(dir, ".metrics.jsonl.1.tmp");
  await Deno.writeTextFile(fresh, history.map(line).join(""));
  await Deno.rename(fresh, join(dir, "metrics.jsonl"));
  return await Deno.open(join(dir, "metrics.jsonl"), { append: true });
}

const write = (f: Deno.FsFile, s: string) => f.write(new TextEncoder().encode(s));

for (const resumeAt of [0, 2]) {
  Deno.test(`followMetrics: an earlier run's entries are never forwarded (start step ${resumeAt})`, async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, "metrics.jsonl");
      // The killed (or earlier) run's file: entries past any checkpoint, with other losses.
      const old = [1, 2, 3, 4, 5].map((step) => ({ step, epoch: step / 10, loss: 10 + step }));
      await Deno.writeTextFile(path, old.map(line).join(""));
      const sink = collector();
      const f = await followMetrics(path, resumeAt, sink, 5);
      // Polls while only the old file is there (the workers are still starting).
      await sleep(40);
      deepStrictEqual(sink.got, []);
      const history = old.filter((e) => e.step <= resumeAt).map((e) => ({ ...e }));
      const file = await startWriter(dir, history);
      const fresh = [resumeAt + 1, resumeAt + 2, resumeAt + 3].map((step) => ({
        step,
        epoch: step / 10,
        loss: step,
      }));
      await write(file, line(fresh[0]));
      await sleep(40);
      // A line split across polls is forwarded once, whole.
      const third = line(fresh[1]);
      await write(file, third.slice(0, 5));
      await sleep(40);
      await write(file, third.slice(5) + line(fresh[2]));
      file.close();
      await f.stop();
      deepStrictEqual(sink.got, fresh);
      deepStrictEqual(sink.opened, [resumeAt]);
      deepStrictEqual(sink.closed, 1);
    });
  });
}

Deno.test("followMetrics: a run that never writes forwards nothing and closes the sink", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "metrics.jsonl");
    await Deno.writeTextFile(path, line({ step: 7, epoch: 1, loss: 1 }));
    const sink = collector();
    const f = await followMetrics(path, 0, sink, 5);
    await sleep(20);
    await f.stop();
    deepStrictEqual(sink.got, []);
    deepStrictEqual(sink.closed, 1);
  });
});
