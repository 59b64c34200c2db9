/**
 * What the model's blocks share: the weights on the device, the activations
 * kept for backward, the scratch of one step, and the shape of the step being
 * encoded. lib/model/glm.ts builds a `Core` (./../upload.ts, ./../buffers.ts)
 * and hands it to each block's forward and backward.
 */
import type { Gpu } from "../../gpu/device.ts";
import type { UniformValue } from "../../gpu/runtime.ts";
import type { Quant4Weight } from "../../gpu/kernels/matmul_4bit.ts";
import type { AdapterSpec, LoraTarget } from "../adapter.ts";
import type { Dims } from "../dims.ts";
import type { TrainableParam } from "../types.ts";

/**
 * A weight matrix [rows, cols] split by rows into slices that each fit one
 * binding: a buffer per slice (f16, frozen), or, when the table is trained,
 * ranges of one buffer, which the optimizer sees as one tensor.
 */
export interface Table {
  f16: boolean;
  rows: number;
  cols: number;
  slices: {
    buf: GPUBuffer;
    /** Element offset of the slice's first row in `buf`. */
    off: number;
    /** The slice's bytes of `buf`, for kernels that bind it directly. */
    range: GPUBufferBinding;
    start: number;
    end: number;
  }[];
}

export interface Linear {
  kind: LoraTarget;
  in: number;
  out: number;
  /** The weight [out, in], f16-packed or f32; absent when it is held 4-bit (`q4`). */
  w?: GPUBuffer;
  f16: boolean;
  /** The weight quantized to 4 bits (QLoRA's frozen base), read by the 4-bit matmul. */
  q4?: Quant4Weight;
  bias?: GPUBuffer;
  wParam?: TrainableParam;
  bParam?: TrainableParam;
  lora?: { A: TrainableParam; B: TrainableParam };
}

export interface Layer {
  ln1: GPUBuffer;
  ln2: GPUBuffer;
  ln1Param?: TrainableParam;
  ln2Param?: TrainableParam;
  lin: Record<LoraTarget, Linear>;
}

/** Per-layer activations kept for backward (one set, reused, under gradient checkpointing). */
export interface Acts {
  n1: GPUBuffer;
  rstd1: GPUBuffer;
  qkv: GPUBuffer;
  attn: GPUBuffer;
  stats: GPUBuffer;
  h1: GPUBuffer;
  n2: GPUBuffer;
  rstd2: GPUBuffer;
  ff: GPUBuffer;
  sw: GPUBuffer;
  /** LoRA: A·dropout(x) [T, r] per target. */
  lora: Partial<Record<LoraTarget, GPUBuffer>>;
}

/** Buffers of one step shared by all layers, sized for maxBatch × maxSeq tokens. */
export interface Scratch {
  ids: GPUBuffer;
  targets: GPUBuffer;
  pos: GPUBuffer;
  plan: GPUBuffer;
  dres: GPUBuffer;
  dn: GPUBuffer;
  dattn: GPUBuffer;
  dqkv: GPUBuffer;
  dsw: GPUBuffer;
  dff: GPUBuffer;
  xd: GPUBuffer;
  dxl: GPUBuffer;
  da: GPUBuffer;
  nf: GPUBuffer;
  rstdF: GPUBuffer;
  logits: GPUBuffer;
  logitRows: number;
  /** Scratch of the cross-entropy's per-chunk partials (lib/gpu/kernels/cross_entropy.ts). */
  ceParts: GPUBuffer;
  rowLoss: GPUBuffer;
  /** Score blocks for the matmul attention path (absent: the per-row flash kernels). */
  scores?: GPUBuffer;
  dscores?: GPUBuffer;
  pkv?: GPUBuffer;
  dpkv?: GPUBuffer;
  kvSum?: GPUBuffer;
  ph?: GPUBuffer;
  dph?: GPUBuffer;
}

/** P-Tuning v2's prefix encoder. */
export interface Prefix {
  /** Virtual positions (pre_seq_len). */
  P: number;
  /** Width of a position: every layer's keys and values, L·2·G·D. */
  C: number;
  /** Hidden width of the projection. */
  hidden: number;
  emb: TrainableParam;
  /** The projection's [weight, bias, weight, bias], when prefix_projection. */
  trans?: TrainableParam[];
  /** Dropout on the keys/values in training. */
  dropout: number;
}

/** The model as its blocks see it. */
export interface Core {
  gpu: Gpu;
  dims: Dims;
  adapter: AdapterSpec;
  layers: Layer[];
  embed: Table;
  output: Table;
  finalNorm: GPUBuffer;
  finalNormParam?: TrainableParam;
  /** Trainable params by name (the embedding and output layer of full SFT are found here). */
  byName: Map<string, TrainableParam>;
  rope: { table: GPUBuffer; maxPos: number };
  prefix?: Prefix;
  /** The residual stream entering each layer, and leaving the last. */
  xs: GPUBuffer[];
  acts: Acts[];
  s: Scratch;
  gradientCheckpointing: boolean;
}

/** The shape of the work being encoded. */
export interface Step {
  B: number;
  S: number;
  T: number;
  training: boolean;
  /** Dropout seed (a Knob when the step is recorded and replayed). */
  seed: UniformValue;
  /** Prefix keys/values per batch row (dropout) rather than shared. */
  prefixPerBatch: boolean;
  /** i32 [T]: the position of each row (rotary embedding, and the last key it sees). */
  pos: GPUBuffer;
}

/** The activations of layer i (the one set under gradient checkpointing). */
export function actsFor(c: Core, layer: number): Acts {
  return c.acts.length === 1 ? c.acts[0] : c.acts[layer];
}

export const f32Bytes = (n: number): number => n * 4;
