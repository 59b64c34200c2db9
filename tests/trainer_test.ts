import { deepStrictEqual, ok as assert, rejects } from "node:assert";
import { join } from "node:path";
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import {
  createBuffer,
  dispatch,
  getPipeline,
  packUniforms,
  readF32,
  uniforms,
  writeBuffer,
} from "../lib/gpu/runtime.ts";
import type { ForwardBackwardOptions, TrainableParam, TrainBatch } from "../lib/model/types.ts";
import { DEFAULT_TRAIN_ARGS, type TrainArgs } from "../lib/train/args.ts";
import { loraFiles } from "../lib/train/checkpoint.ts";
import {
  DataPlan,
  epochOrder,
  makeBatch,
  type MaskedRecord,
  readMaskedJsonl,
  runRecords,
} from "../lib/train/data.ts";
import {
  train,
  type TrainerModel,
  type TrainOptions,
  type TrainResult,
} from "../lib/train/trainer.ts";
import { makeSchedule } from "../lib/train/schedule.ts";
import { UserError } from "../lib/errors.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";

/**
 * A bigram softmax-regression model on the GPU: logits at position i are
 * W[input_ids[i]] + b, predicting labels[i+1]. One invocation walks the batch
 * in order, so gradients are deterministic.
 */
const V = 16;
const SHADER = /* wgsl */ `
struct U { batch: u32, seq: u32, slot: u32, train: u32, scale: f32 };
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> gw: array<f32>;
@group(0) @binding(5) var<storage, read_write> gb: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss: array<f32>;
@group(0) @binding(7) var<uniform> u: U;
@compute @workgroup_size(1)
fn main() {
  var total = 0.0;
  for (var r = 0u; r < u.batch; r++) {
    for (var i = 0u; i + 1u < u.seq; i++) {
      let lab = labels[r * u.seq + i + 1u];
      if (lab == -100) { continue; }
      let src = u32(ids[r * u.seq + i]);
      var mx = -1e30;
      for (var v = 0u; v < ${V}u; v++) { mx = max(mx, w[src * ${V}u + v] + b[v]); }
      var se = 0.0;
      for (var v = 0u; v < ${V}u; v++) { se += exp(w[src * ${V}u + v] + b[v] - mx); }
      let lse = mx + log(se);
      total += lse - (w[src * ${V}u + u32(lab)] + b[u32(lab)]);
      if (u.train != 0u) {
        for (var v = 0u; v < ${V}u; v++) {
          var g = exp(w[src * ${V}u + v] + b[v] - lse);
          if (v == u32(lab)) { g -= 1.0; }
          gw[src * ${V}u + v] += g * u.scale;
          gb[v] += g * u.scale;
        }
      }
    }
  }
  loss[u.slot] = total;
}`;

class BigramModel implements TrainerModel {
  readonly params: TrainableParam[];
  private ids: GPUBuffer;
  private labels: GPUBuffer;
  constructor(private gpu: Gpu, maxTokens: number, seed: number) {
    const mk = (name: string, shape: number[], decay: boolean): TrainableParam => {
      const size = shape.reduce((a, c) => a * c, 1);
      return {
        name,
        shape,
        size,
        decay,
        weight: createBuffer(gpu, size * 4, name),
        grad: createBuffer(gpu, size * 4, name + ".grad"),
      };
    };
    this.params = [
      mk("base_model.model.bigram.lora_A.weight", [V, V], true),
      mk("base_model.model.bigram.bias", [V], false),
    ];
    let s = seed;
    const w = new Float32Array(V * V).map(() => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s / 2 ** 32 - 0.5) * 0.2;
    });
    writeBuffer(gpu, this.params[0].weight, 0, w);
    this.ids = createBuffer(gpu, maxTokens * 4);
    this.labels = createBuffer(gpu, maxTokens * 4);
  }
  zeroGrads(enc: GPUCommandEncoder): void {
    for (const p of this.params) enc.clearBuffer(p.grad);
  }
  private run(batch: TrainBatch, lossBuf: GPUBuffer, slot: number, train: boolean, scale: number) {
    const gpu = this.gpu;
    writeBuffer(gpu, this.ids, 0, batch.inputIds);
    writeBuffer(gpu, this.labels, 0, batch.labels);
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    const u = uniforms(gpu).alloc(packUniforms([
      { u: batch.batch },
      { u: batch.seq },
      { u: slot },
      { u: train ? 1 : 0 },
      { f: scale },
    ]));
    const [w, b] = this.params;
    dispatch(gpu, pass, getPipeline(gpu, SHADER), [
      this.ids,
      this.labels,
      w.weight,
      b.weight,
      w.grad,
      b.grad,
      lossBuf,
      u,
    ], [1]);
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    uniforms(gpu).reset();
  }
  forwardBackward(batch: TrainBatch, o: ForwardBackwardOptions): void {
    this.run(batch, o.lossBuffer, o.lossSlot, true, o.gradScale);
  }
  forwardLoss(batch: TrainBatch, lossBuffer: GPUBuffer, slot: number): void {
    this.run(batch, lossBuffer, slot, false, 0);
  }
  async readParams(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const p of this.params) out.set(p.name, await readF32(this.gpu, p.weight, p.size));
    return out;
  }
  setParams(t: Map<string, Float32Array>): void {
    for (const [name, data] of t) {
      const p = this.params.find((q) => q.name === name);
      if (!p || data.length !== p.size) throw new UserError(`bad tensor ${name}`);
      writeBuffer(this.gpu, p.weight, 0, data);
    }
  }
}

