import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import { readF32, SplittablePass, uniforms, upload } from "../lib/gpu/runtime.ts";
import {
  encodeMatmul,
  f32ToF16Packed,
  type MatmulArgs,
  matmulKernelKind,
  matmulRef,
} from "../lib/gpu/kernels/matmul.ts";
import {
  DEFAULT_PROFILES,
  matmulProfile,
  parseMatmulProfile,
  setMatmulProfile,
  vec4Tiles,
} from "../lib/gpu/kernels/matmul_profile.ts";
import { f16BitsToF32 } from "../lib/safetensors/dtype.ts";
import { rand, withLimits } from "./test_util.ts";

interface Case {
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  beta?: number;
  accumulate?: boolean;
  bias?: boolean;
  bF16?: boolean;
  aOffset?: number;
  bOffset?: number;
  cOffset?: number;
  biasOffset?: number;
  lda?: number;
  ldb?: number;
  ldc?: number;
  batch?: { count: number; strideA: number; strideB: number; strideC: number };
  aBand?: { lo?: number; hi?: number };
  cUpper?: number;
}

/** Visit every (batch, m, k) of op(A) and (batch, m, n) of C with its element index. */
function eachA(c: Case, lda: number, f: (i: number, m: number, k: number) => void): void {
  for (let t = 0; t < (c.batch?.count ?? 1); t++) {
    const o = (c.aOffset ?? 0) + t * (c.batch?.strideA ?? 0);
    for (let m = 0; m < c.M; m++) {
      for (let k = 0; k < c.K; k++) f(o + (c.transA ? k * lda + m : m * lda + k), m, k);
    }
  }
}
function eachC(c: Case, ldc: number, f: (i: number, m: number, n: number) => void): void {
  for (let t = 0; t < (c.batch?.count ?? 1); t++) {
    const o = (c.cOffset ?? 0) + t * (c.batch?.strideC ?? 0);
    for (let m = 0; m < c.M; m++) {
      for (let n = 0; n < c.N; n++) f(o + m * ldc + n, m, n);
    }
  }
}

function extent(
  rows: number,
  ld: number,
  width: number,
  off: number,
  count: number,
  stride: number,
) {
  // At least one element: WebGPU buffers cannot be empty (K = 0 makes A and B so).
  return Math.max(1, off + (count - 1) * stride + (rows - 1) * ld + width);
}

/** Entries beyond C's band that the last cUpper case left as they were (skipped tiles). */
let untouchedBeyondBand = 0;

