/**
 * The run lock: one pipeline run at a time in a run folder. Two runs into one
 * `--out` would write the same files at once (one of them died on a rename of
 * the other's `predictions.partial.jsonl`).
 *
 * The lock is an advisory `flock` on `<run>/.glm-finetune.lock`, held for as
 * long as the run's process lives: the operating system lets it go when the
 * process ends, however it ends (`kill -9` included), so a dead run can never
 * block a folder. The file's text says who holds it — process id, host,
 * command, start time — for the message the second run prints; a text left by
 * a process that ended without clearing it is a stale lock, taken over with a
 * note. The file is never deleted: unlinking a flock'd file lets a third
 * process lock a new file of the same name while the second still holds the
 * old one.
 */
import { hostname } from "node:os";
import { join } from "node:path";
import { writeAll } from "../atomic.ts";
import { osError, UserError } from "../errors.ts";

export const LOCK_FILE = ".glm-finetune.lock";

/** Who holds (or last held) a run folder. */
export interface LockInfo {
  pid: number;
  host: string;
  /** ISO time the run started */
  started: string;
  /** the command line, for people */
  command: string;
}

export interface RunLock {
  /** The holder before us that ended without releasing (a killed run), if any. */
  stale?: LockInfo;
  release(): void;
}

function parseInfo(text: string): LockInfo | undefined {
  try {
    const v = JSON.parse(text);
    return typeof v?.pid === "number" ? v as LockInfo : undefined;
  } catch {
    return undefined;
  }
}

/** "12 s", "4 min", "3 h" ago. */
function ago(iso: string): string {
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (!Number.isFinite(s) || s < 0) return "";
  if (s < 120) return ` (${Math.round(s)} s ago)`;
  if (s < 7200) return ` (${Math.round(s / 60)} min ago)`;
  return ` (${Math.round(s / 3600)} h ago)`;
}

/** How a holder is named in messages: `process 123 on host (deno task pipeline lora), since T`. */
export function describeHolder(i: LockInfo): string {
  const host = i.host && i.host !== hostname() ? ` on ${i.host}` : "";
  return `process ${i.pid}${host} (${i.command}), since ${i.started}${ago(i.started)}`;
}

/**
 * Lock `runDir` (which exists) for this process, or throw a UserError naming
 * the process that holds it. `command` is what the message of a second run
 * shows as the holder's command line.
 */
export async function lockRunDir(runDir: string, command: string): Promise<RunLock> {
  const path = join(runDir, LOCK_FILE);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true, write: true, create: true });
  } catch (e) {
    throw osError(e, path, "open the run lock");
  }
  let locked: boolean;
  try {
    locked = await file.tryLock(true);
  } catch (e) {
    file.close();
    throw osError(e, path, "lock");
  }
  const previous = parseInfo(await readAll(file));
  if (!locked) {
    file.close();
    throw new UserError(
      `${runDir} is in use by another pipeline run: ${
        previous ? describeHolder(previous) : `the holder of ${path}`
      }. Wait for it to finish, or choose another --out`,
    );
  }
  const info: LockInfo = {
    pid: Deno.pid,
    host: hostname(),
    started: new Date().toISOString(),
    command,
  };
  try {
    await file.truncate(0);
    await file.seek(0, Deno.SeekMode.Start);
    const bytes = new TextEncoder().encode(JSON.stringify(info) + "\n");
    await writeAll(file, bytes);
  } catch {
    // The flock is what locks; the text only names the holder. On a full disk the run
    // goes on holding the lock, and fails where it actually needs the space.
    await file.truncate(0).catch(() => {});
  }
  let released = false;
  return {
    stale: previous,
    release() {
      if (released) return;
      released = true;
      try {
        // Cleared, not deleted (see above): an empty file is a lock nobody held at the end.
        file.truncateSync(0);
        file.unlockSync();
      } catch { /* the folder was removed under us: nothing left to release */ }
      file.close();
    },
  };
}

async function readAll(file: Deno.FsFile): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  await file.seek(0, Deno.SeekMode.Start);
  for (;;) {
    const n = await file.read(buf);
    if (n === null || n === 0) break;
    chunks.push(buf.slice(0, n));
    if (chunks.length > 16) break; // a lock text is a line; anything longer is not ours
  }
  return new TextDecoder().decode(
    chunks.reduce((a, c) => {
      const out = new Uint8Array(a.length + c.length);
      out.set(a);
      out.set(c, a.length);
      return out;
    }, new Uint8Array(0)),
  );
}