/** Records of a noisy cyclic sequence: token t is mostly followed by t+1 (mod V). */
function records(n: number, len: number | ((i: number) => number), seed = 7): MaskedRecord[] {
  let s = seed;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const out: MaskedRecord[] = [];
  for (let i = 0; i < n; i++) {
    const L = typeof len === "number" ? len : len(i);
    const ids = new Int32Array(L);
    ids[0] = Math.floor(rnd() * V);
    for (let t = 1; t < L; t++) ids[t] = rnd() < 0.9 ? (ids[t - 1] + 1) % V : Math.floor(rnd() * V);
    const labels = Int32Array.from(ids);
    labels[0] = -100;
    labels[1] = -100;
    out.push({ inputIds: ids, labels, line: i + 1 });
  }
  return out;
}

function modelFiles(model: BigramModel) {
  return loraFiles({
    shapes: new Map(model.params.map((p) => [p.name, p.shape])),
    r: 4,
    alpha: 8,
    dropout: 0,
    targetModules: ["bigram"],
    baseModel: "test-bigram",
  });
}

function args(over: Partial<TrainArgs>): TrainArgs {
  return {
    ...DEFAULT_TRAIN_ARGS,
    learningRate: 0.05,
    batchSize: 4,
    maxSteps: 10,
    loggingSteps: 1,
    saveStrategy: "no",
    ...over,
  };
}

async function run(
  over: Partial<TrainArgs>,
  data: MaskedRecord[],
  extra: Partial<TrainOptions> = {},
  outDir?: string,
  makeModel: (gpu: Gpu) => BigramModel = (gpu) => new BigramModel(gpu, 64 * 64, 3),
) {
  const gpu = await getGpu();
  const model = makeModel(gpu);
  const out = outDir ?? await Deno.makeTempDir({ prefix: "trainer-test-" });
  const res = await train({
    gpu,
    model,
    files: modelFiles(model),
    train: data,
    args: args(over),
    outDir: out,
    progress: null,
    ...extra,
  });
  return { res, model, out, params: await model.readParams() };
}

const sameArray = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && a.every((x, i) => Object.is(x, b[i]));

Deno.test("loss falls, and log entries carry HF's fields", async () => {
  const data = records(32, 12);
  const { res, out } = await run({ maxSteps: 30, loggingSteps: 5, learningRate: 0.1 }, data);
  const logs = res.logHistory.filter((e) => e.loss !== undefined);
  assert(logs.length === 6);
  assert(logs[5].loss! < logs[0].loss! * 0.7, `${logs[0].loss} → ${logs[5].loss}`);
  for (const e of logs) {
    deepStrictEqual(Object.keys(e).sort(), ["epoch", "grad_norm", "learning_rate", "loss", "step"]);
  }
  // Epoch as a float: 32 records / batch 4 = 8 steps per epoch.
  assert(Math.abs(logs[0].epoch - 5 / 8) < 1e-12);
  const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n");
  assert(lines.length === 7, "6 logs + the run summary");
  deepStrictEqual(JSON.parse(lines[0]), logs[0]);
  await Deno.remove(out, { recursive: true });
});

Deno.test("gradient accumulation of equal-size micro-batches equals the big batch", async () => {
  const data = records(16, 10);
  const big = await run({ batchSize: 4, accumulation: 1, maxSteps: 6 }, data, {}, undefined);
  const acc = await run({ batchSize: 2, accumulation: 2, maxSteps: 6 }, data);
  for (const [name, p] of big.params) {
    const q = acc.params.get(name)!;
    for (let i = 0; i < p.length; i++) {
      assert(Math.abs(p[i] - q[i]) < 1e-5, `${name}[${i}]: ${p[i]} vs ${q[i]}`);
    }
  }
  for (let s = 1; s <= 6; s++) {
    assert(Math.abs(big.res.stepLosses.get(s - 1)! - acc.res.stepLosses.get(s - 1)!) < 1e-5);
  }
  // ...and differs when micro-batches hold different token counts (HF: mean of micro means).
  const uneven = records(16, (i) => 4 + (i % 4) * 5);
  const b2 = await run({ batchSize: 4, accumulation: 1, maxSteps: 1 }, uneven);
  const a2 = await run({ batchSize: 2, accumulation: 2, maxSteps: 1 }, uneven);
  assert(Math.abs(b2.res.stepLosses.get(0)! - a2.res.stepLosses.get(0)!) > 1e-4);
  for (const r of [big, acc, b2, a2]) await Deno.remove(r.out, { recursive: true });
});

