/**
 * Matmul against a 4-bit quantized matrix, dequantized inside the kernel:
 * C = alpha·A·op(W) (+ beta·C) (+ bias), f32 math, where W holds a
 * bitsandbytes-style 4-bit tensor (NF4 or FP4 codes, an absmax per block of
 * values, optionally double-quantized). The two products of a frozen linear
 * with weight W [out, in]:
 *   forward          y  = x·Wᵀ   (transW, "nt": W read along its rows)
 *   input gradient   dx = dy·W   (not transW, "nn": W read as [K, N] row-major)
 *
 * Storage (lib/model/quant/device.ts makes it; docs/qlora.md describes it):
 *   packed  u32 words holding bitsandbytes' packed bytes unchanged, little-endian:
 *           flat element g is byte g >> 1 (even g in the high nibble, odd in the
 *           low one), so word g >> 3, bits 8·((g >> 1) & 3) + (g even ? 4 : 0)
 *   scales  f32 absmax per block of `blocksize` (block g >> log2 blocksize), or,
 *           double-quantized, the 8-bit code of each block (4 per u32, block b in
 *           byte b & 3 of word b >> 2) decoded as code8[q]·absmax2[b >> 8] + offset
 *   values  the 16 values of the 4-bit code (NF4 or FP4 table), in the uniform
 * Flat indices are those of the whole quantized tensor; `wOffset` and `ldw`
 * select a slice (rows r, columns c at g = wOffset + r·ldw + c), as A and C
 * take offsets and leading dimensions.
 *
 * Two generated kernels: a "word" kernel when every W word it reads holds 8
 * elements of one row run (wOffset and ldw multiples of 8, K a multiple of 8
 * for nt, N a multiple of 8 and K of 4 for nn, A aligned to vec4) — every
 * linear of the model — which decodes a whole word per load with one scale;
 * and a scalar kernel for anything else. A word never straddles two blocks
 * (blocks are multiples of 8 values), but blocks may straddle rows: the scale
 * is looked up by each word's flat index, as bitsandbytes quantizes the
 * flattened weight.
 *
 * Loop budget (../loop_budget.ts): K is split so that an invocation walks at
 * most LOOP_BUDGET iterations (the word kernel does 8 K steps per iteration
 * for nt, 4 for nn; the scalar kernel one), later pieces accumulating.
 * Binding limits: each operand is bound as the range the product touches;
 * pieces are split (rows of C and A, rows of W) until every range fits.
 * Reference: `matmul4bitRef` below, on the dequantized weight.
 */
import type { DeviceClass, Gpu } from "../device.ts";
import {
  type Binding,
  type ComputePass,
  dispatch,
  getPipeline,
  packUniforms,
  uniforms,
} from "../runtime.ts";
import { LOOP_BUDGET } from "../loop_budget.ts";
import { foldWorkgroups } from "./grid.ts";
import { matmulRef, subRange } from "./matmul.ts";

/** A 4-bit quantized matrix on the device (see the module comment for the layout). */
export interface Quant4Weight {
  /** Packed 4-bit codes, 8 per u32 word. */
  packed: GPUBuffer;
  /** f32 absmax per block, or (double quantization) 8-bit codes, 4 per u32. */
  scales: GPUBuffer;
  /** Double quantization: the second-level scales and the 8-bit code book. */
  nested?: {
    /** f32 absmax per `blocksize` (256) first-level blocks. */
    absmax: GPUBuffer;
    /** The 256 f32 values of the 8-bit code (bitsandbytes' dynamic map). */
    code: GPUBuffer;
    /** f32 added after decoding (the mean of the absmax values). */
    offset: number;
    blocksize: number;
  };
  /** The 16 values a 4-bit code stands for. */
  values: Float32Array;
  /** Values per block (a power of two ≥ 8; 64 for QLoRA). */
  blocksize: number;
}

export interface Matmul4bitArgs {
  /** C is [M, N]; A is [M, K]. */
  M: number;
  N: number;
  K: number;
  a: GPUBuffer;
  w: Quant4Weight;
  c: GPUBuffer;
  /** W is [N, K] (a Linear weight [out, in] in the forward, y = x·Wᵀ); otherwise W is [K, N] (dx = dy·W). */
  transW: boolean;
  /** Element offsets (W: into the flat quantized tensor) and row strides. */
  aOffset?: number;
  wOffset?: number;
  cOffset?: number;
  lda?: number;
  ldw?: number;
  ldc?: number;
  alpha?: number;
  /** C = alpha·A·op(W) + beta·C. */
  accumulate?: boolean;
  beta?: number;
  /** Optional bias [N] added to every row. */
  bias?: GPUBuffer;
  biasOffset?: number;
}

