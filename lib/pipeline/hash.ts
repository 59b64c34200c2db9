/**
 * Content hashes for the pipeline's skip decisions: of input/output files and
 * directories, and of a stage's code (its module and every local module it
 * imports).
 */
import { createHash } from "node:crypto";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath as fromFileUrl } from "node:url";
import { parseYaml } from "../yaml.ts";

/**
 * Files above this size are identified by size and modification time instead of
 * their bytes: hashing a 12 GB checkpoint on every run would cost more than the
 * steps it lets us skip.
 */
export const BIG_FILE_BYTES = 256 * 1024 * 1024;

function sha256(): ReturnType<typeof createHash> {
  return createHash("sha256");
}

/** What the pipeline ignores inside directories: in-progress atomic writes and its own manifests. */
function ignored(name: string): boolean {
  return name === ".manifests" || (name.startsWith(".") && name.endsWith(".tmp"));
}

export class Hasher {
  private cache = new Map<string, Promise<string | null>>();
  /** Content not yet on disk (a dry run's effective config), by absolute path. */
  readonly pending = new Map<string, Uint8Array>();

  /** The hash of a file or directory, or null if it does not exist. Cached until `forget`. */
  hash(path: string): Promise<string | null> {
    const abs = resolve(path);
    let h = this.cache.get(abs);
    if (!h) {
      h = this.compute(abs);
      this.cache.set(abs, h);
    }
    return h;
  }

  /**
   * The hash of a YAML or JSON file without the values at `unread` (key paths),
   * over its canonical JSON; a file that does not parse as a mapping hashes
   * whole.
   */
  async hashWithout(path: string, unread: string[][]): Promise<string | null> {
    const abs = resolve(path);
    const bytes = this.pending.get(abs) ?? await Deno.readFile(abs).catch((e) => {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.IsADirectory) return null;
      throw e;
    });
    if (bytes === null) return await this.hash(path);
    let tree: unknown;
    try {
      tree = parseYaml(new TextDecoder().decode(bytes), path).value;
    } catch {
      return await this.hash(path);
    }
    if (typeof tree !== "object" || tree === null || Array.isArray(tree)) {
      return await this.hash(path);
    }
    for (const keys of unread) {
      let node = tree as Record<string, unknown>;
      for (const k of keys.slice(0, -1)) {
        const next = node?.[k];
        node = typeof next === "object" && next !== null ? next as Record<string, unknown> : {};
      }
      delete node[keys.at(-1)!];
    }
    return "values:" + sha256().update(canonicalJson(tree)).digest("hex");
  }

  /** Drop cached hashes of `path` and everything under or above it (it was just rewritten). */
  forget(path: string): void {
    const abs = resolve(path);
    for (const k of [...this.cache.keys()]) {
      if (k === abs || k.startsWith(abs + "/") || abs.startsWith(k + "/")) this.cache.delete(k);
    }
  }

  private async compute(abs: string): Promise<string | null> {
    const pending = this.pending.get(abs);
    if (pending) return "file:" + sha256().update(pending).digest("hex");
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(abs);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
    if (info.isDirectory) return "dir:" + await this.hashDir(abs);
    return "file:" + await hashFile(abs, info);
  }

  private async hashDir(root: string): Promise<string> {
    const h = sha256();
    const walk = async (dir: string) => {
      const entries: Deno.DirEntry[] = [];
      for await (const e of Deno.readDir(dir)) if (!ignored(e.name)) entries.push(e);
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const e of entries) {
        const p = join(dir, e.name);
        const info = await Deno.stat(p);
        const rel = relative(root, p);
        if (info.isDirectory) {
          h.update(`d ${rel}\n`);
          await walk(p);
        } else {
          h.update(`f ${rel} ${await hashFile(p, info)}\n`);
        }
      }
    };
    await walk(root);
    return h.digest("hex");
  }
}