/** Run one case on the GPU and the reference; return the max error relative to magnitude. */
async function runCase(
  c: Case,
  seed: number,
  limits?: Partial<GPUSupportedLimits>,
  splittable = false,
): Promise<number> {
  const real = await getGpu();
  // A copy of the context with smaller limits exercises the splitting paths.
  const gpu: Gpu = limits ? withLimits(real, limits) : real;
  const count = c.batch?.count ?? 1;
  const lda = c.lda ?? (c.transA ? c.M : c.K);
  const ldb = c.ldb ?? (c.transB ? c.K : c.N);
  const ldc = c.ldc ?? c.N;
  const aLen = extent(
    c.transA ? c.K : c.M,
    lda,
    c.transA ? c.M : c.K,
    c.aOffset ?? 0,
    count,
    c.batch?.strideA ?? 0,
  );
  const bLen = extent(
    c.transB ? c.N : c.K,
    ldb,
    c.transB ? c.K : c.N,
    c.bOffset ?? 0,
    count,
    c.batch?.strideB ?? 0,
  );
  const cLen = extent(c.M, ldc, c.N, c.cOffset ?? 0, count, c.batch?.strideC ?? 0) + 3;
  const a = rand(aLen, seed);
  if (c.aBand) {
    // The band's promise: op(A) is zero outside it.
    const { lo = -Infinity, hi = Infinity } = c.aBand;
    eachA(c, lda, (i, m, k) => {
      if (k < m + lo || k > m + hi) a[i] = 0;
    });
  }
  let b = rand(bLen, seed + 1);
  const c0 = rand(cLen, seed + 2);
  const biasData = c.bias ? rand((c.biasOffset ?? 0) + c.N, seed + 3) : undefined;
  let bBuf: GPUBuffer;
  if (c.bF16) {
    const packed = f32ToF16Packed(b);
    // The reference sees exactly the f16-rounded values the kernel decodes.
    b = new Float32Array(bLen);
    for (let i = 0; i < bLen; i++) {
      b[i] = f16BitsToF32((packed[i >> 1] >>> ((i & 1) * 16)) & 0xffff);
    }
    bBuf = upload(gpu, packed);
  } else {
    bBuf = upload(gpu, b);
  }
  const aBuf = upload(gpu, a);
  const cBuf = upload(gpu, c0);
  const biasBuf = biasData ? upload(gpu, biasData) : undefined;
  const { bias: _b, ...rest } = c;
  const args: MatmulArgs = { ...rest, a: aBuf, b: bBuf, c: cBuf, bias: biasBuf };
  const enc = gpu.device.createCommandEncoder();
  // Only a SplittablePass lets the texture kernel record its copies.
  const pass = splittable ? new SplittablePass(enc) : enc.beginComputePass();
  encodeMatmul(gpu, pass, args);
  if (limits) {
    const sizes = pieces(gpu);
    // Several dispatches, each with its three operands bound.
    assert(sizes.length > 3, `expected the product to be split, saw ${sizes.length} bindings`);
    for (const r of sizes) {
      assert(r <= limits.maxStorageBufferBindingSize!, `bound ${r} bytes`);
    }
  }
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  uniforms(gpu).reset();
  const got = await readF32(gpu, cBuf, cLen);
  const want = c0.slice();
  const { bF16: _f, ...refArgs } = rest;
  matmulRef(a, b, want, refArgs, biasData);
  if (c.cUpper !== undefined) {
    // Entries beyond C's band are unspecified: compare the rest.
    const upper = c.cUpper;
    untouchedBeyondBand = 0;
    eachC(c, ldc, (i, m, n) => {
      if (n > m + upper) {
        if (got[i] === c0[i]) untouchedBeyondBand++;
        want[i] = got[i];
      }
    });
  }
  // Error relative to the magnitude of the terms summed (|a|·|b| ≤ 1 each).
  const scale = Math.max(1, c.K * Math.abs(c.alpha ?? 1));
  let maxErr = 0;
  for (let i = 0; i < cLen; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= maxErr)) maxErr = Number.isNaN(e) ? Infinity : e;
  }
  for (const x of [aBuf, bBuf, cBuf, biasBuf]) x?.destroy();
  return maxErr / scale;
}

/** Sizes of the storage ranges bound since the last call (recorded through createBindGroup). */
const bound: number[] = [];
function pieces(_g: Gpu): number[] {
  return bound.splice(0);
}
{
  const g = await getGpu();
  const orig = g.device.createBindGroup.bind(g.device);
  g.device.createBindGroup = (d: GPUBindGroupDescriptor) => {
    for (const e of d.entries) {
      const r = e.resource as GPUBufferBinding;
      if (r.buffer && r.buffer.usage & GPUBufferUsage.STORAGE && r.size !== undefined) {
        bound.push(r.size);
      }
    }
    return orig(d);
  };
}

const layouts: Array<[string, boolean, boolean]> = [
  ["nn", false, false],
  ["nt", false, true],
  ["tn", true, false],
  ["tt", true, true],
];

