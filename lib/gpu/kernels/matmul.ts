/**
 * General matrix multiply on WebGPU: C = alpha·op(A)·op(B) (+ beta·C) (+ bias),
 * f32 math, B optionally f16 packed two per u32 (frozen weights), strided
 * batches, element offsets and leading dimensions for slices of larger buffers.
 *
 * Kernels are generated from tile parameters (see ./matmul_profile.ts); the
 * shape travels in a uniform so one compiled pipeline serves every shape of a
 * layout. Reference: `matmulRef` below (plain loops, same semantics).
 *
 * Binding limits: each operand is bound as the exact byte sub-range the
 * product touches (offset aligned down to minStorageBufferOffsetAlignment,
 * the remainder carried as an element offset). When a range is larger than
 * maxStorageBufferBindingSize, the product is split — batches first, then the
 * dimension along which the offending operand is contiguous (rows of C and of
 * a row-major A, rows of a transposed B, K for a row-major B or transposed A,
 * whose later parts accumulate) — until every piece fits. Nothing is truncated.
 */
import type { Gpu } from "../device.ts";
import {
  type Binding,
  canInterrupt,
  type ComputePass,
  dispatch,
  getPipeline,
  packUniforms,
  uniforms,
} from "../runtime.ts";
import { LOOP_BUDGET } from "../loop_budget.ts";
import {
  type MatmulProfile,
  matmulProfile,
  smallTiles,
  stagesTiles,
  vec4Tiles,
} from "./matmul_profile.ts";
import { foldWorkgroups } from "./grid.ts";
import { matmulSharedShader } from "./matmul_shared.ts";
import { type MatmulEpilogue, matmulVec4Shader } from "./matmul_vec4.ts";
import { MATMUL_UNIFORMS, tileOrigin } from "./matmul_wgsl.ts";
import { copyOperands, keptOperandB, texturesFit } from "./matmul_texture.ts";
import { kernelFeatures } from "../features.ts";

export { bf16ToF16Packed, f32ToF16Packed, rawToF16Packed } from "../../safetensors/dtype.ts";
export { releaseKeptTextures } from "./matmul_texture.ts";
export type { MatmulProfile } from "./matmul_profile.ts";

export interface MatmulArgs {
  M: number;
  N: number;
  K: number;
  a: GPUBuffer;
  b: GPUBuffer;
  c: GPUBuffer;
  /** A is [M,K] row-major, or [K,M] when transA. */
  transA?: boolean;
  /** B is [K,N] row-major, or [N,K] when transB (a torch Linear weight [out,in] is B with transB). */
  transB?: boolean;
  /** Element offsets into a, b, c (for slices of bigger buffers; in f16 elements for an f16 b). */
  aOffset?: number;
  bOffset?: number;
  cOffset?: number;
  /** Row strides in elements (defaults: the dense widths K or M, N or K, and N). */
  lda?: number;
  ldb?: number;
  ldc?: number;
  /** C = alpha·op(A)·op(B) (+ beta·C when accumulate). */
  alpha?: number;
  accumulate?: boolean;
  /** Scale of the old C when accumulating (default 1). */
  beta?: number;
  /** Optional bias [N] added to every row (forward of a Linear with bias). */
  bias?: GPUBuffer;
  biasOffset?: number;
  /** B holds IEEE f16 values packed two per u32 (frozen weights); decoded with unpack2x16float, math in f32. */
  bF16?: boolean;
  /**
   * B's values never change while the process runs (a frozen weight): a CPU
   * adapter's small products keep its texture copy (./matmul_texture.ts).
   */
  bFixed?: boolean;
  /** Strided batch: `count` independent products, with element strides between consecutive A, B and C. */
  batch?: { count: number; strideA: number; strideB: number; strideC: number };
  /**
   * op(A) is zero outside a band: op(A)[m][k] = 0 unless m + lo ≤ k ≤ m + hi
   * (causal attention probabilities: hi 0; their transpose: lo 0). Each tile of
   * rows walks only the K range its band can reach; the result is the same.
   */
  aBand?: { lo?: number; hi?: number };
  /**
   * Only C[m][n] with n ≤ m + cUpper is wanted (causal scores: 0): tiles wholly
   * beyond are skipped and left as they were; the other entries of a tile that
   * straddles the line are computed like any other.
   */
  cUpper?: number;
}

