/**
 * The demo LoRA pipeline end to end on the demo model, shortened (a slice of
 * the demo data, a few training steps, a few evaluated records): every stage
 * runs for real, a second run skips everything, a learning-rate change reruns
 * train and what follows only, and bad data stops at validate.
 */
import assert from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import { runPipeline, type RunResult } from "../lib/pipeline/runner.ts";
import { withTempDir } from "./test_util.ts";

const root = new URL("../", import.meta.url).pathname;

/** Short enough for CI on two CPU cores, long enough that every stage does real work. */
const SHORT = [
  "eval_limit=2",
  "training_args.max_steps=3",
  "training_args.per_device_train_batch_size=4",
  "training_args.logging_steps=1",
  "training_args.eval_steps=3",
  "training_args.save_steps=3",
  "training_args.generation_config.max_new_tokens=8",
];

/**
 * Run `fn` from the repository root (the pipeline files name their configs
 * relative to it) with the first `train` and `dev` demo records copied into
 * `data` under a temporary directory `tmp`, removed afterwards.
 */
async function withDemoSlice(
  train: number,
  dev: number,
  fn: (data: string, tmp: string) => Promise<void>,
): Promise<void> {
  const cwd = Deno.cwd();
  Deno.chdir(root);
  try {
    await withTempDir(async (tmp) => {
      const data = join(tmp, "data");
      await Deno.mkdir(data, { recursive: true });
      for (const [name, n] of [["train.json", train], ["dev.json", dev]] as const) {
        const lines = (await Deno.readTextFile(join(root, "data/demo", name))).split("\n");
        await Deno.writeTextFile(join(data, name), lines.slice(0, n).join("\n") + "\n");
      }
      await fn(data, tmp);
    });
  } finally {
    Deno.chdir(cwd);
  }
}

function actions(r: RunResult): Record<string, string> {
  return Object.fromEntries(r.steps.map((s) => [s.name, s.action]));
}

Deno.test({
  name: "demo pipeline: lora end to end, skipped when unchanged, lr reruns train onwards",
  // the GPU device and its pipelines stay cached for the process
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const lines: string[] = [];
    const log = (l: string) => lines.push(l);
    await withDemoSlice(24, 4, async (data, tmp) => {
      try {
        const out = join(tmp, "run");
        const sets = [`data=${data}`, ...SHORT];

        const first = await runPipeline("pipelines/lora.yaml", { out, sets, log });
        assert.ok(
          Object.values(actions(first)).every((a) => a === "run"),
          JSON.stringify(actions(first)),
        );
        const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
        assert.strictEqual(summary.mode, "lora");
        assert.strictEqual(summary.train_steps, 3);
        for (
          const k of ["train_loss_first", "train_loss_last", "tokens_per_second", "wall_seconds"]
        ) {
          assert.ok(typeof summary[k] === "number" && summary[k] > 0, `${k}: ${summary[k]}`);
        }
        for (const k of ["metrics_before", "metrics_after"]) {
          assert.strictEqual(summary[k].examples, 2);
          for (const m of ["rouge-1", "rouge-2", "rouge-l", "bleu-4"]) {
            assert.ok(typeof summary[k][m] === "number", `${k}.${m}`);
          }
        }
        for (const s of ["validate", "train", "evaluate-after", "merge-adapter"]) {
          assert.ok(summary.step_seconds[s] >= 0, `no time for ${s}`);
        }
        const md = await Deno.readTextFile(join(out, "report.md"));
        assert.match(md, /<svg [^]*class="series"[^]*<\/svg>/);
        for (const f of ["adapter_model.safetensors", "adapter_config.json"]) {
          await Deno.stat(join(out, "train", f));
        }
        await Deno.stat(join(out, "merged-model", "config.json"));

        const second = await runPipeline("pipelines/lora.yaml", { out, sets, log });
        assert.ok(
          Object.values(actions(second)).every((a) => a === "skip"),
          JSON.stringify(actions(second)),
        );

        const third = await runPipeline("pipelines/lora.yaml", {
          out,
          sets: [...sets, "training_args.learning_rate=5e-4"],
          log,
        });
        const a = actions(third);
        const rerun = Object.keys(a).filter((k) => a[k] === "run");
        assert.deepStrictEqual(rerun, ["train", "evaluate-after", "merge-adapter", "report"]);
      } catch (e) {
        console.error(lines.join("\n"));
        throw e;
      }
    });
  },
});

Deno.test({
  name: "demo pipeline: bad records stop the run at validate, with FILE:LINE for each",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withDemoSlice(12, 3, async (data, tmp) => {
      const train = join(data, "train.json");
      const rows = (await Deno.readTextFile(train)).split("\n");
      rows[2] = '{"content": "类型#裙*颜色#红色", "summary": 42}';
      rows[6] = '{"content": "类型#裙*颜色#红色"}';
      await Deno.writeTextFile(train, rows.join("\n"));
      const out = join(tmp, "run");
      const printed: string[] = [];
      const orig = [console.log, console.error];
      console.log = console.error = (...a: unknown[]) => printed.push(a.join(" "));
      let err: unknown;
      try {
        await runPipeline("pipelines/lora.yaml", {
          out,
          sets: [`data=${data}`, ...SHORT],
          log: () => {},
        });
      } catch (e) {
        err = e;
      } finally {
        [console.log, console.error] = orig;
      }
      assert.ok(err instanceof UserError, String(err));
      assert.match(err.message, /step "validate" \(stage validate\) failed/);
      const text = printed.join("\n");
      assert.match(
        text,
        new RegExp(`${train.replaceAll("/", "\\/")}:3: summary: must be a string`),
      );
      assert.match(text, new RegExp(`${train.replaceAll("/", "\\/")}:7: summary: missing`));
      // nothing after validate ran
      await assert.rejects(Deno.stat(join(out, "data")));
      await assert.rejects(Deno.stat(join(out, "train")));
    });
  },
});
