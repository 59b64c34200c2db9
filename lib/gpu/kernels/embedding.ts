/**
 * Embedding gather from an f32 or packed-f16 table (a table too large for one
 * binding is split by rows: the gather runs once per slice and each slice
 * writes only the tokens whose ids fall in it), and its backward as a
 * deterministic scatter-add: the host groups token positions by id (it has
 * the ids anyway, it uploads them), and one invocation per (unique id,
 * column) sums that id's rows in order. No float atomics.
 * Reference: `embedding` / `embeddingBackward` in lib/model/cpu/ops.ts.
 */
import type { Gpu } from "../device.ts";
import {
  type Binding,
  type ComputePass,
  dispatch,
  getPipeline,
  packUniforms,
  uniforms,
} from "../runtime.ts";
import { checkLoopBudget } from "../loop_budget.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";
import { kernelFeatures } from "../features.ts";

/** `f16Loads`: an f16 table read as f16 values (the device's shader-f16), not unpacked from u32. */
function gatherShader(wg: number, f16: boolean, f16Loads: boolean): string {
  const h = f16 && f16Loads;
  return `${h ? "enable f16;\n" : ""}struct U { n: u32, dim: u32, rowStart: u32, rowEnd: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read> table: array<${h ? "f16" : f16 ? "u32" : "f32"}>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${entry(wg)}
  if (idx >= u.n) { return; }
  let t = idx / u.dim;
  let i = idx - t * u.dim;
  let id = u32(ids[t]);
  if (id < u.rowStart || id >= u.rowEnd) { return; }
  let e = (id - u.rowStart) * u.dim + i;
  ${
    h
      ? "y[idx] = f32(table[e]);"
      : f16
      ? "y[idx] = unpack2x16float(table[e >> 1u])[e & 1u];"
      : "y[idx] = table[e];"
  }
}`;
}

/** y[t, :] = table[ids[t], :] for the ids in [rowStart, rowEnd) of this table slice. */
export function encodeEmbedding(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    ids: GPUBuffer;
    tokens: number;
    dim: number;
    /** The table's rows [rowStart, rowEnd), a buffer or a range of one. */
    table: Binding;
    f16?: boolean;
    rowStart?: number;
    rowEnd?: number;
    y: GPUBuffer;
  },
): void {
  const n = a.tokens * a.dim;
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: n },
    { u: a.dim },
    { u: a.rowStart ?? 0 },
    { u: a.rowEnd ?? 0x7fffffff },
  ]));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, gatherShader(wg, !!a.f16, kernelFeatures(gpu).f16)),
    [u, a.ids, a.table, a.y],
    grid(gpu, n, wg),
  );
}

/**
 * The host-side grouping for the backward: [unique ids (U) | starts (U+1) |
 * token positions (T) grouped by id, in order].
 */
export function embeddingBackwardPlan(
  ids: ArrayLike<number>,
): { plan: Uint32Array; unique: number } {
  const byId = new Map<number, number[]>();
  for (let t = 0; t < ids.length; t++) {
    const list = byId.get(ids[t]);
    if (list) list.push(t);
    else byId.set(ids[t], [t]);
  }
  const uniq = [...byId.keys()].sort((x, y) => x - y);
  const U = uniq.length, T = ids.length;
  const plan = new Uint32Array(U + U + 1 + T);
  let k = 0;
  uniq.forEach((id, j) => {
    plan[j] = id;
    plan[U + j] = k;
    for (const t of byId.get(id)!) plan[2 * U + 1 + k++] = t;
  });
  plan[2 * U] = k;
  return { plan, unique: U };
}

function backwardShader(wg: number): string {
  return `struct U { unique: u32, dim: u32, rowStart: u32, rowEnd: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>;
${entry(wg)}
  if (idx >= u.unique * u.dim) { return; }
  let j = idx / u.dim;
  let i = idx - j * u.dim;
  let id = plan[j];
  if (id < u.rowStart || id >= u.rowEnd) { return; }
  let base = 2u * u.unique + 1u;
  var s = 0.0;
  for (var k = plan[u.unique + j]; k < plan[u.unique + j + 1u]; k++) { s += dy[plan[base + k] * u.dim + i]; }
  let o = (id - u.rowStart) * u.dim + i;
  dtable[o] += s;
}`;
}

/** dtable[id, :] += Σ_{t: ids[t] = id} dy[t, :] over the rows [rowStart, rowEnd) this buffer holds. */
export function encodeEmbeddingBackward(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    plan: GPUBuffer;
    unique: number;
    /** Tokens in the batch (the most occurrences one id can have). */
    tokens: number;
    dim: number;
    dy: GPUBuffer;
    /** The gradient's rows [rowStart, rowEnd), a buffer or a range of one. */
    dtable: Binding;
    rowStart?: number;
    rowEnd?: number;
  },
): void {
  const n = a.unique * a.dim;
  if (n <= 0) return;
  // Each invocation walks one token's occurrences in the batch.
  checkLoopBudget("embedding backward", a.tokens);
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.unique },
    { u: a.dim },
    { u: a.rowStart ?? 0 },
    { u: a.rowEnd ?? 0x7fffffff },
  ]));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, backwardShader(wg)),
    [u, a.plan, a.dy, a.dtable],
    grid(gpu, n, wg),
  );
}
