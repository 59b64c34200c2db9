/**
 * Log-softmax + cross-entropy with ignore_index −100, fused with its gradient:
 * the row's loss is computed and, when asked, the logits are overwritten in
 * place with dlogits = (softmax − onehot)·gradScale (zero on ignored rows), so
 * the [rows, vocab] gradient needs no second buffer.
 *
 * A vocabulary row is walked in chunks of CHUNK columns, one invocation per
 * (row, chunk): each keeps an invocation's loop under the CPU drivers' limit
 * (../loop_budget.ts; a chatglm3-6b row has 65,024 columns) and gives a GPU
 * rows × chunks invocations instead of one per row. Three passes:
 * 1. per chunk, its max m_c and s_c = Σ exp(x − m_c) into `partials`;
 * 2. per row, lse = M + log Σ_c s_c·exp(m_c − M) (M the largest m_c, chunks
 *    combined in order) and the loss lse − x[target];
 * 3. (gradient) per chunk, x ← exp(x − lse)·gradScale, minus gradScale at the target.
 * With one chunk (V ≤ CHUNK) this is exactly the single-row computation.
 * The per-row losses are summed in order by one invocation into a slot of a
 * loss buffer (deterministic). Where the device has subgroups
 * (../features.ts), passes 1 and 3 take a workgroup per (row, chunk), its
 * invocations walking every SUBGROUP_WG-th column and the chunk's max and sum
 * reduced through subgroups. Reference: `crossEntropy` in lib/model/cpu/ops.ts.
 */
import type { Gpu } from "../device.ts";
import { checkLoopBudget, LOOP_BUDGET, spans } from "../loop_budget.ts";
import {
  type ComputePass,
  dispatch,
  getPipeline,
  packUniforms,
  uniforms,
  type UniformValue,
} from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";
import { kernelFeatures } from "../features.ts";
import { SUBGROUP_ENTRY, SUBGROUP_WG, subgroupGrid, subgroupReductions } from "./reduce.ts";

/** Columns of a row one invocation walks. */
export const CHUNK = 4096;

const chunksOf = (V: number) => Math.max(1, Math.ceil(V / CHUNK));

/** Bytes of the `partials` scratch for `rows` rows of V columns. */
export function crossEntropyScratchBytes(rows: number, V: number): number {
  return (rows * chunksOf(V) * 2 + rows) * 4;
}

const HEAD =
  `struct U { rows: u32, V: u32, ld: u32, logitOff: u32, targetOff: u32, lossOff: u32, nC: u32, gradScale: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> part: array<f32>;`;

/** Per (row, chunk) `idx` (an invocation each, or with subgroups a workgroup each): the chunk's bounds, its row's logits and target. */
const CHUNK_INDEX = `  if (idx >= u.rows * u.nC) { return; }
  let r = idx / u.nC;
  let lo = (idx % u.nC) * ${CHUNK}u;
  let hi = min(lo + ${CHUNK}u, u.V);
  let o = u.logitOff + r * u.ld;
  let t = targets[u.targetOff + r];`;

function partialShader(wg: number): string {
  return `${HEAD}
${entry(wg)}
${CHUNK_INDEX}
  if (t < 0) { return; }
  var m = -3.0e38;
  for (var i = lo; i < hi; i++) { m = max(m, logits[o + i]); }
  var s = 0.0;
  for (var i = lo; i < hi; i++) { s += exp(logits[o + i] - m); }
  part[2u * idx] = m;
  part[2u * idx + 1u] = s;
}`;
}

function partialSubgroupShader(): string {
  const W = SUBGROUP_WG;
  return `${HEAD}
${subgroupReductions(W)}
${SUBGROUP_ENTRY}
${CHUNK_INDEX}
  if (t < 0) { return; }
  var mi = -3.0e38;
  for (var i = lo + l; i < hi; i += ${W}u) { mi = max(mi, logits[o + i]); }
  let m = wgMax(mi, sg, nsg, lane);
  var si = 0.0;
  for (var i = lo + l; i < hi; i += ${W}u) { si += exp(logits[o + i] - m); }
  let s = wgSum(si, sg, nsg, lane);
  if (l == 0u) {
    part[2u * idx] = m;
    part[2u * idx + 1u] = s;
  }
}`;
}

function gradSubgroupShader(): string {
  const W = SUBGROUP_WG;
  return `${HEAD}
${SUBGROUP_ENTRY}
${CHUNK_INDEX}
  if (t < 0) {
    for (var i = lo + l; i < hi; i += ${W}u) { logits[o + i] = 0.0; }
    return;
  }
  let lse = part[2u * u.rows * u.nC + r];
  let tu = u32(t);
  for (var i = lo + l; i < hi; i += ${W}u) {
    var g = exp(logits[o + i] - lse) * u.gradScale;
    if (i == tu) { g -= u.gradScale; }
    logits[o + i] = g;
  }
}`;
}

