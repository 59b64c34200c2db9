/**
 * Adapter dirs: PEFT LoRA (as PEFT writes it, and with `.default` keys),
 * P-Tuning v2 in the trainer's, PEFT's and ChatGLM's layouts, what is refused,
 * and model-or-adapter resolution for chat.
 */
import assert from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import { type AdapterSpec, loraScale } from "../lib/model/adapter.ts";
import {
  adapterTensorsFor,
  readAdapterDir,
  resolveModelOrAdapter,
} from "../lib/model/adapter_dir.ts";
import { SafetensorsFile } from "../lib/safetensors/read.ts";
import { type TensorToWrite, writeSafetensors } from "../lib/safetensors/write.ts";
import { withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const PEFT = join(FIX, "tiny-lora-peft");
const EMB = "transformer.prefix_encoder.embedding.weight";

async function tensors(path: string, rename = (n: string) => n): Promise<TensorToWrite[]> {
  const f = await SafetensorsFile.open(path);
  const out: TensorToWrite[] = [];
  for (const n of f.names()) {
    out.push({ name: rename(n), dtype: "F32", shape: f.info(n).shape, data: await f.f32(n) });
  }
  return out;
}

const peftConfig = JSON.parse(await Deno.readTextFile(join(PEFT, "adapter_config.json")));

Deno.test("adapter dir: the PEFT-written LoRA fixture", async () => {
  const a = await readAdapterDir(PEFT);
  assert.deepStrictEqual(a.spec, {
    kind: "lora",
    r: 4,
    alpha: 32,
    dropout: 0,
    targetModules: ["query_key_value"],
  });
  assert.strictEqual(a.baseModel, "tests/fixtures/tiny");
  assert.strictEqual(a.configPath, join(PEFT, "adapter_config.json"));
  assert.strictEqual(a.tensors.size, 4);
  const name = "base_model.model.transformer.encoder.layers.1.self_attention.query_key_value";
  assert.deepStrictEqual(a.shapes.get(`${name}.lora_A.weight`), [4, 64]);
  assert.deepStrictEqual(a.shapes.get(`${name}.lora_B.weight`), [128, 4]);
});

Deno.test("adapter dir: LoRA weights without adapter_config.json read with a fallback spec", async () => {
  await withTempDir(async (dir) => {
    await Deno.copyFile(
      join(PEFT, "adapter_model.safetensors"),
      join(dir, "adapter_model.safetensors"),
    );
    // Without a config there is nothing to say what the weights are.
    await assert.rejects(() => readAdapterDir(dir), /not an adapter directory/);
    const spec: AdapterSpec = {
      kind: "lora",
      r: 4,
      alpha: 16,
      dropout: 0.1,
      targetModules: ["query_key_value"],
    };
    const a = await readAdapterDir(dir, spec);
    assert.deepStrictEqual(a.spec, spec);
    assert.strictEqual(a.configPath, null);
    assert.strictEqual(a.baseModel, null);
    const ref = await readAdapterDir(PEFT);
    assert.deepStrictEqual([...a.tensors.keys()], [...ref.tensors.keys()]);
    for (const [k, v] of ref.tensors) assert.deepStrictEqual(a.tensors.get(k), v, k);
    // The fallback's r must fit the tensors.
    await assert.rejects(() => readAdapterDir(dir, { ...spec, r: 8 }), /does not fit r = 8/);
    // A config, when present, wins over the fallback.
    const withConfig = await readAdapterDir(PEFT, { ...spec, r: 8 });
    assert.strictEqual(withConfig.spec.kind === "lora" && withConfig.spec.r, 4);
  });
});

Deno.test("adapter dir: keys with the adapter name, f16 tensors, rsLoRA scaling", async () => {
  await withTempDir(async (dir) => {
    const ts = await tensors(
      join(PEFT, "adapter_model.safetensors"),
      (n) => n.replace(/\.weight$/, ".default.weight"),
    );
    await writeSafetensors(
      join(dir, "adapter_model.safetensors"),
      ts.map((t) => ({ ...t, dtype: "F16" as const })),
    );
    await Deno.writeTextFile(
      join(dir, "adapter_config.json"),
      JSON.stringify({ ...peftConfig, use_rslora: true, target_modules: "query_key_value" }),
    );
    const a = await readAdapterDir(dir);
    const ref = await readAdapterDir(PEFT);
    assert.deepStrictEqual([...a.tensors.keys()].sort(), [...ref.tensors.keys()].sort());
    for (const [k, v] of ref.tensors) {
      const got = a.tensors.get(k)!;
      for (let i = 0; i < v.length; i++) {
        assert.ok(Math.abs(got[i] - v[i]) <= 1e-3 * Math.abs(v[i]) + 1e-7, `${k}[${i}]`);
      }
    }
    // rsLoRA scales by alpha/√r.
    assert.ok(a.spec.kind === "lora" && a.spec.useRslora && a.spec.alpha === 32);
    assert.ok(Math.abs(loraScale(a.spec) - 32 / Math.sqrt(4)) < 1e-12);
    assert.deepStrictEqual(a.spec.targetModules, ["query_key_value"]);
  });
});

Deno.test("adapter dir: LoRA variants this model does not compute are refused by name", async () => {
  for (
    const [patch, re] of [
      [{ use_dora: true }, /use_dora/],
      [{ bias: "all" }, /bias is "all"/],
      [{ modules_to_save: ["output_layer"] }, /modules_to_save/],
      [{ target_modules: ["q_proj"] }, /target_modules: "q_proj" names no linear layer/],
      [{ r: 8 }, /does not fit r = 8/],
      [{ peft_type: "IA3" }, /peft_type is "IA3"/],
    ] as [Record<string, unknown>, RegExp][]
  ) {
    await withTempDir(async (dir) => {
      await Deno.copyFile(
        join(PEFT, "adapter_model.safetensors"),
        join(dir, "adapter_model.safetensors"),
      );
      await Deno.writeTextFile(
        join(dir, "adapter_config.json"),
        JSON.stringify({ ...peftConfig, ...patch }),
      );
      await assert.rejects(
        () => readAdapterDir(dir),
        (e: Error) => e instanceof UserError && re.test(e.message),
        JSON.stringify(patch),
      );
    });
  }
  // A LoRA adapter and a P-Tuning prefix in one directory: which was meant cannot be told.
  await withTempDir(async (dir) => {
    for (const f of ["adapter_model.safetensors", "adapter_config.json"]) {
      await Deno.copyFile(join(PEFT, f), join(dir, f));
    }
    await Deno.writeTextFile(join(dir, "prefix_config.json"), "{}");
    await assert.rejects(
      () => readAdapterDir(dir),
      /holds a LoRA adapter \(adapter_config\.json\) and a P-Tuning v2 prefix \(prefix_config\.json\)/,
    );
  });
});

Deno.test("adapter dir: P-Tuning v2 in the trainer's, ChatGLM's and PEFT's layouts", async () => {
  const proj = await tensors(join(FIX, "tiny-train/prefix_proj_init.safetensors"));
  const plain = await tensors(join(FIX, "tiny-train/prefix_init.safetensors"));
  // The trainer's files.
  await withTempDir(async (dir) => {
    await writeSafetensors(join(dir, "prefix_encoder.safetensors"), proj);
    await Deno.writeTextFile(
      join(dir, "prefix_config.json"),
      JSON.stringify({ peft_type: "PREFIX_TUNING", pre_seq_len: 4, base_model_name_or_path: TINY }),
    );
    const a = await readAdapterDir(dir);
    assert.deepStrictEqual(a.spec, {
      kind: "prefix",
      preSeqLen: 4,
      prefixProjection: true,
      prefixHiddenSize: 64,
    });
    assert.strictEqual(a.tensors.size, 5);
    assert.strictEqual(a.baseModel, TINY);
    const r = await resolveModelOrAdapter(dir);
    assert.strictEqual(r.modelDir, TINY);
  });
  // ChatGLM's own save: a state dict holding the prefix encoder, config.json with pre_seq_len.
  await withTempDir(async (dir) => {
    await writeSafetensors(join(dir, "pytorch_model-prefix.safetensors"), [
      ...plain,
      { name: "unrelated.weight", dtype: "F32", shape: [2], data: new Float32Array(2) },
    ]);
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({ pre_seq_len: 4 }));
    const a = await readAdapterDir(dir);
    assert.deepStrictEqual(a.spec, { kind: "prefix", preSeqLen: 4, prefixProjection: false });
    assert.deepStrictEqual([...a.tensors.keys()], [EMB]);
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({ pre_seq_len: 8 }));
    await assert.rejects(() => readAdapterDir(dir), /pre_seq_len is 8, but .* has 4 rows/);
  });
  // PEFT's prefix tuning: prompt_embeddings is the key/value table.
  await withTempDir(async (dir) => {
    await writeSafetensors(join(dir, "adapter_model.safetensors"), [
      { ...plain[0], name: "prompt_embeddings" },
    ]);
    await Deno.writeTextFile(
      join(dir, "adapter_config.json"),
      JSON.stringify({ peft_type: "PREFIX_TUNING", num_virtual_tokens: 4 }),
    );
    const a = await readAdapterDir(dir);
    assert.deepStrictEqual(a.spec, { kind: "prefix", preSeqLen: 4, prefixProjection: false });
    assert.deepStrictEqual(a.tensors.get(EMB), plain[0].data);
    // It names no base model: chat needs --model.
    await assert.rejects(() => resolveModelOrAdapter(dir), /does not name its base model.*--model/);
    assert.strictEqual((await resolveModelOrAdapter(dir, TINY)).modelDir, TINY);
  });
});

