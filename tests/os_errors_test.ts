/**
 * What the command line does when the operating system says no — a full disk
 * (ENOSPC), a read-only file system (EROFS), a directory where a file was
 * expected — and with hostile configs: one line naming the path and the
 * problem, exit 1 (2 for a command line that does not parse), no stack trace,
 * and nothing half-written left behind.
 *
 * The disk-full and read-only cases mount a small tmpfs, which needs root on
 * Linux; elsewhere they are skipped with a message.
 */
import { deepStrictEqual, match, ok as assert } from "node:assert";
import { join } from "node:path";
import { describeOsError, osError, UserError } from "../lib/errors.ts";
import { runCli, withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const LORA_CFG = join(FIX, "config", "upstream", "lora.yaml");
const MASKED = join(FIX, "tiny-train", "data.jsonl");

/** One line on stderr, `error: ...`, and no trace of a stack. */
function oneLine(r: { code: number; err: string }, code: number, re: RegExp): void {
  const lines = r.err.trim().split("\n").filter((l) => l.startsWith("error:") || /^\s+at /.test(l));
  assert(r.code === code, `exit ${r.code}, expected ${code}: ${r.err}`);
  deepStrictEqual(lines.length, 1, r.err);
  match(lines[0], re);
  assert(!/\n\s+at /.test(r.err) && !/Uncaught/.test(r.err), r.err);
}

/** Names of everything under `dir`, hidden files included, recursively. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, prefix: string) => {
    for (const e of Deno.readDirSync(d)) {
      out.push(prefix + e.name);
      if (e.isDirectory) walk(join(d, e.name), `${prefix}${e.name}/`);
    }
  };
  walk(dir, "");
  return out.sort();
}

// ---- tmpfs mounts (root only) ----

async function sh(cmd: string, args: string[]): Promise<boolean> {
  try {
    const r = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return r.success;
  } catch {
    return false;
  }
}

/** Mount a tmpfs of `size` at a new dir; read-only after `fill` when `readOnly`. */
async function tmpfs(size: string, readOnly = false, fill?: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "os-errors-mnt-" });
  if (!(await sh("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir]))) {
    await Deno.remove(dir);
    return undefined;
  }
  try {
    await fill?.(dir);
    if (readOnly && !(await sh("mount", ["-o", "remount,ro", dir]))) {
      throw new Error(`could not remount ${dir} read-only`);
    }
  } catch (e) {
    await sh("umount", [dir]);
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  return {
    dir,
    async [Symbol.asyncDispose]() {
      await sh("umount", [dir]);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const canMount = Deno.build.os === "linux" && Deno.uid() === 0 && await (async () => {
  const m = await tmpfs("64k");
  if (m) await m[Symbol.asyncDispose]();
  return m !== undefined;
})();
if (!canMount) {
  console.log(
    "os_errors_test: disk-full and read-only tests skipped: mounting a tmpfs needs root on Linux",
  );
}

/** Alpaca records, `n` of them (~150 bytes each), as a JSON Lines data file. */
function alpaca(n: number): string {
  return Array.from(
    { length: n },
    (_, i) =>
      JSON.stringify({ instruction: `question ${i} `.repeat(4), input: "", output: `answer ${i}` }),
  )
    .join("\n") + "\n";
}

/** Inputs for the runs below: a raw data file, its conversion, a one-step pipeline. */
async function inputs(src: string) {
  const raw = join(src, "raw.jsonl");
  await Deno.writeTextFile(raw, alpaca(300));
  const conv = join(src, "conv.jsonl");
  const r = await runCli(["stage", "convert", "--in", raw, "--out", conv]);
  assert(r.code === 0, r.err);
  const pipeline = join(src, "p.yaml");
  await Deno.writeTextFile(
    pipeline,
    `steps:\n  - name: convert\n    stage: convert\n    inputs:\n      in: ${raw}\n` +
      `    outputs:\n      out: data/conv.jsonl\n`,
  );
  return { raw, conv, pipeline };
}

const trainArgs = (out: string, steps: number) => [
  "stage",
  "train",
  "--model",
  TINY,
  "--config",
  LORA_CFG,
  "--train",
  MASKED,
  "--out",
  out,
  "--set",
  `training_args.max_steps=${steps}`,
  "--set",
  "training_args.save_steps=1",
];

Deno.test({
  name:
    "a full disk (ENOSPC): convert, tokenize, train and pipeline name the path and leave nothing",
  ignore: !canMount,
  fn: async () => {
    await withTempDir(async (src) => {
      const { raw, conv, pipeline } = await inputs(src);
      // Room for the train run's marker and TensorBoard event file (a log, left as
      // metrics.jsonl is), and the pipeline's marker; then nothing more.
      await using full = await tmpfs("12k");
      const d = full!.dir;
      const runs: [string[], RegExp][] = [
        [
          ["stage", "convert", "--in", raw, "--out", join(d, "c.jsonl")],
          /^error: \S+\/c\.jsonl: cannot write: no space left on device$/,
        ],
        [
          ["stage", "tokenize", "--model", TINY, "--in", conv, "--out", join(d, "t.jsonl")],
          /^error: \S+\/t\.jsonl: cannot write: no space left on device$/,
        ],
        [
          trainArgs(join(d, "run"), 2),
          /^error: \S+\/run\/checkpoint-1\/\S+: cannot write: no space left on device$/,
        ],
        [
          ["pipeline", pipeline, "--out", join(d, "p")],
          /^error: step "convert" \(stage convert\) failed: \S+\/p\/data\/conv\.jsonl: cannot write: no space left on device$/,
        ],
      ];
      for (const [args, re] of runs) oneLine(await runCli(args), 1, re);
      // What is left is what each run had finished: no temporaries, no partial outputs.
      const logs = (n: string) =>
        n.replace(/^run\/runs\/[A-Z][a-z]{2}\d\d_\d\d-\d\d-\d\d_[^/]+/, "run/runs/LOGDIR")
          .replace(/\/events\.out\.tfevents\.\d{10}\.[^/]+$/, "/EVENTS");
      deepStrictEqual(tree(d).map(logs), [
        "p",
        "p/.glm-finetune-output.json",
        "p/.glm-finetune.lock",
        "p/data",
        "run",
        "run/.glm-finetune-output.json",
        "run/metrics.jsonl",
        "run/runs",
        "run/runs/LOGDIR",
        "run/runs/LOGDIR/EVENTS",
      ]);
    });
  },
});

Deno.test({
  name: "a read-only file system (EROFS): convert, tokenize, train and pipeline say so in one line",
  ignore: !canMount,
  fn: async () => {
    await withTempDir(async (src) => {
      const { raw, conv, pipeline } = await inputs(src);
      await using ro = await tmpfs("64k", true, (d) => Deno.mkdir(join(d, "sub")));
      const d = ro!.dir;
      const runs: [string[], RegExp][] = [
        [
          ["stage", "convert", "--in", raw, "--out", join(d, "c.jsonl")],
          /^error: \S+\/c\.jsonl: cannot write: read-only file system$/,
        ],
        [
          ["stage", "tokenize", "--model", TINY, "--in", conv, "--out", join(d, "sub", "t.jsonl")],
          /^error: \S+\/sub\/t\.jsonl: cannot write: read-only file system$/,
        ],
        [
          trainArgs(join(d, "run"), 1),
          /^error: \S+\/run: cannot create the output dir: read-only file system$/,
        ],
        [
          ["pipeline", pipeline, "--out", join(d, "p")],
          /^error: \S+\/p: cannot create the run folder: read-only file system$/,
        ],
      ];
      for (const [args, re] of runs) oneLine(await runCli(args), 1, re);
      deepStrictEqual(tree(d), ["sub"]);
    });
  },
});

// Root is never denied permission, so this one runs only as another user (CI); as root the
// tmpfs tests above cover the same code path (lib/errors.ts osError).
const canBeDenied = Deno.build.os !== "windows" && Deno.uid() !== 0;
if (!canBeDenied) console.log("os_errors_test: the EACCES test is skipped: root is never denied");

Deno.test({
  name: "no permission (EACCES): convert, tokenize, train and pipeline say so in one line",
  ignore: !canBeDenied,
  fn: async () => {
    await withTempDir(async (src) => {
      const { raw, conv, pipeline } = await inputs(src);
      const d = join(src, "locked");
      await Deno.mkdir(d);
      await Deno.chmod(d, 0o555);
      try {
        const runs: [string[], RegExp][] = [
          [
            ["stage", "convert", "--in", raw, "--out", join(d, "c.jsonl")],
            /^error: \S+\/c\.jsonl: cannot write: permission denied$/,
          ],
          [
            ["stage", "tokenize", "--model", TINY, "--in", conv, "--out", join(d, "t.jsonl")],
            /^error: \S+\/t\.jsonl: cannot write: permission denied$/,
          ],
          [
            trainArgs(join(d, "run"), 1),
            /^error: \S+\/run: cannot create the output dir: permission denied$/,
          ],
          [
            ["pipeline", pipeline, "--out", join(d, "p")],
            /^error: \S+\/p: cannot create the run folder: permission denied$/,
          ],
        ];
        for (const [args, re] of runs) oneLine(await runCli(args), 1, re);
        deepStrictEqual(tree(d), []);
      } finally {
        await Deno.chmod(d, 0o755);
      }
    });
  },
});

Deno.test("a directory where a data file is expected: validate, convert and tokenize, one line", async () => {
  await withTempDir(async (dir) => {
    // validate reports it as a failed file (and checks any other files named).
    const v = await runCli(["validate", dir]);
    assert(v.code === 1 && !/\n\s+at /.test(v.err), v.err);
    match(v.out, /^\S+: is a directory, expected a file\n/);
    oneLine(
      await runCli(["stage", "convert", "--in", dir, "--out", join(dir, "o.jsonl")]),
      1,
      /^error: \S+: is a directory, expected a file$/,
    );
    oneLine(
      await runCli(["stage", "tokenize", "--model", TINY, "--in", dir, "--out", join(dir, "t")]),
      1,
      /^error: \S+: is a directory, expected a file$/,
    );
    deepStrictEqual(tree(dir), []);
  });
});

/** Nine anchors, each a list of nine of the one before: 9^7 nodes from a few lines. */
const ALIAS_BOMB = [
  'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]',
  ..."bcdefg".split("").map((c, i) => {
    const prev = "abcdefg"[i];
    return `${c}: &${c} [${Array(9).fill(`*${prev}`).join(", ")}]`;
  }),
].join("\n") + "\n";

Deno.test("a YAML alias bomb in a config or a pipeline file is refused at its line", async () => {
  await withTempDir(async (dir) => {
    const f = join(dir, "bomb.yaml");
    await Deno.writeTextFile(f, ALIAS_BOMB);
    const re = /^error: \S+bomb\.yaml:2: invalid YAML: its aliases \(\*name\) expand to too many/;
    oneLine(
      await runCli(["stage", "train", "--model", TINY, "--config", f, "--dry-run"]),
      1,
      re,
    );
    oneLine(await runCli(["pipeline", f]), 1, re);
  });
});

Deno.test("bad config values: an unknown LoRA target, .nan, 1e999, num_layers 1e9", async () => {
  await withTempDir(async (dir) => {
    oneLine(
      await runCli([
        "stage",
        "train",
        "--model",
        TINY,
        "--config",
        LORA_CFG,
        "--dry-run",
        "--set",
        "peft_config.target_modules=[nope]",
      ]),
      1,
      /^error: \S+lora\.yaml: peft_config\.target_modules: unknown module "nope"; chatglm3's linear layers are query_key_value, dense, dense_h_to_4h, dense_4h_to_h/,
    );
    const cfg = join(dir, "nan.yaml");
    const text = await Deno.readTextFile(LORA_CFG);
    await Deno.writeTextFile(cfg, text.replace(/learning_rate: .*/, "learning_rate: .nan"));
    const line = text.split("\n").findIndex((l) => /learning_rate:/.test(l)) + 1;
    oneLine(
      await runCli(["stage", "train", "--model", TINY, "--config", cfg, "--dry-run"]),
      1,
      new RegExp(
        `^error: \\S+nan\\.yaml:${line}: training_args\\.learning_rate: not a finite number \\(got \\.nan\\)$`,
      ),
    );
    oneLine(
      await runCli([
        "stage",
        "train",
        "--model",
        TINY,
        "--config",
        LORA_CFG,
        "--dry-run",
        "--set",
        "training_args.adam_epsilon=1e999",
      ]),
      1,
      /training_args\.adam_epsilon: not a finite number \(got \.inf\)/,
    );
    const model = join(dir, "model");
    await Deno.mkdir(model);
    const c = JSON.parse(await Deno.readTextFile(join(TINY, "config.json")));
    await Deno.writeTextFile(
      join(model, "config.json"),
      JSON.stringify({ ...c, num_layers: 1_000_000_000 }),
    );
    oneLine(
      await runCli(["stage", "train", "--model", model, "--config", LORA_CFG, "--dry-run"]),
      1,
      /^error: \S+config\.json: num_layers: 1000000000 is out of range \(at most 4096\)/,
    );
  });
});

Deno.test("a command line that does not parse exits 2; a missing input exits 1", async () => {
  oneLine(await runCli(["stage", "convert", "--bogus"]), 2, /^error: unknown flag --bogus$/);
  oneLine(await runCli(["stage", "merge-adapter", "--model", TINY]), 2, /--adapter is required/);
  oneLine(await runCli(["frobnicate"]), 2, /unknown command "frobnicate"/);
  const v = await runCli(["validate", "/nonexistent/x.jsonl"]);
  assert(v.code === 1 && !/\n\s+at /.test(v.err), v.err);
  match(v.out, /^\/nonexistent\/x\.jsonl: no such file\n/);
});

Deno.test("operating-system errors become one line naming the path (EACCES, EPERM, EIO...)", () => {
  const err = (code: string, message: string) => Object.assign(new Error(message), { code });
  const acc = err("EACCES", "Permission denied (os error 13): open '/data/x.jsonl'");
  deepStrictEqual(describeOsError(acc), "/data/x.jsonl: permission denied");
  const wrapped = osError(acc, "/out/y.jsonl", "write");
  assert(wrapped instanceof UserError);
  deepStrictEqual(wrapped.message, "/out/y.jsonl: cannot write: permission denied");
  deepStrictEqual(
    describeOsError(err("EIO", "Input/output error (os error 5)")),
    "input/output error",
  );
  deepStrictEqual(
    describeOsError(err("EDQUOT", "Disk quota exceeded (os error 122)"), "/q", "write"),
    "/q: cannot write: disk quota exceeded",
  );
  // Anything that is not an operating-system error is left alone (a bug keeps its trace).
  const bug = new TypeError("x is undefined");
  assert(osError(bug, "/p", "write") === bug);
});
