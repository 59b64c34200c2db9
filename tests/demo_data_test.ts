import assert from "node:assert";
import { makeDemo, summaryFor } from "../data/make_demo.ts";
import { SafetensorsFile } from "../lib/safetensors/read.ts";

const root = new URL("../", import.meta.url);
const demoDir = new URL("data/demo/", root);
const modelDir = new URL("data/demo-model/", root);

async function readLines(url: URL): Promise<{ content: string; summary: string }[]> {
  const text = await Deno.readTextFile(url);
  assert.ok(text.endsWith("\n"), `${url.pathname}: no final newline`);
  return text.slice(0, -1).split("\n").map((line, i) => {
    const v = JSON.parse(line);
    assert.deepStrictEqual(Object.keys(v), ["content", "summary"], `${url.pathname}:${i + 1}`);
    assert.strictEqual(typeof v.content, "string");
    assert.strictEqual(typeof v.summary, "string");
    return v;
  });
}

Deno.test("committed demo data regenerates byte for byte from data/make_demo.ts", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("data/make_demo.ts", root).pathname, "--out", tmp],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.strictEqual(out.code, 0, new TextDecoder().decode(out.stderr));
    for (const name of ["train.json", "dev.json"]) {
      const fresh = await Deno.readFile(`${tmp}/${name}`);
      const committed = await Deno.readFile(new URL(name, demoDir));
      assert.ok(
        fresh.length === committed.length && fresh.every((b, i) => b === committed[i]),
        `${name} differs`,
      );
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("demo data: counts, AdvertiseGen format, disjoint splits", async () => {
  const train = await readLines(new URL("train.json", demoDir));
  const dev = await readLines(new URL("dev.json", demoDir));
  assert.ok(train.length >= 2000, `train has ${train.length}`);
  assert.ok(dev.length >= 100, `dev has ${dev.length}`);
  const contentShape = /^类型#[^*#]+(\*[^*#]+#[^*#]+){3,5}$/u;
  for (const r of [...train, ...dev]) {
    assert.match(r.content, contentShape);
    const n = Array.from(r.summary).length;
    assert.ok(n >= 20 && n <= 60, `summary of ${n} characters: ${r.summary}`);
  }
  const trainContents = new Set(train.map((r) => r.content));
  assert.strictEqual(trainContents.size, train.length, "duplicate content in train");
  assert.ok(dev.every((r) => !trainContents.has(r.content)), "dev content also in train");
});

Deno.test("demo summaries are a function of the attributes (up to the closing)", async () => {
  const records = [
    ...await readLines(new URL("train.json", demoDir)),
    ...await readLines(new URL("dev.json", demoDir)),
  ];
  const used = [0, 0];
  for (const r of records) {
    const v = [0, 1].find((k) => summaryFor(r.content, k as 0 | 1) === r.summary);
    assert.ok(v !== undefined, `summary not derived from content: ${JSON.stringify(r)}`);
    used[v]++;
  }
  // Both closings occur, so there is some variety, but not much.
  assert.ok(used[0] > records.length / 4 && used[1] > records.length / 4, `closings ${used}`);
  assert.throws(() => summaryFor("类型#帽子*颜色#红色", 0), /not a demo content/);
});

Deno.test("makeDemo depends only on the seed", () => {
  const a = makeDemo(7, 50, 5);
  const b = makeDemo(7, 50, 5);
  const c = makeDemo(8, 50, 5);
  assert.deepStrictEqual(a, b);
  assert.notDeepStrictEqual(a, c);
});

/** Top-level fields of a protobuf message: field number → list of raw values (varint or bytes). */
function protoFields(buf: Uint8Array): Map<number, (number | Uint8Array)[]> {
  const fields = new Map<number, (number | Uint8Array)[]>();
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 1;
    for (;;) {
      const b = buf[pos++];
      result += (b & 0x7f) * shift;
      if (b < 0x80) return result;
      shift *= 128;
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    let value: number | Uint8Array;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const len = varint();
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else if (wire === 5) {
      value = new DataView(buf.buffer, buf.byteOffset + pos, 4).getFloat32(0, true);
      pos += 4;
    } else if (wire === 1) {
      pos += 8;
      value = 0;
    } else throw new Error(`unexpected wire type ${wire}`);
    fields.set(field, [...(fields.get(field) ?? []), value]);
  }
  return fields;
}

Deno.test("demo tokenizer.model: BPE, byte fallback, ChatGLM3's normalizer settings; config.json fits it", async () => {
  const model = protoFields(await Deno.readFile(new URL("tokenizer.model", modelDir)));
  const pieces = model.get(1)!.map((p) => {
    const f = protoFields(p as Uint8Array);
    return new TextDecoder().decode(f.get(1)![0] as Uint8Array);
  });
  assert.ok(pieces.length >= 1000 && pieces.length <= 2000, `vocab ${pieces.length}`);
  assert.deepStrictEqual(pieces.slice(0, 4), ["<unk>", "<s>", "</s>", "<0x00>"]);
  assert.strictEqual(pieces[258], "<0xFF>");
  const trainer = protoFields(model.get(2)![0] as Uint8Array);
  assert.strictEqual(trainer.get(3)?.[0], 2, "model_type BPE");
  assert.strictEqual(trainer.get(35)?.[0], 1, "byte_fallback");
  const normalizer = protoFields(model.get(3)![0] as Uint8Array);
  assert.strictEqual(new TextDecoder().decode(normalizer.get(1)![0] as Uint8Array), "identity");
  assert.strictEqual(normalizer.get(3)?.[0] ?? 1, 1, "add_dummy_prefix");
  assert.strictEqual(normalizer.get(4)?.[0], 0, "remove_extra_whitespaces");

  const config = JSON.parse(await Deno.readTextFile(new URL("config.json", modelDir)));
  assert.strictEqual(config.model_type, "chatglm");
  assert.deepStrictEqual(config.architectures, ["ChatGLMModel"]);
  assert.strictEqual(config.auto_map.AutoModel, "modeling_chatglm.ChatGLMForConditionalGeneration");
  assert.strictEqual(config.padded_vocab_size, Math.ceil((pieces.length + 9) / 64) * 64);
  const expected = {
    num_layers: 4,
    hidden_size: 128,
    ffn_hidden_size: 352,
    kv_channels: 32,
    num_attention_heads: 4,
    multi_query_attention: true,
    multi_query_group_num: 2,
    layernorm_epsilon: 1e-5,
    rmsnorm: true,
    add_qkv_bias: true,
    add_bias_linear: false,
    post_layer_norm: true,
    apply_residual_connection_post_layernorm: false,
    seq_length: 256,
    rope_ratio: 1,
    original_rope: true,
    pre_seq_len: null,
    prefix_projection: false,
    // data/make_demo_model.ts stores the trained weights as f16 and says so here.
    torch_dtype: "float16",
  };
  for (const [k, v] of Object.entries(expected)) assert.strictEqual(config[k], v, k);
  const weights = await SafetensorsFile.open(new URL("model.safetensors", modelDir).pathname);
  for (const n of weights.names()) assert.strictEqual(weights.info(n).dtype, "F16", n);
  assert.strictEqual(config.num_attention_heads * config.kv_channels, config.hidden_size);
});
