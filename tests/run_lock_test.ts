/**
 * The run lock (lib/pipeline/lock.ts), with two real runner processes on one
 * run folder: the second is refused, naming the process that holds the
 * folder and since when; a lock left by a killed run is taken over with a
 * note. The first process is tests/fixtures/pipeline/hold_runner.ts (the real
 * runner, whose step waits on its stdin); the second is the CLI.
 */
import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert } from "node:assert";
import { join } from "node:path";
import { runCli, withTempDir } from "./test_util.ts";

const PIPELINE = "tests/fixtures/pipeline/lock.yaml";
const HOLDER = new URL("./fixtures/pipeline/hold_runner.ts", import.meta.url).pathname;

/** Start a holder on `out` and wait until its step runs (the lock is taken before any step). */
async function startHolder(out: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", HOLDER, PIPELINE, "--out", out],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("holding")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the holder ended early: ${seen}`);
    seen += value;
  }
  const rest = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return seen;
      seen += value;
    }
  })();
  return { child, output: rest };
}

Deno.test("run lock: a second pipeline on the same --out names the holder and exits 1", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "run");
    const holder = await startHolder(out);
    try {
      const second = await runCli(["pipeline", PIPELINE, "--out", out]);
      assertEquals(second.code, 1, second.err);
      const pid = holder.child.pid;
      assertMatch(
        second.err,
        new RegExp(
          `^error: ${out} is in use by another pipeline run: process ${pid} \\(deno task pipeline ` +
            `${PIPELINE} --out ${out}\\), since \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z \\(\\d+ s ago\\)\\. ` +
            `Wait for it to finish, or choose another --out\\n$`,
        ),
      );
      assert(!second.err.includes("    at "), "no stack trace");
    } finally {
      await holder.child.stdin.close();
    }
    const status = await holder.child.status;
    assertEquals(status.code, 0, await holder.output);
    // Released: the next run gets the folder, with no note about a stale lock.
    const third = await runCli(["pipeline", PIPELINE, "--out", out]);
    assertEquals(third.code, 0, third.err);
    assert(!third.out.includes("taking over"), third.out);
  });
});

Deno.test("run lock: the lock of a killed run is taken over with a note", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "run");
    const holder = await startHolder(out);
    const pid = holder.child.pid;
    holder.child.kill("SIGKILL");
    await holder.child.status;
    await holder.child.stdin.close().catch(() => {});
    const next = await runCli(["pipeline", PIPELINE, "--out", out]);
    assertEquals(next.code, 0, next.err);
    assertMatch(
      next.out,
      new RegExp(
        `note: taking over the run lock of ${out} from process ${pid} \\(deno task pipeline ` +
          `${PIPELINE} --out ${out}\\), since [^)]+\\), which is no longer running`,
      ),
    );
    assertMatch(next.out, /run check \(no previous run\)/);
  });
});

Deno.test("run lock: a run started as another is still marking the folder names that run", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "run");
    const holder = await startHolder(out);
    try {
      // The folder as a second run sees it in the instant the first is writing its marker: the
      // marker's temporary file (writeJsonAtomic's `.NAME.PID.RAND.tmp`) and the lock, nothing else.
      const entries = [];
      for await (const e of Deno.readDir(out)) entries.push(e.name);
      for (const n of entries) {
        if (n !== ".glm-finetune.lock") await Deno.remove(join(out, n), { recursive: true });
      }
      await Deno.writeTextFile(
        join(out, `..glm-finetune-output.json.${holder.child.pid}.x1.tmp`),
        "{",
      );
      const second = await runCli(["pipeline", PIPELINE, "--out", out]);
      assertEquals(second.code, 1, second.err);
      assertMatch(
        second.err,
        new RegExp(
          `^error: ${out} is in use by another pipeline run: process ${holder.child.pid} `,
        ),
      );
    } finally {
      await holder.child.stdin.close();
    }
    assertEquals((await holder.child.status).code, 0, await holder.output);
  });
});
