/**
 * The CPU adapter's matmul: both operands are copied into textures (r32float,
 * an f16 B into r16float) and read with `textureGather`, four values a call —
 * a 2×2 block of the stored matrix, two rows by two K steps.
 *
 * Why on llvmpipe: a storage-buffer load there is a loop over the SIMD lanes
 * with a bounds check, a branch, a scalar load and an insert per component,
 * while a texture fetch is built for all lanes at once. Measured on the same
 * machine: 2.0–2.5 CPU-ns per lane for a gather of four floats against 3.0–4.9
 * for a vec4 storage load, and this kernel 1.3–1.5× the vec4 one's GFLOP/s
 * at the same tiles (docs/engine.md). A `copyBufferToTexture` costs about 1 %
 * of a 1024×512×512 product; a compute kernel writing the textures costs
 * 15–20 ns per element, a third of the product, so copies it is. Copies
 * cannot be recorded inside a compute pass: the pass must be an
 * `InterruptiblePass` (a `SplittablePass`).
 *
 * Layouts need no transposing copy: a gather returns a 2×2 block whichever
 * way the matrix is stored, so each layout only changes which of its four
 * components is which (see `component`). Rows and columns past the edge of C
 * read clamped texels (the sampler's clamp-to-edge) and are dropped at the
 * store, like the vec4 kernel's clamped loads. The coordinates are the texel
 * corners (i + 1) / size, exact to far below half a texel up to 16384.
 */
import type { Gpu } from "../device.ts";
import {
  createBuffer,
  dispatch,
  getPipeline,
  type InterruptiblePass,
  packUniforms,
  uniforms,
} from "../runtime.ts";
import type { MatmulProfile } from "./matmul_profile.ts";
import { type MatmulEpilogue, vec4Store, vec4StoreOrigin } from "./matmul_vec4.ts";
import { MATMUL_UNIFORMS, tileOrigin } from "./matmul_wgsl.ts";

/** The stored operands of one product, as the copies see them. */
export interface TextureOperands {
  M: number;
  N: number;
  K: number;
  a: GPUBuffer;
  b: GPUBuffer;
  lda: number;
  ldb: number;
  aOff: number;
  bOff: number;
  transA: boolean;
  transB: boolean;
  bF16: boolean;
}

/** Width × height of the stored A and B (the texture sizes). */
function storedSizes(o: Omit<TextureOperands, "a" | "b">): [[number, number], [number, number]] {
  return [
    o.transA ? [o.M, o.K] : [o.K, o.M],
    o.transB ? [o.K, o.N] : [o.N, o.K],
  ];
}

/** A copy's rows must start a multiple of this many bytes apart. */
const ROW_ALIGN = 256;
const padded = (bytes: number) => Math.ceil(bytes / ROW_ALIGN) * ROW_ALIGN;

/**
 * Whether the texture kernel can take these operands (already aligned to 4
 * for the vec4 kernel): each stored matrix must fit in a texture, and one
 * whose rows are not 256 bytes apart is first repacked into a scratch buffer
 * that must fit in a binding.
 */
export function texturesFit(gpu: Gpu, o: Omit<TextureOperands, "a" | "b">): boolean {
  const max = gpu.limits.maxTextureDimension2D;
  const bind = gpu.limits.maxStorageBufferBindingSize;
  const [[wa, ha], [wb, hb]] = storedSizes(o);
  const eb = o.bF16 ? 2 : 4;
  return Math.max(wa, ha, wb, hb) <= max && o.K % 4 === 0 &&
    ha * padded(wa * 4) <= bind && hb * padded(wb * eb) <= bind;
}

const textures = new WeakMap<GPUDevice, Map<string, GPUTexture>>();

/**
 * A texture per operand slot and size, kept for the next product of that
 * size: copies and reads are ordered on the encoder, so one texture serves
 * every product of a step in turn.
 */
function operandTexture(
  gpu: Gpu,
  slot: "a" | "b",
  format: GPUTextureFormat,
  [w, h]: [number, number],
): GPUTexture {
  let m = textures.get(gpu.device);
  if (!m) textures.set(gpu.device, m = new Map());
  const key = `${slot} ${format} ${w}x${h}`;
  let t = m.get(key);
  if (!t) {
    t = gpu.device.createTexture({
      size: [w, h],
      format,
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
      label: `matmul-${key}`,
    });
    m.set(key, t);
  }
  return t;
}

/**
 * Copy A and B into their textures (the pass is interrupted for it; an
 * operand whose rows are not 256 bytes apart is repacked first); their views
 * to bind.
 */
