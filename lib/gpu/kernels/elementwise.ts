/**
 * Elementwise helpers: fill, strided 2-D copy/accumulate (residual adds,
 * gradient accumulation, KV-cache writes, slicing fused qkv rows), out-of-place
 * add, in-place scale, and column sums (bias gradients). Offsets and strides
 * are in f32 elements. References: `add` in lib/model/cpu/ops.ts, and the
 * one-line loops in the doc comments below.
 */
import type { Gpu } from "../device.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { LOOP_BUDGET, spans } from "../loop_budget.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

function fillShader(wg: number): string {
  return `struct U { n: u32, off: u32, value: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.n) { return; }
  y[u.off + idx] = u.value;
}`;
}

/** y[off + i] = value for i < n. */
export function encodeFill(
  gpu: Gpu,
  pass: ComputePass,
  y: GPUBuffer,
  n: number,
  value = 0,
  off = 0,
): void {
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }, { u: off }, { f: value }]));
  dispatch(gpu, pass, getPipeline(gpu, fillShader(wg)), [u, y], grid(gpu, n, wg));
}

function copyShader(wg: number): string {
  return `struct U { rows: u32, width: u32, srcOff: u32, srcStride: u32,
  dstOff: u32, dstStride: u32, alpha: f32, beta: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.rows * u.width) { return; }
  let r = idx / u.width;
  let c = idx - r * u.width;
  let d = u.dstOff + r * u.dstStride + c;
  var v = u.alpha * x[u.srcOff + r * u.srcStride + c];
  if (u.beta != 0.0) { v += u.beta * y[d]; }
  y[d] = v;
}`;
}

export interface Copy2d {
  rows: number;
  width: number;
  src: GPUBuffer;
  srcOff?: number;
  /** Elements between rows of src (default width). */
  srcStride?: number;
  dst: GPUBuffer;
  dstOff?: number;
  dstStride?: number;
  /** dst = alpha·src + beta·dst (defaults 1 and 0: a plain copy; beta 1 accumulates). */
  alpha?: number;
  beta?: number;
}

/** dst[r, c] = alpha·src[r, c] + beta·dst[r, c] over a strided rows×width block. src ≠ dst. */
export function encodeCopy2d(gpu: Gpu, pass: ComputePass, a: Copy2d): void {
  const n = a.rows * a.width;
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.rows },
    { u: a.width },
    { u: a.srcOff ?? 0 },
    { u: a.srcStride ?? a.width },
    { u: a.dstOff ?? 0 },
    { u: a.dstStride ?? a.width },
    { f: a.alpha ?? 1 },
    { f: a.beta ?? 0 },
  ]));
  dispatch(gpu, pass, getPipeline(gpu, copyShader(wg)), [u, a.src, a.dst], grid(gpu, n, wg));
}

function addShader(wg: number): string {
  return `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.n) { return; }
  y[idx] = a[idx] + b[idx];
}`;
}

/** y = a + b over n elements (the residual add; y must differ from a and b). */
export function encodeAdd(
  gpu: Gpu,
  pass: ComputePass,
  a: GPUBuffer,
  b: GPUBuffer,
  y: GPUBuffer,
  n: number,
): void {
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }]));
  dispatch(gpu, pass, getPipeline(gpu, addShader(wg)), [u, a, b, y], grid(gpu, n, wg));
}

function scaleShader(wg: number): string {
  return `struct U { n: u32, off: u32, s: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.n) { return; }
  y[u.off + idx] *= u.s;
}`;
}

/** y[off + i] *= s for i < n. */
export function encodeScale(
  gpu: Gpu,
  pass: ComputePass,
  y: GPUBuffer,
  n: number,
  s: number,
  off = 0,
): void {
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }, { u: off }, { f: s }]));
  dispatch(gpu, pass, getPipeline(gpu, scaleShader(wg)), [u, y], grid(gpu, n, wg));
}

function colSumShader(wg: number): string {
  return `struct U { rows: u32, cols: u32, srcOff: u32, srcStride: u32, dstOff: u32, beta: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.cols) { return; }
  var s = 0.0;
  for (var r = 0u; r < u.rows; r++) { s += x[u.srcOff + r * u.srcStride + idx]; }
  if (u.beta != 0.0) { s += u.beta * y[u.dstOff + idx]; }
  y[u.dstOff + idx] = s;
}`;
}

/**
 * y[dstOff + c] = Σ_r x[srcOff + r·srcStride + c] (+ beta·y): the bias
 * gradient of a Linear (db = Σ_rows dy in linearBackward). One invocation per
 * column walking the rows in order, so the sum is deterministic.
 */
export function encodeColSum(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    rows: number;
    cols: number;
    src: GPUBuffer;
    srcOff?: number;
    srcStride?: number;
    dst: GPUBuffer;
    dstOff?: number;
    beta?: number;
  },
): void {
  if (a.cols <= 0) return;
  const wg = rowWorkgroup(gpu);
  const stride = a.srcStride ?? a.cols;
  // Each invocation walks the rows: past the loop budget (../loop_budget.ts)
  // they go in ranges, each adding onto the last.
  spans(Math.max(a.rows, 1), LOOP_BUDGET).forEach(([r0, r1], i) => {
    const u = uniforms(gpu).alloc(packUniforms([
      { u: Math.min(r1, a.rows) - r0 },
      { u: a.cols },
      { u: (a.srcOff ?? 0) + r0 * stride },
      { u: stride },
      { u: a.dstOff ?? 0 },
      { f: i === 0 ? a.beta ?? 0 : 1 },
    ]));
    dispatch(
      gpu,
      pass,
      getPipeline(gpu, colSumShader(wg)),
      [u, a.src, a.dst],
      grid(gpu, a.cols, wg),
    );
  });
}

function tanhShader(wg: number, backward: boolean): string {
  return `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
${
    backward
      ? `@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;`
      : `@group(0) @binding(1) var<storage, read_write> y: array<f32>;`
  }
${entry(wg)}
  if (idx >= u.n) { return; }
  ${backward ? "let t = h[idx]; g[idx] *= 1.0 - t * t;" : "y[idx] = tanh(y[idx]);"}
}`;
}

/** y = tanh(y) in place (the prefix encoder's projection). */
export function encodeTanh(gpu: Gpu, pass: ComputePass, y: GPUBuffer, n: number): void {
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }]));
  dispatch(gpu, pass, getPipeline(gpu, tanhShader(wg, false)), [u, y], grid(gpu, n, wg));
}

/** g ⊙= 1 − h² in place, with h = tanh(x) from the forward: the backward of encodeTanh. */
export function encodeTanhBackward(
  gpu: Gpu,
  pass: ComputePass,
  h: GPUBuffer,
  g: GPUBuffer,
  n: number,
): void {
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }]));
  dispatch(gpu, pass, getPipeline(gpu, tanhShader(wg, true)), [u, h, g], grid(gpu, n, wg));
}