Deno.test("adapter dir: model or adapter, and where the base model is", async () => {
  assert.deepStrictEqual(await resolveModelOrAdapter(TINY), { modelDir: TINY, adapter: null });
  const r = await resolveModelOrAdapter(PEFT);
  assert.strictEqual(r.modelDir, "tests/fixtures/tiny");
  assert.strictEqual(r.adapter?.spec.kind, "lora");
  await withTempDir(async (dir) => {
    // A relative base path is also tried from the adapter dir.
    await Deno.copyFile(
      join(PEFT, "adapter_model.safetensors"),
      join(dir, "adapter_model.safetensors"),
    );
    await Deno.writeTextFile(
      join(dir, "adapter_config.json"),
      JSON.stringify({ ...peftConfig, base_model_name_or_path: "../nowhere" }),
    );
    await assert.rejects(
      () => resolveModelOrAdapter(dir),
      (e: Error) =>
        e instanceof UserError && e.message.includes(join(dir, "adapter_config.json")) &&
        /base_model_name_or_path is "..\/nowhere"/.test(e.message) && /--model/.test(e.message),
    );
    await assert.rejects(() => resolveModelOrAdapter(dir, join(FIX, "nope")), /--model .*nope/);
  });
  await assert.rejects(
    () => resolveModelOrAdapter(join(FIX, "metrics")),
    /neither a model directory/,
  );
  await assert.rejects(() => resolveModelOrAdapter(join(FIX, "absent")), /no such/);
});

Deno.test("adapter dir: tensors are checked against the model's trainable tensors", async () => {
  const a = await readAdapterDir(PEFT);
  const params = [...a.shapes].map(([name, shape]) => ({ name, shape }));
  assert.strictEqual(adapterTensorsFor(params, a), a.tensors);
  assert.throws(
    () => adapterTensorsFor(params.map((p) => ({ ...p, shape: [p.shape[0] * 2, p.shape[1]] })), a),
    /trained on a model of another size/,
  );
  assert.throws(() => adapterTensorsFor(params.slice(1), a), /does not have/);
  assert.throws(
    () => adapterTensorsFor([...params, { name: "x.lora_A.weight", shape: [4, 64] }], a),
    /has no x\.lora_A\.weight/,
  );
});
