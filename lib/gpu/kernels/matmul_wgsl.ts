/**
 * WGSL shared by the two generated matmul kernels (matmul.ts's scalar one and
 * matmul_vec4.ts): the uniform block both bind, and how a workgroup finds the
 * batch entry and the tile of C it owns.
 */
import type { MatmulProfile } from "./matmul_profile.ts";

/** The uniform block (binding 0) both kernels read; encodeMatmul packs it. */
export const MATMUL_UNIFORMS = `struct U {
  M: u32, N: u32, K: u32, lda: u32, ldb: u32, ldc: u32,
  aOff: u32, bOff: u32, cOff: u32, biasOff: u32, flags: u32,
  alpha: f32, beta: f32, count: u32, sA: u32, sB: u32, sC: u32, tilesN: u32, tilesMN: u32,
}`;

/**
 * Body lines defining `bat` (batch entry), `m0` and `n0` (the invocation's first
 * row and column of C) from the flattened workgroup id; workgroups past the
 * last tile return.
 */
export function tileOrigin(prof: MatmulProfile): string {
  const { tm, tn, wgM, wgN } = prof;
  return `  let t = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  if (t >= u.count * u.tilesMN) { return; }
  let bat = t / u.tilesMN;
  let r = t - bat * u.tilesMN;
  let tmi = r / u.tilesN;
  let m0 = tmi * ${tm * wgM}u${wgM > 1 ? ` + (lid / ${wgN}u) * ${tm}u` : ""};
  let n0 = (r - tmi * u.tilesN) * ${tn * wgN}u${wgN > 1 ? ` + (lid % ${wgN}u) * ${tn}u` : ""};
  // No early return on a per-invocation condition: on a CPU adapter, code after a
  // divergent branch runs masked and every load in it becomes a gather.
  ${wgM > 1 ? "" : "if (m0 >= u.M) { return; }"}`;
}
