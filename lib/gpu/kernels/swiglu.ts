/**
 * SwiGLU of the 4h projection: y = silu(x[:, :F]) ⊙ x[:, F:], and its
 * backward dx [rows, 2F] from x and dy. One invocation per output element.
 * Reference: `swiglu` / `swigluBackward` in lib/model/cpu/ops.ts.
 */
import type { Gpu } from "../device.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

function forwardShader(wg: number): string {
  return `struct U { n: u32, F: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.n) { return; }
  let r = idx / u.F;
  let i = idx - r * u.F;
  let a = x[r * 2u * u.F + i];
  let b = x[r * 2u * u.F + u.F + i];
  y[idx] = a / (1.0 + exp(-a)) * b;
}`;
}

export function encodeSwiglu(
  gpu: Gpu,
  pass: ComputePass,
  x: GPUBuffer,
  y: GPUBuffer,
  rows: number,
  F: number,
): void {
  const n = rows * F;
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }, { u: F }]));
  dispatch(gpu, pass, getPipeline(gpu, forwardShader(wg)), [u, x, y], grid(gpu, n, wg));
}

function backwardShader(wg: number): string {
  return `struct U { n: u32, F: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
${entry(wg)}
  if (idx >= u.n) { return; }
  let r = idx / u.F;
  let i = idx - r * u.F;
  let ia = r * 2u * u.F + i;
  let a = x[ia];
  let b = x[ia + u.F];
  let g = dy[idx];
  let sig = 1.0 / (1.0 + exp(-a));
  dx[ia] = g * b * sig * (1.0 + a * (1.0 - sig));
  dx[ia + u.F] = g * a * sig;
}`;
}

export function encodeSwigluBackward(
  gpu: Gpu,
  pass: ComputePass,
  x: GPUBuffer,
  dy: GPUBuffer,
  dx: GPUBuffer,
  rows: number,
  F: number,
): void {
  const n = rows * F;
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([{ u: n }, { u: F }]));
  dispatch(gpu, pass, getPipeline(gpu, backwardShader(wg)), [u, x, dy, dx], grid(gpu, n, wg));
}