Deno.test("matmul: every layout on awkward shapes matches the reference", async () => {
  const shapes = [
    [1, 1, 1],
    [1, 37, 19], // one row: generation
    [3, 5, 7],
    [17, 33, 9], // just past the cpu tile (16x32... per invocation)
    [40, 70, 65],
    [130, 260, 3],
    // Multiples of 4 take the vec4 kernel, still not multiples of its tiles.
    [4, 4, 4],
    [1, 8, 12],
    [20, 36, 12],
    [68, 136, 40],
  ];
  let seed = 1;
  const report: string[] = [];
  for (const [name, transA, transB] of layouts) {
    for (const [M, N, K] of shapes) {
      const err = await runCase({ M, N, K, transA, transB }, seed++);
      const kind = matmulKernelKind({ M, N, K, transA, transB });
      const aligned = N % 4 === 0 && K % 4 === 0 && (M % 4 === 0 || !transA);
      assertEquals(kind, aligned ? "vec4" : "scalar");
      report.push(`${name} ${M}x${N}x${K} ${kind}: ${err.toExponential(1)}`);
      assert(err < 1e-6, `${name} ${M}x${N}x${K}: relative error ${err}`);
    }
  }
  console.log("max relative error: " + report.join(", "));
});

Deno.test("matmul: alpha, accumulate with beta, bias, offsets, leading dimensions", async () => {
  const cases: Case[] = [
    { M: 9, N: 13, K: 11, alpha: 0.5 },
    { M: 9, N: 13, K: 11, accumulate: true },
    { M: 9, N: 13, K: 11, accumulate: true, beta: -2, alpha: 3 },
    { M: 21, N: 35, K: 8, bias: true, transB: true },
    { M: 21, N: 35, K: 8, bias: true, biasOffset: 5, accumulate: true, transB: true },
    { M: 5, N: 6, K: 7, aOffset: 3, bOffset: 11, cOffset: 70, transA: true },
    { M: 5, N: 6, K: 7, lda: 10, ldb: 9, ldc: 8, aOffset: 1 },
    { M: 5, N: 6, K: 7, lda: 12, ldb: 9, ldc: 8, transA: true, transB: true },
    { M: 4, N: 4, K: 0, accumulate: true, bias: true }, // K = 0: C = beta·C + bias
    // The same on the vec4 kernel.
    { M: 9, N: 12, K: 8, accumulate: true, beta: 0.5, alpha: -1.5 },
    { M: 21, N: 36, K: 8, bias: true, biasOffset: 8, accumulate: true, transB: true },
    { M: 8, N: 8, K: 12, aOffset: 4, bOffset: 12, cOffset: 68, transA: true },
    { M: 5, N: 8, K: 4, lda: 12, ldb: 16, ldc: 20, aOffset: 4 },
  ];
  let seed = 100;
  for (const c of cases) {
    const err = await runCase(c, seed++);
    assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
  }
});

Deno.test("matmul: f16 B (packed) in nt and nn layouts, odd offsets", async () => {
  const cases: Case[] = [
    { M: 19, N: 37, K: 24, bF16: true, transB: true },
    { M: 3, N: 7, K: 5, bF16: true, transB: true, bOffset: 1 },
    { M: 18, N: 35, K: 13, bF16: true, bias: true },
    { M: 1, N: 64, K: 33, bF16: true, transB: true, accumulate: true },
    // vec4 kernel: four halves per vec2<u32> load.
    { M: 19, N: 36, K: 24, bF16: true, transB: true, bias: true },
    { M: 1, N: 40, K: 16, bF16: true, transB: true, bOffset: 8 },
    { M: 5, N: 40, K: 16, bF16: true },
  ];
  let seed = 200;
  for (const c of cases) {
    const err = await runCase(c, seed++);
    assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
  }
});

