/**
 * chatglm3-6b's padded vocabulary (65,024) and two sizes between it and
 * 32,768 against PyTorch (tools/make_vocab_fixtures.py): per-record losses
 * through the evaluate stage's library call, three LoRA AdamW steps through
 * the train stage's, greedy generation, and the losses of a model merged
 * with an adapter by merge-adapter. A row of 65,024 logits once ran past the
 * CPU drivers' loop limit (lib/gpu/loop_budget.ts) and lost its tail: losses
 * of 6.3 where PyTorch gives 11.1.
 *
 * The weights are not stored: `hashedValues` makes the same numbers as the
 * tool's `hashed_values` (k·2^-13, exact in f16), written here as an f16
 * checkpoint.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { join } from "node:path";
import { evaluate } from "../lib/eval/evaluate.ts";
import { getGpu } from "../lib/gpu/device.ts";
import { mix } from "../lib/gpu/kernels/dropout.ts";
import { glmWeightShapes } from "../lib/model/weights.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import { mergeAdapter } from "../lib/model/merge.ts";
import type { GlmConfig } from "../lib/model/config.ts";
import { writeSafetensors } from "../lib/safetensors/write.ts";
import { runTraining } from "../lib/train/run.ts";
import { withTempDir } from "./test_util.ts";

interface Record {
  input_ids: number[];
  labels: number[];
}
interface VocabCase {
  config: Partial<GlmConfig>;
  records: Record[];
  losses: number[];
  lora?: {
    r: number;
    lora_alpha: number;
    target_modules: string[];
    init_shapes: { [name: string]: number[] };
    learning_rate: number;
    max_steps: number;
    per_device_train_batch_size: number;
    step_losses: number[];
  };
  merged_losses?: number[];
  greedy?: { prompt: number[]; tokens: number[] }[];
}
const expected: { seed: number; vocabs: { [v: string]: VocabCase } } = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/vocab/expected.json", import.meta.url)),
);

function fnv1a(name: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(name)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/** tools/make_vocab_fixtures.py's `hashed_values` (`mix` is lowbias32). */
function hashedValues(name: string, n: number, seed: number): Float32Array {
  const salt = mix((fnv1a(name) ^ seed) >>> 0);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = ((mix((i ^ salt) >>> 0) >>> 21) - 1024) * 2 ** -13;
  return out;
}

/** A model dir: config.json, the hashed weights as one f16 safetensors file, a tokenizer. */
async function writeModel(dir: string, c: VocabCase, seed: number): Promise<void> {
  const config = {
    model_type: "chatglm",
    rmsnorm: true,
    post_layer_norm: true,
    add_bias_linear: false,
    multi_query_attention: true,
    rope_ratio: 1,
    torch_dtype: "float16",
    ...c.config,
  };
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(config));
  // Evaluate loads a tokenizer even to score; the records are token ids already.
  await Deno.copyFile(
    new URL("./fixtures/tiny/tokenizer.model", import.meta.url),
    join(dir, "tokenizer.model"),
  );
  const shapes = glmWeightShapes(config as GlmConfig);
  await writeSafetensors(
    join(dir, "model.safetensors"),
    [...shapes].map(([name, shape]) => ({
      name,
      dtype: "F16" as const,
      shape,
      data: () => {
        const n = shape.reduce((a, b) => a * b, 1);
        return name.includes("norm") ? new Float32Array(n).fill(1) : hashedValues(name, n, seed);
      },
    })),
  );
}