Deno.test("logging_steps averages the per-step losses; lr and grad_norm are the last step's", async () => {
  const data = records(24, 9);
  const every = await run({ maxSteps: 9, loggingSteps: 1, warmupSteps: 2 }, data);
  const three = await run({ maxSteps: 9, loggingSteps: 3, warmupSteps: 2 }, data);
  const perStep = every.res.logHistory.filter((e) => e.loss !== undefined);
  const logs = three.res.logHistory.filter((e) => e.loss !== undefined);
  assert(logs.length === 3);
  const lr = makeSchedule({ type: "linear", baseLr: 0.05, totalSteps: 9, warmupSteps: 2 });
  logs.forEach((e, k) => {
    const steps = perStep.slice(3 * k, 3 * k + 3);
    const mean = steps.reduce((a, s) => a + s.loss!, 0) / 3;
    assert(Math.abs(e.loss! - mean) < 1e-6, `${e.loss} vs ${mean}`);
    assert(e.step === 3 * k + 3);
    assert(e.learning_rate === lr(e.step - 1), `${e.learning_rate} vs ${lr(e.step - 1)}`);
    assert(Math.abs(e.grad_norm! - steps[2].grad_norm!) < 1e-6);
  });
  // The first step's LR with 2 warmup steps is 0: HF's LambdaLR starts at λ(0).
  assert(perStep[0].learning_rate === 0);
  for (const r of [every, three]) await Deno.remove(r.out, { recursive: true });
});

Deno.test("eval_loss every eval_steps and at the end, weighted by batch rows", async () => {
  const data = records(16, 8);
  const evalData = records(5, 8, 99);
  const { res, out } = await run(
    { maxSteps: 5, loggingSteps: 2, evalStrategy: "steps", evalSteps: 2, evalBatchSize: 2 },
    data,
    { eval: evalData },
  );
  const evals = res.logHistory.filter((e) => e.eval_loss !== undefined);
  deepStrictEqual(evals.map((e) => e.step), [2, 4, 5]);
  assert(evals.every((e) => Number.isFinite(e.eval_loss) && e.eval_loss! > 0));
  await Deno.remove(out, { recursive: true });
  await rejects(
    () => run({ maxSteps: 2, evalStrategy: "steps", evalSteps: 1 }, data),
    (e: Error) => e instanceof UserError && /no evaluation data/.test(e.message),
  );
});

Deno.test("an eval batch larger than the training batch runs in passes of the training batch", async () => {
  const data = records(16, 8);
  const evalData = records(5, (i) => 5 + i, 99);
  const rows: number[] = [];
  const { res, out, params } = await run(
    { maxSteps: 2, evalStrategy: "steps", evalSteps: 2, evalBatchSize: 5 },
    data,
    { eval: evalData },
    undefined,
    (gpu) => {
      const m = new BigramModel(gpu, 64 * 64, 3);
      const forwardLoss = m.forwardLoss.bind(m);
      m.forwardLoss = (b, buf, slot) => {
        rows.push(b.batch);
        forwardLoss(b, buf, slot);
      };
      return m;
    },
  );
  deepStrictEqual(rows, [4, 1]);
  // the loss of the whole batch of 5: the mean over its valid tokens, on the CPU
  const w = params.get("base_model.model.bigram.lora_A.weight")!;
  const bias = params.get("base_model.model.bigram.bias")!;
  let sum = 0, n = 0;
  for (const r of evalData) {
    for (let i = 0; i + 1 < r.inputIds.length; i++) {
      const lab = r.labels[i + 1];
      if (lab === -100) continue;
      const z = [...Array(V).keys()].map((v) => w[r.inputIds[i] * V + v] + bias[v]);
      const mx = Math.max(...z);
      sum += mx + Math.log(z.reduce((a, x) => a + Math.exp(x - mx), 0)) - z[lab];
      n++;
    }
  }
  const got = res.logHistory.find((e) => e.eval_loss !== undefined)!.eval_loss!;
  assert(Math.abs(got - sum / n) < 1e-5, `${got} vs ${sum / n}`);
  await Deno.remove(out, { recursive: true });
});

