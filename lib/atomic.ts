/**
 * Atomic outputs: everything is written under a temporary name in the same
 * directory and renamed into place only when complete, so an interrupted run
 * never leaves a file or directory that a later step would trust.
 */
import { basename, dirname, join } from "node:path";

function tmpName(path: string): string {
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  return join(dirname(path), `.${basename(path)}.${Deno.pid}.${rand}.tmp`);
}

/** Write bytes or text to `path` atomically. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await Deno.mkdir(dirname(path) || ".", { recursive: true });
  const tmp = tmpName(path);
  try {
    if (typeof data === "string") await Deno.writeTextFile(tmp, data);
    else await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/**
 * Build a directory atomically: `fill` writes into a fresh temporary directory,
 * which then replaces `path` (an old `path` is removed only after `fill` succeeded).
 */
export async function writeDirAtomic(
  path: string,
  fill: (tmpDir: string) => Promise<void>,
): Promise<void> {
  await Deno.mkdir(dirname(path) || ".", { recursive: true });
  const tmp = tmpName(path);
  await Deno.mkdir(tmp, { recursive: true });
  try {
    await fill(tmp);
    const old = tmpName(path);
    let hadOld = false;
    try {
      await Deno.rename(path, old);
      hadOld = true;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    await Deno.rename(tmp, path);
    if (hadOld) await Deno.remove(old, { recursive: true });
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** A file being written: `commit()` renames it into place, `abort()` removes it. */
export class AtomicFile {
  readonly tmp: string;
  private file: Deno.FsFile;
  private constructor(readonly path: string, tmp: string, file: Deno.FsFile) {
    this.tmp = tmp;
    this.file = file;
  }
  static async create(path: string): Promise<AtomicFile> {
    await Deno.mkdir(dirname(path) || ".", { recursive: true });
    const tmp = tmpName(path);
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    return new AtomicFile(path, tmp, file);
  }
  get writable(): WritableStream<Uint8Array> {
    return this.file.writable;
  }
  async write(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) off += await this.file.write(bytes.subarray(off));
  }
  async commit(): Promise<void> {
    this.file.close();
    await Deno.rename(this.tmp, this.path);
  }
  async abort(): Promise<void> {
    try {
      this.file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.tmp).catch(() => {});
  }
}