Deno.test("matmul: strided batches", async () => {
  const cases: Case[] = [
    { M: 7, N: 9, K: 5, batch: { count: 3, strideA: 35, strideB: 45, strideC: 63 } },
    // Shared B (stride 0), transposed A, as in a per-head product against one matrix.
    { M: 4, N: 33, K: 6, transA: true, batch: { count: 5, strideA: 24, strideB: 0, strideC: 140 } },
    // Attention-like: scores = Q·Kᵀ per head.
    {
      M: 17,
      N: 17,
      K: 8,
      transB: true,
      alpha: 0.35,
      batch: { count: 4, strideA: 136, strideB: 136, strideC: 289 },
    },
    // vec4 kernel, with a C stride leaving gaps between the products.
    {
      M: 9,
      N: 12,
      K: 8,
      transB: true,
      batch: { count: 3, strideA: 72, strideB: 96, strideC: 120 },
    },
    { M: 8, N: 16, K: 4, transA: true, batch: { count: 2, strideA: 32, strideB: 0, strideC: 128 } },
  ];
  let seed = 300;
  for (const c of cases) {
    const err = await runCase(c, seed++);
    assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
  }
});

Deno.test("matmul: other tile profiles give the same results", async () => {
  try {
    const odd = { tm: 4, tn: 8, wgM: 2, wgN: 2, scalar: { tm: 3, tn: 4, wgM: 2, wgN: 3 } };
    // The shared-memory kernel of the gpu profile, in workgroups small enough for
    // llvmpipe to build quickly (its build time grows with the workgroup: ~14 s
    // at 16×16); bk 16 does not divide K = 24, so a partial K tile is covered.
    const { bk: _bk, ...gpuRegisters } = DEFAULT_PROFILES.gpu;
    const shared = { tm: 4, tn: 8, wgM: 2, wgN: 3, bk: 16, stageAll: true };
    for (const p of [gpuRegisters, shared, odd]) {
      setMatmulProfile(p);
      let seed = 400;
      for (const [, transA, transB] of layouts) {
        for (const [M, N, K] of [[37, 29, 23], [36, 44, 24]]) {
          const err = await runCase({ M, N, K, transA, transB, bias: true }, seed++);
          assert(err < 1e-6, `${JSON.stringify(p)} ${M}x${N}x${K}: relative error ${err}`);
        }
      }
    }
  } finally {
    setMatmulProfile(undefined);
  }
});

Deno.test("matmul: the large tiles of the cpu profile on a small shape", async () => {
  // The training-size tile (32×32 per invocation) is chosen only for big products; lowering its
  // threshold runs the same pipelines here on shapes with ragged edges in M, N and K.
  const large = DEFAULT_PROFILES.cpu.large!;
  assertEquals(vec4Tiles(DEFAULT_PROFILES.cpu, large.minM, large.minN), large);
  assertEquals(vec4Tiles(DEFAULT_PROFILES.cpu, large.minM - 1, large.minN), DEFAULT_PROFILES.cpu);
  try {
    setMatmulProfile({ ...DEFAULT_PROFILES.cpu, large: { ...large, minM: 1, minN: 1 } });
    const cases: Case[] = [
      // LLVM takes 10–20 s to build a pipeline of this size (twice that with beta·C and bias, whose
      // store code is the same generator's as the 16×16 tile's, tested above): one plain case, with
      // ragged edges in M and N. (nn, tn and nt with f16 B, with beta·C and bias, passed here once.)
      { M: 36, N: 260, K: 12, transA: true, alpha: 2 },
    ];
    let seed = 600;
    for (const c of cases) {
      const { bias: _b, ...shape } = c;
      assertEquals(matmulKernelKind(shape), "vec4");
      const err = await runCase(c, seed++);
      assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
    }
  } finally {
    setMatmulProfile(undefined);
  }
});