/** "No band": far beyond any index, small enough that i32 sums cannot overflow. */
const UNBOUNDED = 1 << 29;

/** One dispatchable product after defaults and splitting. */
interface Piece {
  count: number;
  M: number;
  N: number;
  K: number;
  lda: number;
  ldb: number;
  ldc: number;
  aOff: number;
  bOff: number;
  cOff: number;
  biasOff: number;
  sA: number;
  sB: number;
  sC: number;
  accumulate: boolean;
  beta: number;
  useBias: boolean;
  aLo: number;
  aHi: number;
  cUpper: number;
}

const dummies = new WeakMap<GPUDevice, GPUBuffer>();
function dummyBuffer(gpu: Gpu): GPUBuffer {
  let d = dummies.get(gpu.device);
  if (!d) {
    d = gpu.device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.STORAGE,
      label: "matmul-nobias",
    });
    dummies.set(gpu.device, d);
  }
  return d;
}

const pipelineMemo = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** The kernels: see the module comments of ./matmul_texture.ts, ./matmul_vec4.ts and `matmulShader`. */
export type MatmulKernel = "texture" | "vec4" | "scalar";

/**
 * The pipeline for a kernel variant, memoised by its parameters: generating
 * the (large, unrolled) source on every call would cost more host time than
 * encoding the dispatch.
 */
function matmulPipeline(
  gpu: Gpu,
  prof: MatmulProfile,
  kind: MatmulKernel,
  transA: boolean,
  transB: boolean,
  bF16: boolean,
  epilogue: MatmulEpilogue,
  /** The texture kernel with only B in a (kept) texture, A read from its buffer. */
  keptB = false,
): GPUComputePipeline {
  // Frozen f16 weights read as vec4<f16> where the device has shader-f16 (the
  // texture kernel reads them from rgba16float textures either way).
  const f16Loads = bF16 && kind !== "texture" && kernelFeatures(gpu).f16;
  let memo = pipelineMemo.get(gpu.device);
  if (!memo) pipelineMemo.set(gpu.device, memo = new Map());
  const shared = kind === "vec4" && stagesTiles(prof, transB);
  const key = [
    prof.tm,
    prof.tn,
    prof.wgM,
    prof.wgN,
    shared && prof.bk,
    kind,
    transA,
    transB,
    bF16,
    kind !== "scalar" && epilogue.accumulate,
    kind !== "scalar" && epilogue.bias,
    f16Loads,
    keptB,
  ].join(",");
  let p = memo.get(key);
  if (!p) {
    p = getPipeline(
      gpu,
      kind === "scalar"
        ? matmulShader(prof, transA, transB, bF16, f16Loads)
        : shared
        ? matmulSharedShader(prof, transA, transB, bF16, epilogue, f16Loads)
        : matmulVec4Shader(
          prof,
          transA,
          transB,
          bF16,
          epilogue,
          kind !== "texture" ? false : keptB ? "b" : true,
          f16Loads,
        ),
    );
    memo.set(key, p);
  }
  return p;
}

/**
 * Encode C = alpha·op(A)·op(B) (+ beta·C) (+ bias) into `pass`. The texture
 * kernel (CPU adapters) needs a pass it can interrupt for its copies (a
 * `SplittablePass`); on any other pass the same product takes the vec4 or
 * scalar kernel.
 */
