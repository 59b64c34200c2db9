/**
 * Atomic and durable outputs (lib/atomic.ts): every file is fsynced before
 * the rename that publishes it, and its directory after, so a power cut
 * cannot leave a published file — a checkpoint, a final output, a manifest —
 * with missing bytes; and a checkpoint's completeness marker is its last file.
 * The order of file-system calls is recorded by wrapping Deno.open and
 * Deno.rename for the duration of each test.
 */
import { deepStrictEqual, ok as assert } from "node:assert";
import { basename, join } from "node:path";
import { AtomicFile, writeDirAtomic, writeFileAtomic } from "../lib/atomic.ts";
import { COMPLETE_MARKER, loraFiles, writeCheckpoint } from "../lib/train/checkpoint.ts";
import { DEFAULT_TRAIN_ARGS } from "../lib/train/args.ts";
import { withTempDir } from "./test_util.ts";

/** Run `f` with Deno.open/rename recording `sync <path>`, `write <path>` and `rename <from> -> <to>`. */
async function recording(f: () => Promise<void>): Promise<string[]> {
  const log: string[] = [];
  const open = Deno.open, rename = Deno.rename;
  Deno.open = async (path: string | URL, opts?: Deno.OpenOptions) => {
    const file = await open(path, opts);
    const p = String(path);
    if (opts?.write || opts?.createNew) log.push(`write ${p}`);
    const sync = file.sync.bind(file);
    file.sync = () => {
      log.push(`sync ${p}`);
      return sync();
    };
    return file;
  };
  Deno.rename = (from: string | URL, to: string | URL) => {
    log.push(`rename ${from} -> ${to}`);
    return rename(from, to);
  };
  try {
    await f();
  } finally {
    Deno.open = open;
    Deno.rename = rename;
  }
  return log;
}

/** The log with temporary names shown as TMP(name) and the test dir as DIR. */
function tidy(log: string[], dir: string): string[] {
  return log.map((l) =>
    l.replaceAll(dir, "DIR").replace(/\/\.([^/\s]+)\.\d+\.[a-z0-9]+\.tmp/g, "/TMP($1)")
  );
}

Deno.test("writeFileAtomic and AtomicFile: fsync the file, rename, fsync the directory", async () => {
  await withTempDir(async (dir) => {
    const log = await recording(async () => {
      await writeFileAtomic(join(dir, "a.json"), "{}");
      const f = await AtomicFile.create(join(dir, "b.jsonl"));
      await f.write(new TextEncoder().encode("x\n"));
      await f.commit();
    });
    deepStrictEqual(tidy(log, dir), [
      "write DIR/TMP(a.json)",
      "sync DIR/TMP(a.json)",
      "rename DIR/TMP(a.json) -> DIR/a.json",
      "sync DIR",
      "write DIR/TMP(b.jsonl)",
      "sync DIR/TMP(b.jsonl)",
      "rename DIR/TMP(b.jsonl) -> DIR/b.jsonl",
      "sync DIR",
    ]);
  });
});

Deno.test("writeDirAtomic: files and the new directory synced before it replaces the old", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    await writeDirAtomic(out, (tmp) => writeFileAtomic(join(tmp, "old.txt"), "old"));
    const log = await recording(() =>
      writeDirAtomic(out, (tmp) => writeFileAtomic(join(tmp, "new.txt"), "new"))
    );
    deepStrictEqual(tidy(log, dir), [
      "write DIR/TMP(out)/TMP(new.txt)",
      "sync DIR/TMP(out)/TMP(new.txt)",
      "rename DIR/TMP(out)/TMP(new.txt) -> DIR/TMP(out)/new.txt",
      "sync DIR/TMP(out)",
      "sync DIR/TMP(out)",
      "rename DIR/out -> DIR/TMP(out)",
      "rename DIR/TMP(out) -> DIR/out",
      "sync DIR",
    ]);
    deepStrictEqual([...Deno.readDirSync(out)].map((e) => e.name), ["new.txt"]);
    deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["out"]);
  });
});

Deno.test("a checkpoint: every file synced, checkpoint_complete.json written last, then published", async () => {
  await withTempDir(async (dir) => {
    const shapes = new Map([["base_model.model.x.lora_A.weight", [2, 2]]]);
    const files = loraFiles({
      shapes,
      r: 2,
      alpha: 4,
      dropout: 0,
      targetModules: ["x"],
      baseModel: "m",
    });
    const params = new Map([["base_model.model.x.lora_A.weight", Float32Array.of(1, 2, 3, 4)]]);
    const zeros = () => Promise.resolve(new Float32Array(4));
    const moments = [{ name: "base_model.model.x.lora_A.weight", size: 4, m: zeros, v: zeros }];
    const state = {
      globalStep: 3,
      epoch: 1,
      maxSteps: 10,
      logHistory: [],
      window: { lossSum: 0, steps: 0, skipped: 0 },
      lossTotal: { lossSum: 0, steps: 0 },
      lastLoggedStep: 0,
      data: { num_records: 4 },
      args: DEFAULT_TRAIN_ARGS,
      logEvery: 1,
      saveEvery: 1,
      evalEvery: 0,
      lr: { type: "linear", base: 1e-3, next: 1e-3 },
      configEcho: {},
    };
    const log = await recording(async () => {
      await writeCheckpoint(dir, state, params, moments, files);
    });
    const t = tidy(log, dir);
    const written = t.filter((l) => l.startsWith("rename DIR/TMP(checkpoint-3)/"))
      .map((l) => basename(l.split(" -> ")[1]));
    deepStrictEqual(written.at(-1), COMPLETE_MARKER);
    deepStrictEqual(new Set(written).size, 9);
    // Each file was synced before its rename; the directory was published last.
    for (const name of written) {
      const sync = t.indexOf(`sync DIR/TMP(checkpoint-3)/TMP(${name})`);
      const ren = t.findIndex((l) => l.endsWith(`-> DIR/TMP(checkpoint-3)/${name}`));
      assert(sync >= 0 && sync < ren, name);
    }
    deepStrictEqual(t.slice(-2), ["rename DIR/TMP(checkpoint-3) -> DIR/checkpoint-3", "sync DIR"]);
    const marker = JSON.parse(await Deno.readTextFile(join(dir, "checkpoint-3", COMPLETE_MARKER)));
    deepStrictEqual(Object.keys(marker.files).sort(), written.slice(0, -1).sort());
  });
});

Deno.test("a file written atomically never replaces a symlink, a pipe or a directory", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "target.jsonl");
    await Deno.writeTextFile(target, "mine");
    await Deno.symlink(target, join(dir, "link.jsonl"));
    await Deno.mkdir(join(dir, "sub"));
    const fifo = join(dir, "fifo");
    const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output().catch(() => undefined);
    const cases: [string, RegExp][] = [
      [join(dir, "link.jsonl"), /is a symbolic link, which would be replaced by a file/],
      [join(dir, "sub"), /is a directory; name a file/],
      [join(dir, "sub") + "/", /is a directory; name a file/],
      ...(mk?.success
        ? [[fifo, /is not a regular file \(a pipe or device\)/] as [string, RegExp]]
        : []),
    ];
    for (const [path, re] of cases) {
      let msg = "";
      try {
        await writeFileAtomic(path, "new");
      } catch (e) {
        msg = (e as Error).message;
      }
      assert(re.test(msg), `${path}: ${msg}`);
    }
    deepStrictEqual(await Deno.readTextFile(target), "mine");
    assert((await Deno.lstat(join(dir, "link.jsonl"))).isSymlink);
  });
});
