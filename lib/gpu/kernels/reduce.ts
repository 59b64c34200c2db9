/**
 * Workgroup-wide reductions through subgroup operations, for the row kernels'
 * subgroup paths (./rmsnorm.ts, ./cross_entropy.ts, the softmax rows of
 * ./attention.ts, ./grad_norm.ts): each subgroup reduces its values with
 * subgroupAdd / subgroupMax, its first invocation leaves the result in
 * workgroup memory, and every invocation reads the subgroups' results in
 * order. Two barriers per reduction instead of log2(WG) rounds of a tree.
 * The WGSL carries no `enable subgroups;` (Deno's WGSL compiler rejects it;
 * the device feature is enough).
 */

import type { Gpu } from "../device.ts";
import { kernelFeatures } from "../features.ts";
import { getPipeline } from "../runtime.ts";
import { grid, rowWorkgroup } from "./grid.ts";

/**
 * Entry-point parameters the reductions need, after the kernel's own:
 * `l` (local index), `sg` (subgroup id), `nsg` (subgroups) and `lane`.
 */
export const SUBGROUP_ARGS = `@builtin(local_invocation_index) l: u32,
  @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
  @builtin(subgroup_invocation_id) lane: u32`;

/** WGSL of `wgSum(x)` and `wgMax(x)` over a workgroup of WG invocations (call in uniform control flow). */
export function subgroupReductions(WG: number): string {
  const fn = (name: string, op: string, combine: string, init: string) =>
    `fn ${name}(x: f32, sg: u32, nsg: u32, lane: u32) -> f32 {
  let s = ${op}(x);
  if (lane == 0u) { sgPart[sg] = s; }
  workgroupBarrier();
  var t = ${init};
  for (var i = 0u; i < nsg; i++) { t = ${combine}; }
  workgroupBarrier();
  return t;
}`;
  return `var<workgroup> sgPart: array<f32, ${WG}>;
${fn("wgSum", "subgroupAdd", "t + sgPart[i]", "0.0")}
${fn("wgMax", "subgroupMax", "max(t, sgPart[i])", "-3.0e38")}`;
}

/** Invocations per row of the subgroup paths: each walks a strided share of the row. */
export const SUBGROUP_WG = 64;

/**
 * Entry point of a workgroup-per-row kernel: its body sees `idx`, the row
 * (the same for the whole workgroup, so a return on it keeps the barriers
 * of the reductions in uniform control flow), and `l`, `sg`, `nsg`, `lane`.
 */
export const SUBGROUP_ENTRY = `@compute @workgroup_size(${SUBGROUP_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
  ${SUBGROUP_ARGS}) {
  let idx = wid.x + wid.y * nwg.x;`;

/** Workgroup counts for `rows` rows of SUBGROUP_ENTRY kernels. */
export function subgroupGrid(gpu: Gpu, rows: number): [number, number] {
  return grid(gpu, rows * SUBGROUP_WG, SUBGROUP_WG);
}

/**
 * A row kernel's pipeline and grid: with subgroups a workgroup per row
 * (`subgroup()`'s shader), else an invocation per row (`plain(wg)`'s).
 */
export function rowKernel(
  gpu: Gpu,
  rows: number,
  plain: (wg: number) => string,
  subgroup: () => string,
): { pipeline: GPUComputePipeline; groups: [number, number] } {
  if (kernelFeatures(gpu).subgroups) {
    return { pipeline: getPipeline(gpu, subgroup()), groups: subgroupGrid(gpu, rows) };
  }
  const wg = rowWorkgroup(gpu);
  return { pipeline: getPipeline(gpu, plain(wg)), groups: grid(gpu, rows, wg) };
}