export function encodeMatmul(gpu: Gpu, pass: ComputePass, args: MatmulArgs): void {
  const { M, N, K } = args;
  const count = args.batch?.count ?? 1;
  for (const [k, v] of Object.entries({ M, N, K, count })) {
    if (!Number.isInteger(v) || v < 0) {
      throw new Error(`matmul: ${k} must be a non-negative integer, got ${v}`);
    }
  }
  if (M === 0 || N === 0 || count === 0) return;
  const transA = !!args.transA, transB = !!args.transB, bF16 = !!args.bF16;
  const piece = pieceOf(args);
  const profile = matmulProfile(gpu);
  const limit = gpu.limits.maxStorageBufferBindingSize;
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const alpha = args.alpha ?? 1;

  const interruptible = canInterrupt(pass) ? pass : undefined;
  const pieces = splitToFit(piece, transA, transB, bF16, limit).flatMap((q) =>
    splitForLoops(q, transA, transB, (k) => {
      const kind = kernelFor(gpu, profile, k, transA, transB, bF16, !!interruptible);
      return kTrips(kind, tilesFor(profile, kind, k, transA, transB), transB);
    })
  );
  for (const p of pieces) {
    const kind = kernelFor(gpu, profile, p, transA, transB, bF16, !!interruptible);
    const prof = tilesFor(profile, kind, p, transA, transB);
    const epilogue = { accumulate: p.accumulate, bias: p.useBias && !!args.bias };
    const o = { ...p, a: args.a, b: args.b, transA, transB, bF16 };
    // A fixed B of a small product on the texture kernel: its kept texture, A from its buffer.
    const keptB = kind === "texture" && args.bFixed && smallTiles(profile, p.M, transA)
      ? keptOperandB(gpu, o)
      : undefined;
    const pipeline = matmulPipeline(gpu, prof, kind, transA, transB, bF16, epilogue, !!keptB);
    const [cStart, cEnd] = rangeC(p);
    const cBind = subRange(args.c, cStart, cEnd, 4, align);
    let operands: Binding[];
    let aRel = 0, bRel = 0;
    if (keptB) {
      const [aStart, aEnd] = rangeA(p, transA);
      const aBind = subRange(args.a, aStart, aEnd, 4, align);
      operands = [aBind.binding, keptB];
      aRel = aBind.rel;
    } else if (kind === "texture" && interruptible) {
      operands = copyOperands(gpu, interruptible, o);
    } else {
      const [aStart, aEnd] = rangeA(p, transA);
      const [bStart, bEnd] = rangeB(p, transB);
      const aBind = subRange(args.a, aStart, aEnd, 4, align);
      const bBind = subRange(args.b, bStart, bEnd, bF16 ? 2 : 4, align);
      operands = [aBind.binding, bBind.binding];
      [aRel, bRel] = [aBind.rel, bBind.rel];
    }
    let biasBind: Binding | undefined = kind === "scalar" ? dummyBuffer(gpu) : undefined;
    let biasRel = 0;
    if (epilogue.bias && args.bias) {
      const bb = subRange(args.bias, p.biasOff, p.biasOff + p.N, 4, align);
      biasBind = bb.binding;
      biasRel = bb.rel;
    }
    const tileM = prof.tm * prof.wgM, tileN = prof.tn * prof.wgN;
    const tilesN = Math.ceil(p.N / tileN);
    const tilesMN = Math.ceil(p.M / tileM) * tilesN;
    const total = tilesMN * p.count;
    const [x, y, z] = foldWorkgroups(gpu, total);
    const flags = (p.accumulate ? 1 : 0) | (p.useBias ? 2 : 0);
    const u = uniforms(gpu).alloc(packUniforms([
      { u: p.M },
      { u: p.N },
      { u: p.K },
      { u: p.lda },
      { u: p.ldb },
      { u: p.ldc },
      { u: aRel },
      { u: bRel },
      { u: cBind.rel },
      { u: biasRel },
      { u: flags },
      { f: alpha },
      { f: p.beta },
      { u: p.count },
      { u: p.sA },
      { u: p.sB },
      { u: p.sC },
      { u: tilesN },
      { u: tilesMN },
      { i: clampBand(p.aLo) },
      { i: clampBand(p.aHi) },
      { i: clampBand(p.cUpper) },
    ]));
    const bindings: Binding[] = [u, ...operands, cBind.binding];
    if (biasBind) bindings.push(biasBind);
    dispatch(gpu, pass, pipeline, bindings, [x, y, z]);
  }
}