/** Tiles of the generated kernels: tm×tn outputs per invocation, wgM×wgN invocations. */
export interface Matmul4bitProfile {
  tm: number;
  /** A multiple of 8 (the nn word kernel decodes 8 columns per word). */
  tn: number;
  wgM: number;
  wgN: number;
}

/**
 * On a CPU adapter each invocation is a SIMD lane: a big register tile spreads
 * each decoded weight over many rows of A and each A load over many columns;
 * one SIMD row of invocations per workgroup. On a GPU: a few outputs per
 * thread, wide workgroups (as the f32 matmul's gpu profile).
 */
export const DEFAULT_4BIT_PROFILES: Record<DeviceClass, Matmul4bitProfile> = {
  cpu: { tm: 16, tn: 16, wgM: 1, wgN: 8 },
  gpu: { tm: 4, tn: 8, wgM: 16, wgN: 8 },
};
/** The scalar kernel's tiles, for every device class (odd shapes only). */
const SCALAR_TILES: Matmul4bitProfile = { tm: 4, tn: 4, wgM: 1, wgN: 8 };

let override: Matmul4bitProfile | undefined;

/** Force the word kernel's tiles for this process (undefined restores the default). */
export function setMatmul4bitProfile(p: Matmul4bitProfile | undefined): void {
  if (p && (p.tn % 8 !== 0 || p.tm < 1 || p.wgM < 1 || p.wgN < 1)) {
    throw new Error("matmul4bit profile: tn must be a multiple of 8, sizes positive");
  }
  override = p;
}

/**
 * The word kernel's tiles in force: an override, GLM_MATMUL4_PROFILE
 * (tm=,tn=,wgm=,wgn=), or the class default.
 */
export function matmul4bitProfile(gpu: Gpu): Matmul4bitProfile {
  if (override) return override;
  const base = { ...DEFAULT_4BIT_PROFILES[gpu.deviceClass] };
  const env = Deno.env.get("GLM_MATMUL4_PROFILE");
  if (!env) return base;
  for (const part of env.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [k, v] = part.split("=");
    const key = ({ tm: "tm", tn: "tn", wgm: "wgM", wgn: "wgN" } as const)[
      k.toLowerCase() as "tm"
    ];
    const n = Number(v);
    if (!key || !Number.isInteger(n) || n <= 0) {
      throw new Error(
        `GLM_MATMUL4_PROFILE: cannot read "${part}" (tm=,tn=,wgm=,wgn=)`,
      );
    }
    base[key] = n;
  }
  if (base.tn % 8 !== 0) throw new Error("GLM_MATMUL4_PROFILE: tn must be a multiple of 8");
  return base;
}

export type Matmul4bitKernel = "word" | "scalar";

/** One dispatchable product after defaults and splitting. */
interface Piece {
  M: number;
  N: number;
  K: number;
  lda: number;
  ldw: number;
  ldc: number;
  aOff: number;
  wOff: number;
  cOff: number;
  biasOff: number;
  accumulate: boolean;
  beta: number;
  useBias: boolean;
}

function pieceOf(args: Omit<Matmul4bitArgs, "a" | "w" | "c">): Piece {
  return {
    M: args.M,
    N: args.N,
    K: args.K,
    lda: args.lda ?? args.K,
    ldw: args.ldw ?? (args.transW ? args.K : args.N),
    ldc: args.ldc ?? args.N,
    aOff: args.aOffset ?? 0,
    wOff: args.wOffset ?? 0,
    cOff: args.cOffset ?? 0,
    biasOff: args.biasOffset ?? 0,
    accumulate: !!args.accumulate,
    beta: args.beta ?? 1,
    useBias: !!args.bias,
  };
}

