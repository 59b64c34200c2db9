import assert from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import {
  glmGroups,
  glmParameterCount,
  glmQkvWidth,
  loadGlmConfig,
  parseGlmConfig,
} from "../lib/model/config.ts";
import { glmWeightShapes, openWeights, OUTPUT_LAYER } from "../lib/model/weights.ts";
import { f32ToBf16Bits, writeSafetensors } from "../lib/safetensors/mod.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");

async function rejects(p: Promise<unknown> | (() => unknown), re: RegExp): Promise<void> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
    assert.match((e as Error).message, re);
    return;
  }
  assert.fail(`expected an error matching ${re}`);
}

Deno.test("config: the tiny model and chatglm3-6b's config.json", async () => {
  const c = await loadGlmConfig(TINY);
  assert.strictEqual(c.num_layers, 2);
  assert.strictEqual(glmGroups(c), 2);
  assert.strictEqual(glmQkvWidth(c), (4 + 2 * 2) * 16);
  assert.strictEqual(c.rope_ratio, 1);
  assert.strictEqual(c.pre_seq_len, null);

  const big = parseGlmConfig(
    JSON.parse(await Deno.readTextFile(join(FIX, "chatglm3-6b-config.json"))),
  );
  assert.strictEqual(glmQkvWidth(big), 4608);
  assert.strictEqual(big.torch_dtype, "float16");
  assert.strictEqual(big.rope_ratio, 1); // absent in chatglm3-6b: ChatGLMConfig's default
  assert.strictEqual(glmParameterCount(big), 6_243_584_000); // the published size of chatglm3-6b
  assert.strictEqual(glmWeightShapes(big).size, 2 + 28 * 7 + 1);
  // Without multi-query attention every head has its own keys and values.
  assert.strictEqual(glmGroups({ ...big, multi_query_attention: false }), 32);
});