/** The tiles a piece runs with under `profile` and its kernel. */
function tilesFor(
  profile: MatmulProfile,
  kind: MatmulKernel,
  p: Piece,
  transA: boolean,
  transB: boolean,
) {
  if (kind === "scalar") return profile.scalar ?? profile;
  return smallTiles(profile, p.M, transA) ?? vec4Tiles(profile, p.M, p.N, transB);
}

/**
 * Whether a piece can take the vec4 kernel: every dimension that is read or
 * written contiguously, every leading dimension, offset and batch stride a
 * multiple of 4 (K always: the kernel walks it four steps at a time).
 */
function vec4Eligible(p: Piece, transA: boolean): boolean {
  const m4 = (x: number) => x % 4 === 0;
  return p.K > 0 && m4(p.K) && m4(p.N) && (!transA || m4(p.M)) &&
    [p.lda, p.ldb, p.ldc, p.aOff, p.bOff, p.cOff, p.biasOff].every(m4) &&
    (p.count === 1 || [p.sA, p.sB, p.sC].every(m4));
}

/**
 * The kernel for a piece: the texture kernel where the profile asks for it,
 * the pass can be interrupted for the copies and the textures can hold the
 * operands (aligned as the vec4 kernel needs); else the vec4 kernel where
 * everything is aligned to 4; else the scalar one.
 */
function kernelFor(
  gpu: Gpu,
  profile: MatmulProfile,
  p: Piece,
  transA: boolean,
  transB: boolean,
  bF16: boolean,
  splittable: boolean,
): MatmulKernel {
  if (!vec4Eligible(p, transA)) return "scalar";
  const tex = profile.textures && splittable && texturesFit(gpu, { ...p, transA, transB, bF16 });
  return tex ? "texture" : "vec4";
}

/**
 * Which kernel `args` would run (for tests and benchmarks); with `gpu`, on an
 * interruptible pass under that device's profile, else on a plain pass.
 */
export function matmulKernelKind(
  args: Omit<MatmulArgs, "a" | "b" | "c">,
  gpu?: Gpu,
): MatmulKernel {
  const p = pieceOf(args);
  if (!gpu) return vec4Eligible(p, !!args.transA) ? "vec4" : "scalar";
  return kernelFor(gpu, matmulProfile(gpu), p, !!args.transA, !!args.transB, !!args.bF16, true);
}

/** The whole product as one piece, with every default filled in. */
function pieceOf(args: Omit<MatmulArgs, "a" | "b" | "c">): Piece {
  const { M, N, K } = args;
  const transA = !!args.transA, transB = !!args.transB;
  return {
    count: args.batch?.count ?? 1,
    M,
    N,
    K,
    lda: args.lda ?? (transA ? M : K),
    ldb: args.ldb ?? (transB ? K : N),
    ldc: args.ldc ?? N,
    aOff: args.aOffset ?? 0,
    bOff: args.bOffset ?? 0,
    cOff: args.cOffset ?? 0,
    biasOff: args.biasOffset ?? 0,
    sA: args.batch?.strideA ?? 0,
    sB: args.batch?.strideB ?? 0,
    sC: args.batch?.strideC ?? 0,
    accumulate: !!args.accumulate,
    beta: args.beta ?? 1,
    useBias: !!args.bias,
    aLo: args.aBand?.lo ?? -UNBOUNDED,
    aHi: args.aBand?.hi ?? UNBOUNDED,
    cUpper: args.cUpper ?? UNBOUNDED,
  };
}

function clampBand(x: number): number {
  return Math.max(-UNBOUNDED, Math.min(UNBOUNDED, x));
}

