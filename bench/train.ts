/**
 * Training throughput: tokens/s of LoRA (r 8 on query_key_value) and full-SFT
 * optimizer steps of the bench model (hidden 512, 8 layers, 8 heads,
 * kv_channels 64, 2 groups, ffn 1368, vocab 8192; batch 4 × seq 256, random
 * weights) against PyTorch + PEFT on the CPU with 2 threads
 * (tools/peers/train_peer.py) on the same model and batch, as a ratio; and a
 * breakdown of a step: forward, backward, grad norm + AdamW.
 */
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import { createBuffer, uniforms } from "../lib/gpu/runtime.ts";
import { AdamWState } from "../lib/gpu/kernels/adamw.ts";
import { GradNorm } from "../lib/gpu/kernels/grad_norm.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { createGlmModel, type GlmModel, memoryWeights } from "../lib/model/glm.ts";
import { adamwScalars } from "../lib/train/adamw.ts";
import type { F32Tensor } from "../lib/safetensors/read.ts";
import type { TrainBatch } from "../lib/model/types.ts";
import { runPeer } from "./peer.ts";

export const BENCH_CONFIG = {
  num_layers: 8,
  hidden_size: 512,
  num_attention_heads: 8,
  kv_channels: 64,
  multi_query_attention: true,
  multi_query_group_num: 2,
  ffn_hidden_size: 1368,
  padded_vocab_size: 8192,
  seq_length: 512,
};
const BATCH = 4;
const SEQ = 256;

/** The bench config's weights, seeded N(0, 0.02) (norms 1), in memory. */
function makeWeights(): Map<string, F32Tensor> {
  const c = BENCH_CONFIG;
  const h = c.hidden_size;
  const qkv = (c.num_attention_heads + 2 * c.multi_query_group_num) * c.kv_channels;
  let s = 12345;
  const normal = (n: number, std: number) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const u1 = (s + 1) / 2 ** 32;
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const u2 = s / 2 ** 32;
      const r = Math.sqrt(-2 * Math.log(u1)) * std;
      out[i] = r * Math.cos(2 * Math.PI * u2);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
    }
    return out;
  };
  const t = new Map<string, F32Tensor>();
  const add = (name: string, shape: number[], ones = false) => {
    const n = shape.reduce((a, b) => a * b, 1);
    t.set(name, { shape, data: ones ? new Float32Array(n).fill(1) : normal(n, 0.02) });
  };
  add("transformer.embedding.word_embeddings.weight", [c.padded_vocab_size, h]);
  for (let i = 0; i < c.num_layers; i++) {
    const p = `transformer.encoder.layers.${i}.`;
    add(p + "input_layernorm.weight", [h], true);
    add(p + "self_attention.query_key_value.weight", [qkv, h]);
    add(p + "self_attention.query_key_value.bias", [qkv]);
    add(p + "self_attention.dense.weight", [h, c.num_attention_heads * c.kv_channels]);
    add(p + "post_attention_layernorm.weight", [h], true);
    add(p + "mlp.dense_h_to_4h.weight", [2 * c.ffn_hidden_size, h]);
    add(p + "mlp.dense_4h_to_h.weight", [h, c.ffn_hidden_size]);
  }
  add("transformer.encoder.final_layernorm.weight", [h], true);
  add("transformer.output_layer.weight", [c.padded_vocab_size, h]);
  return t;
}

const GLM_CONFIG = {
  ...BENCH_CONFIG,
  layernorm_epsilon: 1e-5,
  rmsnorm: true,
  add_qkv_bias: true,
  add_bias_linear: false,
  post_layer_norm: true,
  rope_ratio: 1,
};

function batch(): TrainBatch {
  let s = 1;
  const ids = new Int32Array(BATCH * SEQ).map(() => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s % BENCH_CONFIG.padded_vocab_size;
  });
  return { batch: BATCH, seq: SEQ, inputIds: ids, labels: Int32Array.from(ids) };
}

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
  const b = batch();
  const valid = BATCH * (SEQ - 1);
  const adam = new AdamWState(gpu, model.params);
  const gn = new GradNorm(gpu, model.params);
  const loss = createBuffer(gpu, 64);
  const optimizer = (lr: number) => {
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    gn.encode(pass, 1.0);
    adam.encode(
      pass,
      adamwScalars({ lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 }, 1),
      gn.result,
      1,
    );
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    uniforms(gpu).reset();
  };
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
  const model = await createGlmModel(gpu, GLM_CONFIG, memoryWeights(weights), {
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
  const gpu = await getGpu();
  const weights = makeWeights();
  {
    console.log(
      `  model: hidden 512, 8 layers, 8 heads, kv 64, 2 groups, ffn 1368, vocab 8192; batch ${BATCH} × seq ${SEQ}`,
    );
    await one(gpu, weights, "LoRA r8 qkv", {
      kind: "lora",
      r: 8,
      alpha: 32,
      dropout: 0,
      targetModules: ["query_key_value"],
    });
    await one(gpu, weights, "full SFT", { kind: "full" });
  }
}

if (import.meta.main) await run();
