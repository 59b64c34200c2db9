/**
 * What encoding costs the host, for the bench model (hidden 512, 8 layers,
 * vocab 8192; batch 4 × seq 256): dispatches per forward, per LoRA step
 * (forward, backward, grad norm and AdamW) and per generated token; host
 * milliseconds spent encoding them, the first time (recording the step:
 * kernels' host logic, bind groups, uniforms) and after (replaying it); and
 * that time as a share of the step, timed with its one wait. On llvmpipe a
 * queue submit runs the work before it returns, so the encoding is timed up
 * to the submit (encodeStats.encodeMs, lib/gpu/runtime.ts).
 */
import type { Gpu } from "../lib/gpu/device.ts";
import { gpuForModel } from "../lib/model/load.ts";
import { UPSTREAM_LORA } from "./jobs.ts";
import { kernelFeatures } from "../lib/gpu/features.ts";
import { createBuffer, encodeStats } from "../lib/gpu/runtime.ts";
import { submitPass } from "../lib/gpu/recording.ts";
import { AdamWState } from "../lib/gpu/kernels/adamw.ts";
import { GradNorm } from "../lib/gpu/kernels/grad_norm.ts";
import { createGlmModel, type GlmModel, memoryWeights } from "../lib/model/glm.ts";
import { adamwScalars } from "../lib/train/adamw.ts";
import { BENCH_BATCH, BENCH_CONFIG, BENCH_SEQ, benchBatch, benchWeights } from "./model.ts";
import { results } from "./results.ts";

const wait = (gpu: Gpu) => gpu.device.queue.onSubmittedWorkDone();

interface Cost {
  dispatches: number;
  encodeMs: number;
  wallMs: number;
}

/** Run `work` (which submits without waiting), then wait: its dispatches, encode ms and wall ms. */
async function cost(gpu: Gpu, work: () => void): Promise<Cost> {
  const d0 = encodeStats.dispatches, e0 = encodeStats.encodeMs;
  const t0 = performance.now();
  work();
  await wait(gpu);
  return {
    dispatches: encodeStats.dispatches - d0,
    encodeMs: encodeStats.encodeMs - e0,
    wallMs: performance.now() - t0,
  };
}

function line(label: string, first: Cost, again: Cost): string {
  return `  ${label}: ${again.dispatches} dispatches; encoding ${first.encodeMs.toFixed(1)} ms ` +
    `the first time (recorded), ${again.encodeMs.toFixed(1)} ms replayed, ` +
    `${(100 * again.encodeMs / again.wallMs).toFixed(2)}% of its ${again.wallMs.toFixed(0)} ms`;
}

async function loraStep(gpu: Gpu, model: GlmModel): Promise<[Cost, Cost]> {
  const b = benchBatch();
  const adam = new AdamWState(gpu, model.params);
  const gn = new GradNorm(gpu, model.params);
  const loss = createBuffer(gpu, 64);
  const step = () => {
    const z = gpu.device.createCommandEncoder();
    model.zeroGrads(z);
    gpu.device.queue.submit([z.finish()]);
    model.forwardBackward(b, {
      gradScale: 1 / (BENCH_BATCH * (BENCH_SEQ - 1)),
      lossBuffer: loss,
      lossSlot: 0,
      training: true,
      dropoutSeed: 1,
    });
    submitPass(gpu, (pass) => {
      gn.encode(pass, 1.0);
      // lr 0 leaves the weights as they are.
      const s = adamwScalars({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 }, 1);
      adam.encode(pass, s, gn.result, 1);
    });
  };
  const first = await cost(gpu, step);
  const again = await cost(gpu, step);
  adam.destroy();
  gn.destroy();
  loss.destroy();
  return [first, again];
}

async function forward(gpu: Gpu, model: GlmModel): Promise<[Cost, Cost]> {
  const b = benchBatch();
  const loss = createBuffer(gpu, 16);
  const first = await cost(gpu, () => model.forwardLoss(b, loss, 0));
  const again = await cost(gpu, () => model.forwardLoss(b, loss, 0));
  loss.destroy();
  return [first, again];
}

/** Dispatches and encode ms per generated token: generations of 1 and 17 tokens, differenced. */
async function perToken(model: GlmModel): Promise<{ dispatches: number; encodeMs: number }> {
  const prompt = [Array.from({ length: 32 }, (_, i) => 3 + i * 7)];
  const run = async (n: number) => {
    const d0 = encodeStats.dispatches, e0 = encodeStats.encodeMs;
    await model.generate(prompt, { maxNewTokens: n, stopIds: [] });
    return { d: encodeStats.dispatches - d0, e: encodeStats.encodeMs - e0 };
  };
  await run(17); // pipelines built
  const one = await run(1), many = await run(17);
  return { dispatches: (many.d - one.d) / 16, encodeMs: (many.e - one.e) / 16 };
}

export async function run(): Promise<void> {
  const gpu = await gpuForModel(BENCH_CONFIG);
  const f = kernelFeatures(gpu);
  console.log(
    `  device: ${gpu.adapterInfo.description} (${gpu.deviceClass}); subgroups ${f.subgroups}, ` +
      `f16 loads ${f.f16}`,
  );
  results.device = gpu.adapterInfo.description;
  results.deviceClass = gpu.deviceClass;
  const weights = benchWeights();
  const inference = await createGlmModel(gpu, BENCH_CONFIG, memoryWeights(weights), {
    adapter: { kind: "none" },
    maxBatch: BENCH_BATCH,
    maxSeq: BENCH_SEQ,
    seed: 1,
  });
  const [f1, f2] = await forward(gpu, inference);
  console.log(line(`forward ${BENCH_BATCH}×${BENCH_SEQ} (f16 weights)`, f1, f2));
  results.forwardEncodeMs = f2.encodeMs;
  results.forwardMs = f2.wallMs;
  const tok = await perToken(inference);
  console.log(
    `  generated token (batch 1): ${tok.dispatches} dispatches, ${
      tok.encodeMs.toFixed(2)
    } ms encoding (a recorded step replayed per token)`,
  );
  inference.destroy();
  const lora = await createGlmModel(gpu, BENCH_CONFIG, memoryWeights(weights), {
    adapter: UPSTREAM_LORA,
    maxBatch: BENCH_BATCH,
    maxSeq: BENCH_SEQ,
    seed: 42,
  });
  const [l1, l2] = await loraStep(gpu, lora);
  console.log(line("LoRA r8 qkv step (forward, backward, grad norm, AdamW)", l1, l2));
  results.loraEncodeMs = l2.encodeMs;
  results.loraStepMs = l2.wallMs;
  lora.destroy();
  console.log(
    `  bind groups: ${encodeStats.bindGroups} made, ${encodeStats.bindGroupsReused} reused; ` +
      `${encodeStats.replayed} of ${encodeStats.dispatches} dispatches replayed`,
  );
}

if (import.meta.main) await run();