Deno.test("config: bad fields are named with the file", async () => {
  const base = JSON.parse(await Deno.readTextFile(join(TINY, "config.json")));
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ hidden_size: undefined }, /config\.json: hidden_size: missing/],
    [{ num_layers: "2" }, /config\.json: num_layers: expected a positive integer, got "2"/],
    [{ layernorm_epsilon: -1 }, /layernorm_epsilon: expected a positive number/],
    [{ multi_query_attention: "yes" }, /multi_query_attention: expected true or false/],
    [
      { multi_query_group_num: 3 },
      /multi_query_group_num: 3 does not divide num_attention_heads 4/,
    ],
    [{ pre_seq_len: 0 }, /pre_seq_len: expected null or a positive integer/],
    [{ model_type: "llama" }, /model_type: expected "chatglm"/],
    [{ rmsnorm: false }, /rmsnorm: false \(LayerNorm\) is not supported/],
    [{ quantization_bit: 4 }, /quantization_bit: quantized checkpoints are not supported/],
  ];
  for (const [patch, re] of bad) {
    await rejects(() => parseGlmConfig({ ...base, ...patch }, "m/config.json"), re);
  }
  assert.strictEqual(parseGlmConfig({ ...base, pre_seq_len: 16 }).pre_seq_len, 16);
  // every problem at once, each at its line of the file
  const dir = await Deno.makeTempDir();
  try {
    const text = JSON.stringify(
      { ...base, num_layers: 1e9, kv_channels: -3, hidden_size: "x", rmsnorm: false },
      null,
      2,
    );
    await Deno.writeTextFile(join(dir, "config.json"), text);
    const line = (k: string) => text.split("\n").findIndex((l) => l.includes(`"${k}"`)) + 1;
    let message = "";
    try {
      await loadGlmConfig(dir);
    } catch (x) {
      message = (x as Error).message;
    }
    const at = (k: string) => `^${join(dir, "config.json")}:${line(k)}: ${k}: `;
    assert.strictEqual(message.split("\n").length, 4, message);
    assert.match(
      message,
      new RegExp(`${at("rmsnorm")}false \\(LayerNorm\\) is not supported`, "m"),
    );
    assert.match(
      message,
      new RegExp(`${at("hidden_size")}expected a positive integer, got "x"$`, "m"),
    );
    assert.match(
      message,
      new RegExp(`${at("kv_channels")}expected a positive integer, got -3$`, "m"),
    );
    assert.match(message, new RegExp(`${at("num_layers")}1000000000 is out of range`, "m"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await rejects(loadGlmConfig(join(FIX, "no-such-model")), /config\.json: not found/);
  await rejects(
    loadGlmConfig(join(TINY, "config.json")),
    /tiny\/config\.json: a file, not a model directory \(give the directory that holds config\.json\)$/,
  );
});

Deno.test("weights: single file, shards and bf16 give the same tensors", async () => {
  const c = await loadGlmConfig(TINY);
  const single = await openWeights(TINY, c);
  const sharded = await openWeights(join(FIX, "tiny-sharded"), c);
  const bf16 = await openWeights(join(FIX, "tiny-bf16"), c);
  assert.match(sharded.source, /model\.safetensors\.index\.json$/);
  assert.deepStrictEqual([...single.expected().keys()].sort(), single.names().sort());
  for (const [name, shape] of glmWeightShapes(c)) {
    assert.deepStrictEqual(single.shape(name), shape);
    assert.strictEqual(single.dtype(name), "F32");
    assert.strictEqual(bf16.dtype(name), "BF16");
    const a = await single.f32(name);
    assert.deepStrictEqual(await sharded.f32(name), a, name);
    // The bf16 checkpoint holds the f32 weights rounded by torch; our decode gives them back exactly.
    const b = await bf16.f32(name);
    for (let i = 0; i < a.length; i += 7) {
      const u = new Uint32Array(new Float32Array([b[i]]).buffer)[0];
      assert.strictEqual(u >>> 16, f32ToBf16Bits(a[i]), `${name}[${i}]`);
      assert.strictEqual(u & 0xffff, 0);
    }
  }
  assert.strictEqual((await single.raw(OUTPUT_LAYER)).byteLength, 384 * 64 * 4);
});

Deno.test("weights: wrong shapes, missing tensors and .bin-only directories are clear errors", async () => {
  const c = await loadGlmConfig(TINY);
  const dir = await Deno.makeTempDir();
  try {
    await rejects(
      openWeights(TINY, { ...c, ffn_hidden_size: 97 }),
      /tensor transformer\.encoder\.layers\.0\.mlp\.dense_h_to_4h\.weight has shape \[192,64\], but .*config\.json implies \[194,64\]/,
    );
    const w = await openWeights(TINY, c);
    // A config of fewer layers than the file holds: the unused tensors are named (a note).
    const said: string[] = [];
    const err = console.error;
    console.error = (m: string) => said.push(m);
    try {
      await openWeights(TINY, { ...c, num_layers: 1 });
    } finally {
      console.error = err;
    }
    assert.strictEqual(said.length, 1);
    assert.match(
      said[0],
      /: 7 tensor\(s\) that \S+config\.json does not use \(transformer\.encoder\.layers\.1\./,
    );
    const names = w.names().filter((n) => !n.endsWith("layers.1.post_attention_layernorm.weight"));
    await writeSafetensors(
      join(dir, "model.safetensors"),
      names.map((n) => ({ name: n, dtype: "F16", shape: w.shape(n), data: () => w.f32(n) })),
    );
    await rejects(
      openWeights(dir, c),
      /missing 1 tensor\(s\) the config requires: transformer\.encoder\.layers\.1\.post_attention_layernorm\.weight \[64\]/,
    );
    await Deno.remove(join(dir, "model.safetensors"));
    await Deno.writeFile(join(dir, "pytorch_model-00001-of-00002.bin"), new Uint8Array(4));
    await Deno.writeTextFile(join(dir, "pytorch_model.bin.index.json"), "{}");
    await rejects(
      openWeights(dir, c),
      /holds PyTorch weights only \(pytorch_model-00001-of-00002\.bin, pytorch_model\.bin\.index\.json\).*save_pretrained\('.*', safe_serialization=True\)/,
    );
    await Deno.remove(join(dir, "pytorch_model-00001-of-00002.bin"));
    await Deno.remove(join(dir, "pytorch_model.bin.index.json"));
    await rejects(openWeights(dir, c), /no model\.safetensors or model\.safetensors\.index\.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
