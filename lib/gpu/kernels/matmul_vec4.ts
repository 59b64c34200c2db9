/**
 * The fast matmul kernel, for operands whose contiguous dimensions, leading
 * dimensions, offsets and batch strides are all multiples of 4 (every shape
 * of the model's linears): everything is read and written as vec4 (an f16 B
 * as vec2<u32>, four halves), K is walked four steps at a time.
 *
 * Why this shape on llvmpipe: each invocation is one SIMD lane, so a vec4 in
 * the shader is four scalar registers and costs nothing to transpose, while
 * each load instruction costs far more than an FMA. Per four K steps an
 * invocation loads tm vec4 of A and tn vec4 of B and does 4·tm·tn FMAs: with
 * 32×32 (the large cpu tile) that is 64 loads for 4096 FMAs. A values are uniform across the
 * workgroup (all lanes share the rows), B values are per lane (its columns).
 *
 * Operand layouts, all read with vec4 loads:
 *   A row-major [M,K]: row i, k..k+3         A transposed [K,M]: row k+q, m..m+3
 *   B row-major [K,N]: row k+q, n..n+3       B transposed [N,K]: row n, k..k+3
 * With `images` (the texture kernel, ./matmul_texture.ts) the same loads read
 * texels of read-only storage texture arrays the operands were copied into,
 * one texel per vec4 at (column / 4, row) of the stored matrix, one layer per
 * batch entry; otherwise the storage buffers. Reference: `matmulRef` in ./matmul.ts.
 */
import type { MatmulProfile } from "./matmul_profile.ts";
import { MATMUL_UNIFORMS, tileOrigin } from "./matmul_wgsl.ts";

/**
 * What the store does besides alpha·acc, fixed per pipeline: on llvmpipe a
 * branch on a uniform flag still runs as a masked region, and guarding every
 * vec4 of a 16×32 tile with two more of them made LLVM take 20–26 s per
 * pipeline instead of 3–4 s.
 */
export interface MatmulEpilogue {
  /** C = alpha·acc + beta·C. */
  accumulate: boolean;
  /** + bias[n] (binding 4; absent from the shader otherwise). */
  bias: boolean;
}