Deno.test("train_loss is the mean of every step's loss, whatever is logged", async () => {
  const data = records(24, 9);
  const trainLoss = (r: { res: TrainResult }) => r.res.logHistory.at(-1)!.train_loss!;
  const every = await run({ maxSteps: 9, loggingSteps: 1 }, data);
  const losses = [...every.res.stepLosses.values()];
  const mean = losses.reduce((a, b) => a + b, 0) / losses.length;
  assert(losses.length === 9 && Math.abs(trainLoss(every) - mean) < 1e-6);
  // logging_steps 2 leaves step 9 out of the logs, 20 logs nothing, logging_strategy no neither
  for (
    const over of [{ loggingSteps: 2 }, { loggingSteps: 20 }, { loggingStrategy: "no" as const }]
  ) {
    const r = await run({ maxSteps: 9, ...over }, data);
    assert(
      Math.abs(trainLoss(r) - mean) < 1e-6,
      `${JSON.stringify(over)}: ${trainLoss(r)} vs ${mean}`,
    );
    await Deno.remove(r.out, { recursive: true });
  }
  await Deno.remove(every.out, { recursive: true });
});

Deno.test("epoch strategies log, evaluate and save when max_steps ends an epoch early (HF's on_epoch_end)", async () => {
  // 16 records / batch 4: 4 steps an epoch; max_steps 6 stops halfway through the second
  const data = records(16, 8);
  const { res, out } = await run(
    {
      maxSteps: 6,
      loggingStrategy: "epoch",
      evalStrategy: "epoch",
      saveStrategy: "epoch",
      evalBatchSize: 2,
    },
    data,
    { eval: records(4, 8, 99) },
  );
  deepStrictEqual(res.logHistory.filter((e) => e.loss !== undefined).map((e) => e.step), [4, 6]);
  deepStrictEqual(res.logHistory.filter((e) => e.eval_loss !== undefined).map((e) => e.step), [
    4,
    6,
  ]);
  const ckpts = [];
  for await (const e of Deno.readDir(out)) if (e.name.startsWith("checkpoint-")) ckpts.push(e.name);
  deepStrictEqual(ckpts.sort(), ["checkpoint-4", "checkpoint-6"]);
  await Deno.remove(out, { recursive: true });
});

Deno.test("save_only_model: checkpoints without the optimizer state, which a resume refuses by name", async () => {
  const data = records(16, 8);
  const over = { maxSteps: 2, saveStrategy: "steps" as const, saveSteps: 1, saveOnlyModel: true };
  const { out } = await run(over, data);
  const names = [...Deno.readDirSync(join(out, "checkpoint-1"))].map((e) => e.name);
  assert(names.includes("adapter_model.safetensors") && !names.includes("optimizer.safetensors"));
  await rejects(
    () => run(over, data, { resume: 1 }, out),
    /checkpoint-1: cannot resume: it holds no optimizer state \(optimizer\.safetensors; saved with save_only_model\?\)/,
  );
  await Deno.remove(out, { recursive: true });
  // The checkpoint a Ctrl-C saves is for resuming: it has the optimizer state all the same.
  const stop = { requested: false };
  const stopped = await run({ ...over, maxSteps: 4, saveSteps: 100 }, data, {
    stop,
    onStep: (s) => void (s === 2 && (stop.requested = true)),
  });
  assert(stopped.res.interrupted);
  await Deno.stat(join(stopped.out, "checkpoint-2", "optimizer.safetensors"));
  const resumed = await run(
    { ...over, maxSteps: 4, saveSteps: 100 },
    data,
    { resume: "yes" },
    stopped.out,
  );
  assert(resumed.res.globalStep === 4);
  await Deno.remove(stopped.out, { recursive: true });
});