async function writeJsonl(path: string, rows: unknown[]): Promise<void> {
  await Deno.writeTextFile(path, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}

/** Per-record losses of `records` under `modelDir` (+ adapter), as the evaluate stage scores them. */
async function stageLosses(dir: string, modelDir: string, records: Record[]): Promise<number[]> {
  const input = join(dir, "score.jsonl"), out = join(dir, "eval-" + crypto.randomUUID());
  await writeJsonl(input, records);
  await evaluate({
    modelDir,
    input,
    outDir: out,
    batchSize: 4,
    generation: { maxNewTokens: 1, doSample: false, temperature: 1, topP: 1, topK: 0, seed: 0 },
    segmenter: "jieba",
    quiet: true,
  });
  const lines = (await Deno.readTextFile(join(out, "predictions.jsonl"))).trim().split("\n");
  return lines.map((l) => JSON.parse(l).loss as number);
}

function close(got: number[], want: number[], rel: number, what: string): void {
  assertEquals(got.length, want.length, what);
  got.forEach((g, i) => {
    const e = Math.abs(g - want[i]) / Math.abs(want[i]);
    assert(e <= rel, `${what} ${i}: ${g} vs PyTorch ${want[i]} (${e.toExponential(1)} relative)`);
  });
}

for (const [vocab, c] of Object.entries(expected.vocabs)) {
  Deno.test(`vocabulary ${vocab}: per-record losses match PyTorch within 1e-4`, async () => {
    await withTempDir(async (dir) => {
      const model = join(dir, "model");
      await writeModel(model, c, expected.seed);
      close(await stageLosses(dir, model, c.records), c.losses, 1e-4, `V ${vocab} record`);
    });
  });
}

const big = expected.vocabs["65024"];

Deno.test("vocabulary 65024: LoRA steps, greedy generation and a merged adapter match PyTorch", async () => {
  const lora = big.lora!;
  await withTempDir(async (dir) => {
    const model = join(dir, "model");
    await writeModel(model, big, expected.seed);

    // The initial adapter, PEFT's layout, with hashed non-zero factors.
    const adapter = join(dir, "init-adapter");
    await Deno.mkdir(adapter);
    await Deno.writeTextFile(
      join(adapter, "adapter_config.json"),
      JSON.stringify({
        peft_type: "LORA",
        task_type: "CAUSAL_LM",
        r: lora.r,
        lora_alpha: lora.lora_alpha,
        lora_dropout: 0,
        target_modules: lora.target_modules,
        bias: "none",
      }),
    );
    await writeSafetensors(
      join(adapter, "adapter_model.safetensors"),
      Object.entries(lora.init_shapes).map(([name, shape]) => ({
        name,
        dtype: "F32" as const,
        shape,
        data: hashedValues(name, shape.reduce((a, b) => a * b, 1), expected.seed),
      })),
    );

    // Three AdamW steps, in record order, through the train stage's run.
    const train = join(dir, "train.jsonl");
    await writeJsonl(train, big.records);
    const cfg = join(dir, "lora.yaml");
    await Deno.writeTextFile(
      cfg,
      `data_config: {train_file: train.jsonl}
max_input_length: 64
max_output_length: 64
training_args:
  output_dir: ./out
  max_steps: ${lora.max_steps}
  learning_rate: ${lora.learning_rate}
  per_device_train_batch_size: ${lora.per_device_train_batch_size}
  logging_steps: 1
  save_strategy: "no"
peft_config:
  peft_type: LORA
  task_type: CAUSAL_LM
  r: ${lora.r}
  lora_alpha: ${lora.lora_alpha}
  lora_dropout: 0.0
  target_modules: [${lora.target_modules.join(", ")}]
`,
    );
    const res = await runTraining({
      modelDir: model,
      configPath: cfg,
      trainFile: train,
      outDir: join(dir, "run"),
      initAdapter: adapter,
      shuffle: false,
    });
    const steps = [...res.stepLosses].sort((a, b) => a[0] - b[0]).map(([, l]) => l);
    close(steps, lora.step_losses, 1e-4, "LoRA step");

    // Greedy continuations of the base model, past the first 32,768 ids.
    const gpu = await getGpu();
    const m = await loadGlmModel(gpu, model, {
      adapter: { kind: "none" },
      maxBatch: 2,
      maxSeq: 32,
      seed: 0,
    });
    try {
      const got = await m.generate(big.greedy!.map((g) => g.prompt), {
        maxNewTokens: 6,
        stopIds: [],
      });
      assertEquals(got, big.greedy!.map((g) => g.tokens));
    } finally {
      m.destroy();
    }

    // merge-adapter with the initial adapter, then the merged model's losses.
    const merged = join(dir, "merged");
    await mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: merged });
    close(await stageLosses(dir, merged, big.records), big.merged_losses!, 1e-4, "merged record");
  });
});
