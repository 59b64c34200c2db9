/**
 * Weights holding NaN or infinity — a diverged run's adapter, a corrupt
 * model — are refused by merge-adapter and evaluate (and everything else
 * that loads them), naming the file and the tensor, instead of merging NaN
 * into a model or evaluating to empty predictions.
 */
import { deepStrictEqual, ok as assert, rejects } from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import { evaluate } from "../lib/eval/evaluate.ts";
import { firstNonFinite, firstNonFiniteRaw } from "../lib/finite.ts";
import { mergeAdapter } from "../lib/model/merge.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";
import { writeSafetensorsF32 } from "../lib/safetensors/write.ts";
import { runCli, withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const PEFT = join(FIX, "tiny-lora-peft");
const LORA_B =
  "base_model.model.transformer.encoder.layers.1.self_attention.query_key_value.lora_B.weight";
const DENSE = "transformer.encoder.layers.0.self_attention.dense.weight";

/** A copy of `from` in `to` whose safetensors `file` has `value` at element 5 of `tensor`. */
async function poisoned(from: string, to: string, file: string, tensor: string, value: number) {
  await Deno.mkdir(to);
  for await (const e of Deno.readDir(from)) {
    await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
  const tensors = await readSafetensorsF32(join(from, file));
  assert(tensors.has(tensor), `${file} has ${tensor}`);
  tensors.get(tensor)!.data[5] = value;
  await writeSafetensorsF32(join(to, file), tensors);
}

const GEN = { maxNewTokens: 2, doSample: false, temperature: 1, topP: 1, topK: 1, seed: 1 };

Deno.test("a NaN adapter or model is refused by merge-adapter and evaluate, naming the tensor", async () => {
  await withTempDir(async (dir) => {
    const adapter = join(dir, "nan-adapter");
    await poisoned(PEFT, adapter, "adapter_model.safetensors", LORA_B, NaN);
    const model = join(dir, "inf-model");
    await poisoned(TINY, model, "model.safetensors", DENSE, -Infinity);
    const input = join(dir, "eval.jsonl");
    await Deno.writeTextFile(
      input,
      JSON.stringify({ input_ids: [5, 6, 7], output_ids: [8] }) + "\n",
    );

    const nanAdapter = new RegExp(
      `^${adapter}: tensor ${
        LORA_B.replaceAll(".", "\\.")
      } holds a non-finite value \\(NaN at element 5\\)`,
    );
    const infModel = new RegExp(
      `${model}/model\\.safetensors: tensor ${
        DENSE.replaceAll(".", "\\.")
      } holds a non-finite value \\(-Infinity at element 5\\)`,
    );
    const refused = (re: RegExp) => (e: Error) => e instanceof UserError && re.test(e.message);
    await rejects(
      () => mergeAdapter({ modelDir: TINY, adapterDir: adapter, outDir: join(dir, "m1") }),
      refused(nanAdapter),
    );
    await rejects(
      () => mergeAdapter({ modelDir: model, adapterDir: PEFT, outDir: join(dir, "m2") }),
      refused(infModel),
    );
    const ev = (modelDir: string, adapterDir: string | undefined, out: string) =>
      evaluate({
        modelDir,
        adapterDir,
        input,
        outDir: join(dir, out),
        batchSize: 1,
        generation: GEN,
        segmenter: "char",
        quiet: true,
      });
    await rejects(() => ev(TINY, adapter, "e1"), refused(nanAdapter));
    await rejects(() => ev(model, undefined, "e2"), refused(infModel));
    // Nothing was written for any of them: no merged model, no eval dir.
    deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "eval.jsonl",
      "inf-model",
      "nan-adapter",
    ]);
    // The CLI says it in one line.
    const r = await runCli([
      "stage",
      "merge-adapter",
      "--model",
      TINY,
      "--adapter",
      adapter,
      "--out",
      join(dir, "m3"),
    ]);
    assert(
      r.code === 1 &&
        /^error: \S+nan-adapter: tensor \S+lora_B\.weight holds a non-finite/.test(r.err.trim()),
      r.err,
    );
  });
});

Deno.test("firstNonFinite reads the exponent bits of f32, f16 and bf16", () => {
  deepStrictEqual(firstNonFinite(Float32Array.of(0, -0, 3.4e38, 1e-45)), -1);
  deepStrictEqual(firstNonFinite(Float32Array.of(1, 2, Infinity, NaN)), 2);
  const f32 = new Uint8Array(Float32Array.of(1, NaN).buffer);
  deepStrictEqual(firstNonFiniteRaw(f32, "F32"), 1);
  // An unaligned copy of the same bytes reads the same.
  const shifted = new Uint8Array(9);
  shifted.set(f32, 1);
  deepStrictEqual(firstNonFiniteRaw(shifted.subarray(1), "F32"), 1);
  // f16: 0x7bff is 65504 (finite), 0x7c00 +inf, 0xfe00 NaN; bf16: 0x7f80 +inf.
  const le = (...h: number[]) => new Uint8Array(Uint16Array.from(h).buffer);
  deepStrictEqual(firstNonFiniteRaw(le(0x3c00, 0x7bff), "F16"), -1);
  deepStrictEqual(firstNonFiniteRaw(le(0x3c00, 0x7bff, 0xfe00), "F16"), 2);
  deepStrictEqual(firstNonFiniteRaw(le(0x3f80, 0x7f80), "BF16"), 1);
  deepStrictEqual(firstNonFiniteRaw(le(0x7f80), "I16"), -1);
});