function rangeA(p: Piece, transA: boolean): [number, number] {
  const rows = transA ? p.K : p.M, width = transA ? p.M : p.K;
  const span = rows === 0 ? 0 : (rows - 1) * p.lda + width;
  return [p.aOff, p.aOff + (p.count - 1) * p.sA + Math.max(span, 1)];
}
function rangeB(p: Piece, transB: boolean): [number, number] {
  const rows = transB ? p.N : p.K, width = transB ? p.K : p.N;
  const span = rows === 0 ? 0 : (rows - 1) * p.ldb + width;
  return [p.bOff, p.bOff + (p.count - 1) * p.sB + Math.max(span, 1)];
}
function rangeC(p: Piece): [number, number] {
  return [p.cOff, p.cOff + (p.count - 1) * p.sC + (p.M - 1) * p.ldc + p.N];
}

/**
 * Bind [start, end) elements of `buffer` (`what`, for the error) as a
 * sub-range whose offset meets the alignment rule: `rel` is the first
 * element's index in the binding, `start` the binding's first element.
 */
export function subRange(
  buffer: GPUBuffer,
  start: number,
  end: number,
  elemBytes: number,
  align: number,
  what = "operand",
): { binding: GPUBufferBinding; rel: number; start: number } {
  const startByte = start * elemBytes;
  const offset = Math.floor(startByte / align) * align;
  let endByte = Math.ceil((end * elemBytes) / 4) * 4;
  if (endByte > buffer.size) {
    if (end * elemBytes > buffer.size) {
      throw new Error(
        `matmul: ${what} needs elements [${start}, ${end}) but its buffer "${buffer.label}" holds only ${buffer.size} bytes`,
      );
    }
    endByte = buffer.size;
  }
  return {
    binding: { buffer, offset, size: endByte - offset },
    rel: (startByte - offset) / elemBytes,
    start: offset / elemBytes,
  };
}

/** Split a product until every operand's bound range fits in `limit` bytes. */
function splitToFit(
  p: Piece,
  transA: boolean,
  transB: boolean,
  bF16: boolean,
  limit: number,
): Piece[] {
  // Headroom for the alignment slack added when binding.
  const cap = limit - 1024;
  const bytes = (r: [number, number], e: number) => (r[1] - r[0]) * e;
  const aBig = bytes(rangeA(p, transA), 4) > cap;
  const bBig = bytes(rangeB(p, transB), bF16 ? 2 : 4) > cap;
  const cBig = bytes(rangeC(p), 4) > cap;
  if (!aBig && !bBig && !cBig) return [p];
  let parts: [Piece, Piece];
  if (p.count > 1) {
    const h = Math.floor(p.count / 2);
    parts = [{ ...p, count: h }, {
      ...p,
      count: p.count - h,
      aOff: p.aOff + h * p.sA,
      bOff: p.bOff + h * p.sB,
      cOff: p.cOff + h * p.sC,
    }];
  } else if (cBig || (aBig && !transA)) {
    parts = splitM(p, transA);
  } else if (bBig && transB) {
    parts = splitN(p, transB);
  } else {
    parts = splitK(p, transA, transB);
  }
  return parts.flatMap((q) => splitToFit(q, transA, transB, bF16, limit));
}

function tooSmall(what: string): never {
  throw new Error(
    `matmul: a single ${what} exceeds maxStorageBufferBindingSize; the product cannot be split further`,
  );
}

function splitM(p: Piece, transA: boolean): [Piece, Piece] {
  if (p.M < 2) tooSmall("row");
  const h = Math.floor(p.M / 2);
  return [{ ...p, M: h }, {
    ...p,
    M: p.M - h,
    aOff: p.aOff + (transA ? h : h * p.lda),
    cOff: p.cOff + h * p.ldc,
    // Row m of the second half is row m + h of the whole.
    aLo: p.aLo + h,
    aHi: p.aHi + h,
    cUpper: p.cUpper + h,
  }];
}

