/**
 * Shared dispatch geometry for the element and row kernels: a 1-D index space
 * of `total` invocations folded into x/y workgroup counts (each dimension is
 * capped at maxComputeWorkgroupsPerDimension, 65535 by default), and the WGSL
 * that unfolds it. Workgroups are small on a CPU adapter (llvmpipe runs a
 * workgroup as one SIMD loop: one invocation per row was fastest there) and
 * wide on a GPU.
 */
import type { Gpu } from "../device.ts";

/** Invocations per workgroup for row/element kernels on this device class. */
export function rowWorkgroup(gpu: Gpu): number {
  // 8 on a CPU adapter whatever its SIMD width: with 512-bit code (16 lanes)
  // workgroups of 16 made the row kernels 1.5–3× slower than 8 (docs/engine.md).
  return gpu.deviceClass === "cpu" ? 8 : 64;
}

/** Workgroup counts covering `total` invocations of `wg` each. */
export function grid(gpu: Gpu, total: number, wg: number): [number, number] {
  const groups = Math.max(1, Math.ceil(total / wg));
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}

/**
 * `total` workgroups of a tile kernel folded into x, y, z counts, each within
 * maxComputeWorkgroupsPerDimension (the kernels unfold them from
 * workgroup_id and num_workgroups: ./matmul_wgsl.ts).
 */
export function foldWorkgroups(gpu: Gpu, total: number): [number, number, number] {
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  const x = Math.min(total, max);
  const rest = Math.ceil(total / x);
  const y = Math.min(rest, max);
  return [x, y, Math.ceil(rest / y)];
}

/** WGSL entry-point header whose body sees `idx`, the flat invocation index. */
export function entry(wg: number): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let idx = gid.x + gid.y * nwg.x * ${wg}u;`;
}
