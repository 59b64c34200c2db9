import { deepStrictEqual, ok as assert, rejects } from "node:assert";
import { join } from "node:path";
import {
  checkResumable,
  COMPLETE_MARKER,
  findCheckpoint,
  fullFiles,
  listCheckpoints,
  loraFiles,
  lossTotalOf,
  peftLoraConfig,
  prefixFiles,
  removeStaleTemps,
  rotateCheckpoints,
} from "../lib/train/checkpoint.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";
import { writeSafetensorsF32 } from "../lib/safetensors/write.ts";
import { UserError } from "../lib/errors.ts";

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

const LORA_A =
  "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_A.weight";
const LORA_B =
  "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight";

function ramp(n: number, k = 1): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => (i - n / 2) * 0.01 * k);
}

Deno.test("LoRA files: PEFT adapter_config.json and keys, round trip, shape checks", async () => {
  const dir = await Deno.makeTempDir();
  const shapes = new Map([[LORA_A, [2, 4]], [LORA_B, [6, 2]]]);
  const files = loraFiles({
    shapes,
    r: 2,
    alpha: 16,
    dropout: 0.1,
    targetModules: ["query_key_value"],
    baseModel: "THUDM/chatglm3-6b",
  });
  const params = new Map([[LORA_A, ramp(8)], [LORA_B, ramp(12, 2)]]);
  await files.write(dir, params);
  const cfg = JSON.parse(await Deno.readTextFile(join(dir, "adapter_config.json")));
  for (
    const [k, v] of Object.entries({
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      r: 2,
      lora_alpha: 16,
      lora_dropout: 0.1,
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      base_model_name_or_path: "THUDM/chatglm3-6b",
    })
  ) deepStrictEqual(cfg[k], v, k);
  deepStrictEqual(cfg.target_modules, ["query_key_value"]);
  const st = await readSafetensorsF32(join(dir, "adapter_model.safetensors"));
  deepStrictEqual([...st.keys()], [LORA_A, LORA_B]);
  deepStrictEqual(st.get(LORA_B)!.shape, [6, 2]);
  const back = await files.read(dir);
  deepStrictEqual(back.get(LORA_A), params.get(LORA_A));
  // A model with other shapes refuses the adapter, naming the tensor.
  const other = loraFiles({ ...peftOpts(), shapes: new Map([[LORA_A, [4, 4]], [LORA_B, [6, 4]]]) });
  await rejects(
    () => other.read(dir),
    (e: Error) => e instanceof UserError && /lora_A.weight has shape \[2,4\]/.test(e.message),
  );
  await Deno.remove(dir, { recursive: true });
});

function peftOpts() {
  return { r: 4, alpha: 8, dropout: 0, targetModules: ["query_key_value"], baseModel: "m" };
}

Deno.test("the PEFT-written fixture adapter reads through loraFiles", async () => {
  const dir = new URL("./fixtures/tiny-lora-peft/", import.meta.url).pathname;
  const st = await readSafetensorsF32(join(dir, "adapter_model.safetensors"));
  const shapes = new Map([...st].map(([k, t]) => [k, t.shape]));
  const back = await loraFiles({ ...peftOpts(), shapes }).read(dir);
  assert(back.size === st.size && back.size > 0);
  const cfg = JSON.parse(await Deno.readTextFile(join(dir, "adapter_config.json")));
  // Every key we write is one PEFT itself writes.
  for (const k of Object.keys(peftLoraConfig({ ...peftOpts(), shapes }))) assert(k in cfg, k);
});

Deno.test("prefix and full files", async () => {
  const dir = await Deno.makeTempDir();
  const name = "transformer.prefix_encoder.embedding.weight";
  const pf = prefixFiles({
    shapes: new Map([[name, [4, 8]]]),
    preSeqLen: 4,
    prefixProjection: false,
    baseModel: "base",
    numLayers: 2,
    kvChannels: 2,
    groups: 1,
  });
  await pf.write(dir, new Map([[name, ramp(32)]]));
  const pc = JSON.parse(await Deno.readTextFile(join(dir, "prefix_config.json")));
  assert(
    pc.pre_seq_len === 4 && pc.prefix_projection === false && pc.base_model_name_or_path === "base",
  );
  deepStrictEqual((await pf.read(dir)).get(name), ramp(32));

  const base = await Deno.makeTempDir();
  await Deno.writeTextFile(
    join(base, "config.json"),
    '{"model_type":"chatglm","torch_dtype":"float16"}',
  );
  await Deno.writeTextFile(join(base, "tokenizer.model"), "tok");
  await Deno.writeTextFile(join(base, "model.safetensors.index.json"), "{}");
  const w = "transformer.output_layer.weight";
  const ff = fullFiles({ shapes: new Map([[w, [3, 2]]]), baseModelDir: base });
  const out = join(dir, "full");
  await ff.write(out, new Map([[w, ramp(6)]]));
  deepStrictEqual([...Deno.readDirSync(out)].map((e) => e.name).sort(), [
    "config.json",
    "model.safetensors",
    "tokenizer.model",
  ]);
  assert(JSON.parse(await Deno.readTextFile(join(out, "config.json"))).torch_dtype === "float32");
  deepStrictEqual((await ff.read(out)).get(w), ramp(6));
  for (const d of [dir, base]) await Deno.remove(d, { recursive: true });
});

