/**
 * Which output directories a stage may write. A stage that writes a
 * directory (train, evaluate, merge-adapter, a pipeline's run folder) leaves a
 * marker file in it naming the stage. A later run of the same stage may add to
 * that directory or replace it; a directory that is not empty and carries no
 * marker of that stage — the user's own files, or another stage's output — is
 * refused with a message naming it and `--force`. So a stage never deletes or
 * overwrites what it did not write, and a typo in `--out` costs nothing.
 *
 * File outputs (`--out conv.jsonl`) are the user naming the one file to
 * (re)write; they are replaced atomically, but never when the output is one of
 * the stage's own inputs (`checkNotInput`).
 */
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { isTmpNameOf, writeJsonAtomic } from "./atomic.ts";
import { osError, UserError } from "./errors.ts";

export const OUTPUT_MARKER = ".glm-finetune-output.json";

/** The stage named by `dir`'s marker, or undefined when it has none (or an unreadable one). */
export async function markerStage(dir: string): Promise<string | undefined> {
  try {
    const m = JSON.parse(await Deno.readTextFile(join(dir, OUTPUT_MARKER)));
    return typeof m?.stage === "string" ? m.stage : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether `name` is a marker being written right now (its atomic write's temporary file): another
 * run that has just made the directory and is marking it.
 */
export function isMarkerInProgress(name: string): boolean {
  return isTmpNameOf(name, OUTPUT_MARKER);
}

/** Mark `dir` (which exists) as an output of `stage`. */
export function markOutputDir(dir: string, stage: string): Promise<void> {
  return writeJsonAtomic(join(dir, OUTPUT_MARKER), {
    stage,
    note: "written by glm-finetune; the stage may replace this directory on its next run",
  });
}

export interface ClaimOptions {
  /** The flag or setting that named the directory, for messages (default "--out"). */
  flag?: string;
  /** The user said --force: write even into a foreign directory. */
  force?: boolean;
  /** What --force would do there, for the message ("replace it", "write into it"). */
  forceDoes?: string;
  /** The writer, for messages (default: the stage's name). */
  who?: string;
  /**
   * Directories this stage wrote before markers existed: whether these entry
   * names are its output (see docs/reliability.md for each stage's rule).
   */
  legacy?: (entries: string[]) => boolean;
}

/**
 * Check that `stage` may write the directory `dir`: it does not exist, is
 * empty, or is an earlier output of `stage` (marker, or the legacy rule);
 * otherwise a UserError names the directory, what is in it, and `--force`.
 */
export async function claimOutputDir(
  dir: string,
  stage: string,
  o: ClaimOptions = {},
): Promise<void> {
  const flag = o.flag ?? "--out";
  const entries: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) entries.push(e.name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    if (e instanceof Deno.errors.NotADirectory) {
      throw new UserError(`${flag} ${dir}: is a file, expected a directory`);
    }
    throw osError(e, dir, "read the directory");
  }
  if (entries.length === 0) return;
  const owner = await markerStage(dir);
  if (owner === stage || (owner === undefined && o.legacy?.(entries)) || o.force) return;
  const shown = entries.filter((n) => n !== OUTPUT_MARKER).sort().slice(0, 3);
  const more = entries.length > shown.length + (owner ? 1 : 0) ? ", …" : "";
  const who = o.who ?? stage;
  const whose = owner
    ? `it is an output of ${owner}, not of ${who}`
    : `it holds files ${who} did not write (${shown.join(", ")}${more})`;
  throw new UserError(
    `${flag} ${dir}: the directory is not empty and ${whose}; choose a new or empty directory, ` +
      `or pass --force to ${o.forceDoes ?? "write into it"}`,
  );
}

/** `path` as the file system names it (symlinks resolved), or absolute when it does not exist. */
async function canonical(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch {
    return resolve(path);
  }
}

/** Whether two paths name the same file (symlinks resolved). */
export async function sameFile(a: string, b: string): Promise<boolean> {
  return (await canonical(a)) === (await canonical(b));
}

/** Whether `inner` is `outer` or lies inside it. */
export function isInside(inner: string, outer: string): boolean {
  const r = relative(outer, inner);
  return r === "" || (r !== ".." && !r.startsWith(`..${sep}`) && !isAbsolute(r));
}

/**
 * Refuse an output that is one of the stage's inputs, or (for a directory
 * output, which is replaced whole) contains one: writing it would destroy what
 * is being read. `inputs` are [flag, path] pairs; `-` (stdin/stdout) is skipped.
 */
export async function checkNotInput(
  out: string,
  outFlag: string,
  inputs: [string, string | undefined][],
  o: { dir?: boolean } = {},
): Promise<void> {
  if (out === "-") return;
  const outPath = await canonical(out);
  for (const [flag, p] of inputs) {
    if (p === undefined || p === "-") continue;
    const inPath = await canonical(p);
    if (inPath === outPath) {
      throw new UserError(
        `${outFlag} ${out} is the ${flag} ${o.dir ? "dir" : "file"}; write the output elsewhere`,
      );
    }
    if (o.dir && isInside(inPath, outPath)) {
      throw new UserError(
        `${outFlag} ${out} contains the ${flag} input ${p}, which replacing it would delete; ` +
          `write the output elsewhere`,
      );
    }
  }
}