function splitN(p: Piece, transB: boolean): [Piece, Piece] {
  if (p.N < 2) tooSmall("column");
  const h = Math.floor(p.N / 2);
  return [{ ...p, N: h }, {
    ...p,
    N: p.N - h,
    bOff: p.bOff + (transB ? h * p.ldb : h),
    cOff: p.cOff + h,
    biasOff: p.biasOff + h,
    cUpper: p.cUpper - h,
  }];
}

/**
 * Loop iterations per K step of an invocation of `kind` (see ../loop_budget.ts):
 * the scalar kernel loops once per step, the vec4 and texture kernels once
 * per four; the staged kernel once per bk steps for the tile, plus its inner
 * bk steps and the loops that stage each operand.
 */
function kTrips(kind: MatmulKernel, prof: MatmulProfile, transB: boolean): number {
  if (kind === "scalar") return 1;
  if (kind === "vec4" && stagesTiles(prof, transB)) {
    const bk = prof.bk ?? 16, T = prof.wgM * prof.wgN;
    const stage = (extent: number) => Math.ceil(extent * bk / 4 / T);
    return (1 + bk + stage(prof.tm * prof.wgM) + stage(prof.tn * prof.wgN)) / bk;
  }
  return 1 / 4;
}

/**
 * Split a product along K until each piece's K walk stays within the loop
 * budget, the later pieces adding onto the first (chatglm3-6b's output layer
 * backward reduces over 65,024 vocabulary columns).
 */
function splitForLoops(
  p: Piece,
  transA: boolean,
  transB: boolean,
  tripsPerK: (p: Piece) => number,
): Piece[] {
  const per = Math.floor(LOOP_BUDGET / tripsPerK(p) / 16) * 16;
  if (p.K <= per) return [p];
  const [first, rest] = splitK(p, transA, transB, per);
  return [first, ...splitForLoops(rest, transA, transB, tripsPerK)];
}

function splitK(p: Piece, transA: boolean, transB: boolean, at?: number): [Piece, Piece] {
  if (p.K < 2) tooSmall("reduction slice");
  const h = at ?? Math.floor(p.K / 2);
  // The second half adds onto the first: no second bias, old C kept as is.
  return [{ ...p, K: h }, {
    ...p,
    K: p.K - h,
    aOff: p.aOff + (transA ? h * p.lda : h),
    bOff: p.bOff + (transB ? h : h * p.ldb),
    accumulate: true,
    beta: 1,
    useBias: false,
    aLo: p.aLo - h,
    aHi: p.aHi - h,
  }];
}

/**
 * The WGSL for one layout and profile. Each invocation owns a tm×tn block of C
 * held in registers (tn/4 vec4 per row); K is walked one step at a time, each
 * A value broadcast over the vec4 row pieces of B. Rows/columns past the edge
 * are clamped on load (a duplicate of a valid value) and masked on store, so
 * the inner loop carries no bounds checks.
 */