/** JSON with every mapping's keys sorted, so that key order does not change a hash. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    return `{${
      Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(",")
    }}`;
  }
  return JSON.stringify(v) ?? "null";
}

async function hashFile(path: string, info: Deno.FileInfo): Promise<string> {
  if (info.size > BIG_FILE_BYTES) {
    return `size=${info.size},mtime=${info.mtime?.getTime() ?? 0}`;
  }
  const h = sha256();
  using f = await Deno.open(path, { read: true });
  for await (const chunk of f.readable) h.update(chunk);
  return h.digest("hex");
}

const IMPORT_RES = [
  /\bfrom\s*["']([^"']+)["']/g,
  /\bimport\s*["']([^"']+)["']/g,
  /\bimport\s*\(\s*["']([^"']+)["']\s*[,)]/g,
  /\bnew\s+URL\(\s*["'](\.{1,2}\/[^"']+)["']\s*,\s*import\.meta\.url\s*\)/g,
];

/**
 * The code version of a module: a hash over its source and the sources of
 * every local module it reaches through static imports, dynamic imports with
 * literal specifiers and `new URL("./x", import.meta.url)` assets. Bare and
 * `npm:` specifiers count by name, with their import-map entry (which pins the
 * version). Cached per instance, so one run reads each file once.
 */
export class CodeHasher {
  private files = new Map<string, Promise<{ hash: string; deps: string[]; bare: string[] }>>();
  private importMaps = new Map<string, Promise<Record<string, string>>>();

  async hash(module: string | URL): Promise<string> {
    const root = typeof module === "string" ? resolve(module) : fromFileUrl(module);
    const seen = new Set<string>();
    const bare = new Set<string>();
    const queue = [root];
    while (queue.length > 0) {
      const p = queue.pop()!;
      if (seen.has(p)) continue;
      seen.add(p);
      const info = await this.file(p);
      for (const d of info.deps) if (!seen.has(d)) queue.push(d);
      for (const b of info.bare) bare.add(b);
    }
    const h = sha256();
    for (const p of [...seen].sort()) {
      h.update(`${relative(dirname(root), p)} ${(await this.file(p)).hash}\n`);
    }
    const map = await this.importMap(dirname(root));
    for (const b of [...bare].sort()) h.update(`bare ${b} ${map[b] ?? ""}\n`);
    return h.digest("hex");
  }

  private file(path: string): Promise<{ hash: string; deps: string[]; bare: string[] }> {
    let f = this.files.get(path);
    if (!f) {
      f = (async () => {
        let bytes: Uint8Array;
        try {
          bytes = await Deno.readFile(path);
        } catch (e) {
          // a specifier seen in a comment or string that is not a real file
          if (e instanceof Deno.errors.NotFound) return { hash: "missing", deps: [], bare: [] };
          throw e;
        }
        const deps: string[] = [];
        const bare: string[] = [];
        if (/\.(m?[jt]sx?)$/.test(path)) {
          const text = new TextDecoder().decode(bytes);
          for (const re of IMPORT_RES) {
            for (const m of text.matchAll(re)) {
              const spec = m[1];
              if (spec.startsWith("./") || spec.startsWith("../")) {
                deps.push(resolve(dirname(path), spec));
              } else if (spec.startsWith("file:")) deps.push(fromFileUrl(spec));
              else if (!spec.startsWith("/")) bare.push(spec);
              else deps.push(spec);
            }
          }
        }
        return { hash: sha256().update(bytes).digest("hex"), deps, bare };
      })();
      this.files.set(path, f);
    }
    return f;
  }

  /** The `imports` of the nearest deno.json above `dir`. */
  private importMap(dir: string): Promise<Record<string, string>> {
    let m = this.importMaps.get(dir);
    if (!m) {
      m = (async () => {
        for (let d = dir;; d = dirname(d)) {
          try {
            const json = JSON.parse(await Deno.readTextFile(join(d, "deno.json")));
            return (json.imports ?? {}) as Record<string, string>;
          } catch (e) {
            if (!(e instanceof Deno.errors.NotFound)) return {};
          }
          if (dirname(d) === d) return {};
        }
      })();
      this.importMaps.set(dir, m);
    }
    return m;
  }
}