export function matmulVec4Shader(
  prof: MatmulProfile,
  transA: boolean,
  transB: boolean,
  bF16: boolean,
  epilogue: MatmulEpilogue = { accumulate: false, bias: false },
  /** Operands read from textures: both (the texture kernel), only B (a kept weight), or none. */
  images: boolean | "b" = false,
  f16Loads = false,
): string {
  const { tm, tn, wgM, wgN } = prof;
  if (tm % 4 !== 0 && transA) throw new Error("matmul vec4: tm must be a multiple of 4 for transA");
  const tn4 = tn / 4;
  const aImage = images === true, bImage = images !== false;
  const L: string[] = [];
  L.push(
    `${
      aImage
        ? imageBindings(bF16, epilogue)
        : bImage
        ? imageBBindings(bF16, epilogue)
        : vec4Bindings(bF16, epilogue, f16Loads)
    }

@compute @workgroup_size(${wgM * wgN})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
${vec4Origin(prof)}`,
  );
  // Per-row / per-column bases, clamped so edge lanes read valid (duplicate)
  // data; their results are dropped at the store. In a buffer a base is the
  // vec4 index the moving part (along K) is added to; in an image it is the
  // fixed coordinate, the moving part the other one.
  const aRow = aImage ? "" : "aBase + ", aLd = aImage ? "" : " * lda4";
  const bRow = bImage ? "" : "bBase + ", bLd = bImage ? "" : " * ldb4";
  if (!transA) {
    for (let i = 0; i < tm; i++) L.push(`  let ra${i} = ${aRow}min(m0 + ${i}u, lastM)${aLd};`);
  } else {
    for (let p = 0; p < tm / 4; p++) {
      L.push(`  let ra${p} = ${aRow}min(m0 / 4u + ${p}u, lastM / 4u);`);
    }
  }
  if (transB) {
    for (let j = 0; j < tn; j++) L.push(`  let rb${j} = ${bRow}min(n0 + ${j}u, lastN)${bLd};`);
  } else {
    for (let p = 0; p < tn4; p++) {
      L.push(`  let rb${p} = ${bRow}min(n0 / 4u + ${p}u, lastN / 4u);`);
    }
  }
  // The vec4 of operand X at a base and a moving part; the moving part runs
  // along a stored row (x) for a row-major A and a transposed B.
  const load = (x: "A" | "B", base: string, moving: string, alongRow: boolean) => {
    if (x === "A" && !aImage) return `A[${base} + ${moving}]`;
    if (x === "B" && !bImage) return `ldB(${base} + ${moving})`;
    const xy = alongRow ? `${moving}, ${base}` : `${base}, ${moving}`;
    return `textureLoad(${x}, vec2u(${xy}), lay${x})`;
  };
  // A batch entry's layer; an operand shared by the batch (stride 0) has one.
  if (aImage) L.push(`  let layA = select(0u, bat, u.sA != 0u);`);
  if (bImage) L.push(`  let layB = select(0u, bat, u.sB != 0u);`);
  for (let i = 0; i < tm; i++) {
    for (let j = 0; j < tn4; j++) L.push(`  var acc${i}_${j} = vec4f(0.0);`);
  }
  // kLo..kHi within K, a multiple of 4 here: whole vec4 steps cover the band.
  L.push(`  for (var k4 = kLo / 4u; k4 < (kHi + 3u) / 4u; k4++) {`);
  // A(i, q): the A value of row i at k = 4·k4 + q.
  let aVal: (i: number, q: number) => string;
  if (!transA) {
    for (let i = 0; i < tm; i++) L.push(`    let a${i} = ${load("A", `ra${i}`, "k4", true)};`);
    aVal = (i, q) => `a${i}.${"xyzw"[q]}`;
  } else {
    for (let q = 0; q < 4; q++) {
      L.push(`    let ka${q} = (k4 * 4u + ${q}u)${aLd};`);
      for (let p = 0; p < tm / 4; p++) {
        L.push(`    let a${q}_${p} = ${load("A", `ra${p}`, `ka${q}`, false)};`);
      }
    }
    aVal = (i, q) => `a${q}_${i >> 2}.${"xyzw"[i & 3]}`;
  }
  // Bv(q, j): the vec4 of B at k = 4·k4 + q, columns n0 + 4j .. n0 + 4j + 3.
  let bVec: (q: number, j: number) => string;
  if (transB) {
    for (let j = 0; j < tn; j++) L.push(`    let b${j} = ${load("B", `rb${j}`, "k4", true)};`);
    bVec = (q, j) => {
      const c = "xyzw"[q];
      return `vec4f(b${4 * j}.${c}, b${4 * j + 1}.${c}, b${4 * j + 2}.${c}, b${4 * j + 3}.${c})`;
    };
  } else {
    for (let q = 0; q < 4; q++) {
      L.push(`    let kb${q} = (k4 * 4u + ${q}u)${bLd};`);
      for (let p = 0; p < tn4; p++) {
        L.push(`    let b${q}_${p} = ${load("B", `rb${p}`, `kb${q}`, false)};`);
      }
    }
    bVec = (q, j) => `b${q}_${j}`;
  }
  for (let q = 0; q < 4; q++) {
    if (transB) {
      for (let j = 0; j < tn4; j++) L.push(`    let bv${q}_${j} = ${bVec(q, j)};`);
    }
    for (let i = 0; i < tm; i++) {
      for (let j = 0; j < tn4; j++) {
        const bv = transB ? `bv${q}_${j}` : bVec(q, j);
        L.push(`    acc${i}_${j} = fma(vec4f(${aVal(i, q)}), ${bv}, acc${i}_${j});`);
      }
    }
  }
  L.push(`  }`);
  L.push(vec4Store(tm, tn, epilogue), `}`);
  return L.join("\n");
}

/**
 * Declarations of the vec4 kernels (this one and ./matmul_shared.ts): uniforms, operands, `ldB`.
 * An f16 B is read as vec4<f16> with `f16Loads` (the device's shader-f16), else as two u32
 * each unpacked into two halves; both give the same f32 values.
 */
