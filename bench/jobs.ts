/**
 * Training steps as the trainer takes them, for the real-size benchmarks
 * (./scale.ts, ./gpu_jobs.ts): a micro-batch of `batch` records fed in passes
 * of `rowsPerPass` (their gradients add up, the loss scale covers the whole
 * micro-batch), then the grad norm, clipping and AdamW, one wait per step.
 */
import type { Gpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32, uniforms } from "../lib/gpu/runtime.ts";
import { AdamWState } from "../lib/gpu/kernels/adamw.ts";
import { GradNorm } from "../lib/gpu/kernels/grad_norm.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import type { GlmModel } from "../lib/model/glm.ts";
import type { PlanOptions } from "../lib/model/memory_plan.ts";
import { adamwScalars } from "../lib/train/adamw.ts";

/** Upstream finetune_demo's LoRA (lora.yaml, without dropout) and P-Tuning v2 (ptuning_v2.yaml). */
export const UPSTREAM_LORA: AdapterSpec = {
  kind: "lora",
  r: 8,
  alpha: 32,
  dropout: 0,
  targetModules: ["query_key_value"],
};
export const UPSTREAM_PTUNING: AdapterSpec = {
  kind: "prefix",
  preSeqLen: 128,
  prefixProjection: false,
};

/** The memory plan's options for what `gpu` is: its binding limit, device class and texture size. */
export function planDevice(
  gpu: Gpu,
): Pick<PlanOptions, "maxBindingBytes" | "deviceClass" | "maxTextureSide"> {
  return {
    maxBindingBytes: Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize),
    deviceClass: gpu.deviceClass,
    maxTextureSide: gpu.limits.maxTextureDimension2D,
  };
}

/** The process's peak resident set (VmHWM), in bytes. */
export function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Seeded token ids in [0, V). */
export function seededIds(n: number, V: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % V;
  });
}

export interface StepsResult {
  /** Seconds of each step, the first (pipeline builds) included. */
  stepS: number[];
  /** Mean loss per valid token of each step. */
  losses: number[];
}

/**
 * `steps` optimizer steps on `ids` ([batch, seq], every position labelled),
 * each in passes of `rowsPerPass` records.
 */
export async function trainSteps(
  gpu: Gpu,
  model: GlmModel,
  o: { ids: Int32Array; batch: number; seq: number; rowsPerPass: number; steps: number },
): Promise<StepsResult> {
  const adam = new AdamWState(gpu, model.params);
  const gn = new GradNorm(gpu, model.params);
  const passes = Math.ceil(o.batch / o.rowsPerPass);
  const loss = createBuffer(gpu, 4 * passes, "bench-loss");
  const valid = o.batch * (o.seq - 1);
  const out: StepsResult = { stepS: [], losses: [] };
  try {
    for (let k = 1; k <= o.steps; k++) {
      const t0 = performance.now();
      const z = gpu.device.createCommandEncoder();
      model.zeroGrads(z);
      gpu.device.queue.submit([z.finish()]);
      for (let p = 0; p < passes; p++) {
        const r0 = p * o.rowsPerPass, rows = Math.min(o.rowsPerPass, o.batch - r0);
        const ids = o.ids.subarray(r0 * o.seq, (r0 + rows) * o.seq);
        model.forwardBackward({ batch: rows, seq: o.seq, inputIds: ids, labels: ids }, {
          gradScale: 1 / valid,
          lossBuffer: loss,
          lossSlot: p,
          training: true,
          dropoutSeed: k,
        });
      }
      optimizerStep(gpu, gn, adam, 1e-4, k);
      const sums = await readF32(gpu, loss, passes);
      out.stepS.push((performance.now() - t0) / 1000);
      out.losses.push(sums.reduce((a, b) => a + b, 0) / valid);
    }
    return out;
  } finally {
    adam.destroy();
    gn.destroy();
    loss.destroy();
  }
}

/**
 * One optimizer step after the gradients: the gradient norm and AdamW (betas
 * 0.9, 0.999, eps 1e-8, no weight decay) at `lr` for step `step`, unclipped,
 * in a submit of its own.
 */
export function optimizerStep(
  gpu: Gpu,
  gn: GradNorm,
  adam: AdamWState,
  lr: number,
  step: number,
): void {
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  gn.encode(pass, 1.0);
  const hp = { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
  adam.encode(pass, adamwScalars(hp, step), gn.result, 1);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  uniforms(gpu).reset();
}
