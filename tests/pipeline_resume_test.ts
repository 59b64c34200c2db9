/**
 * Ctrl-C inside a pipeline, and `deno task pipeline NAME --resume`: the
 * pipeline (not the train stage) says how to go on, the resumed run says it
 * is resuming and from which checkpoint, and a later plain run skips the
 * finished step (--resume is not part of the step's recorded flags).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { join } from "node:path";
import { runCli, withTempDir } from "./test_util.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const HOLDER = new URL("./fixtures/pipeline/hold_runner.ts", import.meta.url).pathname;
const TRAIN = "tests/fixtures/pipeline/train.yaml";

/** Start `args` under deno, send SIGINT once `ready()` holds, and collect the result. */
async function interruptWhen(args: string[], ready: () => Promise<boolean>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = new Response(child.stdout).text();
  const err = new Response(child.stderr).text();
  const deadline = Date.now() + 120_000;
  let sent = false;
  while (!sent && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    if (await ready()) {
      child.kill("SIGINT");
      sent = true;
    }
  }
  const status = await child.status;
  await child.stdin.close().catch(() => {});
  return { sent, code: status.code, out: await out, err: await err };
}

const exists = (p: string) => () => Deno.stat(p).then(() => true, () => false);

Deno.test("Ctrl-C in a pipeline's train step prints the pipeline command that resumes; --resume resumes", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "run");
    const r = await interruptWhen(
      [CLI, "pipeline", TRAIN, "--out", out],
      exists(join(out, "train", "checkpoint-2", "trainer_state.json")),
    );
    assert(r.sent, "interrupted");
    assertEquals(r.code, 130, r.err);
    const lines = r.err.trimEnd().split("\n");
    assertEquals(
      lines.at(-1),
      `pipeline train: step "train" was interrupted and saved a checkpoint; resume it with: ` +
        `deno task pipeline ${TRAIN} --out ${out} --resume`,
    );
    assert(!r.err.includes("--resume yes"), "not the train stage's own advice");
    assert(!r.err.includes("error:"), r.err);

    const resumed = await runCli(["pipeline", TRAIN, "--out", out, "--resume"]);
    assertEquals(resumed.code, 0, resumed.err);
    const run = resumed.out.split("\n").find((l) => l.startsWith("run train"));
    assert(
      /^run train \(no previous run; resuming from \S+\/train\/checkpoint-\d+ \(--resume\)\)$/.test(
        run ?? "",
      ),
      resumed.out,
    );
    assert(/resuming at step \d+\/8/.test(resumed.err), resumed.err);
    const steps = (await Deno.readTextFile(join(out, "train", "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((e) => e.loss !== undefined).map((e) => e.step);
    assertEquals(steps, [1, 2, 3, 4, 5, 6, 7, 8]);
    // The finished step is not run again, with or without --resume.
    for (const extra of [[], ["--resume"]]) {
      const again = await runCli(["pipeline", TRAIN, "--out", out, ...extra]);
      assertEquals(again.code, 0, again.err);
      assert(again.out.includes("skip train (unchanged)"), again.out);
    }
  });
});

Deno.test("Ctrl-C in any other step says which step stopped and how to go on", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "run");
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", HOLDER, "tests/fixtures/pipeline/lock.yaml", "--out", out],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const err = new Response(child.stderr).text();
    // The step prints "holding" and waits: interrupt it there.
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    for (let seen = ""; !seen.includes("holding");) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the runner ended early: ${seen}`);
      seen += value;
    }
    child.kill("SIGINT");
    const status = await child.status;
    await reader.cancel();
    await child.stdin.close().catch(() => {});
    assertEquals(status.code, 130);
    const text = await err;
    assert(
      text.includes(
        `interrupted in step "check"; the steps before it are kept. Go on with: deno task pipeline ` +
          `tests/fixtures/pipeline/lock.yaml --out ${out}`,
      ),
      text,
    );
    // The lock was let go: the next run takes the folder without a note.
    const next = await runCli(["pipeline", "tests/fixtures/pipeline/lock.yaml", "--out", out]);
    assertEquals(next.code, 0, next.err);
    assert(!next.out.includes("taking over"), next.out);
  });
});

Deno.test("Ctrl-C during a train step that still finishes: the step is kept and the pipeline stops after it", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "p.yaml");
    await Deno.writeTextFile(
      file,
      "steps:\n  - name: a\n    stage: train\n    outputs: {out: a.txt}\n" +
        "  - name: b\n    stage: noop\n    outputs: {out: b.txt}\n",
    );
    // In a process of its own (the test runner would take the signal): a train stand-in that is
    // sent Ctrl-C, handles it as train does, and still completes.
    const script = join(dir, "run.ts");
    await Deno.writeTextFile(
      script,
      `import { runPipeline } from ${
        JSON.stringify(new URL("../lib/pipeline/runner.ts", import.meta.url).href)
      };
const out = (argv: string[]) => argv[argv.indexOf("--out") + 1];
const train = async (argv: string[]) => {
  const handler = () => {};
  Deno.addSignalListener("SIGINT", handler);
  Deno.kill(Deno.pid, "SIGINT");
  await new Promise((r) => setTimeout(r, 200));
  Deno.removeSignalListener("SIGINT", handler);
  await Deno.writeTextFile(out(argv), "a");
  return 0;
};
const noop = async (argv: string[]) => { await Deno.writeTextFile(out(argv), "b"); return 0; };
const stages = (name: string) =>
  Promise.resolve({ file: ${
        JSON.stringify(file)
      }, load: () => Promise.resolve({ main: name === "train" ? train : noop }) });
try {
  await runPipeline(${JSON.stringify(file)}, { stages, log: () => {}, out: ${
        JSON.stringify(join(dir, "run"))
      }, handleSigint: true });
} catch (e) {
  console.error((e as Error).message);
  Deno.exit((e as { exitCode?: number }).exitCode ?? 1);
}
`,
    );
    const p = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", new URL("../deno.json", import.meta.url).pathname, script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(p.stderr);
    assertEquals(p.code, 130, err);
    assert(/step "a" had finished and is kept/.test(err), err);
    const run = join(dir, "run");
    assert(await Deno.stat(join(run, ".manifests", "a.json")).then(() => true, () => false));
    assert(await Deno.stat(join(run, "b.txt")).then(() => false, () => true), "step b ran");
  });
});