export function vec4Bindings(bF16: boolean, epilogue: MatmulEpilogue, f16Loads = false): string {
  const h = bF16 && f16Loads;
  return `${h ? "enable f16;\n" : ""}${MATMUL_UNIFORMS}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> A: array<vec4f>;
@group(0) @binding(2) var<storage, read> B: array<${h ? "vec4<f16>" : bF16 ? "vec2u" : "vec4f"}>;
@group(0) @binding(3) var<storage, read_write> C: array<vec4f>;
${epilogue.bias ? "@group(0) @binding(4) var<storage, read> bias: array<vec4f>;" : ""}
${
    h
      ? "fn ldB(i: u32) -> vec4f { return vec4f(B[i]); }"
      : bF16
      ? "fn ldB(i: u32) -> vec4f { let w = B[i]; return vec4f(unpack2x16float(w.x), unpack2x16float(w.y)); }"
      : "fn ldB(i: u32) -> vec4f { return B[i]; }"
  }`;
}

/** Declarations of the image kernel: the vec4 kernel's with A and B in read-only storage textures. */
function imageBindings(bF16: boolean, epilogue: MatmulEpilogue): string {
  return `${MATMUL_UNIFORMS}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var A: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var B: texture_storage_2d_array<${
    bF16 ? "rgba16float" : "rgba32float"
  }, read>;
@group(0) @binding(3) var<storage, read_write> C: array<vec4f>;
${epilogue.bias ? "@group(0) @binding(4) var<storage, read> bias: array<vec4f>;" : ""}`;
}

/** Declarations of the kernel over a buffer A and a kept texture B (a decoder's small products). */
function imageBBindings(bF16: boolean, epilogue: MatmulEpilogue): string {
  return `${MATMUL_UNIFORMS}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> A: array<vec4f>;
@group(0) @binding(2) var B: texture_storage_2d_array<${
    bF16 ? "rgba16float" : "rgba32float"
  }, read>;
@group(0) @binding(3) var<storage, read_write> C: array<vec4f>;
${epilogue.bias ? "@group(0) @binding(4) var<storage, read> bias: array<vec4f>;" : ""}`;
}

/** The tile origin plus the operands' bases and strides in vec4 units. */
export function vec4Origin(prof: MatmulProfile): string {
  return `${tileOrigin(prof)}
  let aBase = (u.aOff + bat * u.sA) / 4u;
  let bBase = (u.bOff + bat * u.sB) / 4u;
  let lda4 = u.lda / 4u;
  let ldb4 = u.ldb / 4u;
  let lastM = u.M - 1u;
${vec4StoreOrigin()}`;
}

/** What `vec4Store` reads besides the accumulators: C's base and stride in vec4 units, the last column. */
export function vec4StoreOrigin(): string {
  return `  let cBase = (u.cOff + bat * u.sC) / 4u;
  let ldc4 = u.ldc / 4u;
  let lastN = u.N - 1u;`;
}

/**
 * The store of the invocation's tm×tn block (accumulators acc{i}_{j}, vec4 j
 * covering columns n0 + 4j..): C = alpha·acc (+ beta·C) (+ bias), rows and
 * columns past the edge dropped.
 */
export function vec4Store(tm: number, tn: number, epilogue: MatmulEpilogue): string {
  const tn4 = tn / 4;
  const L: string[] = [];
  if (epilogue.bias) {
    // Clamped like the loads: lanes past N read a valid vec4 and store nothing.
    L.push(`  let biasBase = u.biasOff / 4u;`);
    for (let j = 0; j < tn4; j++) {
      L.push(`  let bias${j} = bias[biasBase + min(n0 / 4u + ${j}u, lastN / 4u)];`);
    }
  }
  for (let j = 0; j < tn4; j++) L.push(`  let okN${j} = n0 + ${4 * j}u < u.N;`);
  for (let i = 0; i < tm; i++) {
    L.push(`  if (m0 + ${i}u < u.M) {
    let row = cBase + (m0 + ${i}u) * ldc4 + n0 / 4u;`);
    for (let j = 0; j < tn4; j++) {
      let v = `u.alpha * acc${i}_${j}`;
      if (epilogue.accumulate) v = `fma(vec4f(u.beta), C[row + ${j}u], ${v})`;
      if (epilogue.bias) v = `${v} + bias${j}`;
      L.push(`    if (okN${j}) { C[row + ${j}u] = ${v}; }`);
    }
    L.push(`  }`);
  }
  return L.join("\n");
}
