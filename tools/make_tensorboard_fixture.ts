/**
 * tests/fixtures/tensorboard/: TensorBoard event files written by this
 * toolkit's trainer, and what the real `tensorboard` package reads from them.
 *
 *   deno run -A tools/make_tensorboard_fixture.ts
 *
 * Trains the tiny model 6 steps (logs at 2, 4, 6; evals at 3, 6; checkpoints
 * at 3, 6), then resumes the same run from checkpoint-3 into the same
 * logging_dir, so the second event file starts with a SessionLog START at
 * step 4 and TensorBoard must drop the first run's events from step 4 on.
 * Writes events/ (the two files, renamed to stable names in write order),
 * trainer_state.json (the resumed run's, whose log_history TensorBoard must
 * match), and read_back.json: tools/read_tensorboard.py's output (the
 * EventAccumulator's scalars and texts, and tensorboard's masked CRC-32C of
 * a few byte strings). Needs .venv-tools with tensorboard
 * (`python3 -m venv .venv-tools && .venv-tools/bin/pip install tensorboard`).
 */
import { join } from "node:path";
import { runTraining } from "../lib/train/run.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const OUT = join(ROOT, "tests/fixtures/tensorboard");

/** Byte strings whose masked CRC the test checks against tensorboard's. */
const CRC_INPUTS = [
  "",
  "00",
  "00".repeat(32),
  "ff".repeat(32),
  Array.from({ length: 32 }, (_, i) => i.toString(16).padStart(2, "0")).join(""),
  Array.from({ length: 32 }, (_, i) => (31 - i).toString(16).padStart(2, "0")).join(""),
  "313233343536373839",
  "2a00000000000000",
];

if (import.meta.main) {
  const tmp = await Deno.makeTempDir({ prefix: "tb-fixture-" });
  try {
    const tb = join(tmp, "tb");
    const run = (resume?: number) =>
      runTraining({
        modelDir: join(ROOT, "tests/fixtures/tiny"),
        configPath: join(ROOT, "tests/fixtures/config/upstream/lora.yaml"),
        overrides: [
          "training_args.max_steps=6",
          "training_args.logging_steps=2",
          "training_args.evaluation_strategy=steps",
          "training_args.eval_steps=3",
          "training_args.save_steps=3",
          `training_args.logging_dir=${tb}`,
        ],
        trainFile: join(ROOT, "tests/fixtures/tiny-train/data.jsonl"),
        evalFile: join(ROOT, "tests/fixtures/tiny-train/data.jsonl"),
        outDir: join(tmp, "out"),
        resume,
      });
    await run();
    await run(3);
    const files: string[] = [];
    for await (const e of Deno.readDir(tb)) files.push(e.name);
    // Write order: the file counter and pid are in the name; sort by the file's first bytes' time.
    files.sort();
    if (files.length !== 2) throw new Error(`expected 2 event files, found ${files}`);
    await Deno.remove(OUT, { recursive: true }).catch(() => {});
    await Deno.mkdir(join(OUT, "events"), { recursive: true });
    for (const [i, f] of files.entries()) {
      // stable names that keep TensorBoard's (sorted) read order
      await Deno.copyFile(join(tb, f), join(OUT, "events", `events.out.tfevents.${i + 1}.fixture`));
    }
    await Deno.copyFile(join(tmp, "out", "trainer_state.json"), join(OUT, "trainer_state.json"));
    const py = await new Deno.Command(join(ROOT, ".venv-tools/bin/python"), {
      args: [join(ROOT, "tools/read_tensorboard.py"), join(OUT, "events"), ...CRC_INPUTS],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (!py.success) throw new Error("tools/read_tensorboard.py failed");
    await Deno.writeFile(join(OUT, "read_back.json"), py.stdout);
    console.log(`wrote ${OUT}: ${files.length} event files, trainer_state.json, read_back.json`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}