Deno.test("full weights saved as shards with an index (the torch engine past 5 GB) read back", async () => {
  const dir = await Deno.makeTempDir();
  const a = "transformer.output_layer.weight", b = "transformer.embedding.word_embeddings.weight";
  const shapes = new Map([[a, [3, 2]], [b, [2, 2]]]);
  const ff = fullFiles({ shapes, baseModelDir: dir });
  await writeSafetensorsF32(
    join(dir, "model-00001-of-00002.safetensors"),
    new Map([[a, { shape: [3, 2], data: ramp(6) }]]),
  );
  await writeSafetensorsF32(
    join(dir, "model-00002-of-00002.safetensors"),
    new Map([[b, { shape: [2, 2], data: ramp(4, 2) }]]),
  );
  const index = (map: Record<string, string>) =>
    Deno.writeTextFile(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: map }),
    );
  await index({ [a]: "model-00001-of-00002.safetensors", [b]: "model-00002-of-00002.safetensors" });
  const got = await ff.read(dir);
  deepStrictEqual(got.get(a), ramp(6));
  deepStrictEqual(got.get(b), ramp(4, 2));
  // A tensor the index does not list is missing, named with the index.
  await index({ [a]: "model-00001-of-00002.safetensors" });
  await rejects(
    ff.read(dir),
    (e: Error) =>
      e instanceof UserError && e.message.includes("model.safetensors.index.json") &&
      e.message.includes(`tensor ${b} is missing`),
  );
  // A shard the index names but the dir lacks.
  await index({ [a]: "model-00001-of-00002.safetensors", [b]: "model-00003-of-00002.safetensors" });
  await rejects(
    ff.read(dir),
    (e: Error) => e instanceof UserError && /missing shard/.test(e.message),
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("only complete checkpoints count; temporaries are cleaned; rotation keeps the newest", async () => {
  const out = await Deno.makeTempDir();
  const STATE = [
    "optimizer.safetensors",
    "scheduler.json",
    "rng_state.json",
    "resume_state.json",
    "trainer_state.json",
    "training_args.json",
  ];
  // "marked": with checkpoint_complete.json listing its files; "legacy": every state file but
  // no marker (written before the marker existed); "partial": a state file or two, no marker.
  const mk = async (name: string, kind: "marked" | "legacy" | "partial" | "none") => {
    const dir = join(out, name);
    await Deno.mkdir(dir);
    const files = kind === "partial" ? ["trainer_state.json"] : kind === "none" ? [] : STATE;
    for (const f of files) await Deno.writeTextFile(join(dir, f), "{}");
    if (kind === "marked") {
      const sizes = Object.fromEntries(files.map((f) => [f, 2]));
      await Deno.writeTextFile(join(dir, COMPLETE_MARKER), JSON.stringify({ files: sizes }));
    }
  };
  await mk("checkpoint-2", "marked");
  await mk("checkpoint-10", "marked");
  await mk("checkpoint-4", "legacy");
  await mk("checkpoint-12", "none"); // left by something else, no state file
  await mk("checkpoint-16", "partial"); // half-deleted by an older rotation: trainer_state.json only
  await mk(".checkpoint-14.123.abc.tmp", "marked"); // a killed run's half-written checkpoint
  deepStrictEqual((await listCheckpoints(out)).map((c) => c.step), [2, 4, 10]);
  assert((await findCheckpoint(out, "yes")).endsWith("checkpoint-10"));
  assert((await findCheckpoint(out, 4)).endsWith("checkpoint-4"));
  await rejects(
    () => findCheckpoint(out, 12),
    /checkpoint-12 does not exist or is incomplete; available: 2, 4, 10/,
  );
  await rejects(() => findCheckpoint(out, 16), /checkpoint-16 does not exist or is incomplete/);
  // A marked checkpoint that lost a file, or whose file was cut short, is incomplete.
  await Deno.remove(join(out, "checkpoint-10", "optimizer.safetensors"));
  await Deno.writeTextFile(join(out, "checkpoint-2", "scheduler.json"), "{");
  deepStrictEqual((await listCheckpoints(out)).map((c) => c.step), [4]);
  await mk("checkpoint-6", "marked");
  await mk("checkpoint-8", "marked");
  await removeStaleTemps(out);
  assert(![...Deno.readDirSync(out)].some((e) => e.name.endsWith(".tmp")));
  await rotateCheckpoints(out, 2);
  deepStrictEqual((await listCheckpoints(out)).map((c) => c.step), [6, 8]);
  assert(!(await exists(join(out, "checkpoint-4"))), "rotated away");
  const empty = await Deno.makeTempDir();
  await rejects(() => findCheckpoint(empty, "yes"), /holds no complete checkpoint/);
  for (const d of [out, empty]) await Deno.remove(d, { recursive: true });
});

Deno.test("rotation renames a checkpoint aside before deleting it", async () => {
  // Deleting in place can be interrupted with the state files still there; the rename
  // first means a checkpoint name only ever holds a whole checkpoint.
  const out = await Deno.makeTempDir();
  for (const step of [1, 2, 3]) {
    const dir = join(out, `checkpoint-${step}`);
    await Deno.mkdir(dir);
    await Deno.writeTextFile(join(dir, "x.json"), "{}");
    await Deno.writeTextFile(
      join(dir, COMPLETE_MARKER),
      JSON.stringify({ files: { "x.json": 2 } }),
    );
  }
  const removed: string[] = [];
  const realRemove = Deno.remove;
  Deno.remove = (path: string | URL, opts?: Deno.RemoveOptions) => {
    removed.push(String(path));
    return realRemove(path, opts);
  };
  try {
    await rotateCheckpoints(out, 1);
  } finally {
    Deno.remove = realRemove;
  }
  assert(removed.length === 2, removed.join(", "));
  for (const r of removed) assert(/\/\.checkpoint-[12]\.\d+\.\w+\.tmp$/.test(r), r);
  deepStrictEqual((await listCheckpoints(out)).map((c) => c.step), [3]);
  await Deno.remove(out, { recursive: true });
});

Deno.test("tensor files: order and values round trip; a truncated file is a UserError", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "x.safetensors");
  await writeSafetensorsF32(
    path,
    new Map([
      ["z", { shape: [3], data: Float32Array.of(1, -2, 3) }],
      ["a", { shape: [1, 2], data: Float32Array.of(0.5, 1e-30) }],
    ]),
  );
  const t = await readSafetensorsF32(path);
  deepStrictEqual([...t.keys()], ["z", "a"]);
  deepStrictEqual(t.get("a")!.shape, [1, 2]);
  deepStrictEqual(t.get("a")!.data, Float32Array.of(0.5, 1e-30));
  const bytes = await Deno.readFile(path);
  await Deno.writeFile(path, bytes.subarray(0, bytes.length - 4));
  await rejects(() => readSafetensorsF32(path), UserError);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the loss total behind train_loss: as saved, or rebuilt from an older checkpoint's logs", () => {
  const saved = {
    loss_total: { lossSum: 7.5, steps: 3 },
    logging_window: { lossSum: 0, steps: 0 },
  };
  deepStrictEqual(lossTotalOf(saved, []), { lossSum: 7.5, steps: 3 });
  // logged at steps 2 (mean of 2 steps) and 5 (of 3), an eval between, 1 step in the open window
  const history = [
    { step: 2, epoch: 0, loss: 3 },
    { step: 4, epoch: 0, eval_loss: 9 },
    { step: 5, epoch: 0, loss: 2 },
  ];
  const old = { logging_window: { lossSum: 1.5, steps: 1, skipped: 0 } };
  deepStrictEqual(lossTotalOf(old, history), { lossSum: 3 * 2 + 2 * 3 + 1.5, steps: 6 });
});