export function copyOperands(
  gpu: Gpu,
  pass: InterruptiblePass,
  o: TextureOperands,
): [GPUTextureView, GPUTextureView] {
  const [sa, sb] = storedSizes(o);
  const ta = operandTexture(gpu, "a", "r32float", sa);
  const tb = operandTexture(gpu, "b", o.bF16 ? "r16float" : "r32float", sb);
  const srcA = copySource(gpu, pass, "a", o.a, o.aOff, o.lda, sa, 4);
  const srcB = copySource(gpu, pass, "b", o.b, o.bOff, o.ldb, sb, o.bF16 ? 2 : 4);
  pass.interrupt((enc) => {
    enc.copyBufferToTexture(srcA, { texture: ta }, sa);
    enc.copyBufferToTexture(srcB, { texture: tb }, sb);
  });
  return [ta.createView(), tb.createView()];
}

/**
 * Where a copy reads a stored operand (`off`, `ld` in elements of `eb`
 * bytes): in place when its rows are 256 bytes apart, else from a scratch
 * buffer the rows are first copied into at that stride, eight bytes an
 * invocation (widths, offsets and strides are multiples of 4 elements here).
 * Not `encodeCopy2d`: it computes alpha·x in f32, which would flush the
 * denormal bit patterns two packed halves can form, and binds whole buffers
 * where this binds the operand's range.
 */
function copySource(
  gpu: Gpu,
  pass: InterruptiblePass,
  slot: "a" | "b",
  buffer: GPUBuffer,
  off: number,
  ld: number,
  [width, rows]: [number, number],
  eb: number,
): GPUTexelCopyBufferInfo {
  if ((ld * eb) % ROW_ALIGN === 0) return { buffer, offset: off * eb, bytesPerRow: ld * eb };
  const rowBytes = padded(width * eb);
  const dst = scratchBuffer(gpu, slot, rows * rowBytes);
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const start = off * eb, end = start + ((rows - 1) * ld + width) * eb;
  const offset = Math.floor(start / align) * align;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: rows },
    { u: (width * eb) / 8 },
    { u: (start - offset) / 8 },
    { u: (ld * eb) / 8 },
    { u: rowBytes / 8 },
  ]));
  const pipeline = getPipeline(gpu, REPACK);
  const src = { buffer, offset, size: Math.ceil((end - offset) / 8) * 8 };
  dispatch(gpu, pass, pipeline, [u, src, dst], [Math.ceil((width * eb) / 8 / 64), rows]);
  return { buffer: dst, offset: 0, bytesPerRow: rowBytes };
}

const REPACK = `struct P { rows: u32, units: u32, src0: u32, srcLd: u32, dstLd: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<vec2u>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec2u>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x < p.units && g.y < p.rows) {
    dst[g.y * p.dstLd + g.x] = src[p.src0 + g.y * p.srcLd + g.x];
  }
}`;

const scratch = new WeakMap<GPUDevice, Map<string, GPUBuffer>>();
/** A scratch buffer per operand slot and size, kept like the textures. */
function scratchBuffer(gpu: Gpu, slot: "a" | "b", bytes: number): GPUBuffer {
  let m = scratch.get(gpu.device);
  if (!m) scratch.set(gpu.device, m = new Map());
  const key = `${slot} ${bytes}`;
  let b = m.get(key);
  if (!b) m.set(key, b = createBuffer(gpu, bytes, `matmul-repack-${key}`));
  return b;
}

const samplers = new WeakMap<GPUDevice, GPUSampler>();
/** The sampler a gather needs (its filter is unused; edges clamp). */
export function gatherSampler(gpu: Gpu): GPUSampler {
  let s = samplers.get(gpu.device);
  if (!s) samplers.set(gpu.device, s = gpu.device.createSampler({ label: "matmul-gather" }));
  return s;
}

/**
 * The pipeline for a layout, tiles and epilogue. The layout is explicit: an
 * r32float texture is not filterable, which an inferred layout would demand.
 */
export function textureMatmulPipeline(
  gpu: Gpu,
  prof: MatmulProfile,
  transA: boolean,
  transB: boolean,
  epilogue: MatmulEpilogue,
): GPUComputePipeline {
  const d = gpu.device;
  const visibility = GPUShaderStage.COMPUTE;
  const tex = { visibility, texture: { sampleType: "unfilterable-float" as const } };
  const entries: GPUBindGroupLayoutEntry[] = [
    { binding: 0, visibility, buffer: { type: "uniform" } },
    { binding: 1, ...tex },
    { binding: 2, ...tex },
    { binding: 3, visibility, sampler: { type: "non-filtering" } },
    { binding: 4, visibility, buffer: { type: "storage" } },
  ];
  if (epilogue.bias) {
    entries.push({ binding: 5, visibility, buffer: { type: "read-only-storage" } });
  }
  const layout = d.createPipelineLayout({
    bindGroupLayouts: [d.createBindGroupLayout({ entries })],
  });
  return getPipeline(gpu, matmulTextureShader(prof, transA, transB, epilogue), "main", layout);
}

