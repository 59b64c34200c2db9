/**
 * merge-adapter against PEFT's merge_and_unload (tests/fixtures/merge, made
 * by tools/check_merge.py): the merged weights, the untouched ones, the
 * logits of the merged model against base + adapter, shards, dtypes, and what
 * cannot be merged.
 */
import assert from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import { getGpu } from "../lib/gpu/device.ts";
import { readAdapterDir } from "../lib/model/adapter_dir.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import { addLoraDelta, mergeAdapter } from "../lib/model/merge.ts";
import { OUTPUT_MARKER } from "../lib/outdir.ts";
import { Checkpoint } from "../lib/safetensors/checkpoint.ts";
import { SafetensorsFile } from "../lib/safetensors/read.ts";
import { writeSafetensorsF32 } from "../lib/safetensors/write.ts";
import { runCli, withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const PEFT = join(FIX, "tiny-lora-peft");
const expected = JSON.parse(await Deno.readTextFile(join(FIX, "merge/expected.json")));

async function open(dir: string): Promise<Checkpoint> {
  const c = await Checkpoint.open(dir);
  assert.ok(c, `${dir} holds weights`);
  return c;
}

async function logits(modelDir: string, adapterDir?: string): Promise<Float32Array> {
  const a = adapterDir ? await readAdapterDir(adapterDir) : undefined;
  const m = await loadGlmModel(await getGpu(), modelDir, {
    adapter: a?.spec ?? { kind: "none" },
    frozenF16: false,
    maxBatch: 1,
    maxSeq: 16,
    seed: 1,
  });
  try {
    if (a) m.setParams(a.tensors);
    const ids = Int32Array.from(expected.input_ids as number[]);
    return await m.logits(ids, 1, ids.length);
  } finally {
    m.destroy();
  }
}

Deno.test("merge-adapter: the merged weights equal PEFT's merge_and_unload", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "merged");
    const r = await mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: out });
    assert.deepStrictEqual(r.merged.sort(), expected.changed);
    assert.deepStrictEqual(r.files, ["config.json", "model.safetensors", "tokenizer.model"]);
    const ours = await open(out);
    const base = await open(TINY);
    const peft = await SafetensorsFile.open(join(FIX, "merge/merged.safetensors"));
    for (const name of expected.changed as string[]) {
      const got = await ours.f32(name), want = await peft.f32(name), w0 = await base.f32(name);
      let moved = 0;
      for (let i = 0; i < want.length; i++) {
        assert.ok(
          Math.abs(got[i] - want[i]) <= 1e-6 * Math.abs(want[i]) + 1e-7,
          `${name}[${i}]: ${got[i]} vs ${want[i]}`,
        );
        if (got[i] !== w0[i]) moved++;
      }
      assert.ok(moved > want.length / 2, `${name} changed`);
    }
    for (const name of expected.unchanged as string[]) {
      assert.deepStrictEqual(await ours.raw(name), await base.raw(name), name);
      assert.strictEqual(ours.info(name).dtype, base.info(name).dtype);
    }
    assert.deepStrictEqual(ours.names().sort(), base.names().sort());
    for (const f of ["config.json", "tokenizer.model"]) {
      assert.deepStrictEqual(await Deno.readFile(join(out, f)), await Deno.readFile(join(TINY, f)));
    }
    // Nothing is left beside the out dir.
    assert.deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["merged"]);
  });
});

Deno.test("merge-adapter: the merged model's logits equal base + adapter", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "merged");
    await mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: out });
    const merged = await logits(out);
    const withAdapter = await logits(TINY, PEFT);
    const base = await logits(TINY);
    let max = 0, diff = 0, moved = 0;
    for (let i = 0; i < merged.length; i++) {
      max = Math.max(max, Math.abs(withAdapter[i]));
      diff = Math.max(diff, Math.abs(merged[i] - withAdapter[i]));
      moved = Math.max(moved, Math.abs(withAdapter[i] - base[i]));
    }
    assert.ok(diff <= 1e-4 * max, `max |Δ| ${diff} vs max |logit| ${max}`);
    assert.ok(moved > 100 * diff, "the adapter changes the logits");
    // And PEFT's merged model, row by row (first 8 logits and the sum).
    const V = merged.length / expected.input_ids.length;
    (expected.merged_logits as { head: number[]; sum: number }[]).forEach((row, t) => {
      row.head.forEach((v, j) => {
        assert.ok(Math.abs(merged[t * V + j] - v) <= 1e-4 * max, `row ${t} col ${j}`);
      });
      let s = 0;
      for (let j = 0; j < V; j++) s += merged[t * V + j];
      assert.ok(
        Math.abs(s - row.sum) <= 1e-4 * max * Math.sqrt(V),
        `row ${t} sum ${s} vs ${row.sum}`,
      );
    });
  });
});