Deno.test("a checkpoint a run cannot go on from is refused by name: kind, optimizer state, data, schedule", async () => {
  const dir = await Deno.makeTempDir();
  const check = (kind: string, engine: "webgpu" | "torch" = "webgpu", data = {}) =>
    checkResumable(dir, {
      kind,
      engine,
      data,
      schedule: { lr_scheduler_type: "linear", learning_rate: 1e-4 },
    });
  try {
    await Deno.writeFile(join(dir, "adapter_model.safetensors"), new Uint8Array(8));
    await rejects(
      () => check("prefix"),
      /cannot resume: it is a LoRA checkpoint \(adapter_model\.safetensors\), the config trains a P-Tuning v2 run/,
    );
    // no optimizer state: save_only_model; DeepSpeed's only for the torch engine
    await rejects(() => check("lora"), /holds no optimizer state .*--init-adapter/);
    await Deno.writeTextFile(join(dir, "latest"), "global_step2");
    await Deno.writeTextFile(join(dir, "resume_state.json"), JSON.stringify({ data: { seed: 1 } }));
    await check("lora", "torch", { seed: 1 });
    await rejects(
      () => check("lora"),
      /cannot resume on the WebGPU engine: its optimizer state is DeepSpeed's/,
    );
    await Deno.writeFile(join(dir, "optimizer.safetensors"), new Uint8Array(8));
    await rejects(() => check("lora", "webgpu", { seed: 2 }), /seed was 1 in that run, now 2/);
    await Deno.writeTextFile(
      join(dir, "scheduler.json"),
      JSON.stringify({ lr_scheduler_type: "linear", base_lrs: [2e-4] }),
    );
    await rejects(
      () => check("lora", "webgpu", { seed: 1 }),
      /learning_rate was 0\.0002 in that run/,
    );
    // a full fine-tuning checkpoint, and the way to start again from its weights
    await Deno.remove(join(dir, "adapter_model.safetensors"));
    await Deno.remove(join(dir, "optimizer.safetensors"));
    await Deno.remove(join(dir, "latest"));
    await Deno.writeFile(join(dir, "model.safetensors.index.json"), new Uint8Array(2));
    await rejects(() => check("lora"), /it is a full fine-tuning checkpoint/);
    await rejects(() => check("full"), /with --model \S+ instead/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