Deno.test("checkpoints: contents, save_total_limit, final save", async () => {
  const data = records(16, 8);
  const { out, params } = await run(
    { maxSteps: 10, saveStrategy: "steps", saveSteps: 2, saveTotalLimit: 2, loggingSteps: 5 },
    data,
  );
  const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  deepStrictEqual(names, [
    "adapter_config.json",
    "adapter_model.safetensors",
    "checkpoint-10",
    "checkpoint-8",
    "metrics.jsonl",
    "trainer_state.json",
    "training_args.json",
  ]);
  const ck = join(out, "checkpoint-8");
  deepStrictEqual([...Deno.readDirSync(ck)].map((e) => e.name).sort(), [
    "adapter_config.json",
    "adapter_model.safetensors",
    "checkpoint_complete.json",
    "optimizer.safetensors",
    "resume_state.json",
    "rng_state.json",
    "scheduler.json",
    "trainer_state.json",
    "training_args.json",
  ]);
  const st = JSON.parse(await Deno.readTextFile(join(ck, "trainer_state.json")));
  assert(st.global_step === 8 && st.max_steps === 10 && st.save_steps === 2);
  assert(st.logging_steps === 5 && st.train_batch_size === 4 && st.best_metric === null);
  deepStrictEqual(st.log_history.map((e: { step: number }) => e.step), [5]);
  const cfg = JSON.parse(await Deno.readTextFile(join(out, "adapter_config.json")));
  assert(cfg.peft_type === "LORA" && cfg.task_type === "CAUSAL_LM" && cfg.inference_mode === true);
  // The final adapter holds the final params.
  const files = loraFiles({
    shapes: new Map([...params.keys()].map((k) => [k, k.endsWith("bias") ? [V] : [V, V]])),
    r: 4,
    alpha: 8,
    dropout: 0,
    targetModules: ["bigram"],
    baseModel: "x",
  });
  const saved = await files.read(out);
  for (const [k, v] of params) assert(sameArray(saved.get(k)!, v));
  await Deno.remove(out, { recursive: true });
});

Deno.test("a resumed run continues the uninterrupted trajectory exactly", async () => {
  const data = records(20, (i) => 5 + (i % 3) * 3);
  const over: Partial<TrainArgs> = {
    maxSteps: 12,
    batchSize: 3,
    accumulation: 2,
    loggingSteps: 1,
    saveStrategy: "steps",
    saveSteps: 4,
    weightDecay: 0.1,
    warmupSteps: 2,
  };
  const full = await run(over, data);
  // Stop after step 6 (as Ctrl-C does): a checkpoint is written at 6.
  const stop = { requested: false };
  const part = await run(over, data, {
    stop,
    onStep: (s) => {
      if (s === 6) stop.requested = true;
    },
  });
  assert(part.res.interrupted && part.res.checkpoint?.endsWith("checkpoint-6"));
  // Stopped during the last step, the run is complete: not interrupted, its summary entry written.
  const atLast = { requested: false };
  const last = await run(over, data, {
    stop: atLast,
    onStep: (s) => {
      if (s === 12) atLast.requested = true;
    },
  });
  assert(!last.res.interrupted && last.res.globalStep === 12);
  assert(last.res.logHistory.at(-1)?.train_runtime !== undefined);
  for (const [k, v] of full.params) assert(sameArray(last.params.get(k)!, v), k);
  const resumed = await run(over, data, { resume: "yes" }, part.out);
  assert(resumed.res.globalStep === 12);
  for (let s = 6; s < 12; s++) {
    const a = full.res.stepLosses.get(s)!;
    const b = resumed.res.stepLosses.get(s)!;
    assert(Math.abs(a - b) < 1e-6, `step ${s + 1}: ${a} vs ${b}`);
  }
  for (const [k, v] of full.params) assert(sameArray(resumed.params.get(k)!, v), k);
  // So does its train_loss, the mean over all 12 steps, not over the 6 this process ran.
  const trainLoss = (h: typeof full.res.logHistory) => h.at(-1)!.train_loss!;
  assert(Math.abs(trainLoss(resumed.res.logHistory) - trainLoss(full.res.logHistory)) < 1e-6);
  // The log history of the resumed run equals the uninterrupted one (but for timing).
  const strip = (h: typeof full.res.logHistory) => h.filter((e) => e.loss !== undefined);
  deepStrictEqual(strip(resumed.res.logHistory), strip(full.res.logHistory));
  // Resume from a numbered checkpoint too.
  const from4 = await run(over, data, { resume: 4 }, part.out);
  for (const [k, v] of full.params) assert(sameArray(from4.params.get(k)!, v), k);
  await rejects(() => run(over, data, { resume: 5 }, part.out), /checkpoint-5 does not exist/);
  // A fresh run into a dir with an earlier run's checkpoints refuses, unless told to overwrite.
  await rejects(() => run(over, data, {}, part.out), /already holds checkpoints of an earlier run/);
  await rejects(
    () => run({ ...over, batchSize: 2 }, data, { resume: "yes" }, part.out),
    /train_batch_size was 3/,
  );
  // Other records of the same number, or the same in another order, are other data.
  for (const other of [records(20, 6, 11), [...data].reverse()]) {
    await rejects(
      () => run(over, other, { resume: "yes" }, part.out),
      /checkpoint-\d+: cannot resume: the train records differ from that run's/,
    );
  }
  for (const r of [full, part]) await Deno.remove(r.out, { recursive: true });
});