/** Whether a piece can take the word kernel (see the module comment). */
function wordEligible(p: Piece, transW: boolean): boolean {
  const m = (x: number, d: number) => x % d === 0;
  if (!(p.K > 0 && m(p.wOff, 8) && m(p.ldw, 8) && m(p.aOff, 4) && m(p.lda, 4))) return false;
  return transW ? m(p.K, 8) : m(p.N, 8) && m(p.K, 4);
}

/** Which kernel a product would run (tests, benchmarks). */
export function matmul4bitKernelKind(
  args: Omit<Matmul4bitArgs, "a" | "w" | "c">,
): Matmul4bitKernel {
  return wordEligible(pieceOf(args), args.transW) ? "word" : "scalar";
}

/** Loop iterations per K step of an invocation. */
function kTrips(kind: Matmul4bitKernel, transW: boolean): number {
  return kind === "scalar" ? 1 : transW ? 1 / 8 : 1 / 4;
}

/** Encode C = alpha·A·op(W) (+ beta·C) (+ bias) into `pass`. */
export function encodeMatmul4bit(gpu: Gpu, pass: ComputePass, args: Matmul4bitArgs): void {
  const { M, N, K } = args;
  for (const [k, v] of Object.entries({ M, N, K })) {
    if (!Number.isInteger(v) || v < 0) {
      throw new Error(`matmul4bit: ${k} must be a non-negative integer, got ${v}`);
    }
  }
  const w = args.w;
  if (w.values.length !== 16) throw new Error("matmul4bit: the code book needs 16 values");
  if (!(w.blocksize >= 8 && (w.blocksize & (w.blocksize - 1)) === 0)) {
    throw new Error(`matmul4bit: blocksize must be a power of two ≥ 8, got ${w.blocksize}`);
  }
  if (w.nested && w.nested.blocksize !== 256) {
    throw new Error("matmul4bit: the nested blocksize must be 256 (the kernel decodes b >> 8)");
  }
  if (M === 0 || N === 0) return;
  const transW = !!args.transW;
  const limit = gpu.limits.maxStorageBufferBindingSize;
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const prof = matmul4bitProfile(gpu);
  const pieces = splitToFit(pieceOf(args), transW, w, limit).flatMap((q) =>
    splitForLoops(q, transW)
  );
  for (const p of pieces) {
    const kind: Matmul4bitKernel = wordEligible(p, transW) ? "word" : "scalar";
    const tiles = kind === "word" ? prof : SCALAR_TILES;
    const nested = !!w.nested;
    const epilogue = { accumulate: p.accumulate, bias: p.useBias && !!args.bias };
    const pipeline = pipelineFor(gpu, tiles, kind, transW, nested, epilogue);

    const [aStart, aEnd] = rangeA(p);
    const aBind = subRange(args.a, aStart, aEnd, 4, align, "A");
    const [cStart, cEnd] = rangeC(p);
    const cBind = subRange(args.c, cStart, cEnd, 4, align, "C");
    const [gStart, gEnd] = rangeW(p, transW);
    const shift = Math.log2(w.blocksize);
    // Packed words [gStart >> 3, ⌈gEnd / 8⌉).
    const pBind = subRange(w.packed, gStart >> 3, Math.ceil(gEnd / 8), 4, align, "packed W");
    const wordBase = pBind.start;
    const b0 = Math.floor(gStart / w.blocksize), b1 = Math.floor((gEnd - 1) / w.blocksize) + 1;
    let sBind, blkBase, blk2Base = 0;
    const bindings: Binding[] = [];
    if (nested) {
      sBind = subRange(w.scales, b0 >> 2, Math.ceil(b1 / 4), 4, align, "absmax codes");
      blkBase = sBind.start * 4;
      const n2 = w.nested!;
      const s2 = subRange(n2.absmax, b0 >> 8, ((b1 - 1) >> 8) + 1, 4, align, "absmax2");
      blk2Base = s2.start;
      bindings.push(s2.binding, n2.code);
    } else {
      sBind = subRange(w.scales, b0, b1, 4, align, "absmax");
      blkBase = sBind.start;
    }
    const tileM = tiles.tm * tiles.wgM, tileN = tiles.tn * tiles.wgN;
    const tilesN = Math.ceil(p.N / tileN);
    const total = Math.ceil(p.M / tileM) * tilesN;
    const [x, y, z] = foldWorkgroups(gpu, total);
    const words: Array<{ u: number } | { f: number }> = [
      { u: p.M },
      { u: p.N },
      { u: p.K },
      { u: p.lda },
      { u: p.ldw },
      { u: p.ldc },
      { u: aBind.rel },
      { u: cBind.rel },
      { u: p.wOff },
      { u: wordBase },
      { u: blkBase },
      { u: blk2Base },
      { u: 0 }, // biasOff, set below
      { u: shift },
      { f: args.alpha ?? 1 },
      { f: p.beta },
      { u: tilesN },
      { u: total },
      { f: w.nested?.offset ?? 0 },
      { u: 0 },
    ];
    let biasBind: Binding | undefined;
    if (epilogue.bias) {
      const bb = subRange(args.bias!, p.biasOff, p.biasOff + p.N, 4, align, "bias");
      biasBind = bb.binding;
      words[12] = { u: bb.rel };
    }
    for (const v of w.values) words.push({ f: v });
    const u = uniforms(gpu).alloc(packUniforms(words));
    const all: Binding[] = [u, aBind.binding, pBind.binding, sBind.binding, cBind.binding];
    if (biasBind) all.push(biasBind);
    all.push(...bindings);
    dispatch(gpu, pass, pipeline, all, [x, y, z]);
  }
}

