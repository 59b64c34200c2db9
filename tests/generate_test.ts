/**
 * KV-cache generation on the GPU model against the CPU reference (which
 * recomputes the whole sequence each step): with LoRA and P-Tuning v2
 * adapters, batched prompts of different lengths, stop ids, sampling
 * options, and bad input.
 */
import assert from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { UserError } from "../lib/errors.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { loadGlmConfig } from "../lib/model/config.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import { SafetensorsFile } from "../lib/safetensors/mod.ts";
import { CpuGlm, loadCpuGlm } from "../lib/model/cpu/glm.ts";
import { readTinyForward } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url);

const TINY = new URL("tiny", FIX).pathname;
const config = await loadGlmConfig(TINY);
const plain = (await loadCpuGlm(TINY, { kind: "none" })).weights;
const forward = await readTinyForward();
const prompts: number[][] = [
  forward.greedy[0].prompt,
  forward.cases[0].input_ids[0].slice(0, 23),
  forward.greedy[1]?.prompt ?? forward.cases[2].input_ids[0].slice(0, 9),
];

async function init(kind: string): Promise<Map<string, Float32Array>> {
  const f = await SafetensorsFile.open(
    new URL(`tiny-expected/grads_${kind}.safetensors`, FIX).pathname,
  );
  const m = new Map<string, Float32Array>();
  for (const k of f.names()) if (k.startsWith("init/")) m.set(k.slice(5), await f.f32(k));
  return m;
}

const cases: [string, AdapterSpec][] = [
  ["lora_all", {
    kind: "lora",
    r: 4,
    alpha: 32,
    dropout: 0.1,
    targetModules: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
  }],
  ["prefix_proj", { kind: "prefix", preSeqLen: 4, prefixProjection: true }],
  ["prefix", { kind: "prefix", preSeqLen: 4, prefixProjection: false }],
];

for (const [kind, adapter] of cases) {
  Deno.test(`generate with ${kind}: KV cache and batching agree with the CPU reference`, async () => {
    const gpu = await getGpu();
    const params = await init(kind);
    const m = await loadGlmModel(gpu, TINY, {
      adapter,
      frozenF16: false,
      maxBatch: 2,
      maxSeq: 32,
      seed: 3,
    });
    m.setParams(params);
    const cpu = new CpuGlm(config, plain, adapter);
    cpu.setParams(params);
    const n = 12;
    const want = cpu.generate(prompts, { maxNewTokens: n, stopIds: [] });
    const got = await m.generate(prompts, { maxNewTokens: n, stopIds: [] });
    assert.deepEqual(got, want);
    // Alone, each prompt gives the same tokens as in the batch.
    for (let i = 0; i < prompts.length; i++) {
      assert.deepEqual(await m.generate([prompts[i]], { maxNewTokens: n, stopIds: [] }), [want[i]]);
    }
    // A stop id ends only its own row.
    const stop = want[1][4];
    const stopped = await m.generate(prompts, { maxNewTokens: n, stopIds: [stop] });
    stopped.forEach((row, i) => {
      const k = want[i].indexOf(stop);
      assert.deepEqual(row, k < 0 ? want[i] : want[i].slice(0, k));
    });
    m.destroy();
  });
}

Deno.test("generate: sampling options, zero tokens, bad prompts", async () => {
  const gpu = await getGpu();
  const m = await loadGlmModel(gpu, TINY, {
    adapter: { kind: "none" },
    maxBatch: 1,
    maxSeq: 16,
    seed: 1,
  });
  assert.deepEqual(await m.generate(prompts, { maxNewTokens: 0, stopIds: [] }), [[], [], []]);
  const opts = { maxNewTokens: 10, stopIds: [], doSample: true, temperature: 1.2, topP: 0.95 };
  const a = await m.generate(prompts, { ...opts, seed: 1 });
  const b = await m.generate(prompts, { ...opts, seed: 1 });
  const c = await m.generate(prompts, { ...opts, seed: 2 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  a.forEach((row) => assert.equal(row.length, 10));
  await assert.rejects(() => m.generate([[]], { maxNewTokens: 2, stopIds: [] }), UserError);
  await assert.rejects(
    () => m.generate([[1, config.padded_vocab_size]], { maxNewTokens: 2, stopIds: [] }),
    UserError,
  );
  m.destroy();
});

Deno.test("generate: positions past the model's rotary table (seq_length) grow it", async () => {
  const gpu = await getGpu();
  const m = await loadGlmModel(gpu, TINY, {
    adapter: { kind: "none" },
    frozenF16: false,
    maxBatch: 1,
    maxSeq: 16,
    seed: 1,
  });
  const n = config.seq_length - prompts[0].length + 6;
  const got = await m.generate([prompts[0]], { maxNewTokens: n, stopIds: [] });
  const want = new CpuGlm(config, plain, { kind: "none" }).generate([prompts[0]], {
    maxNewTokens: n,
    stopIds: [],
  });
  assert.deepEqual(got, want);
  m.destroy();
});