Deno.test("matmul: profile parsing", () => {
  // An explicit profile applies to every size: the large tile is dropped.
  const { large: _large, ...cpuSmall } = DEFAULT_PROFILES.cpu;
  assertEquals(parseMatmulProfile("tm=8, tn=16,wgn=4", DEFAULT_PROFILES.cpu), {
    ...cpuSmall,
    tm: 8,
    tn: 16,
    wgM: 1,
    wgN: 4,
  });
  // bk sets the K steps staged per shared-memory tile; bk=0 turns staging off.
  assertEquals(parseMatmulProfile("tm=8,tn=8,bk=8", DEFAULT_PROFILES.gpu).bk, 8);
  assertEquals(parseMatmulProfile("bk=0", DEFAULT_PROFILES.gpu).bk, undefined);
  // tex=0|1 turns the texture kernel off or on.
  assertEquals(DEFAULT_PROFILES.cpu.textures, true);
  assertEquals(parseMatmulProfile("tex=0", DEFAULT_PROFILES.cpu).textures, false);
  assertEquals(parseMatmulProfile("tex=1", DEFAULT_PROFILES.gpu).textures, true);
  for (const bad of ["tn=6", "bk=6", "tm=3,wgm=1,bk=8", "tex=2"]) {
    let threw = false;
    try {
      parseMatmulProfile(bad, DEFAULT_PROFILES.gpu);
    } catch {
      threw = true;
    }
    assert(threw, bad);
  }
});

Deno.test("matmul: a banded A walks only its band; tiles beyond C's band are skipped", async () => {
  // Causal attention: P·V with P lower-triangular (hi 0), Pᵀ·dO (lo 0), Q·Kᵀ
  // wanted on and below the diagonal (cUpper 0); shifted bands and both kernels.
  const cases: Case[] = [
    { M: 70, N: 20, K: 70, aBand: { hi: 0 } },
    {
      M: 64,
      N: 32,
      K: 64,
      aBand: { hi: 0 },
      lda: 80,
      batch: { count: 2, strideA: 80 * 64, strideB: 0, strideC: 64 * 32 },
    },
    { M: 64, N: 32, K: 64, transA: true, aBand: { lo: 0 } },
    { M: 37, N: 9, K: 45, transA: true, aBand: { lo: 3, hi: 20 }, accumulate: true, beta: 0.5 },
    { M: 33, N: 13, K: 50, aBand: { lo: -5, hi: 8 } },
    { M: 64, N: 64, K: 32, transB: true, cUpper: 0, alpha: 0.125 },
    { M: 70, N: 81, K: 12, transB: true, cUpper: 10, cOffset: 3, ldc: 90 },
  ];
  let seed = 700;
  for (const c of cases) {
    const err = await runCase(c, seed++);
    assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
  }
  // Tiles wholly beyond the band are really skipped (M 64 × N 600: 16-row tiles
  // of 128 columns from the cpu profile, 8×64 on a gpu one).
  assert((await runCase({ M: 64, N: 600, K: 8, transB: true, cUpper: 0 }, seed)) < 1e-6);
  assert(untouchedBeyondBand > 0, "no tile beyond the band was skipped");
  // The bands change nothing for the kernels' choice.
  assertEquals(matmulKernelKind({ M: 64, N: 64, K: 64, aBand: { hi: 0 } }), "vec4");
});

Deno.test("matmul: operands beyond maxStorageBufferBindingSize are split, never truncated", async () => {
  // 4 KiB bindings: every operand below is larger, so each product runs in pieces
  // (rows of C / A, rows of a transposed B, K slices that accumulate), and a
  // 3-workgroup limit per dimension spreads the grid over y and z.
  const limits = { maxStorageBufferBindingSize: 4096, maxComputeWorkgroupsPerDimension: 3 };
  const cases: Case[] = [
    { M: 40, N: 36, K: 24 },
    { M: 9, N: 100, K: 16, transB: true, bias: true },
    { M: 32, N: 12, K: 64, transA: true, accumulate: true, beta: 0.5 },
    { M: 8, N: 80, K: 40, bF16: true },
    { M: 30, N: 30, K: 30, transA: true, transB: true, bias: true },
    { M: 8, N: 8, K: 8, batch: { count: 20, strideA: 64, strideB: 64, strideC: 64 } },
    { M: 40, N: 36, K: 40, aBand: { hi: 0 }, cUpper: 0 },
    { M: 32, N: 12, K: 64, transA: true, aBand: { lo: 0 }, accumulate: true },
  ];
  bound.splice(0);
  let seed = 500;
  for (const c of cases) {
    const err = await runCase(c, seed++, limits);
    assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
  }
});

