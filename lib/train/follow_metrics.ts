/**
 * Follow the metrics.jsonl another process writes (the torch engine's
 * workers) and give each new entry to a sink (the TensorBoard log), as the
 * WebGPU engine gives its own entries as it logs them.
 *
 * The writer puts the restored history in a new file and renames it over
 * metrics.jsonl before appending, so the file the output dir held before the
 * launch (an earlier run's, or the killed run's being resumed, with entries
 * past the checkpoint) is told apart by its identity and never read: until
 * the writer's file appears there is nothing to forward. The new file is read
 * from where the last poll stopped, whole lines only.
 */
import type { LogEntry } from "./checkpoint.ts";
import type { LogSink } from "./progress.ts";

/** What tells two files at one path apart: device and inode (creation time where there is none). */
async function identity(path: string): Promise<string | undefined> {
  try {
    const s = await Deno.stat(path);
    return s.ino !== null ? `${s.dev}:${s.ino}` : `${s.birthtime?.getTime()}`;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

export interface Follower {
  /** Forward what is left and close the sink. */
  stop(): Promise<void>;
}

/**
 * Give `sink` each entry after `startStep` that the writer appends to the
 * metrics file at `path` from now on, polling every `intervalMs`.
 */
export async function followMetrics(
  path: string,
  startStep: number,
  sink: LogSink,
  intervalMs = 1000,
): Promise<Follower> {
  const before = await identity(path);
  await sink.open(startStep);
  let following: string | undefined;
  let offset = 0;
  let decoder = new TextDecoder();
  let partial = "";
  const poll = async () => {
    const id = await identity(path);
    if (id === undefined || id === before) return; // the writer's file is not there yet
    if (id !== following) {
      following = id;
      offset = 0;
      decoder = new TextDecoder();
      partial = "";
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    let text = "";
    try {
      await file.seek(offset, Deno.SeekMode.Start);
      const chunk = new Uint8Array(1 << 16);
      for (let n; (n = await file.read(chunk)) !== null;) {
        offset += n;
        text += decoder.decode(chunk.subarray(0, n), { stream: true });
      }
    } finally {
      file.close();
    }
    const lines = (partial + text).split("\n");
    // The last piece is a line still being written (or empty): read on next time.
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line.trim()) continue;
      let e: LogEntry;
      try {
        e = JSON.parse(line);
      } catch {
        continue; // not an entry (the writer writes whole lines; nothing to forward)
      }
      if (typeof e.step === "number" && e.step > startStep) await sink.append(e);
    }
  };
  // A failed poll (the sink could not write) stops the polling; stop() reports it.
  let failed: unknown;
  let busy = Promise.resolve();
  const timer = setInterval(() => {
    busy = busy.then(() => failed === undefined ? poll() : undefined).catch((e) => {
      failed ??= e;
    });
  }, intervalMs);
  return {
    async stop() {
      clearInterval(timer);
      await busy;
      try {
        if (failed !== undefined) throw failed;
        await poll();
      } finally {
        sink.close();
      }
    },
  };
}
