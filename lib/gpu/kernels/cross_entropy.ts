/**
 * Log-softmax + cross-entropy with ignore_index −100, fused with its gradient:
 * one invocation per row computes the row's loss and, when asked, overwrites
 * the logits in place with dlogits = (softmax − onehot)·gradScale (zero on
 * ignored rows), so the [rows, vocab] gradient needs no second buffer. The
 * per-row losses are summed in order by one invocation into a slot of a loss
 * buffer (deterministic). Reference: `crossEntropy` in lib/model/cpu/ops.ts.
 */
import type { Gpu } from "../device.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

function shader(wg: number): string {
  return `struct U { rows: u32, V: u32, ld: u32, logitOff: u32, targetOff: u32, lossOff: u32, grad: u32, gradScale: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> rowLoss: array<f32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
  let o = u.logitOff + idx * u.ld;
  let t = targets[u.targetOff + idx];
  if (t < 0) {
    rowLoss[u.lossOff + idx] = 0.0;
    if (u.grad != 0u) { for (var i = 0u; i < u.V; i++) { logits[o + i] = 0.0; } }
    return;
  }
  var m = -3.0e38;
  for (var i = 0u; i < u.V; i++) { m = max(m, logits[o + i]); }
  var s = 0.0;
  for (var i = 0u; i < u.V; i++) { s += exp(logits[o + i] - m); }
  let lse = m + log(s);
  rowLoss[u.lossOff + idx] = lse - logits[o + u32(t)];
  if (u.grad != 0u) {
    for (var i = 0u; i < u.V; i++) { logits[o + i] = exp(logits[o + i] - lse) * u.gradScale; }
    logits[o + u32(t)] -= u.gradScale;
  }
}`;
}

export interface CrossEntropyArgs {
  logits: GPUBuffer;
  /** Element offset of the first row and the row stride (≥ V). */
  logitOff?: number;
  ld?: number;
  rows: number;
  V: number;
  /** i32 targets (−100 ignored), already shifted; row r uses targets[targetOff + r]. */
  targets: GPUBuffer;
  targetOff?: number;
  /** Per-row loss output, row r at rowLoss[lossOff + r]. */
  rowLoss: GPUBuffer;
  lossOff?: number;
  /** When set, logits are replaced by dlogits scaled by gradScale. */
  gradScale?: number;
}

export function encodeCrossEntropy(
  gpu: Gpu,
  pass: ComputePass,
  a: CrossEntropyArgs,
): void {
  if (a.rows <= 0) return;
  const wg = rowWorkgroup(gpu);
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.rows },
    { u: a.V },
    { u: a.ld ?? a.V },
    { u: a.logitOff ?? 0 },
    { u: a.targetOff ?? 0 },
    { u: a.lossOff ?? 0 },
    { u: a.gradScale === undefined ? 0 : 1 },
    { f: a.gradScale ?? 0 },
  ]));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, shader(wg)),
    [u, a.logits, a.targets, a.rowLoss],
    grid(gpu, a.rows, wg),
  );
}

const SUM = `struct U { n: u32, off: u32, slot: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1)
fn main() {
  var s = 0.0;
  for (var i = 0u; i < u.n; i++) { s += x[u.off + i]; }
  if (u.accumulate != 0u) { s += y[u.slot]; }
  y[u.slot] = s;
}`;

/** y[slot] = Σ_{i<n} x[off + i] (+ y[slot] when accumulating), summed in order. */
export function encodeSum(
  gpu: Gpu,
  pass: ComputePass,
  x: GPUBuffer,
  n: number,
  y: GPUBuffer,
  slot: number,
  opts: { off?: number; accumulate?: boolean } = {},
): void {
  const u = uniforms(gpu).alloc(packUniforms([
    { u: n },
    { u: opts.off ?? 0 },
    { u: slot },
    { u: opts.accumulate ? 1 : 0 },
  ]));
  dispatch(gpu, pass, getPipeline(gpu, SUM), [u, x, y], [1]);
}
