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
  f16Loads = false,
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
  L.push(`${vec4Bindings(bF16, epilogue, f16Loads)}

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
  // Stage op(A) and op(B) with vec4 loads along each operand's contiguous
  // dimension; rows and columns past the edge are clamped (their results are
  // dropped at the store), K steps past kEnd are zeros.
  const opA: Staged = {
    load: (i) => `A[${i}]`,
    base: "aBase",
    origin: "tileM0",
    last: "lastM",
    ld4: "lda4",
    extent: BM,
    stride: SA,
  };
  const opB: Staged = {
    load: (i) => `ldB(${i})`,
    base: "bBase",
    origin: "tileN0",
    last: "lastN",
    ld4: "ldb4",
    extent: BN,
    stride: SB,
  };
  L.push(
    transA ? stageAlongTile(opA, "As", bk, T) : stageAlongK(opA, "setA", bk, T),
    transB ? stageAlongK(opB, "setB", bk, T) : stageAlongTile(opB, "Bs", bk, T),
  );
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

/** One operand as the staging code reads it (names of WGSL values, sizes of its tile). */
interface Staged {
  /** The vec4 at a vec4 index. */
  load: (index: string) => string;
  /** Base index, first tile row or column, last valid one, leading dimension in vec4. */
  base: string;
  origin: string;
  last: string;
  ld4: string;
  /** Tile rows or columns (BM or BN) and the tile's padded row stride. */
  extent: number;
  stride: number;
}

/**
 * WGSL staging a slice of an operand stored with its tile dimension as rows
 * and K contiguous (A row-major, B transposed): each vec4 holds four K steps
 * of one row, scattered into four rows of the k-major tile through `set`.
 */
function stageAlongK(op: Staged, set: string, bk: number, T: number): string {
  const row = `${op.base} + min(${op.origin} + r, ${op.last}) * ${op.ld4} + min(kk, u.K - 4u) / 4u`;
  const S = op.stride;
  return `    for (var l = lid; l < ${op.extent * bk / 4}u; l += ${T}u) {
      let r = l / ${bk / 4}u;
      let kq = (l % ${bk / 4}u) * 4u;
      let kk = k0 + kq;
      let v = select(zero, ${op.load(row)}, kk < kEnd);
      ${set}(kq * ${S}u + r, v.x);
      ${set}((kq + 1u) * ${S}u + r, v.y);
      ${set}((kq + 2u) * ${S}u + r, v.z);
      ${set}((kq + 3u) * ${S}u + r, v.w);
    }`;
}

/**
 * WGSL staging a slice of an operand stored with K as rows and the tile
 * dimension contiguous (A transposed, B row-major): each vec4 is copied whole
 * into its row of the k-major tile.
 */
function stageAlongTile(op: Staged, tile: string, bk: number, T: number): string {
  const col = `${op.base} + min(kk, u.K - 1u) * ${op.ld4} + ` +
    `min((${op.origin} + q) / 4u, ${op.last} / 4u)`;
  return `    for (var l = lid; l < ${op.extent * bk / 4}u; l += ${T}u) {
      let k = l / ${op.extent / 4}u;
      let q = (l % ${op.extent / 4}u) * 4u;
      let kk = k0 + k;
      ${tile}[(k * ${op.stride}u + q) / 4u] = select(zero, ${op.load(col)}, kk < kEnd);
    }`;
}
