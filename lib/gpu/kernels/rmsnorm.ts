/**
 * RMSNorm forward (saving 1/rms per row for backward) and backward: dx per row,
 * and the weight gradient as a column reduction over rows (full SFT only).
 * One invocation per row (or per column for dweight): on llvmpipe this beat a
 * workgroup tree reduction. Where the device has subgroups (../features.ts),
 * a workgroup per row instead, each invocation walking a strided share and
 * the row's sum reduced through subgroups: a GPU gets rows × 64 invocations
 * rather than one per row. Reference: `rmsnorm` / `rmsnormBackward` in
 * lib/model/cpu/ops.ts.
 */

/** The row of a workgroup-per-row kernel, and its early return (uniform across the workgroup). */
const WG_ROW = `  let row = idx;
  if (row >= u.rows) { return; }
  let o = row * u.dim;`;

function forwardSubgroupShader(): string {
  return `struct U { rows: u32, dim: u32, eps: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
${subgroupReductions(SUBGROUP_WG)}
${SUBGROUP_ENTRY}
${WG_ROW}
  var ss = 0.0;
  for (var i = l; i < u.dim; i += ${SUBGROUP_WG}u) { let v = x[o + i]; ss = fma(v, v, ss); }
  let s = inverseSqrt(wgSum(ss, sg, nsg, lane) / f32(u.dim) + u.eps);
  if (l == 0u) { rstd[row] = s; }
  for (var i = l; i < u.dim; i += ${SUBGROUP_WG}u) { y[o + i] = w[i] * (x[o + i] * s); }
}`;
}

function backwardSubgroupShader(): string {
  return `struct U { rows: u32, dim: u32, beta: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
${subgroupReductions(SUBGROUP_WG)}
${SUBGROUP_ENTRY}
${WG_ROW}
  let s = rstd[row];
  var dot = 0.0;
  for (var i = l; i < u.dim; i += ${SUBGROUP_WG}u) { dot = fma(dy[o + i] * w[i], x[o + i], dot); }
  let c = s * s * s * wgSum(dot, sg, nsg, lane) / f32(u.dim);
  for (var i = l; i < u.dim; i += ${SUBGROUP_WG}u) {
    var v = dy[o + i] * w[i] * s - x[o + i] * c;
    if (u.beta != 0.0) { v += u.beta * dx[o + i]; }
    dx[o + i] = v;
  }
}`;
}

import type { Gpu } from "../device.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { checkLoopBudget, LOOP_BUDGET, spans } from "../loop_budget.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";
import { rowKernel, SUBGROUP_ENTRY, SUBGROUP_WG, subgroupReductions } from "./reduce.ts";

function forwardShader(wg: number): string {
  return `struct U { rows: u32, dim: u32, eps: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
  let o = idx * u.dim;
  var ss = 0.0;
  for (var i = 0u; i < u.dim; i++) { let v = x[o + i]; ss = fma(v, v, ss); }
  let s = inverseSqrt(ss / f32(u.dim) + u.eps);
  rstd[idx] = s;
  for (var i = 0u; i < u.dim; i++) { y[o + i] = w[i] * (x[o + i] * s); }
}`;
}

/** y = w ⊙ x / rms(x) per row of x [rows, dim]; rstd [rows] receives 1/rms. */
export function encodeRmsnorm(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    x: GPUBuffer;
    w: GPUBuffer;
    y: GPUBuffer;
    rstd: GPUBuffer;
    rows: number;
    dim: number;
    eps: number;
  },
): void {
  if (a.rows <= 0) return;
  checkLoopBudget("rmsnorm", 2 * a.dim);
  const k = rowKernel(gpu, a.rows, forwardShader, forwardSubgroupShader);
  const u = uniforms(gpu).alloc(packUniforms([{ u: a.rows }, { u: a.dim }, { f: a.eps }]));
  dispatch(gpu, pass, k.pipeline, [u, a.x, a.w, a.y, a.rstd], k.groups);
}

function backwardShader(wg: number): string {
  return `struct U { rows: u32, dim: u32, beta: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
  let o = idx * u.dim;
  let s = rstd[idx];
  var dot = 0.0;
  for (var i = 0u; i < u.dim; i++) { dot = fma(dy[o + i] * w[i], x[o + i], dot); }
  let c = s * s * s * dot / f32(u.dim);
  for (var i = 0u; i < u.dim; i++) {
    var v = dy[o + i] * w[i] * s - x[o + i] * c;
    if (u.beta != 0.0) { v += u.beta * dx[o + i]; }
    dx[o + i] = v;
  }
}`;
}

function dweightShader(wg: number): string {
  return `struct U { rows: u32, dim: u32, r0: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;
${entry(wg)}
  if (idx >= u.dim) { return; }
  var s = 0.0;
  for (var r = u.r0; r < u.rows; r++) { s = fma(dy[r * u.dim + idx], x[r * u.dim + idx] * rstd[r], s); }
  dw[idx] += s;
}`;
}

/**
 * dx = ∂/∂x of RMSNorm given dy (beta = 1 adds into dx, for the residual
 * stream); when `dw` is given, dw += Σ_rows dy ⊙ x·rstd (a separate
 * deterministic column pass).
 */
export function encodeRmsnormBackward(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    x: GPUBuffer;
    w: GPUBuffer;
    rstd: GPUBuffer;
    dy: GPUBuffer;
    dx: GPUBuffer;
    rows: number;
    dim: number;
    beta?: number;
    dw?: GPUBuffer;
  },
): void {
  if (a.rows <= 0) return;
  checkLoopBudget("rmsnorm backward", 2 * a.dim);
  const k = rowKernel(gpu, a.rows, backwardShader, backwardSubgroupShader);
  const u = uniforms(gpu).alloc(packUniforms([{ u: a.rows }, { u: a.dim }, { f: a.beta ?? 0 }]));
  dispatch(gpu, pass, k.pipeline, [u, a.x, a.w, a.rstd, a.dy, a.dx], k.groups);
  const wg = rowWorkgroup(gpu);
  if (a.dw) {
    // Rows [r0, rows) per dispatch, within the loop budget; each adds onto dw.
    for (const [r0, r1] of spans(a.rows, LOOP_BUDGET)) {
      const u2 = uniforms(gpu).alloc(packUniforms([{ u: r1 }, { u: a.dim }, { u: r0 }]));
      dispatch(
        gpu,
        pass,
        getPipeline(gpu, dweightShader(wg)),
        [u2, a.x, a.rstd, a.dy, a.dw],
        grid(gpu, a.dim, wg),
      );
    }
  }
}
