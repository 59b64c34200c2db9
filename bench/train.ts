/**
 * Training throughput: tokens/s of LoRA (r 8 on query_key_value) and full-SFT
 * optimizer steps of the bench model (hidden 512, 8 layers, 8 heads,
 * kv_channels 64, 2 groups, ffn 1368, vocab 8192; batch 4 × seq 256, random
 * weights) against PyTorch + PEFT on the CPU with 2 threads
 * (tools/peers/train_peer.py) on the same model and batch, as a ratio; and a
 * breakdown of a step: forward, backward, grad norm + AdamW.
 */
import { getGpu, type Gpu, wantsWideCpuVectors } from "../lib/gpu/device.ts";
import { createBuffer } from "../lib/gpu/runtime.ts";
import { AdamWState } from "../lib/gpu/kernels/adamw.ts";
import { GradNorm } from "../lib/gpu/kernels/grad_norm.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { createGlmModel, type GlmModel, memoryWeights } from "../lib/model/glm.ts";
import type { F32Tensor } from "../lib/safetensors/read.ts";
import { optimizerStep, UPSTREAM_LORA } from "./jobs.ts";
import { BENCH_BATCH, BENCH_CONFIG, BENCH_SEQ, benchBatch, benchWeights } from "./model.ts";
import { runPeer } from "./peer.ts";

const BATCH = BENCH_BATCH;
const SEQ = BENCH_SEQ;

interface Timing {
  stepS: number;
  forwardS: number;
  optimizerS: number;
}

const wait = (gpu: Gpu) => gpu.device.queue.onSubmittedWorkDone();

/**
 * One optimizer step as the trainer runs it (one wait), then a forward pass
 * and the optimizer alone, each timed with its own wait; backward is the step
 * minus the two. A step of this model takes minutes on llvmpipe, so one timed
 * round it is (pipeline compilation, ~20 ms a kernel, is noise at that scale).
 */
async function measure(gpu: Gpu, model: GlmModel): Promise<Timing> {
  const b = benchBatch();
  const valid = BATCH * (SEQ - 1);
  const adam = new AdamWState(gpu, model.params);
  const gn = new GradNorm(gpu, model.params);
  const loss = createBuffer(gpu, 64);
  const optimizer = (lr: number) => optimizerStep(gpu, gn, adam, lr, 1);
  let t0 = performance.now();
  const z = gpu.device.createCommandEncoder();
  model.zeroGrads(z);
  gpu.device.queue.submit([z.finish()]);
  model.forwardBackward(b, {
    gradScale: 1 / valid,
    lossBuffer: loss,
    lossSlot: 0,
    training: true,
    dropoutSeed: 1,
  });
  optimizer(1e-4);
  await wait(gpu);
  const stepS = (performance.now() - t0) / 1000;
  t0 = performance.now();
  model.forwardLoss(b, loss, 1);
  await wait(gpu);
  const forwardS = (performance.now() - t0) / 1000;
  t0 = performance.now();
  optimizer(0); // lr 0 leaves the weights as they are
  await wait(gpu);
  const optimizerS = (performance.now() - t0) / 1000;
  adam.destroy();
  gn.destroy();
  loss.destroy();
  return { stepS, forwardS, optimizerS };
}

async function one(
  gpu: Gpu,
  weights: Map<string, F32Tensor>,
  label: string,
  adapter: AdapterSpec,
): Promise<void> {
  const model = await createGlmModel(gpu, BENCH_CONFIG, memoryWeights(weights), {
    adapter,
    maxBatch: BATCH,
    maxSeq: SEQ,
    seed: 42,
    frozenF16: adapter.kind !== "full",
  });
  const t = await measure(gpu, model);
  model.destroy();
  const tokens = BATCH * SEQ;
  const ours = tokens / t.stepS;
  const peer = await runPeer("train_peer.py", {
    config: BENCH_CONFIG,
    batch: BATCH,
    seq: SEQ,
    mode: adapter.kind === "lora" ? "lora" : "full",
    lora: { r: 8, lora_alpha: 32, target_modules: ["query_key_value"] },
    steps: 2,
    warmup: 1,
  });
  const peerTps = peer?.tokens_per_s as number | undefined;
  console.log(
    `  ${label}: ${ours.toFixed(0)} tokens/s (${(t.stepS * 1000).toFixed(0)} ms/step)` +
      (peerTps
        ? `; PyTorch+PEFT CPU 2 threads ${peerTps.toFixed(0)} tokens/s (${
          ((peer!.step_s as number) * 1000).toFixed(0)
        } ms/step); ratio ours/peer = ${(ours / peerTps).toFixed(2)}`
        : ""),
  );
  const back = Math.max(0, t.stepS - t.forwardS - t.optimizerS);
  console.log(
    `    breakdown (forward and optimizer timed alone; backward = step − both): forward ${
      (t.forwardS * 1000).toFixed(0)
    } ms, backward ≈ ${(back * 1000).toFixed(0)} ms, grad norm + AdamW ${
      (t.optimizerS * 1000).toFixed(0)
    } ms`,
  );
}

export async function run(): Promise<void> {
  const gpu = await getGpu({ wideCpuVectors: wantsWideCpuVectors(BENCH_CONFIG.hidden_size) });
  const weights = benchWeights();
  {
    console.log(
      `  model: hidden 512, 8 layers, 8 heads, kv 64, 2 groups, ffn 1368, vocab 8192; batch ${BATCH} × seq ${SEQ}`,
    );
    await one(gpu, weights, "LoRA r8 qkv", UPSTREAM_LORA);
    await one(gpu, weights, "full SFT", { kind: "full" });
  }
}

if (import.meta.main) await run();
