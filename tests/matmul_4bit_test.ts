/**
 * The 4-bit matmul (lib/gpu/kernels/matmul_4bit.ts) against the CPU
 * reference on the dequantized weight: forward nt (x·Wᵀ) and input gradient
 * nn (dy·W), NF4 and FP4, with and without double quantization, odd shapes
 * (the scalar kernel), offsets and leading dimensions, the epilogue, both
 * tile profiles, reductions past the CPU drivers' loop limit and operands
 * past the binding limit.
 */
import { ok as assert } from "node:assert";
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import { readF32, uniforms, upload } from "../lib/gpu/runtime.ts";
import {
  DEFAULT_4BIT_PROFILES,
  encodeMatmul4bit,
  type Matmul4bitArgs,
  matmul4bitKernelKind,
  matmul4bitRef,
  setMatmul4bitProfile,
} from "../lib/gpu/kernels/matmul_4bit.ts";
import {
  dequantize4bit,
  destroyQuant4,
  type Quant4Type,
  quantize4bit,
  uploadQuant4,
} from "../lib/model/quant/mod.ts";
import { rand, relErr, withLimits } from "./test_util.ts";

interface Case {
  M: number;
  N: number;
  K: number;
  transW: boolean;
  type?: Quant4Type;
  doubleQuant?: boolean;
  /** Rows of the stored W before the slice, and its row width (default: the slice's). */
  wRowsBefore?: number;
  ldw?: number;
  aOffset?: number;
  lda?: number;
  cOffset?: number;
  ldc?: number;
  alpha?: number;
  accumulate?: boolean;
  beta?: number;
  bias?: boolean;
  biasOffset?: number;
}

/** Run one case; the worst error relative to the largest expected magnitude. */
async function run(c: Case, seed: number, gpuIn?: Gpu): Promise<number> {
  const gpu = gpuIn ?? await getGpu();
  const rowsW = c.transW ? c.N : c.K, widthW = c.transW ? c.K : c.N;
  const ldw = c.ldw ?? widthW;
  const before = c.wRowsBefore ?? 0;
  // The stored tensor holds `before` rows, the slice, and one more row (a slice in the middle).
  const wRows = before + rowsW + (c.wRowsBefore ? 1 : 0);
  const wValues = rand(wRows * ldw, seed, 0.05);
  const q = quantize4bit(wValues, [wRows, ldw], {
    type: c.type ?? "nf4",
    doubleQuant: c.doubleQuant,
  });
  const wDeq = dequantize4bit(q);
  const lda = c.lda ?? c.K, ldc = c.ldc ?? c.N;
  const aOff = c.aOffset ?? 0, cOff = c.cOffset ?? 0;
  const a = rand(aOff + (c.M - 1) * lda + c.K, seed + 1);
  const cInit = rand(cOff + (c.M - 1) * ldc + c.N, seed + 2);
  const biasOff = c.biasOffset ?? 0;
  const bias = c.bias ? rand(biasOff + c.N, seed + 3) : undefined;
  const args: Omit<Matmul4bitArgs, "a" | "w" | "c"> = {
    M: c.M,
    N: c.N,
    K: c.K,
    transW: c.transW,
    wOffset: before * ldw,
    ldw,
    aOffset: aOff,
    lda,
    cOffset: cOff,
    ldc,
    alpha: c.alpha,
    accumulate: c.accumulate,
    beta: c.beta,
    biasOffset: biasOff,
  };
  const want = cInit.slice();
  matmul4bitRef(a, wDeq, want, args, bias);

  const w = uploadQuant4(gpu, q, "test-w");
  const aBuf = upload(gpu, a), cBuf = upload(gpu, cInit);
  const bBuf = bias ? upload(gpu, bias) : undefined;
  gpu.device.pushErrorScope("validation");
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encodeMatmul4bit(gpu, pass, { ...args, a: aBuf, w, c: cBuf, bias: bBuf });
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  uniforms(gpu).reset();
  const err = await gpu.device.popErrorScope();
  if (err) throw new Error(err.message);
  const got = await readF32(gpu, cBuf);
  for (const b of [aBuf, cBuf, bBuf]) b?.destroy();
  destroyQuant4(w);
  // Outside the product's rows and columns C keeps its old values.
  for (let i = 0; i < want.length; i++) {
    const m = Math.floor((i - cOff) / ldc), n = (i - cOff) % ldc;
    const inside = i >= cOff && m < c.M && n < c.N;
    if (!inside && got[i] !== cInit[i]) throw new Error(`C[${i}] outside the product was written`);
  }
  return relErr(got, want);
}

const kind = ({ bias: _bias, ...c }: Case) =>
  matmul4bitKernelKind({
    ...c,
    wOffset: (c.wRowsBefore ?? 0) * (c.ldw ?? (c.transW ? c.K : c.N)),
  });

Deno.test("matmul4bit: forward nt and input gradient nn, NF4 and FP4, word and scalar kernels", async () => {
  const cases: Case[] = [
    { M: 37, N: 29, K: 200, transW: true }, // word: K % 8 = 0
    { M: 37, N: 29, K: 203, transW: true, type: "fp4" }, // scalar: K odd
    { M: 19, N: 96, K: 72, transW: false }, // word: N % 8 = 0, K % 4 = 0
    { M: 19, N: 90, K: 75, transW: false, type: "fp4" }, // scalar
    { M: 5, N: 8, K: 8, transW: false }, // one word per row
    { M: 1, N: 3, K: 1, transW: true },
  ];
  let seed = 100;
  for (const c of cases) {
    const err = await run(c, seed++);
    assert(err < 1e-5, `${JSON.stringify(c)} (${kind(c)}): relative error ${err}`);
  }
  assert(cases.some((c) => kind(c) === "word") && cases.some((c) => kind(c) === "scalar"));
});