Deno.test("matmul: the shared-memory kernel on bands, f16 B, batches, offsets and splits", async () => {
  // The gpu profile's kernel in llvmpipe-sized workgroups (8×24 tiles, 16 K
  // steps staged per tile), on the vec4-eligible cases of the tests above.
  const cases: [Case, Partial<GPUSupportedLimits>?][] = [
    [{ M: 64, N: 32, K: 64, aBand: { hi: 0 } }],
    [{ M: 64, N: 32, K: 64, transA: true, aBand: { lo: 0 } }],
    [{ M: 36, N: 12, K: 44, transA: true, aBand: { lo: 3, hi: 20 }, accumulate: true, beta: 0.5 }],
    [{ M: 32, N: 12, K: 52, aBand: { lo: -5, hi: 8 } }],
    [{ M: 64, N: 64, K: 32, transB: true, cUpper: 0, alpha: 0.125 }],
    [{ M: 19, N: 36, K: 24, bF16: true, transB: true, bias: true }],
    [{ M: 5, N: 40, K: 20, bF16: true }],
    [{
      M: 8,
      N: 12,
      K: 4,
      transA: true,
      batch: { count: 3, strideA: 32, strideB: 0, strideC: 96 },
    }],
    [{ M: 20, N: 36, K: 12, transA: true, transB: true, bias: true, lda: 24, aOffset: 8 }],
    [{ M: 40, N: 36, K: 24 }, { maxStorageBufferBindingSize: 4096 }],
    [{ M: 32, N: 12, K: 64, transA: true, accumulate: true, beta: 0.5 }, {
      maxStorageBufferBindingSize: 4096,
    }],
  ];
  try {
    setMatmulProfile({ tm: 4, tn: 8, wgM: 2, wgN: 3, bk: 16, stageAll: true });
    let seed = 800;
    for (const [c, limits] of cases) {
      assertEquals(matmulKernelKind({ ...c, bias: undefined }), "vec4");
      bound.splice(0);
      const err = await runCase(c, seed++, limits);
      assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
    }
  } finally {
    setMatmulProfile(undefined);
  }
});