Deno.test("merge-adapter: shards at --shard-size, f16 stays f16, a re-run replaces the dir", async () => {
  await withTempDir(async (dir) => {
    const single = join(dir, "single"), sharded = join(dir, "sharded");
    await mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: single });
    const r = await mergeAdapter({
      modelDir: TINY,
      adapterDir: PEFT,
      outDir: sharded,
      shardSize: "100KB",
    });
    const shards = r.files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    assert.ok(shards.length >= 3, r.files.join(", "));
    assert.ok(r.files.includes("model.safetensors.index.json"));
    const index = JSON.parse(
      await Deno.readTextFile(join(sharded, "model.safetensors.index.json")),
    );
    assert.deepStrictEqual(new Set(Object.values(index.weight_map)), new Set(shards));
    for (const s of shards) assert.ok((await Deno.stat(join(sharded, s))).size <= 100_000 + 4096);
    const a = await open(single), b = await open(sharded);
    for (const n of a.names()) assert.deepStrictEqual(await b.raw(n), await a.raw(n), n);

    // An f16 base: every tensor stays F16; the merged ones are the f32 merge rounded once.
    const h = join(dir, "f16");
    await mergeAdapter({ modelDir: join(FIX, "tiny-f16"), adapterDir: PEFT, outDir: h });
    const c = await open(h);
    const f16Base = await open(join(FIX, "tiny-f16"));
    for (const n of c.names()) assert.strictEqual(c.info(n).dtype, "F16", n);
    for (const n of expected.changed as string[]) {
      const got = await c.f32(n);
      // The same merge on the f16 weights read as f32, then rounded: within half an f16 ulp.
      const w = await f16Base.f32(n);
      const ad = await readAdapterDir(PEFT);
      const A = ad.tensors.get(`base_model.model.${n.replace(/\.weight$/, ".lora_A.weight")}`)!;
      const B = ad.tensors.get(`base_model.model.${n.replace(/\.weight$/, ".lora_B.weight")}`)!;
      const [out, inDim] = c.info(n).shape;
      addLoraDelta(w, A, B, out, inDim, 4, expected.scale);
      for (let i = 0; i < w.length; i++) {
        assert.ok(Math.abs(got[i] - w[i]) <= Math.abs(w[i]) * 2 ** -11 + 2 ** -25, `${n}[${i}]`);
      }
    }

    // An earlier merge's dir is replaced whole (shards and all); a file added to it since stops
    // the merge, kept, unless --force.
    await Deno.writeTextFile(join(sharded, "notes.txt"), "mine");
    await assert.rejects(
      () => mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: sharded }),
      (e) =>
        e instanceof UserError &&
        /now also holds notes\.txt \(not written by merge-adapter\)/.test(e.message),
    );
    assert.strictEqual(await Deno.readTextFile(join(sharded, "notes.txt")), "mine");
    await Deno.remove(join(sharded, "notes.txt"));
    await mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: sharded });
    assert.deepStrictEqual(
      [...Deno.readDirSync(sharded)].map((e) => e.name).sort(),
      [OUTPUT_MARKER, "config.json", "model.safetensors", "tokenizer.model"],
    );
    await Deno.writeTextFile(join(sharded, "stale.txt"), "x");
    await mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: sharded, force: true });
    assert.ok(![...Deno.readDirSync(sharded)].some((e) => e.name === "stale.txt"));

    // Merged values past float16's range, into an f16 base, are refused; nothing is written.
    const big = join(dir, "big-adapter");
    await Deno.mkdir(big);
    await Deno.copyFile(join(PEFT, "adapter_config.json"), join(big, "adapter_config.json"));
    const ad = await readAdapterDir(PEFT);
    const scaled = new Map(
      [...ad.tensors].map(([k, v]) => [
        k,
        { shape: ad.shapes.get(k)!, data: /lora_B/.test(k) ? v.map(() => 6e4) : v },
      ]),
    );
    await writeSafetensorsF32(join(big, "adapter_model.safetensors"), scaled);
    const over = join(dir, "over");
    await assert.rejects(
      () => mergeAdapter({ modelDir: join(FIX, "tiny-f16"), adapterDir: big, outDir: over }),
      (e) => e instanceof UserError && /beyond float16's range \(±65504\)/.test(e.message),
    );
    assert.ok(!(await Deno.stat(over).then(() => true, () => false)));
  });
});

