/**
 * Global L2 norm of a set of gradient buffers and the clip coefficient of
 * torch.nn.utils.clip_grad_norm_, min(1, max_norm / (norm + 1e-6)), computed
 * on the device (reference: `gradNormRef` in lib/train/adamw.ts). The result
 * buffer holds [norm, clip] and is read back only when a step is logged; the
 * AdamW kernel reads `clip` from it directly.
 *
 * Two passes: each gradient chunk's workgroups write partial sums of squares
 * into their own slots, then one workgroup adds the slots up. A workgroup's
 * sum is a tree in workgroup memory, or, where the device has subgroups
 * (../features.ts), subgroup sums added in order.
 */
import type { Gpu } from "../device.ts";
import {
  type ComputePass,
  createBuffer,
  dispatch,
  getPipeline,
  packUniforms,
  uniforms,
} from "../runtime.ts";
import { chunks } from "./adamw.ts";
import { kernelFeatures } from "../features.ts";
import { SUBGROUP_ARGS, subgroupReductions } from "./reduce.ts";

const WG = 64;
/** Most workgroups (partial slots) per chunk; each walks the chunk with a grid stride. */
const MAX_PARTS = 256;
/** Elements a workgroup should have at least, so tiny tensors use one slot. */
const MIN_PER_WG = WG * 16;

const PARTIAL = /* wgsl */ `
struct U { n: u32, slot: u32, _a: u32, _b: u32 };
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> parts: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> acc: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  var s = 0.0;
  let stride = nwg.x * ${WG}u;
  for (var i = gid.x; i < u.n; i += stride) {
    let x = g[i];
    s += x * x;
  }
  acc[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w = w / 2u) {
    if (lid.x < w) { acc[lid.x] += acc[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { parts[u.slot + wid.x] = acc[0]; }
}
`;

const FINAL = /* wgsl */ `
struct U { count: u32, has_max: u32, max_norm: f32, _b: u32 };
@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> acc: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var s = 0.0;
  for (var i = lid.x; i < u.count; i += ${WG}u) { s += parts[i]; }
  acc[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w = w / 2u) {
    if (lid.x < w) { acc[lid.x] += acc[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let norm = sqrt(acc[0]);
    out[0] = norm;
    var c = 1.0;
    if (u.has_max != 0u) { c = min(1.0, u.max_norm / (norm + 1e-6)); }
    out[1] = c;
  }
}
`;

/** The two passes with their workgroup sums through subgroups. */
const PARTIAL_SUBGROUPS = /* wgsl */ `
struct U { n: u32, slot: u32, _a: u32, _b: u32 };
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> parts: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
${subgroupReductions(WG)}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        ${SUBGROUP_ARGS}) {
  var s = 0.0;
  let stride = nwg.x * ${WG}u;
  for (var i = gid.x; i < u.n; i += stride) {
    let x = g[i];
    s += x * x;
  }
  let t = wgSum(s, sg, nsg, lane);
  if (l == 0u) { parts[u.slot + wid.x] = t; }
}
`;

const FINAL_SUBGROUPS = /* wgsl */ `
struct U { count: u32, has_max: u32, max_norm: f32, _b: u32 };
@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
${subgroupReductions(WG)}

@compute @workgroup_size(${WG})
fn main(${SUBGROUP_ARGS}) {
  var s = 0.0;
  for (var i = l; i < u.count; i += ${WG}u) { s += parts[i]; }
  let t = wgSum(s, sg, nsg, lane);
  if (l == 0u) {
    let norm = sqrt(t);
    out[0] = norm;
    var c = 1.0;
    if (u.has_max != 0u) { c = min(1.0, u.max_norm / (norm + 1e-6)); }
    out[1] = c;
  }
}
`;

interface Piece {
  grad: GPUBuffer;
  start: number;
  n: number;
  slot: number;
  wgs: number;
}

export class GradNorm {
  /** [norm, clip] as f32. */
  readonly result: GPUBuffer;
  private parts: GPUBuffer;
  private pieces: Piece[] = [];
  private slots = 0;

  constructor(private gpu: Gpu, grads: ReadonlyArray<{ grad: GPUBuffer; size: number }>) {
    for (const { grad, size } of grads) {
      for (const { start, n } of chunks(gpu, size)) {
        const wgs = Math.max(1, Math.min(MAX_PARTS, Math.ceil(n / MIN_PER_WG)));
        this.pieces.push({ grad, start, n, slot: this.slots, wgs });
        this.slots += wgs;
      }
    }
    this.parts = createBuffer(gpu, Math.max(1, this.slots) * 4, "grad-norm-partials");
    this.result = createBuffer(gpu, 8, "grad-norm");
  }

  /** Encode norm and clip into `result`; `maxNorm` null or ≤ 0 leaves clip at 1. */
  encode(pass: ComputePass, maxNorm: number | null): void {
    const gpu = this.gpu;
    const subgroups = kernelFeatures(gpu).subgroups;
    const partial = getPipeline(gpu, subgroups ? PARTIAL_SUBGROUPS : PARTIAL);
    for (const p of this.pieces) {
      const u = uniforms(gpu).alloc(packUniforms([{ u: p.n }, { u: p.slot }, { u: 0 }, { u: 0 }]));
      dispatch(gpu, pass, partial, [
        { buffer: p.grad, offset: p.start * 4, size: p.n * 4 },
        this.parts,
        u,
      ], [p.wgs]);
    }
    const has = maxNorm !== null && maxNorm > 0;
    const u = uniforms(gpu).alloc(packUniforms([
      { u: this.slots },
      { u: has ? 1 : 0 },
      { f: has ? maxNorm : 0 },
      { u: 0 },
    ]));
    const final = getPipeline(gpu, subgroups ? FINAL_SUBGROUPS : FINAL);
    dispatch(gpu, pass, final, [this.parts, this.result, u], [1]);
  }

  destroy(): void {
    this.parts.destroy();
    this.result.destroy();
  }
}