const pipelineMemo = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

function pipelineFor(
  gpu: Gpu,
  tiles: Matmul4bitProfile,
  kind: Matmul4bitKernel,
  transW: boolean,
  nested: boolean,
  epilogue: { accumulate: boolean; bias: boolean },
): GPUComputePipeline {
  let memo = pipelineMemo.get(gpu.device);
  if (!memo) pipelineMemo.set(gpu.device, memo = new Map());
  const key = [
    tiles.tm,
    tiles.tn,
    tiles.wgM,
    tiles.wgN,
    kind,
    transW,
    nested,
    epilogue.accumulate,
    epilogue.bias,
  ]
    .join(",");
  let p = memo.get(key);
  if (!p) {
    p = getPipeline(gpu, matmul4bitShader(tiles, kind, transW, nested, epilogue));
    memo.set(key, p);
  }
  return p;
}

// ---- ranges, bindings, splits ----

function rangeA(p: Piece): [number, number] {
  return [p.aOff, p.aOff + (p.M - 1) * p.lda + Math.max(p.K, 1)];
}
function rangeC(p: Piece): [number, number] {
  return [p.cOff, p.cOff + (p.M - 1) * p.ldc + p.N];
}
/** Flat elements of W the piece reads: [start, end). */
function rangeW(p: Piece, transW: boolean): [number, number] {
  const rows = transW ? p.N : p.K, width = transW ? p.K : p.N;
  return [p.wOff, p.wOff + Math.max(0, rows - 1) * p.ldw + Math.max(width, 1)];
}

/** Split until every bound range fits `limit` bytes (with room for the alignment slack). */
function splitToFit(p: Piece, transW: boolean, w: Quant4Weight, limit: number): Piece[] {
  const cap = limit - 1024;
  const span = (r: [number, number]) => r[1] - r[0];
  const aBig = span(rangeA(p)) * 4 > cap;
  const cBig = span(rangeC(p)) * 4 > cap;
  const wElems = span(rangeW(p, transW));
  // Packed codes: half a byte per value; scales: 4 bytes a block, or 1 when double-quantized.
  const scaleBytes = (wElems / w.blocksize) * (w.nested ? 1 : 4);
  const wBig = wElems / 2 > cap || scaleBytes > cap;
  if (!aBig && !cBig && !wBig) return [p];
  let parts: [Piece, Piece];
  if (aBig || cBig) parts = splitM(p);
  else if (transW) parts = splitN(p);
  else parts = splitK(p, transW, Math.max(4, Math.floor(p.K / 8) * 4));
  return parts.flatMap((q) => splitToFit(q, transW, w, limit));
}

function tooSmall(what: string): never {
  throw new Error(
    `matmul4bit: a single ${what} exceeds maxStorageBufferBindingSize; the product cannot be split further`,
  );
}

function splitM(p: Piece): [Piece, Piece] {
  if (p.M < 2) tooSmall("row");
  const h = Math.floor(p.M / 2);
  return [{ ...p, M: h }, {
    ...p,
    M: p.M - h,
    aOff: p.aOff + h * p.lda,
    cOff: p.cOff + h * p.ldc,
  }];
}