Deno.test("merge-adapter: a P-Tuning prefix cannot be merged; bad arguments are UserErrors", async () => {
  await withTempDir(async (dir) => {
    const prefix = join(dir, "prefix");
    await Deno.mkdir(prefix);
    await Deno.copyFile(
      join(FIX, "tiny-train/prefix_init.safetensors"),
      join(prefix, "prefix_encoder.safetensors"),
    );
    await Deno.writeTextFile(
      join(prefix, "prefix_config.json"),
      JSON.stringify({ pre_seq_len: 4 }),
    );
    await assert.rejects(
      () => mergeAdapter({ modelDir: TINY, adapterDir: prefix, outDir: join(dir, "o") }),
      (e: Error) =>
        e instanceof UserError && /cannot be merged/.test(e.message) &&
        /--adapter/.test(e.message) && /deno task chat/.test(e.message),
    );
    await assert.rejects(
      () => mergeAdapter({ modelDir: TINY, adapterDir: PEFT, outDir: TINY }),
      /is the --model dir/,
    );
    await assert.rejects(
      () =>
        mergeAdapter({
          modelDir: TINY,
          adapterDir: PEFT,
          outDir: join(dir, "o"),
          shardSize: "lots",
        }),
      /--shard-size/,
    );
    // An adapter for another model size names the tensor and both shapes.
    await assert.rejects(
      () =>
        mergeAdapter({
          modelDir: join(FIX, "tiny-lora-peft"),
          adapterDir: PEFT,
          outDir: join(dir, "o"),
        }),
      UserError,
    );
    assert.deepStrictEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["prefix"]);

    // Through the CLI: exit 1, the message, no stack trace.
    const o = await runCli(
      ["stage", "merge-adapter", "--model", TINY, "--adapter", prefix, "--out", join(dir, "o")],
    );
    const err = o.err;
    assert.strictEqual(o.code, 1, err);
    assert.match(err, /cannot be merged/);
    assert.doesNotMatch(err, /\n\s+at /);
  });
});

Deno.test("merge-adapter: addLoraDelta is W + scale·B·A", () => {
  const W = Float32Array.from([1, 2, 3, 4, 5, 6]); // [2, 3]
  const A = Float32Array.from([1, 0, 2, 0, 1, 1]); // [2, 3]
  const B = Float32Array.from([1, 2, 0, 3]); // [2, 2]
  addLoraDelta(W, A, B, 2, 3, 2, 0.5);
  // B·A = [[1, 2, 4], [0, 3, 3]]
  assert.deepStrictEqual([...W], [1.5, 3, 5, 4, 6.5, 7.5]);
});

Deno.test("merge-adapter: a full fine-tuning output as the base: its run files are not copied", async () => {
  await withTempDir(async (dir) => {
    const base = join(dir, "sft");
    await Deno.mkdir(base);
    for await (const e of Deno.readDir(TINY)) {
      await Deno.copyFile(join(TINY, e.name), join(base, e.name));
    }
    for (const f of ["trainer_state.json", "training_args.json", "metrics.jsonl"]) {
      await Deno.writeTextFile(join(base, f), "{}\n");
    }
    const out = join(dir, "merged");
    const r = await mergeAdapter({ modelDir: base, adapterDir: PEFT, outDir: out });
    const names = [...Deno.readDirSync(out)].map((e) => e.name).filter((n) => !n.startsWith("."));
    assert.deepStrictEqual(names.sort(), [...Deno.readDirSync(TINY)].map((e) => e.name).sort());
    assert.deepStrictEqual(r.files.sort(), names.sort());
    // and a re-run into it is not refused for files it has not got
    await mergeAdapter({ modelDir: base, adapterDir: PEFT, outDir: out });
  });
});
