/**
 * Atomic, durable outputs: everything is written under a temporary name in the
 * same directory, flushed to disk (fsync of the file), renamed into place only
 * when complete, and the rename itself made durable (fsync of the directory).
 * An interrupted run — a kill, a full disk, a power cut — never leaves a file
 * or directory under its final name that a later step would trust. Every
 * operating-system failure comes out as a UserError naming the path.
 */
import { basename, dirname, join } from "node:path";
import { osError, UserError } from "./errors.ts";

/** A temporary name beside `path`: `.NAME.<pid>.<rand>.tmp` (hidden; cleaned by the writers). */
function tmpName(path: string): string {
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  return join(dirname(path), `.${basename(path)}.${Deno.pid}.${rand}.tmp`);
}

/** Whether `name` is a temporary name `tmpName` makes for a file named `base`. */
export function isTmpNameOf(name: string, base: string): boolean {
  return name.startsWith(`.${base}.`) && name.endsWith(".tmp");
}

/**
 * A file written atomically replaces what is at `path`: that must be a file or
 * nothing. A symlink would be replaced by a file rather than written through,
 * a FIFO or device (`/dev/stdout`) by a file on disk, a directory cannot be.
 */
async function refuseNonFile(path: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(path);
  } catch {
    return; // nothing there yet (or nothing we may look at: the write will say)
  }
  if (st.isFile) return;
  const what = st.isSymlink
    ? "is a symbolic link, which would be replaced by a file; name the file it points to"
    : st.isDirectory
    ? "is a directory; name a file"
    : "is not a regular file (a pipe or device); name a file, or - for standard output";
  throw new UserError(`${path}: ${what}`);
}

/** mkdir -p of `path`'s directory, failures named. */
async function makeParent(path: string): Promise<void> {
  const dir = dirname(path) || ".";
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw osError(e, dir, "create the directory");
  }
}

/**
 * fsync a directory, so the renames and new entries in it survive a power cut.
 * Windows cannot open a directory for syncing; there the rename is as durable
 * as the file system makes it.
 */
export async function syncDir(dir: string): Promise<void> {
  if (Deno.build.os === "windows") return;
  const f = await Deno.open(dir || ".", { read: true });
  try {
    await f.sync();
  } finally {
    f.close();
  }
}

/** fsync a file written by other means (a copy) before it is published. */
export async function syncFile(path: string): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    await f.sync();
  } finally {
    f.close();
  }
}

/** Write all of `bytes` to `f` (a write may take fewer). */
export async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await f.write(bytes.subarray(off));
}

/** Write bytes or text to `path` atomically and durably. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const f = await AtomicFile.create(path);
  try {
    await f.write(typeof data === "string" ? new TextEncoder().encode(data) : data);
    await f.commit();
  } catch (e) {
    await f.abort();
    throw e;
  }
}

export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/** Remove a directory tree by first renaming it aside, so it never sits half-deleted under its name. */
export async function removeDirAtomic(path: string): Promise<void> {
  const aside = tmpName(path);
  try {
    await Deno.rename(path, aside);
    await syncDir(dirname(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw osError(e, path, "remove");
  }
  await Deno.remove(aside, { recursive: true }).catch((e) => {
    throw osError(e, aside, "remove");
  });
}

/**
 * Build a directory atomically: `fill` writes into a fresh temporary directory
 * beside `path` (each file durable: the writers here fsync), which then
 * replaces `path`; an old `path` is removed only after `fill` succeeded and
 * the new directory is in place.
 */
export async function writeDirAtomic(
  path: string,
  fill: (tmpDir: string) => Promise<void>,
): Promise<void> {
  await makeParent(path);
  const tmp = tmpName(path);
  try {
    await Deno.mkdir(tmp);
  } catch (e) {
    throw osError(e, path, "write");
  }
  try {
    await fill(tmp);
    await syncDir(tmp);
    const old = tmpName(path);
    let hadOld = false;
    try {
      await Deno.rename(path, old);
      hadOld = true;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    try {
      await Deno.rename(tmp, path);
    } catch (e) {
      if (hadOld) await Deno.rename(old, path).catch(() => {});
      throw e;
    }
    await syncDir(dirname(path));
    if (hadOld) await Deno.remove(old, { recursive: true });
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    // A file that failed inside the temporary directory is named by its final path.
    if (e instanceof UserError) throw new UserError(e.message.replaceAll(tmp, path));
    throw osError(e, path, "write");
  }
}

/** A file being written: `commit()` makes it durable and renames it into place, `abort()` removes it. */
export class AtomicFile {
  readonly tmp: string;
  private file: Deno.FsFile;
  private constructor(readonly path: string, tmp: string, file: Deno.FsFile) {
    this.tmp = tmp;
    this.file = file;
  }
  static async create(path: string): Promise<AtomicFile> {
    await refuseNonFile(path);
    await makeParent(path);
    const tmp = tmpName(path);
    try {
      const file = await Deno.open(tmp, { write: true, createNew: true });
      return new AtomicFile(path, tmp, file);
    } catch (e) {
      throw osError(e, path, "write");
    }
  }
  async write(bytes: Uint8Array): Promise<void> {
    try {
      await writeAll(this.file, bytes);
    } catch (e) {
      throw osError(e, this.path, "write");
    }
  }
  async commit(): Promise<void> {
    try {
      await this.file.sync();
      this.file.close();
      await Deno.rename(this.tmp, this.path);
      await syncDir(dirname(this.path));
    } catch (e) {
      throw osError(e, this.path, "write");
    }
  }
  async abort(): Promise<void> {
    try {
      this.file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.tmp).catch(() => {});
  }
}