/**
 * Which component of a gather holds the texel at (x0 + dx, y0 + dy): the
 * WGSL order is (0,1), (1,1), (1,0), (0,0).
 */
function component(dx: number, dy: number): string {
  return dy ? (dx ? "y" : "x") : (dx ? "z" : "w");
}

export function matmulTextureShader(
  prof: MatmulProfile,
  transA: boolean,
  transB: boolean,
  epilogue: MatmulEpilogue,
): string {
  const { tm, tn, wgM, wgN } = prof;
  if (tm % 2 !== 0) throw new Error("matmul texture: tm must be even");
  const tn4 = tn / 4;
  const L: string[] = [];
  L.push(`${MATMUL_UNIFORMS}
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var TA: texture_2d<f32>;
@group(0) @binding(2) var TB: texture_2d<f32>;
@group(0) @binding(3) var S: sampler;
@group(0) @binding(4) var<storage, read_write> C: array<vec4f>;
${epilogue.bias ? "@group(0) @binding(5) var<storage, read> bias: array<vec4f>;" : ""}

@compute @workgroup_size(${wgM * wgN})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
${tileOrigin(prof)}
${vec4StoreOrigin()}
  let iA = 1.0 / vec2f(textureDimensions(TA));
  let iB = 1.0 / vec2f(textureDimensions(TB));`);
  // The coordinate of a pair of rows (or columns) of C is fixed; that of a
  // pair of K steps moves with the loop. Stored along x: K for A unless
  // transA, K for B when transB.
  const aKx = !transA, bKx = transB;
  for (let r = 0; r < tm / 2; r++) {
    L.push(`  let ma${r} = f32(m0 + ${2 * r + 1}u) * iA.${aKx ? "y" : "x"};`);
  }
  for (let c = 0; c < tn / 2; c++) {
    L.push(`  let nb${c} = f32(n0 + ${2 * c + 1}u) * iB.${bKx ? "y" : "x"};`);
  }
  for (let i = 0; i < tm; i++) {
    for (let j = 0; j < tn4; j++) L.push(`  var acc${i}_${j} = vec4f(0.0);`);
  }
  // A band's range starts anywhere: whole steps of 4 cover it (op(A) is zero outside).
  L.push(`  for (var k = kLo - kLo % 4u; k < kHi; k += 4u) {`);
  for (let p = 0; p < 2; p++) {
    L.push(`    let ka${p} = f32(k + ${2 * p + 1}u) * iA.${aKx ? "x" : "y"};`);
    L.push(`    let kb${p} = f32(k + ${2 * p + 1}u) * iB.${bKx ? "x" : "y"};`);
    for (let r = 0; r < tm / 2; r++) {
      const xy = aKx ? `ka${p}, ma${r}` : `ma${r}, ka${p}`;
      L.push(`    let a${p}_${r} = textureGather(0, TA, S, vec2f(${xy}));`);
    }
    for (let c = 0; c < tn / 2; c++) {
      const xy = bKx ? `kb${p}, nb${c}` : `nb${c}, kb${p}`;
      L.push(`    let b${p}_${c} = textureGather(0, TB, S, vec2f(${xy}));`);
    }
  }
  // Row m0 + i at K step q (= 2p + s), and column n0 + n at K step q.
  const aVal = (i: number, q: number) => {
    const [p, s] = [q >> 1, q & 1];
    return `a${p}_${i >> 1}.${aKx ? component(s, i & 1) : component(i & 1, s)}`;
  };
  const bVal = (q: number, n: number) => {
    const [p, s] = [q >> 1, q & 1];
    return `b${p}_${n >> 1}.${bKx ? component(s, n & 1) : component(n & 1, s)}`;
  };
  for (let q = 0; q < 4; q++) {
    for (let j = 0; j < tn4; j++) {
      const cols = [0, 1, 2, 3].map((x) => bVal(q, 4 * j + x)).join(", ");
      L.push(`    let bv${q}_${j} = vec4f(${cols});`);
    }
    for (let i = 0; i < tm; i++) {
      for (let j = 0; j < tn4; j++) {
        L.push(`    acc${i}_${j} = fma(vec4f(${aVal(i, q)}), bv${q}_${j}, acc${i}_${j});`);
      }
    }
  }
  L.push(`  }`);
  L.push(vec4Store(tm, tn, epilogue), `}`);
  return L.join("\n");
}
