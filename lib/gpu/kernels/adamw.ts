/**
 * Fused AdamW update over a set of parameters (torch.optim.AdamW semantics,
 * reference: `adamwRef` in lib/train/adamw.ts). The gradient is multiplied by
 * a clip coefficient read from a GPU buffer written by the grad-norm kernel,
 * so clipping needs no readback. Step-dependent scalars (bias corrections)
 * come from the host in a uniform: they depend only on the step number.
 *
 * Tensors larger than maxStorageBufferBindingSize are updated in chunks bound
 * as sub-ranges; nothing is truncated.
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

/** What the optimizer needs of a trainable tensor. */
export interface OptimParam {
  name: string;
  size: number;
  weight: GPUBuffer;
  grad: GPUBuffer;
  decay: boolean;
}

/** Scalars of one step, as computed by `adamwScalars` (lib/train/adamw.ts). */
export interface AdamWKernelScalars {
  beta1: number;
  beta2: number;
  eps: number;
  lrWd: number;
  stepSize: number;
  bc2Sqrt: number;
}

const WG = 64;

const SHADER = /* wgsl */ `
struct U {
  n: u32, decay: u32, clip_index: u32, _pad: u32,
  lr_wd: f32, beta1: f32, beta2: f32, eps: f32,
  step_size: f32, bc2_sqrt: f32, one_minus_beta1: f32, one_minus_beta2: f32,
};
@group(0) @binding(0) var<storage, read_write> p: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> clip: array<f32>;
@group(0) @binding(5) var<uniform> u: U;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = clip[u.clip_index];
  let stride = nwg.x * ${WG}u;
  for (var i = gid.x; i < u.n; i += stride) {
    let gi = g[i] * c;
    var w = p[i];
    if (u.decay != 0u) { w = w - u.lr_wd * w; }
    let mi = u.beta1 * m[i] + u.one_minus_beta1 * gi;
    let vi = u.beta2 * v[i] + u.one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) / u.bc2_sqrt + u.eps;
    p[i] = w - u.step_size * (mi / denom);
  }
}
`;

/** Elements per bound chunk: the largest multiple of 64 f32 (256 B, the offset alignment) that fits a binding. */
export function chunkElements(gpu: Gpu): number {
  const align = Math.max(256, gpu.limits.minStorageBufferOffsetAlignment);
  return Math.floor(gpu.limits.maxStorageBufferBindingSize / align) * (align / 4);
}

/** Split [0, size) into bindable chunks. */
export function chunks(gpu: Gpu, size: number): Array<{ start: number; n: number }> {
  const per = chunkElements(gpu);
  const out: Array<{ start: number; n: number }> = [];
  for (let start = 0; start < size; start += per) {
    out.push({ start, n: Math.min(per, size - start) });
  }
  return out;
}

const range = (buffer: GPUBuffer, start: number, n: number): GPUBufferBinding => ({
  buffer,
  offset: start * 4,
  size: n * 4,
});

/** The AdamW moments (exp_avg, exp_avg_sq) of each param, zero at creation. */
export class AdamWState {
  readonly m: GPUBuffer[];
  readonly v: GPUBuffer[];
  constructor(private gpu: Gpu, readonly params: readonly OptimParam[]) {
    this.m = params.map((p) => createBuffer(gpu, p.size * 4, `${p.name}.exp_avg`));
    this.v = params.map((p) => createBuffer(gpu, p.size * 4, `${p.name}.exp_avg_sq`));
  }

  /**
   * Encode the update of every param. `clip` is an f32 buffer whose element
   * `clipIndex` multiplies every gradient (the grad-norm kernel's output).
   */
  encode(
    pass: ComputePass,
    s: AdamWKernelScalars,
    clip: GPUBuffer,
    clipIndex: number,
  ): void {
    const gpu = this.gpu;
    const pipeline = getPipeline(gpu, SHADER);
    const maxWg = gpu.limits.maxComputeWorkgroupsPerDimension;
    this.params.forEach((p, k) => {
      for (const { start, n } of chunks(gpu, p.size)) {
        const u = uniforms(gpu).alloc(packUniforms([
          { u: n },
          { u: p.decay ? 1 : 0 },
          { u: clipIndex },
          { u: 0 },
          { f: s.lrWd },
          { f: s.beta1 },
          { f: s.beta2 },
          { f: s.eps },
          { f: s.stepSize },
          { f: s.bc2Sqrt },
          // 1−β in f64 first, as torch passes it as a Python float scalar.
          { f: 1 - s.beta1 },
          { f: 1 - s.beta2 },
        ]));
        dispatch(gpu, pass, pipeline, [
          range(p.weight, start, n),
          range(p.grad, start, n),
          range(this.m[k], start, n),
          range(this.v[k], start, n),
          clip,
          u,
        ], [Math.min(Math.ceil(n / WG), maxWg)]);
      }
    });
  }

  destroy(): void {
    for (const b of [...this.m, ...this.v]) b.destroy();
  }
}