Deno.test("matmul: the texture kernel on every layout, f16 B, repacked strides, bands, splits", async () => {
  // The cpu profile's kernel for products and batches on a SplittablePass: both
  // operands copied into textures, read as storage textures. Leading dimensions that
  // are not 64 floats (128 halves) apart go through the repack first. Forced
  // on here, so a GPU (whose profile keeps it off) runs it too.
  const gpu = await getGpu();
  setMatmulProfile({ ...matmulProfile(gpu), textures: true });
  try {
    const cases: [Case, Partial<GPUSupportedLimits>?][] = [
      ...layouts.map(([, transA, transB]): [Case] => [{ M: 36, N: 44, K: 28, transA, transB }]),
      [{ M: 37, N: 68, K: 64, transB: true, bias: true, alpha: 0.5 }],
      [{ M: 64, N: 64, K: 128, accumulate: true, beta: 0.25 }],
      [{ M: 19, N: 36, K: 24, bF16: true, transB: true, bias: true }],
      [{ M: 5, N: 40, K: 20, bF16: true, bOffset: 4, ldb: 44 }],
      [{ M: 3, N: 256, K: 64, bF16: true, transB: true }],
      [{ M: 20, N: 36, K: 64, lda: 128, aOffset: 64, ldc: 40, cOffset: 4 }],
      [{ M: 64, N: 32, K: 64, aBand: { hi: 0 } }],
      [{
        M: 36,
        N: 12,
        K: 44,
        transA: true,
        aBand: { lo: 3, hi: 20 },
        accumulate: true,
        beta: 0.5,
      }],
      [{ M: 64, N: 64, K: 32, transB: true, cUpper: 0, alpha: 0.125 }],
      [{ M: 40, N: 36, K: 24 }, { maxStorageBufferBindingSize: 4096 }],
      // Strided batches: a layer per entry, a shared B (stride 0) in one layer;
      // rows 256 bytes apart copied in place, others repacked layer by layer.
      [{ M: 20, N: 24, K: 64, batch: { count: 3, strideA: 1400, strideB: 0, strideC: 500 } }],
      [{
        M: 24,
        N: 36,
        K: 16,
        transB: true,
        lda: 64,
        batch: { count: 2, strideA: 1600, strideB: 600, strideC: 900 },
      }],
      [{
        M: 32,
        N: 32,
        K: 32,
        transB: true,
        bF16: true,
        cUpper: 0,
        batch: { count: 4, strideA: 1024, strideB: 1028, strideC: 1024 },
      }],
      [{
        M: 32,
        N: 8,
        K: 32,
        aBand: { lo: -31, hi: 0 },
        accumulate: true,
        beta: 1,
        batch: { count: 2, strideA: 1024, strideB: 256, strideC: 256 },
      }],
      [{ M: 12, N: 16, K: 8, batch: { count: 5, strideA: 96, strideB: 128, strideC: 192 } }, {
        maxStorageBufferBindingSize: 2048,
      }],
    ];
    let seed = 900;
    for (const [c, limits] of cases) {
      // (Split products: the pieces take it, not the whole.)
      if (!limits) {
        const kind = matmulKernelKind({ ...c, bias: undefined }, gpu);
        assertEquals(kind, "texture", JSON.stringify(c));
      }
      bound.splice(0);
      const err = await runCase(c, seed++, limits, true);
      assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
    }
    // What it does not take: operands larger than a texture (a texel holds
    // four values of a row: 128 fit in 32 texels, 132 do not), more batch
    // entries than layers.
    const batch = { count: 3, strideA: 64, strideB: 0, strideC: 64 };
    const layers2 = withLimits(gpu, { maxTextureArrayLayers: 2 });
    assertEquals(matmulKernelKind({ M: 8, N: 8, K: 8, batch }, layers2), "vec4");
    assertEquals(
      matmulKernelKind({ M: 8, N: 8, K: 8, batch: { ...batch, count: 2 } }, layers2),
      "texture",
    );
    const small = withLimits(gpu, { maxTextureDimension2D: 32 });
    assertEquals(matmulKernelKind({ M: 8, N: 8, K: 128, transB: true }, small), "texture");
    assertEquals(matmulKernelKind({ M: 8, N: 8, K: 132, transB: true }, small), "vec4");
    assertEquals(matmulKernelKind({ M: 8, N: 8, K: 36 }), "vec4"); // a plain pass
    // On a plain pass the same products take the storage kernels.
    for (const [c] of cases.slice(0, 4)) {
      const err = await runCase(c, seed++);
      assert(err < 1e-6, `${JSON.stringify(c)} (plain pass): relative error ${err}`);
    }
  } finally {
    setMatmulProfile(undefined);
  }
});

Deno.test("matmul: reductions longer than the CPU drivers' loop limit are split along K", async () => {
  // K past what one invocation may walk (lib/gpu/loop_budget.ts) for each kernel:
  // the scalar kernel one step per iteration, the vec4 and texture kernels four,
  // the staged kernel bk per tile plus its inner and staging loops.
  let seed = 900;
  for (const c of [{ M: 3, N: 5, K: 70001 }, { M: 4, N: 8, K: 270000, transB: true }]) {
    const err = await runCase(c, seed++, undefined, true);
    assert(err < 1e-6, `${JSON.stringify(c)}: relative error ${err}`);
  }
  try {
    setMatmulProfile({ tm: 4, tn: 8, wgM: 2, wgN: 3, bk: 16, stageAll: true });
    const c = { M: 8, N: 8, K: 100000, transB: true };
    const err = await runCase(c, seed++);
    assert(err < 1e-6, `staged ${JSON.stringify(c)}: relative error ${err}`);
  } finally {
    setMatmulProfile(undefined);
  }
});
