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
  aLo: i32, aHi: i32, cUpper: i32,
}`;

/**
 * Body lines defining `bat` (batch entry), `m0` and `n0` (the invocation's first
 * row and column of C) from the flattened workgroup id, and `kLo`..`kHi` (the
 * reduction range of the workgroup's rows: op(A) is zero outside its band);
 * workgroups past the last tile, or whose tile lies wholly beyond C's band,
 * return.
 */
export function tileOrigin(prof: MatmulProfile): string {
  const { tm, tn, wgM, wgN } = prof;
  const TM = tm * wgM, TN = tn * wgN;
  return `  let t = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  if (t >= u.count * u.tilesMN) { return; }
  let bat = t / u.tilesMN;
  let r = t - bat * u.tilesMN;
  let tmi = r / u.tilesN;
  let tileM0 = tmi * ${TM}u;
  let tileN0 = (r - tmi * u.tilesN) * ${TN}u;
  // Conditions on the tile, the same for every invocation of the workgroup.
  if (i32(tileN0) > i32(tileM0) + ${TM - 1} + u.cUpper) { return; }
  let kLo = u32(clamp(i32(tileM0) + u.aLo, 0, i32(u.K)));
  let kHi = u32(clamp(i32(tileM0) + ${TM} + u.aHi, i32(kLo), i32(u.K)));
  let m0 = tileM0${wgM > 1 ? ` + (lid / ${wgN}u) * ${tm}u` : ""};
  let n0 = tileN0${wgN > 1 ? ` + (lid % ${wgN}u) * ${tn}u` : ""};
  // No early return on a per-invocation condition: on a CPU adapter, code after a
  // divergent branch runs masked and every load in it becomes a gather.
  ${wgM > 1 ? "" : "if (m0 >= u.M) { return; }"}`;
}
