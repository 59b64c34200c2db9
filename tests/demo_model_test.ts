import assert from "node:assert";
import { join } from "node:path";
import { initWeights, writeWeights } from "../data/make_demo_model.ts";
import { parseGlmConfig } from "../lib/model/config.ts";
import { glmWeightShapes } from "../lib/model/weights.ts";
import { makePretrain, summaryFor } from "../data/make_demo.ts";
import { readSafetensorsF32 } from "../lib/safetensors/mod.ts";

const modelDir = new URL("../data/demo-model/", import.meta.url).pathname;

Deno.test("demo base model: the committed weights have every tensor of the config, as F16", async () => {
  const config = parseGlmConfig(
    JSON.parse(await Deno.readTextFile(join(modelDir, "config.json"))),
    "config.json",
  );
  const file = join(modelDir, "model.safetensors");
  const bytes = await Deno.readFile(file);
  const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  delete header.__metadata__;
  const shapes = glmWeightShapes(config);
  assert.deepStrictEqual(Object.keys(header).sort(), [...shapes.keys()].sort());
  for (const [name, shape] of shapes) {
    assert.deepStrictEqual(header[name].shape, shape, name);
    assert.strictEqual(header[name].dtype, "F16", name);
  }
  // trained, not a random start: norms moved away from 1
  const w = await readSafetensorsF32(file);
  const norm = w.get("transformer.encoder.final_layernorm.weight")!.data;
  assert.ok(norm.some((x) => Math.abs(x - 1) > 0.05));
});

Deno.test("demo base model: the random start depends on the seed only, and round-trips as F16", async () => {
  const config = parseGlmConfig(
    JSON.parse(await Deno.readTextFile(join(modelDir, "config.json"))),
    "config.json",
  );
  const a = initWeights(config, 5);
  const b = initWeights(config, 5);
  const c = initWeights(config, 6);
  const emb = "transformer.embedding.word_embeddings.weight";
  assert.deepStrictEqual(a.get(emb)!.data, b.get(emb)!.data);
  assert.notDeepStrictEqual(a.get(emb)!.data, c.get(emb)!.data);
  const x = a.get(emb)!.data;
  const mean = x.reduce((s, v) => s + v, 0) / x.length;
  const std = Math.sqrt(x.reduce((s, v) => s + (v - mean) ** 2, 0) / x.length);
  assert.ok(Math.abs(mean) < 1e-3 && Math.abs(std - 0.02) < 1e-3, `mean ${mean}, std ${std}`);
  assert.ok(
    a.get("transformer.encoder.layers.0.input_layernorm.weight")!.data.every((v) => v === 1),
  );
  assert.ok(
    a.get("transformer.encoder.layers.0.self_attention.query_key_value.bias")!.data.every((v) =>
      v === 0
    ),
  );
  const dir = await Deno.makeTempDir();
  try {
    await writeWeights(join(dir, "m.safetensors"), a, "F16");
    const back = await readSafetensorsF32(join(dir, "m.safetensors"));
    const y = back.get(emb)!.data;
    for (let i = 0; i < x.length; i += 97) {
      assert.ok(Math.abs(x[i] - y[i]) <= Math.abs(x[i]) * 1e-3);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pretraining corpus: the demo's phrases, rarely the demo's summary", () => {
  const { train, dev } = makePretrain(1234, 400, 20);
  let same = 0;
  for (const r of [...train, ...dev]) {
    const demo = summaryFor(r.content, 0);
    // by chance (上衣's opening is the demo's, an order kept, a closing drawn) a record can match
    if (r.summary === demo || r.summary === summaryFor(r.content, 1)) same++;
    // the same phrases: every comma-separated middle part of the demo summary appears
    const phrases = demo.slice(0, -1).split("，").slice(1, -1);
    for (const p of phrases) assert.ok(r.summary.includes(p), `${p} not in ${r.summary}`);
    const type = r.content.split("*")[0].split("#")[1];
    assert.ok(r.summary.startsWith(`这款${type}`), r.summary);
  }
  assert.ok(same < 420 * 0.02, `${same} of 420 pretraining summaries are demo summaries`);
  assert.deepStrictEqual(makePretrain(1234, 20, 2), makePretrain(1234, 20, 2));
});