Deno.test("matmul4bit: double quantization (blocks past 256, rows straddling blocks)", async () => {
  // 130 × 136 = 17,680 values: 277 blocks of 64, two nested blocks of 256; rows of 136 or 72
  // values do not end on block boundaries.
  const cases: Case[] = [
    { M: 21, N: 130, K: 136, transW: true, doubleQuant: true },
    { M: 21, N: 136, K: 130, transW: false, doubleQuant: true, type: "fp4" },
    { M: 9, N: 130, K: 135, transW: true, doubleQuant: true }, // scalar
    { M: 9, N: 72, K: 250, transW: false, doubleQuant: true, type: "fp4" },
  ];
  let seed = 200;
  for (const c of cases) {
    const err = await run(c, seed++);
    assert(err < 1e-5, `${JSON.stringify(c)} (${kind(c)}): relative error ${err}`);
  }
});

Deno.test("matmul4bit: slices of W, A and C; alpha, accumulate with beta, bias", async () => {
  const cases: Case[] = [
    // A slice of rows of a bigger weight (wOffset), wider rows (ldw), offsets into A and C.
    {
      M: 13,
      N: 24,
      K: 64,
      transW: true,
      wRowsBefore: 5,
      ldw: 96,
      aOffset: 8,
      lda: 72,
      cOffset: 3,
      ldc: 31,
      bias: true,
      biasOffset: 5,
    },
    {
      M: 13,
      N: 40,
      K: 24,
      transW: false,
      wRowsBefore: 3,
      ldw: 48,
      aOffset: 4,
      lda: 28,
      cOffset: 7,
      ldc: 45,
      accumulate: true,
      beta: 0.5,
      alpha: 2,
      doubleQuant: true,
    },
    // Unaligned slices take the scalar kernel.
    {
      M: 7,
      N: 11,
      K: 20,
      transW: true,
      wRowsBefore: 2,
      ldw: 21,
      aOffset: 1,
      lda: 23,
      accumulate: true,
      bias: true,
      type: "fp4",
    },
    { M: 6, N: 12, K: 9, transW: false, wRowsBefore: 1, ldw: 13, alpha: -1.5, bias: true },
  ];
  let seed = 300;
  for (const c of cases) {
    const err = await run(c, seed++);
    assert(err < 1e-5, `${JSON.stringify(c)} (${kind(c)}): relative error ${err}`);
  }
  assert(kind(cases[0]) === "word" && kind(cases[1]) === "word" && kind(cases[2]) === "scalar");
});

Deno.test("matmul4bit: the gpu profile's tiles and other tiles give the same results", async () => {
  const cases: Case[] = [
    { M: 37, N: 29, K: 200, transW: true, bias: true },
    { M: 19, N: 96, K: 72, transW: false, doubleQuant: true, accumulate: true },
  ];
  let seed = 400;
  // The gpu profile in a small workgroup (llvmpipe builds it fast), and a wide tile.
  for (
    const p of [{ ...DEFAULT_4BIT_PROFILES.gpu, wgM: 2, wgN: 4 }, { tm: 3, tn: 24, wgM: 2, wgN: 2 }]
  ) {
    try {
      setMatmul4bitProfile(p);
      for (const c of cases) {
        const err = await run(c, seed++);
        assert(err < 1e-5, `${JSON.stringify(p)} ${JSON.stringify(c)}: relative error ${err}`);
      }
    } finally {
      setMatmul4bitProfile(undefined);
    }
  }
});

Deno.test("matmul4bit: reductions past the CPU drivers' loop limit are split along K", async () => {
  // The word kernel walks 8 K steps per iteration for nt and 4 for nn, the scalar one 1:
  // each case would take its kernel past the drivers' 65,535 iterations in one dispatch
  // (silently cut short on llvmpipe) and must be split.
  const cases: Case[] = [
    { M: 2, N: 8, K: 8 * 70000, transW: true },
    { M: 3, N: 8, K: 4 * 70000, transW: false, doubleQuant: true },
    { M: 2, N: 3, K: 70001, transW: true, type: "fp4" },
  ];
  let seed = 500;
  for (const c of cases) {
    // f32 sums of 10^5 terms: rounding alone reaches ~1e-5 of the result (unsplit: 0.2).
    const err = await run(c, seed++);
    assert(err < 1e-4, `${JSON.stringify(c)} (${kind(c)}): relative error ${err}`);
  }
});

Deno.test("matmul4bit: operands beyond maxStorageBufferBindingSize are split, never truncated", async () => {
  // 4 KiB bindings: W (packed and scales), A and C all exceed it; 3 workgroups per dimension.
  const gpu = withLimits(await getGpu(), {
    maxStorageBufferBindingSize: 4096,
    maxComputeWorkgroupsPerDimension: 3,
  });
  const cases: Case[] = [
    { M: 20, N: 100, K: 160, transW: true, bias: true },
    { M: 20, N: 96, K: 160, transW: false, doubleQuant: true },
    { M: 20, N: 45, K: 150, transW: false, type: "fp4", accumulate: true },
    { M: 30, N: 60, K: 101, transW: true, doubleQuant: true },
  ];
  let seed = 600;
  for (const c of cases) {
    const err = await run(c, seed++, gpu);
    assert(err < 1e-5, `${JSON.stringify(c)} (${kind(c)}): relative error ${err}`);
  }
});