/** Columns of C = rows of a transposed W. */
function splitN(p: Piece): [Piece, Piece] {
  if (p.N < 2) tooSmall("row of W");
  const h = Math.floor(p.N / 2);
  return [{ ...p, N: h }, {
    ...p,
    N: p.N - h,
    wOff: p.wOff + h * p.ldw,
    cOff: p.cOff + h,
    biasOff: p.biasOff + h,
  }];
}

/** The reduction at `h` (a multiple of 8 keeps the word kernel's alignment); the rest accumulates. */
function splitK(p: Piece, transW: boolean, h: number): [Piece, Piece] {
  if (p.K < 2 || h >= p.K) tooSmall("reduction slice");
  return [{ ...p, K: h }, {
    ...p,
    K: p.K - h,
    aOff: p.aOff + h,
    wOff: p.wOff + (transW ? h : h * p.ldw),
    accumulate: true,
    beta: 1,
    useBias: false,
  }];
}

/** K pieces that each walk at most LOOP_BUDGET iterations per invocation. */
function splitForLoops(p: Piece, transW: boolean): Piece[] {
  const kind: Matmul4bitKernel = wordEligible(p, transW) ? "word" : "scalar";
  const per = Math.floor(LOOP_BUDGET / kTrips(kind, transW) / 16) * 16;
  if (p.K <= per) return [p];
  const [first, rest] = splitK(p, transW, per);
  return [first, ...splitForLoops(rest, transW)];
}

// ---- WGSL ----

/** The uniform block; encodeMatmul4bit packs it in this order. */
const UNIFORMS = `struct U {
  M: u32, N: u32, K: u32, lda: u32,
  ldw: u32, ldc: u32, aOff: u32, cOff: u32,
  wOff: u32, wordBase: u32, blkBase: u32, blk2Base: u32,
  biasOff: u32, shift: u32, alpha: f32, beta: f32,
  tilesN: u32, tiles: u32, offset: f32, pad: u32,
  code: array<vec4f, 4>,
}`;

/**
 * The WGSL for one kernel variant. `nested` decodes double-quantized scales;
 * the epilogue (beta·C, bias) is fixed per pipeline, as in the f32 matmul
 * (a uniform branch around every store slows llvmpipe's build).
 */
export function matmul4bitShader(
  prof: Matmul4bitProfile,
  kind: Matmul4bitKernel,
  transW: boolean,
  nested: boolean,
  epilogue: { accumulate: boolean; bias: boolean },
): string {
  const { tm, tn, wgM, wgN } = prof;
  const L: string[] = [];
  let binding = 5;
  const biasDecl = epilogue.bias
    ? `@group(0) @binding(${binding++}) var<storage, read> bias: array<f32>;`
    : "";
  const nestedDecl = nested
    ? `@group(0) @binding(${binding++}) var<storage, read> S2: array<f32>;
@group(0) @binding(${binding++}) var<storage, read> code8: array<f32>;`
    : "";
  const scaleFn = nested
    ? `fn scaleOf(g: u32) -> f32 {
  let b = g >> u.shift;
  let lb = b - u.blkBase;
  let q = (S[lb >> 2u] >> ((lb & 3u) * 8u)) & 255u;
  return code8[q] * S2[(b >> 8u) - u.blk2Base] + u.offset;
}`
    : `fn scaleOf(g: u32) -> f32 { return S[(g >> u.shift) - u.blkBase]; }`;
  L.push(`${UNIFORMS}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> A: array<${kind === "word" ? "vec4f" : "f32"}>;
@group(0) @binding(2) var<storage, read> Wp: array<u32>;
@group(0) @binding(3) var<storage, read> S: array<${nested ? "u32" : "f32"}>;
@group(0) @binding(4) var<storage, read_write> C: array<f32>;
${biasDecl}
${nestedDecl}
${scaleFn}
/** The value of code q (0..15). */
fn cv(q: u32) -> f32 { return u.code[q >> 2u][q & 3u]; }
/** Element g of W, dequantized. */
fn wAt(g: u32) -> f32 {
  let w = Wp[(g >> 3u) - u.wordBase];
  let sh = ((g & 6u) << 2u) + select(4u, 0u, (g & 1u) == 1u);
  return cv((w >> sh) & 15u) * scaleOf(g);
}

@compute @workgroup_size(${wgM * wgN})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  if (t >= u.tiles) { return; }
  let tmi = t / u.tilesN;
  let m0 = tmi * ${tm * wgM}u${wgM > 1 ? ` + (lid / ${wgN}u) * ${tm}u` : ""};
  let n0 = (t - tmi * u.tilesN) * ${tn * wgN}u${wgN > 1 ? ` + (lid % ${wgN}u) * ${tn}u` : ""};
  ${wgM > 1 ? "" : "if (m0 >= u.M) { return; }"}
  let lastM = u.M - 1u;
  let lastN = u.N - 1u;`);
  const tn4 = tn / 4;
  for (let i = 0; i < tm; i++) {
    for (let j = 0; j < tn4; j++) L.push(`  var acc${i}_${j} = vec4f(0.0);`);
  }
  if (kind === "scalar") L.push(scalarLoop(tm, tn, transW));
  else if (transW) L.push(wordLoopNt(tm, tn));
  else L.push(wordLoopNn(tm, tn));
  L.push(store(tm, tn, epilogue), "}");
  return L.join("\n");
}

