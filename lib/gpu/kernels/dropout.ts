/**
 * Inverted dropout with a counter-based hash RNG: element i of stream `stream`
 * under `seed` is kept when hash(i, stream, seed) ≥ p and scaled by 1/(1−p).
 * The mask is a pure function of (seed, stream, i), so backward regenerates
 * it instead of storing it. `dropoutKeepRef` is the TypeScript reference of
 * the same bits.
 */
import type { Gpu } from "../device.ts";
import {
  type ComputePass,
  dispatch,
  getPipeline,
  packUniforms,
  uniforms,
  type UniformValue,
} from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

/** lowbias32 (Chris Wellons' integer hash): good avalanche at two multiplies. */
export function mix(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** The uniform in [0, 1) the kernel draws for element i. */
export function dropoutUniformRef(seed: number, stream: number, i: number): number {
  const key = mix((seed >>> 0) ^ mix(stream >>> 0));
  return (mix((key + i) >>> 0) >>> 8) / 16777216;
}

export function dropoutKeepRef(seed: number, stream: number, i: number, p: number): boolean {
  return dropoutUniformRef(seed, stream, i) >= p;
}

export const WGSL_HASH = `fn mix32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}
fn uniform01(seed: u32, stream: u32, i: u32) -> f32 {
  let key = mix32(seed ^ mix32(stream));
  return f32(mix32(key + i) >> 8u) / 16777216.0;
}`;

function shader(wg: number): string {
  return `struct U { n: u32, xOff: u32, yOff: u32, seed: u32, stream: u32, p: f32, beta: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${WGSL_HASH}
${entry(wg)}
  if (idx >= u.n) { return; }
  var v = 0.0;
  if (uniform01(u.seed, u.stream, idx) >= u.p) { v = x[u.xOff + idx] / (1.0 - u.p); }
  if (u.beta != 0.0) { v += u.beta * y[u.yOff + idx]; }
  y[u.yOff + idx] = v;
}`;
}

/**
 * y[yOff + i] = mask_i·x[xOff + i]/(1−p) (+ beta·y). The same call on the
 * output gradient is the backward.
 */
export function encodeDropout(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    x: GPUBuffer;
    xOff?: number;
    y: GPUBuffer;
    yOff?: number;
    n: number;
    p: number;
    /** A number, or a Knob of a recorded step (lib/gpu/recording.ts). */
    seed: UniformValue;
    stream: number;
    beta?: number;
  },
): void {
  if (a.n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.n },
    { u: a.xOff ?? 0 },
    { u: a.yOff ?? 0 },
    { u: a.seed },
    { u: a.stream },
    { f: a.p },
    { f: a.beta ?? 0 },
  ]));
  dispatch(gpu, pass, getPipeline(gpu, shader(wg)), [u, a.x, a.y], grid(gpu, a.n, wg));
}