export function matmulShader(
  prof: MatmulProfile,
  transA: boolean,
  transB: boolean,
  bF16: boolean,
  f16Loads = false,
): string {
  const { tm, tn, wgM, wgN } = prof;
  const tn4 = tn / 4;
  const h = bF16 && f16Loads;
  const L: string[] = [];
  L.push(`${h ? "enable f16;\n" : ""}${MATMUL_UNIFORMS}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<${h ? "f16" : bF16 ? "u32" : "f32"}>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
${
    h
      ? "fn ldB(e: u32) -> f32 { return f32(B[e]); }"
      : bF16
      ? "fn ldB(e: u32) -> f32 { return unpack2x16float(B[e >> 1u] >> ((e & 1u) << 4u)).x; }"
      : "fn ldB(e: u32) -> f32 { return B[e]; }"
  }

@compute @workgroup_size(${wgM * wgN})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
${tileOrigin(prof)}
  let aBase = u.aOff + bat * u.sA;
  let bBase = u.bOff + bat * u.sB;
  let cBase = u.cOff + bat * u.sC;
  let lastM = u.M - 1u;
  let lastN = u.N - 1u;`);
  for (let i = 0; i < tm; i++) {
    const mi = `min(m0 + ${i}u, lastM)`;
    L.push(`  let ra${i} = aBase + ${transA ? mi : `${mi} * u.lda`};`);
  }
  for (let j = 0; j < tn; j++) {
    const nj = `min(n0 + ${j}u, lastN)`;
    L.push(`  let cb${j} = bBase + ${transB ? `${nj} * u.ldb` : nj};`);
  }
  for (let i = 0; i < tm; i++) {
    for (let j = 0; j < tn4; j++) L.push(`  var acc${i}_${j} = vec4f(0.0);`);
  }
  const aStep = transA ? "u.lda" : "1u";
  const bStep = transB ? "1u" : "u.ldb";
  L.push(`  for (var k = kLo; k < kHi; k++) {
    let ka = k * ${aStep};
    let kb = k * ${bStep};`);
  for (let j = 0; j < tn4; j++) {
    const e = [0, 1, 2, 3].map((q) => `ldB(cb${4 * j + q} + kb)`).join(", ");
    L.push(`    let b${j} = vec4f(${e});`);
  }
  for (let i = 0; i < tm; i++) {
    L.push(`    let a${i} = vec4f(A[ra${i} + ka]);`);
    for (let j = 0; j < tn4; j++) L.push(`    acc${i}_${j} = fma(a${i}, b${j}, acc${i}_${j});`);
  }
  L.push(`  }
  let accumulate = (u.flags & 1u) != 0u;
  let useBias = (u.flags & 2u) != 0u;`);
  for (let i = 0; i < tm; i++) {
    L.push(`  if (m0 + ${i}u < u.M) {
    let row = cBase + (m0 + ${i}u) * u.ldc;`);
    for (let j = 0; j < tn4; j++) {
      for (let q = 0; q < 4; q++) {
        const col = 4 * j + q;
        const comp = "xyzw"[q];
        L.push(`    if (n0 + ${col}u < u.N) {
      var v = u.alpha * acc${i}_${j}.${comp};
      if (accumulate) { v += u.beta * C[row + n0 + ${col}u]; }
      if (useBias) { v += bias[u.biasOff + n0 + ${col}u]; }
      C[row + n0 + ${col}u] = v;
    }`);
      }
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
}

/**
 * CPU reference with the same semantics as encodeMatmul (plain loops, f64
 * accumulation): the ground truth for tests.
 */
export function matmulRef(
  a: Float32Array,
  b: Float32Array,
  c: Float32Array,
  args: Omit<MatmulArgs, "a" | "b" | "c" | "bF16">,
  /** The bias values, when the GPU call would pass `bias`. */
  bias?: Float32Array,
): void {
  const { M, N, K } = args;
  const transA = !!args.transA, transB = !!args.transB;
  const lda = args.lda ?? (transA ? M : K);
  const ldb = args.ldb ?? (transB ? K : N);
  const ldc = args.ldc ?? N;
  const alpha = args.alpha ?? 1, beta = args.beta ?? 1;
  const count = args.batch?.count ?? 1;
  for (let t = 0; t < count; t++) {
    const ao = (args.aOffset ?? 0) + t * (args.batch?.strideA ?? 0);
    const bo = (args.bOffset ?? 0) + t * (args.batch?.strideB ?? 0);
    const co = (args.cOffset ?? 0) + t * (args.batch?.strideC ?? 0);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ao + (transA ? k * lda + m : m * lda + k)];
          const bv = b[bo + (transB ? n * ldb + k : k * ldb + n)];
          s += av * bv;
        }
        let v = alpha * s;
        const ci = co + m * ldc + n;
        if (args.accumulate) v += beta * c[ci];
        if (bias) v += bias[(args.biasOffset ?? 0) + n];
        c[ci] = v;
      }
    }
  }
}