/** One K step per iteration; every W element decoded on its own. */
function scalarLoop(tm: number, tn: number, transW: boolean): string {
  const L: string[] = [];
  for (let i = 0; i < tm; i++) L.push(`  let ra${i} = u.aOff + min(m0 + ${i}u, lastM) * u.lda;`);
  // Row r, column c of the stored W is g = wOff + r·ldw + c: nt reads (n, k), nn (k, n).
  for (let j = 0; j < tn; j++) {
    const nj = `min(n0 + ${j}u, lastN)`;
    L.push(`  let gw${j} = u.wOff + ${transW ? `${nj} * u.ldw` : nj};`);
  }
  L.push(`  for (var k = 0u; k < u.K; k++) {
    let gk = k${transW ? "" : " * u.ldw"};`);
  for (let j = 0; j < tn / 4; j++) {
    const e = [0, 1, 2, 3].map((q) => `wAt(gw${4 * j + q} + gk)`).join(", ");
    L.push(`    let w${j} = vec4f(${e});`);
  }
  for (let i = 0; i < tm; i++) {
    L.push(`    let a${i} = vec4f(A[ra${i} + k]);`);
    for (let j = 0; j < tn / 4; j++) L.push(`    acc${i}_${j} = fma(a${i}, w${j}, acc${i}_${j});`);
  }
  L.push("  }");
  return L.join("\n");
}

/** Shift of element e (0..7) of a word: bitsandbytes' byte order, the even element high. */
const nibbleShift = (e: number) => 8 * (e >> 1) + (e % 2 === 0 ? 4 : 0);

/**
 * nt (W [N, K]): 8 K steps per iteration. Each column's word holds its 8
 * weights for those steps, with one scale; the A rows are read as two vec4.
 */
function wordLoopNt(tm: number, tn: number): string {
  const L: string[] = [];
  for (let i = 0; i < tm; i++) {
    L.push(`  let ra${i} = (u.aOff + min(m0 + ${i}u, lastM) * u.lda) / 4u;`);
  }
  for (let j = 0; j < tn; j++) L.push(`  let gw${j} = u.wOff + min(n0 + ${j}u, lastN) * u.ldw;`);
  L.push(`  for (var k8 = 0u; k8 < u.K / 8u; k8++) {
    let k = k8 * 8u;`);
  for (let i = 0; i < tm; i++) {
    L.push(`    let a${i}l = A[ra${i} + 2u * k8];`, `    let a${i}h = A[ra${i} + 2u * k8 + 1u];`);
  }
  for (let j = 0; j < tn; j++) {
    L.push(
      `    let g${j} = gw${j} + k;`,
      `    let wd${j} = Wp[(g${j} >> 3u) - u.wordBase];`,
      `    let s${j} = scaleOf(g${j});`,
    );
  }
  for (let e = 0; e < 8; e++) {
    // The weights of K step e for the 4 columns of each vec4 of C.
    for (let J = 0; J < tn / 4; J++) {
      const v = [0, 1, 2, 3].map((q) => {
        const j = 4 * J + q;
        return `cv((wd${j} >> ${nibbleShift(e)}u) & 15u) * s${j}`;
      }).join(", ");
      L.push(`    let w${e}_${J} = vec4f(${v});`);
    }
    const comp = "xyzw"[e & 3], half = e < 4 ? "l" : "h";
    for (let i = 0; i < tm; i++) {
      for (let J = 0; J < tn / 4; J++) {
        L.push(`    acc${i}_${J} = fma(vec4f(a${i}${half}.${comp}), w${e}_${J}, acc${i}_${J});`);
      }
    }
  }
  L.push("  }");
  return L.join("\n");
}