/** Child process for the SIGINT test (`deno run tests/trainer_test.ts OUT`): trains until interrupted. */
async function sigintChild(out: string) {
  const { res } = await run({ maxSteps: 100000, loggingSteps: 1000 }, records(8, 6), {
    handleSigint: true,
    onStep: (s) => console.log(`step ${s}`),
  }, out);
  console.log(JSON.stringify({ interrupted: res.interrupted, step: res.globalStep }));
  Deno.exit(res.interrupted ? 130 : 0);
}
if (import.meta.main) await sigintChild(Deno.args[0]);

Deno.test("SIGINT finishes the step, saves a checkpoint and exits 130", async () => {
  const out = await Deno.makeTempDir({ prefix: "trainer-sigint-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", new URL(import.meta.url).pathname, out],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let text = "";
  const dec = new TextDecoder();
  let sent = false;
  for await (const chunk of child.stdout) {
    text += dec.decode(chunk);
    if (!sent && /step 3\n/.test(text)) {
      child.kill("SIGINT");
      sent = true;
    }
  }
  const status = await child.status;
  assert(status.code === 130, `exit ${status.code}`);
  const last = JSON.parse(text.trim().split("\n").pop()!);
  assert(last.interrupted && last.step >= 3);
  await Deno.stat(join(out, `checkpoint-${last.step}`, "optimizer.safetensors"));
  await Deno.remove(out, { recursive: true });
});

/** The bigram model whose `at`-th forward/backward makes NaN gradients (its loss stays finite). */
class NanGradAt extends BigramModel {
  private calls = 0;
  constructor(gpu: Gpu, private at: number) {
    super(gpu, 64 * 64, 3);
  }
  override forwardBackward(batch: TrainBatch, o: ForwardBackwardOptions): void {
    this.calls++;
    super.forwardBackward(batch, this.calls === this.at ? { ...o, gradScale: NaN } : o);
  }
}

const isFinite32 = (a: Float32Array) => a.every((x) => Number.isFinite(x));

Deno.test("nan_policy stop: a NaN grad norm stops at its step, keeps the last checkpoint, saves no NaN", async () => {
  const over: Partial<TrainArgs> = { maxSteps: 6, saveStrategy: "steps", saveSteps: 1 };
  const out = await Deno.makeTempDir({ prefix: "trainer-nan-" });
  await rejects(
    () => run(over, records(16, 8), {}, out, (gpu) => new NanGradAt(gpu, 3)),
    (e: Error) =>
      e instanceof UserError &&
      /^step 3: the gradient norm is NaN; training stopped/.test(e.message) &&
      e.message.includes("checkpoint-2") && /nan_policy: skip/.test(e.message),
  );
  // checkpoint-2 is the newest; nothing of step 3 or later, and no final save.
  const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  deepStrictEqual(names, ["checkpoint-1", "checkpoint-2", "metrics.jsonl"]);
  for (const c of ["checkpoint-1", "checkpoint-2"]) {
    for (
      const t of (await readSafetensorsF32(join(out, c, "adapter_model.safetensors"))).values()
    ) {
      assert(isFinite32(t.data), c);
    }
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("nan_policy skip: the step's update is left out and the run goes on", async () => {
  const over: Partial<TrainArgs> = {
    maxSteps: 5,
    saveStrategy: "steps",
    saveSteps: 1,
    nanPolicy: "skip",
  };
  const notes: string[] = [];
  const err = console.error;
  console.error = (...a: unknown[]) => notes.push(a.join(" "));
  let r;
  try {
    r = await run(over, records(16, 8), {}, undefined, (gpu) => new NanGradAt(gpu, 3));
  } finally {
    console.error = err;
  }
  const { res, out, params } = r;
  deepStrictEqual(res.skippedSteps, [3]);
  assert(
    notes.some((n) => /^step 3: the gradient norm is NaN; its optimizer update is skipped/.test(n)),
  );
  // Step 3 changed nothing: its checkpoint's weights and moments are step 2's.
  for (const f of ["adapter_model.safetensors", "optimizer.safetensors"]) {
    const a = await readSafetensorsF32(join(out, "checkpoint-2", f));
    const b = await readSafetensorsF32(join(out, "checkpoint-3", f));
    for (const [k, t] of a) assert(sameArray(t.data, b.get(k)!.data), `${f} ${k}`);
  }
  const c4 = await readSafetensorsF32(join(out, "checkpoint-4", "adapter_model.safetensors"));
  const c3 = await readSafetensorsF32(join(out, "checkpoint-3", "adapter_model.safetensors"));
  assert([...c4].some(([k, t]) => !sameArray(t.data, c3.get(k)!.data)), "step 4 updates again");
  for (const v of params.values()) assert(isFinite32(v));
  // Step 3's loss is left out of the logs (its window holds nothing else: NaN, shown as null),
  // and out of the run's mean train_loss.
  const logged = res.logHistory.filter((e) => e.loss !== undefined);
  deepStrictEqual(logged.map((e) => Number.isFinite(e.loss)), [true, true, false, true, true]);
  assert(!res.stepLosses.has(2));
  assert(Number.isFinite(res.logHistory.at(-1)!.train_loss));
  await Deno.remove(out, { recursive: true });
});

Deno.test("divergence: adam_epsilon 0 and a huge learning rate stop with the step, writing no NaN", async () => {
  // eps 0: a gradient of exactly 0 (the rows of tokens 4..15, which no record holds) gives 0/0
  // in the first update, with a finite loss and norm; the save after it refuses the NaN weights.
  const fewTokens = records(16, 8).map((r) => {
    const inputIds = r.inputIds.map((x) => x % 4);
    const labels = Int32Array.from(inputIds);
    labels[0] = labels[1] = -100;
    return { ...r, inputIds, labels };
  });
  const out1 = await Deno.makeTempDir({ prefix: "trainer-eps0-" });
  await rejects(
    () => run({ eps: 0, maxSteps: 4, saveStrategy: "steps", saveSteps: 1 }, fewTokens, {}, out1),
    (e: Error) =>
      e instanceof UserError &&
      /^step 1: after the update, \S+ holds NaN .*checkpoint-1 was not written/.test(e.message),
  );
  deepStrictEqual([...Deno.readDirSync(out1)].map((e) => e.name), ["metrics.jsonl"]);
  // Without saves the next step's loss is the first non-finite value seen.
  const out2 = await Deno.makeTempDir({ prefix: "trainer-lr-" });
  await rejects(
    () => run({ learningRate: 3e38, maxSteps: 6 }, records(16, 8), {}, out2),
    (e: Error) =>
      e instanceof UserError &&
      /^step \d+: the (training loss|gradient norm) is (NaN|Infinity)/.test(e.message) &&
      /no checkpoint had been saved/.test(e.message),
  );
  assert(!(await Deno.stat(join(out2, "adapter_model.safetensors")).catch(() => false)));
  for (const d of [out1, out2]) await Deno.remove(d, { recursive: true });
});

/** A collapsed model: all-zero weights (every token equally likely) and no gradient. */
class Collapsed extends BigramModel {
  constructor(gpu: Gpu) {
    super(gpu, 64 * 64, 3);
    this.setParams(new Map(this.params.map((p) => [p.name, new Float32Array(p.size)])));
  }
  override forwardBackward(batch: TrainBatch, o: ForwardBackwardOptions): void {
    super.forwardBackward(batch, { ...o, gradScale: 0 });
  }
}

Deno.test("a loss stuck at ln(vocab) with grad norm 0 is warned about, once", async () => {
  const notes: string[] = [];
  const err = console.error;
  console.error = (...a: unknown[]) => notes.push(a.join(" "));
  try {
    const { out } = await run(
      { maxSteps: 5, loggingSteps: 1 },
      records(8, 6),
      { vocabSize: V },
      undefined,
      (
        gpu,
      ) => new Collapsed(gpu),
    );
    await Deno.remove(out, { recursive: true });
    const { out: out2 } = await run({ maxSteps: 5, loggingSteps: 1 }, records(8, 6), {
      vocabSize: V,
    });
    await Deno.remove(out2, { recursive: true });
  } finally {
    console.error = err;
  }
  const warnings = notes.filter((n) => /ln\(16\), the uniform distribution/.test(n));
  deepStrictEqual(warnings.length, 1, notes.join("\n"));
  assert(/^warning: step 3: the loss has been 2\.7726 = ln\(16\)/.test(warnings[0]), warnings[0]);
});

Deno.test("data: masked JSONL errors name file, line and field", async () => {
  const dir = await Deno.makeTempDir();
  const cases: Array<[string, RegExp]> = [
    [
      '{"input_ids":[1,2],"labels":[1,2]}\n{"input_ids":[1],"labels":[1,2]}',
      /:2: labels: length 2/,
    ],
    [
      '{"conversations":[]}',
      /:1: this is a conversation record; run the convert, tokenize and mask/,
    ],
    ['{"input_ids":[1,2],"output_ids":[3]}', /:1: labels: missing: this is an eval record/],
    ['{"input_ids":[1,-2],"labels":[-100,1]}', /:1: input_ids\[1\]: token id -2/],
    ['{"input_ids":[1,2],"labels":[-100,-5]}', /:1: labels\[1\]: -5 is neither/],
    ['[{"conversations": []}]', /:1: a JSON array, not masked JSONL; run the convert/],
    ['"text"', /:1: expected a JSON object/],
    ["{bad", /:1: malformed JSON/],
  ];
  for (const [text, re] of cases) {
    const f = join(dir, "t.jsonl");
    await Deno.writeTextFile(f, text + "\n");
    await rejects(
      () => readMaskedJsonl(f),
      (e: Error) => e instanceof UserError && re.test(e.message),
    );
  }
  await Deno.writeTextFile(join(dir, "v.jsonl"), '{"input_ids":[1,400],"labels":[-100,3]}\n');
  await rejects(
    () => readMaskedJsonl(join(dir, "v.jsonl"), { vocabSize: 384 }),
    /outside the vocabulary/,
  );
  // What a run reads (--train, --eval): labels against the vocabulary too, ids past i32, an empty
  // file, a file with nothing to learn, a directory.
  const run: Array<[string, RegExp]> = [
    [
      '{"input_ids":[3,6,7],"labels":[-100,5,999]}',
      /:1: labels\[2\]: 999 is neither -100 nor a token id in \[0, 384\) of the model/,
    ],
    [
      '{"input_ids":[5,6e20],"labels":[-100,5]}',
      /:1: input_ids\[1\]: token id 600000000000000000000 is outside/,
    ],
    ["", /r\.jsonl: holds no records$/],
    ['{"input_ids":[5,6,7],"labels":[5,-100,-100]}', /r\.jsonl: no record has a label to learn/],
  ];
  for (const [text, re] of run) {
    const f = join(dir, "r.jsonl");
    await Deno.writeTextFile(f, text ? text + "\n" : "");
    await rejects(
      () => Array.fromAsync(runRecords(f, 384)),
      (e: Error) => e instanceof UserError && re.test(e.message),
      re.source,
    );
  }
  await rejects(
    () => Array.fromAsync(runRecords(dir, 384)),
    (e: Error) => e instanceof UserError && e.message.startsWith(`${dir}: `),
  );
  // longer than the model's seq_length (HF's rotary table): refused with file, line and field
  const f = join(dir, "long.jsonl");
  await Deno.writeTextFile(
    f,
    '{"input_ids":[5,6,7],"labels":[-100,6,7]}\n{"input_ids":[5,6,7,8],"labels":[-100,6,7,8]}\n',
  );
  deepStrictEqual((await Array.fromAsync(runRecords(f, 384, 4))).length, 2);
  await rejects(
    () => Array.fromAsync(runRecords(f, 384, 3)),
    /long\.jsonl:2: input_ids: 4 tokens, more than the model's seq_length 3 \(config\.json/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("data: padding, valid tokens after the shift, step arithmetic, orders", () => {
  const recs: MaskedRecord[] = [
    { inputIds: Int32Array.of(5, 6, 7), labels: Int32Array.of(-100, 6, 7), line: 1 },
    { inputIds: Int32Array.of(8, 9), labels: Int32Array.of(8, 9), line: 2 },
  ];
  const b = makeBatch(recs);
  deepStrictEqual([...b.inputIds], [5, 6, 7, 8, 9, 0]);
  deepStrictEqual([...b.labels], [-100, 6, 7, 8, 9, -100]);
  // Position 0 of each row is never a target (the model predicts label[i+1] from i).
  assert(b.validTokens === 3);
  const ten = records(10, 4);
  // 10 records, batch 3 → 4 micro-batches (last short); accumulation 3 → 2 updates (3 + 1).
  const plan = new DataPlan(ten, {
    batchSize: 3,
    accumulation: 3,
    maxSteps: -1,
    numTrainEpochs: 2,
    dropLast: false,
    shuffle: false,
    seed: 42,
  });
  assert(plan.microPerEpoch === 4 && plan.updatesPerEpoch === 2 && plan.maxSteps === 4);
  deepStrictEqual(plan.step(1).micro, [3]);
  assert(plan.step(1).epochAfter === 1 && plan.step(2).epoch === 1);
  assert(plan.step(0).epochAfter === 0.75);
  assert(
    plan.microBatch(0, 3).batch === 1 && plan.microBatch(0, 3).inputIds[0] === ten[9].inputIds[0],
  );
  // max_steps > 0 wins over epochs.
  const m = new DataPlan(ten, { ...plan.opts, maxSteps: 7 });
  assert(m.maxSteps === 7 && m.numEpochs === 4);
  // Shuffled orders: a permutation, reproducible, different between epochs.
  const o0 = epochOrder(50, 0, 42, true);
  deepStrictEqual([...o0].sort((a, c) => a - c), [...Array(50).keys()]);
  deepStrictEqual(o0, epochOrder(50, 0, 42, true));
  assert(!sameArray(Float32Array.from(o0), Float32Array.from(epochOrder(50, 1, 42, true))));
  assert(!sameArray(Float32Array.from(o0), Float32Array.from(epochOrder(50, 0, 43, true))));
  deepStrictEqual([...epochOrder(5, 3, 42, false)], [0, 1, 2, 3, 4]);
});