function finishShader(wg: number): string {
  return `${HEAD}
@group(0) @binding(4) var<storage, read_write> rowLoss: array<f32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
  let t = targets[u.targetOff + idx];
  if (t < 0) { rowLoss[u.lossOff + idx] = 0.0; return; }
  let p = 2u * idx * u.nC;
  var m = -3.0e38;
  for (var c = 0u; c < u.nC; c++) { m = max(m, part[p + 2u * c]); }
  var s = 0.0;
  for (var c = 0u; c < u.nC; c++) { s += part[p + 2u * c + 1u] * exp(part[p + 2u * c] - m); }
  let lse = m + log(s);
  part[2u * u.rows * u.nC + idx] = lse;
  rowLoss[u.lossOff + idx] = lse - logits[u.logitOff + idx * u.ld + u32(t)];
}`;
}

function gradShader(wg: number): string {
  return `${HEAD}
${entry(wg)}
${CHUNK_INDEX}
  if (t < 0) {
    for (var i = lo; i < hi; i++) { logits[o + i] = 0.0; }
    return;
  }
  let lse = part[2u * u.rows * u.nC + r];
  for (var i = lo; i < hi; i++) { logits[o + i] = exp(logits[o + i] - lse) * u.gradScale; }
  let tu = u32(t);
  if (tu >= lo && tu < hi) { logits[o + tu] -= u.gradScale; }
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
  /** Scratch of at least crossEntropyScratchBytes(rows, V). */
  partials: GPUBuffer;
  /** When set, logits are replaced by dlogits scaled by gradScale (a Knob in a recorded step). */
  gradScale?: UniformValue;
}

export function encodeCrossEntropy(
  gpu: Gpu,
  pass: ComputePass,
  a: CrossEntropyArgs,
): void {
  if (a.rows <= 0) return;
  const nC = chunksOf(a.V);
  checkLoopBudget("cross-entropy", Math.max(2 * Math.min(CHUNK, a.V), 2 * nC));
  if (a.partials.size < crossEntropyScratchBytes(a.rows, a.V)) {
    throw new Error(
      `cross-entropy: partials of ${a.partials.size} bytes, need ${
        crossEntropyScratchBytes(a.rows, a.V)
      }`,
    );
  }
  const wg = rowWorkgroup(gpu);
  const words = packUniforms([
    { u: a.rows },
    { u: a.V },
    { u: a.ld ?? a.V },
    { u: a.logitOff ?? 0 },
    { u: a.targetOff ?? 0 },
    { u: a.lossOff ?? 0 },
    { u: nC },
    { f: a.gradScale ?? 0 },
  ]);
  const common = [a.logits, a.targets, a.partials];
  const subgroups = kernelFeatures(gpu).subgroups;
  const perChunk = subgroups ? subgroupGrid(gpu, a.rows * nC) : grid(gpu, a.rows * nC, wg);
  const run = (code: string, extra: GPUBuffer[], g: [number, number]) =>
    dispatch(
      gpu,
      pass,
      getPipeline(gpu, code),
      [uniforms(gpu).alloc(words), ...common, ...extra],
      g,
    );
  run(subgroups ? partialSubgroupShader() : partialShader(wg), [], perChunk);
  run(finishShader(wg), [a.rowLoss], grid(gpu, a.rows, wg));
  if (a.gradScale !== undefined) {
    run(subgroups ? gradSubgroupShader() : gradShader(wg), [], perChunk);
  }
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

/**
 * y[slot] = Σ_{i<n} x[off + i] (+ y[slot] when accumulating), summed in order;
 * runs longer than the loop budget are summed in consecutive dispatches, each
 * adding onto the last.
 */
export function encodeSum(
  gpu: Gpu,
  pass: ComputePass,
  x: GPUBuffer,
  n: number,
  y: GPUBuffer,
  slot: UniformValue,
  opts: { off?: number; accumulate?: boolean } = {},
): void {
  spans(Math.max(n, 1), LOOP_BUDGET).forEach(([s, e], i) => {
    const u = uniforms(gpu).alloc(packUniforms([
      { u: Math.min(e, n) - s },
      { u: (opts.off ?? 0) + s },
      { u: slot },
      { u: i > 0 || opts.accumulate ? 1 : 0 },
    ]));
    dispatch(gpu, pass, getPipeline(gpu, SUM), [u, x, y], [1]);
  });
}