/**
 * nn (W [K, N] row-major): 4 K steps per iteration (A read as one vec4 per
 * row); for each step, each group of 8 columns is one word with one scale.
 */
function wordLoopNn(tm: number, tn: number): string {
  const L: string[] = [];
  for (let i = 0; i < tm; i++) {
    L.push(`  let ra${i} = (u.aOff + min(m0 + ${i}u, lastM) * u.lda) / 4u;`);
  }
  // N is a multiple of 8: clamped groups repeat the last one and are dropped at the store.
  for (let p = 0; p < tn / 8; p++) L.push(`  let gc${p} = u.wOff + min(n0 + ${8 * p}u, u.N - 8u);`);
  L.push(`  for (var k4 = 0u; k4 < u.K / 4u; k4++) {`);
  for (let i = 0; i < tm; i++) L.push(`    let a${i} = A[ra${i} + k4];`);
  for (let q = 0; q < 4; q++) {
    L.push(`    let row${q} = (k4 * 4u + ${q}u) * u.ldw;`);
    for (let p = 0; p < tn / 8; p++) {
      L.push(
        `    let g${q}_${p} = gc${p} + row${q};`,
        `    let wd${q}_${p} = Wp[(g${q}_${p} >> 3u) - u.wordBase];`,
        `    let s${q}_${p} = scaleOf(g${q}_${p});`,
      );
      for (let h = 0; h < 2; h++) {
        const v = [0, 1, 2, 3].map((c) => `cv((wd${q}_${p} >> ${nibbleShift(4 * h + c)}u) & 15u)`)
          .join(", ");
        L.push(`    let w${q}_${2 * p + h} = vec4f(${v}) * s${q}_${p};`);
      }
    }
    const comp = "xyzw"[q];
    for (let i = 0; i < tm; i++) {
      for (let J = 0; J < tn / 4; J++) {
        L.push(`    acc${i}_${J} = fma(vec4f(a${i}.${comp}), w${q}_${J}, acc${i}_${J});`);
      }
    }
  }
  L.push("  }");
  return L.join("\n");
}

/** C = alpha·acc (+ beta·C) (+ bias) for the rows and columns inside C. */
function store(tm: number, tn: number, epilogue: { accumulate: boolean; bias: boolean }): string {
  const L: string[] = [];
  for (let i = 0; i < tm; i++) {
    L.push(`  if (m0 + ${i}u < u.M) {
    let row = u.cOff + (m0 + ${i}u) * u.ldc;`);
    for (let j = 0; j < tn; j++) {
      let v = `u.alpha * acc${i}_${j >> 2}.${"xyzw"[j & 3]}`;
      if (epilogue.accumulate) v = `${v} + u.beta * C[row + n0 + ${j}u]`;
      if (epilogue.bias) v = `${v} + bias[u.biasOff + n0 + ${j}u]`;
      L.push(`    if (n0 + ${j}u < u.N) { C[row + n0 + ${j}u] = ${v}; }`);
    }
    L.push("  }");
  }
  return L.join("\n");
}

// ---- reference ----

/**
 * CPU reference with encodeMatmul4bit's semantics on the dequantized weight
 * `w` (the flat f32 tensor, e.g. lib/model/quant's dequantize4bit): plain
 * loops, f64 accumulation. The ground truth for tests.
 */
export function matmul4bitRef(
  a: Float32Array,
  w: Float32Array,
  c: Float32Array,
  args: Omit<Matmul4bitArgs, "a" | "w" | "c" | "bias">,
  bias?: Float32Array,
): void {
  const { transW, wOffset, ldw, ...rest } = args;
  matmulRef(a, w, c, { ...rest, transB: transW, bOffset: wOffset, ldb: ldw }, bias);
}
