/**
 * The activations and scratch of a step, sized once for maxBatch × maxSeq
 * tokens (lib/model/memory_plan.ts counts the same buffers).
 */
import type { Gpu } from "../gpu/device.ts";
import { scoreBytes } from "../gpu/kernels/attention.ts";
import { crossEntropyScratchBytes } from "../gpu/kernels/cross_entropy.ts";
import { UserError } from "../errors.ts";
import type { AdapterSpec, LoraTarget } from "./adapter.ts";
import type { Dims } from "./dims.ts";
import type { DeviceStore } from "./store.ts";
import { type Acts, f32Bytes, type Prefix, type Scratch } from "./blocks/core.ts";

export interface StepBuffers {
  xs: GPUBuffer[];
  acts: Acts[];
  s: Scratch;
}

export function allocateStep(
  store: DeviceStore,
  gpu: Gpu,
  d: Dims,
  o: {
    adapter: AdapterSpec;
    maxBatch: number;
    maxSeq: number;
    gradientCheckpointing: boolean;
    prefix?: Prefix;
  },
): StepBuffers {
  const buf = (bytes: number, label: string) => store.buf(bytes, label);
  const T = o.maxBatch * o.maxSeq;
  const nActs = o.gradientCheckpointing ? 1 : d.L;
  const trains = o.adapter.kind !== "none";
  const loraR = o.adapter.kind === "lora" ? o.adapter.r : 0;
  // Row and element kernels bind whole activation buffers: the widest one must fit a binding.
  const widest = f32Bytes(T * Math.max(2 * d.ffn, d.W, d.hidden, d.A));
  const bindLimit = gpu.limits.maxStorageBufferBindingSize;
  if (widest > bindLimit) {
    throw new UserError(
      `a micro-batch of ${o.maxBatch}×${o.maxSeq} tokens needs ${widest}-byte activation buffers, ` +
        `but this adapter binds at most ${bindLimit} bytes: lower the batch size or the maximum length ` +
        `(at most ${
          Math.floor(bindLimit / f32Bytes(Math.max(2 * d.ffn, d.W, d.hidden, d.A)))
        } tokens per micro-batch)`,
    );
  }
  const xs: GPUBuffer[] = [];
  for (let i = 0; i <= d.L; i++) xs.push(buf(f32Bytes(T * d.hidden), `x${i}`));
  const acts: Acts[] = [];
  for (let i = 0; i < (trains ? nActs : 1); i++) {
    const lora: Acts["lora"] = {};
    if (o.adapter.kind === "lora") {
      for (const k of o.adapter.targetModules as LoraTarget[]) {
        lora[k] = buf(f32Bytes(T * loraR), `lora-a-${k}`);
      }
    }
    acts.push({
      n1: buf(f32Bytes(T * d.hidden), "n1"),
      rstd1: buf(f32Bytes(T), "rstd1"),
      qkv: buf(f32Bytes(T * d.W), "qkv"),
      attn: buf(f32Bytes(T * d.A), "attn"),
      stats: buf(f32Bytes(2 * T * d.H), "stats"),
      h1: buf(f32Bytes(T * d.hidden), "h1"),
      n2: buf(f32Bytes(T * d.hidden), "n2"),
      rstd2: buf(f32Bytes(T), "rstd2"),
      ff: buf(f32Bytes(T * 2 * d.ffn), "ff"),
      sw: buf(f32Bytes(T * d.ffn), "sw"),
      lora,
    });
  }
  const maxIn = Math.max(d.hidden, d.A, d.ffn);
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  const logitRows = Math.max(1, Math.min(T, Math.floor(limit / f32Bytes(d.V))));
  const small = trains ? 1 : 0;
  const s: Scratch = {
    ids: buf(f32Bytes(T), "ids"),
    targets: buf(f32Bytes(T), "targets"),
    pos: buf(f32Bytes(T), "pos"),
    plan: buf(f32Bytes(3 * T + 1), "embedding-plan"),
    dres: buf(f32Bytes(trains ? T * d.hidden : 1), "dres"),
    dn: buf(f32Bytes(trains ? T * d.hidden : 1), "dn"),
    dattn: buf(f32Bytes(trains ? T * d.A : 1), "dattn"),
    dqkv: buf(f32Bytes(trains ? T * d.W : 1), "dqkv"),
    dsw: buf(f32Bytes(trains ? T * d.ffn : 1), "dsw"),
    dff: buf(f32Bytes(trains ? T * 2 * d.ffn : 1), "dff"),
    xd: buf(f32Bytes(loraR ? T * maxIn : small), "lora-xd"),
    dxl: buf(f32Bytes(loraR ? T * maxIn : small), "lora-dx"),
    da: buf(f32Bytes(loraR ? T * loraR : small), "lora-da"),
    nf: buf(f32Bytes(T * d.hidden), "nf"),
    rstdF: buf(f32Bytes(T), "rstdF"),
    logits: buf(f32Bytes(logitRows * d.V), "logits"),
    logitRows,
    ceParts: buf(crossEntropyScratchBytes(logitRows, d.V), "cross-entropy-partials"),
    rowLoss: buf(f32Bytes(T), "row-loss"),
  };
  // Attention through matmuls when the score blocks fit (see lib/gpu/kernels/attention.ts);
  // GLM_ATTENTION=rows forces the per-row kernels.
  const P = o.prefix?.P ?? 0;
  const sb = scoreBytes({ batch: o.maxBatch, heads: d.H, seq: o.maxSeq, prefix: P });
  const budget = Math.min(limit, 256 * 2 ** 20);
  if (sb <= budget && Deno.env.get("GLM_ATTENTION") !== "rows") {
    s.scores = buf(sb, "attention-scores");
    if (trains) s.dscores = buf(sb, "attention-dscores");
  }
  if (o.prefix) {
    const { C, hidden } = o.prefix;
    s.pkv = buf(f32Bytes(o.maxBatch * P * C), "prefix-kv");
    s.dpkv = buf(f32Bytes(o.maxBatch * P * C), "prefix-dkv");
    s.kvSum = buf(f32Bytes(P * C), "prefix-dkv-sum");
    if (o.prefix.trans) {
      s.ph = buf(f32Bytes(P * hidden), "prefix-hidden");
      s.dph = buf(f32Bytes(P * hidden), "prefix-dhidden");
    }
  }
  return { xs, acts, s };
}
