/**
 * The GPU form of the vec4 matmul kernel (same operands, layouts, uniforms and
 * store as ./matmul_vec4.ts): the workgroup stages a BM×bk slice of op(A) and
 * a bk×BN slice of op(B) in workgroup memory, each invocation loading a few
 * vec4 of it, then every invocation runs bk steps of its tm×tn register block
 * out of that memory. Global memory is read once per tile instead of once per
 * invocation that needs the value, which is what a GPU is short of; on a CPU
 * adapter workgroup memory and barriers cost more than they save, so the cpu
 * profile does not use this kernel.
 *
 * Staged layouts, both k-major so an invocation's operands are vec4 reads:
 *   As[k·SA + m] = op(A)[tileM0 + m][k0 + k]    Bs[k·SB + n] = op(B)[k0 + k][tileN0 + n]
 * with row strides SA = BM + 4 and SB = BN + 4 floats: the operand read along
 * K is scattered into the tile four rows apart, and an unpadded stride (a
 * multiple of 32 floats) would put those four stores in one memory bank.
 * K steps past the workgroup's range are staged as zeros, so bk need not
 * divide K (K is a multiple of 4 on this path).
 */
import type { MatmulProfile } from "./matmul_profile.ts";
import { type MatmulEpilogue, vec4Bindings, vec4Origin, vec4Store } from "./matmul_vec4.ts";

export function matmulSharedShader(
  prof: MatmulProfile,
  transA: boolean,
  transB: boolean,
  bF16: boolean,
  epilogue: MatmulEpilogue = { accumulate: false, bias: false },
): string {
  const { tm, tn, wgM, wgN } = prof;
  const bk = prof.bk ?? 16;
  const BM = tm * wgM, BN = tn * wgN, T = wgM * wgN;
  if (bk % 4 !== 0 || tm % 4 !== 0) {
    throw new Error(`matmul shared: bk (${bk}) and tm (${tm}) must be multiples of 4`);
  }
  const tn4 = tn / 4, tm4 = tm / 4;
  const SA = BM + 4, SB = BN + 4;
  const L: string[] = [];
  L.push(`${vec4Bindings(bF16, epilogue)}

var<workgroup> As: array<vec4f, ${bk * SA / 4}>;
var<workgroup> Bs: array<vec4f, ${bk * SB / 4}>;

fn setA(i: u32, x: f32) { As[i / 4u][i % 4u] = x; }
fn setB(i: u32, x: f32) { Bs[i / 4u][i % 4u] = x; }

@compute @workgroup_size(${T})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
${vec4Origin(prof)}
  // This invocation's block within the staged tiles.
  let am = m0 - tileM0;
  let bn = n0 - tileN0;
  let kStart = (kLo / 4u) * 4u;
  let kEnd = ((kHi + 3u) / 4u) * 4u;
  let zero = vec4f(0.0);`);
  for (let i = 0; i < tm; i++) {
    for (let j = 0; j < tn4; j++) L.push(`  var acc${i}_${j} = vec4f(0.0);`);
  }
  L.push(`  for (var k0 = kStart; k0 < kEnd; k0 += ${bk}u) {`);
  // Stage op(A): vec4 loads along A's contiguous dimension, scattered or
  // copied into the k-major tile; rows and columns past the edge are clamped
  // (their results are dropped at the store), K steps past kEnd are zeros.
  if (!transA) {
    L.push(`    for (var l = lid; l < ${BM * bk / 4}u; l += ${T}u) {
      let r = l / ${bk / 4}u;
      let kq = (l % ${bk / 4}u) * 4u;
      let kk = k0 + kq;
      let v = select(zero, A[aBase + min(tileM0 + r, lastM) * lda4 + min(kk, u.K - 4u) / 4u], kk < kEnd);
      setA(kq * ${SA}u + r, v.x);
      setA((kq + 1u) * ${SA}u + r, v.y);
      setA((kq + 2u) * ${SA}u + r, v.z);
      setA((kq + 3u) * ${SA}u + r, v.w);
    }`);
  } else {
    L.push(`    for (var l = lid; l < ${BM * bk / 4}u; l += ${T}u) {
      let k = l / ${BM / 4}u;
      let mq = (l % ${BM / 4}u) * 4u;
      let kk = k0 + k;
      let v = select(zero, A[aBase + min(kk, u.K - 1u) * lda4 + min((tileM0 + mq) / 4u, lastM / 4u)], kk < kEnd);
      As[(k * ${SA}u + mq) / 4u] = v;
    }`);
  }
  if (transB) {
    L.push(`    for (var l = lid; l < ${BN * bk / 4}u; l += ${T}u) {
      let r = l / ${bk / 4}u;
      let kq = (l % ${bk / 4}u) * 4u;
      let kk = k0 + kq;
      let v = select(zero, ldB(bBase + min(tileN0 + r, lastN) * ldb4 + min(kk, u.K - 4u) / 4u), kk < kEnd);
      setB(kq * ${SB}u + r, v.x);
      setB((kq + 1u) * ${SB}u + r, v.y);
      setB((kq + 2u) * ${SB}u + r, v.z);
      setB((kq + 3u) * ${SB}u + r, v.w);
    }`);
  } else {
    L.push(`    for (var l = lid; l < ${BN * bk / 4}u; l += ${T}u) {
      let k = l / ${BN / 4}u;
      let nq = (l % ${BN / 4}u) * 4u;
      let kk = k0 + k;
      let v = select(zero, ldB(bBase + min(kk, u.K - 1u) * ldb4 + min((tileN0 + nq) / 4u, lastN / 4u)), kk < kEnd);
      Bs[(k * ${SB}u + nq) / 4u] = v;
    }`);
  }
  L.push(`    workgroupBarrier();
    for (var k = 0u; k < ${bk}u; k++) {
      let ao = (k * ${SA}u + am) / 4u;
      let bo = (k * ${SB}u + bn) / 4u;`);
  for (let j = 0; j < tn4; j++) L.push(`      let b${j} = Bs[bo + ${j}u];`);
  for (let p = 0; p < tm4; p++) L.push(`      let a${p} = As[ao + ${p}u];`);
  for (let i = 0; i < tm; i++) {
    const a = `vec4f(a${i >> 2}.${"xyzw"[i & 3]})`;
    for (let j = 0; j < tn4; j++) L.push(`      acc${i}_${j} = fma(${a}, b${j}, acc${i}_${j});`);
  }
  L.push(`    }
    workgroupBarrier();
  }`);
  L.push(vec4Store(tm, tn, epilogue), `}`);
  return L.join("\n");
}
