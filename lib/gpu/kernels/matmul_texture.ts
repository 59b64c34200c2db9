/**
 * The CPU adapter's operands: each product copies A and B into texture
 * arrays (rgba32float, an f16 B into rgba16float; a layer per batch entry),
 * which the vec4 kernel (./matmul_vec4.ts, `images`) reads as read-only
 * storage textures, four values a `textureLoad`, where it would read storage
 * buffers.
 *
 * Why on llvmpipe: a storage-buffer load there is a loop over the SIMD lanes
 * with a bounds check, a branch, a scalar load and an insert per component,
 * while an image load is built for all lanes at once (an address computed as
 * a vector and a hardware gather), with no call. Measured on the same machine
 * (docs/engine.md): 1.4 CPU-ns per lane for an rgba32float image load against
 * 3.0–4.9 for a vec4 storage load and 2.0–2.7 for a `textureGather` of four
 * floats from a sampled texture, and the whole matmul bench 1.15–1.2× the
 * gather kernel this one replaced. A `copyBufferToTexture` costs about 1 % of
 * a 1024×512×512 product; a compute kernel writing the textures costs 15–20 ns
 * per element, a third of the product, so copies it is. Copies cannot be
 * recorded inside a compute pass: the pass must be an `InterruptiblePass` (a
 * `SplittablePass`).
 *
 * A texel is four consecutive values of a stored row, the vec4 the kernel
 * would have loaded, so no layout needs a transposing copy. Rows and columns
 * past the edge of C read clamped (duplicate) texels and are dropped at the
 * store, as in the storage-buffer form.
 */
import type { Gpu } from "../device.ts";
import {
  createBuffer,
  dispatch,
  getPipeline,
  type InterruptiblePass,
  packUniforms,
  SplittablePass,
  UniformArena,
  uniforms,
  withUniforms,
} from "../runtime.ts";

/** The stored operands of one product (or strided batch), as the copies see them. */
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
  /** Batch entries, and the element strides between them (0: one matrix for all). */
  count: number;
  sA: number;
  sB: number;
}

/** A stored matrix: width (in elements) × height, and layers (one per batch entry, or one shared). */
interface Stored {
  width: number;
  rows: number;
  layers: number;
}

function stored(o: Omit<TextureOperands, "a" | "b">): [Stored, Stored] {
  const layers = (stride: number) => (stride === 0 ? 1 : o.count);
  return [
    { width: o.transA ? o.M : o.K, rows: o.transA ? o.K : o.M, layers: layers(o.sA) },
    { width: o.transB ? o.K : o.N, rows: o.transB ? o.N : o.K, layers: layers(o.sB) },
  ];
}

/** A copy's rows must start a multiple of this many bytes apart. */
const ROW_ALIGN = 256;
const padded = (bytes: number) => Math.ceil(bytes / ROW_ALIGN) * ROW_ALIGN;

/** The texture of a stored matrix: a texel holds four values of a row, a layer one batch entry. */
const extent = (s: Stored): [number, number, number] => [s.width / 4, s.rows, s.layers];
const pow2 = (x: number) => 2 ** Math.ceil(Math.log2(x));

/**
 * Whether the texture kernel can take these operands (aligned to 4 for the
 * vec4 kernel, so rows are whole texels): each stored matrix must fit in a
 * texture array, and one whose rows are not 256 bytes apart is first
 * repacked into a scratch buffer that must fit in a binding.
 */
export function texturesFit(gpu: Gpu, o: Omit<TextureOperands, "a" | "b">): boolean {
  const { maxTextureDimension2D: max, maxTextureArrayLayers: maxLayers } = gpu.limits;
  const bind = gpu.limits.maxStorageBufferBindingSize;
  const eb = [4, o.bF16 ? 2 : 4];
  return stored(o).every((s, i) =>
    Math.max(pow2(s.width / 4), pow2(s.rows)) <= max && s.layers <= maxLayers &&
    s.layers * s.rows * padded(s.width * eb[i]) <= bind
  );
}

/**
 * Bytes of the texture that holds a stored matrix of `width` × `rows` values
 * (× layers): sides rounded up to powers of two as `operandTexture` makes
 * them, a texel of four f32 (16 bytes) or four f16 (8). For the memory plan.
 */
export function operandTextureBytes(width: number, rows: number, layers = 1, f16 = false): number {
  return pow2(width / 4) * pow2(rows) * layers * (f16 ? 8 : 16);
}

const textures = new WeakMap<GPUDevice, Map<string, GPUTexture>>();

/**
 * A texture per operand slot and size, kept for the next product of that
 * size: copies and reads are ordered on the encoder, so one texture serves
 * every product of a step in turn. Its width and height are rounded up to
 * powers of two (the copy fills the top-left corner; the kernel reads no
 * further): llvmpipe compiles a variant of the shader per kind of bound image,
 * power-of-two or not among them, and Mesa's disk cache did not keep the
 * variants for other sizes, so a 768- or 1368-wide operand cost every process
 * a fresh 6–30 s build; with powers of two one variant serves every size.
 */
function operandTexture(
  gpu: Gpu,
  slot: "a" | "b",
  format: GPUTextureFormat,
  size: [number, number, number],
): GPUTexture {
  let m = textures.get(gpu.device);
  if (!m) textures.set(gpu.device, m = new Map());
  const [w, h, layers] = size;
  const key = `${slot} ${format} ${w}x${h}x${layers}`;
  let t = m.get(key);
  if (!t) {
    t = gpu.device.createTexture({
      size: [pow2(w), pow2(h), layers],
      format,
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      label: `matmul-${key}`,
    });
    m.set(key, t);
  }
  return t;
}

/**
 * Free the operand textures and repack buffers kept for the next product
 * (not the kept weight textures: releaseKeptTextures). Only between jobs
 * whose recorded steps are gone: a benchmark measuring each job's device
 * memory from a clean device.
 */
export function releaseOperandTextures(gpu: Gpu): void {
  for (const t of textures.get(gpu.device)?.values() ?? []) t.destroy();
  textures.delete(gpu.device);
  for (const b of scratch.get(gpu.device)?.values() ?? []) b.destroy();
  scratch.delete(gpu.device);
}

/** One view per texture, made once: a bind group over the same view is reused (../runtime.ts). */
const views = new WeakMap<GPUTexture, GPUTextureView>();
function arrayView(t: GPUTexture): GPUTextureView {
  let v = views.get(t);
  if (!v) views.set(t, v = t.createView({ dimension: "2d-array" }));
  return v;
}

/**
 * Textures of B operands that never change (frozen weights), kept from one
 * product to the next, by buffer and stored layout. A decoder's one-row
 * product reads its whole weight once per token, and copying the weight
 * into a texture each time cost as much again; kept, and read beside an A
 * read straight from its buffer (so the product interrupts no pass), a
 * token of the bench model took a third of the host CPU time
 * (docs/engine.md). Only the small products that ask for it keep a texture
 * (`keptOperandB`), within GLM_KEPT_TEXTURES_MB (default 256) per device;
 * beyond that they copy as the others do. `releaseKeptTextures` frees a
 * buffer's when it goes.
 */
const kept = new WeakMap<
  GPUDevice,
  { bytes: number; of: Map<GPUBuffer, Map<string, GPUTexture>> }
>();

function keptBudget(): number {
  const mb = Number(Deno.env.get("GLM_KEPT_TEXTURES_MB") ?? 256);
  return (Number.isFinite(mb) && mb >= 0 ? mb : 256) * 2 ** 20;
}

/** Free the kept textures of `buffers` (a model's weights, when the model is destroyed). */
export function releaseKeptTextures(gpu: Gpu, buffers: Iterable<GPUBuffer>): void {
  const k = kept.get(gpu.device);
  if (!k) return;
  for (const b of buffers) {
    for (const t of k.of.get(b)?.values() ?? []) {
      k.bytes -= operandTextureBytes(
        4 * t.width,
        t.height,
        t.depthOrArrayLayers,
        t.format === "rgba16float",
      );
      t.destroy();
    }
    k.of.delete(b);
  }
}

/**
 * B's kept texture, made and filled now (in a submit of its own, so a
 * recording of this product never repeats the copy) when it is not kept yet
 * and the budget allows; undefined otherwise.
 */
function keptTexture(gpu: Gpu, o: TextureOperands, sb: Stored): GPUTexture | undefined {
  if (o.sB !== 0 && o.count > 1) return undefined;
  let k = kept.get(gpu.device);
  if (!k) kept.set(gpu.device, k = { bytes: 0, of: new Map() });
  const key = `${o.bF16} ${o.bOff} ${o.ldb} ${sb.width}x${sb.rows}`;
  const mine = k.of.get(o.b);
  const hit = mine?.get(key);
  if (hit) return hit;
  const [w, h] = extent(sb);
  const bytes = operandTextureBytes(sb.width, sb.rows, 1, o.bF16);
  if (k.bytes + bytes > keptBudget()) return undefined;
  const t = gpu.device.createTexture({
    size: [pow2(w), pow2(h), 1],
    format: o.bF16 ? "rgba16float" : "rgba32float",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
    label: `matmul-kept-${o.b.label}`,
  });
  k.bytes += bytes;
  if (mine) mine.set(key, t);
  else k.of.set(o.b, new Map([[key, t]]));
  const arena = new UniformArena(gpu, 1, "kept-texture-uniforms");
  const enc = gpu.device.createCommandEncoder();
  const pass = new SplittablePass(enc);
  const copy = withUniforms(
    gpu,
    arena,
    () => copies(gpu, pass, "b", o.b, o.bOff, o.ldb, 0, sb, o.bF16 ? 2 : 4, t),
  );
  pass.end();
  copy(enc);
  gpu.device.queue.submit([enc.finish()]);
  arena.destroy();
  return t;
}

/**
 * The view of B's kept texture (see `kept`), for a product that reads A from
 * its buffer and B from the texture: no copy, no interrupted pass. Undefined
 * when B cannot be kept (a batch of B, or the budget spent).
 */
export function keptOperandB(gpu: Gpu, o: TextureOperands): GPUTextureView | undefined {
  const t = keptTexture(gpu, o, stored(o)[1]);
  return t && arrayView(t);
}

/**
 * Copy A and B into their textures (the pass is interrupted for it; an
 * operand whose rows are not 256 bytes apart is repacked first); their views
 * to bind, always as arrays (the kernel reads layer 0 of a shared operand).
 */
export function copyOperands(
  gpu: Gpu,
  pass: InterruptiblePass,
  o: TextureOperands,
): [GPUTextureView, GPUTextureView] {
  const [sa, sb] = stored(o);
  const ta = operandTexture(gpu, "a", "rgba32float", extent(sa));
  const tb = operandTexture(gpu, "b", o.bF16 ? "rgba16float" : "rgba32float", extent(sb));
  const copyA = copies(gpu, pass, "a", o.a, o.aOff, o.lda, o.sA, sa, 4, ta);
  const copyB = copies(gpu, pass, "b", o.b, o.bOff, o.ldb, o.sB, sb, o.bF16 ? 2 : 4, tb);
  pass.interrupt((enc) => {
    copyA(enc);
    copyB(enc);
  });
  return [arrayView(ta), arrayView(tb)];
}

/**
 * The copies of a stored operand (`off`, `ld`, `stride` in elements of `eb`
 * bytes) into its texture: from the buffer in place, a copy per layer, when
 * its rows are 256 bytes apart; else from a scratch buffer the rows of every
 * layer are first copied into at that stride (now, on the pass), eight bytes
 * an invocation (widths, offsets and strides are multiples of 4 elements
 * here), and then in one copy. Not `encodeCopy2d`: it computes alpha·x in f32,
 * which would flush the denormal bit patterns two packed halves can form, and
 * binds whole buffers where this binds the operand's range.
 */
function copies(
  gpu: Gpu,
  pass: InterruptiblePass,
  slot: "a" | "b",
  buffer: GPUBuffer,
  off: number,
  ld: number,
  stride: number,
  s: Stored,
  eb: number,
  texture: GPUTexture,
): (enc: GPUCommandEncoder) => void {
  const [w, rows, layers] = extent(s);
  if ((ld * eb) % ROW_ALIGN === 0) {
    return (enc) => {
      for (let z = 0; z < layers; z++) {
        const offset = (off + z * stride) * eb;
        enc.copyBufferToTexture({ buffer, offset, bytesPerRow: ld * eb }, {
          texture,
          origin: [0, 0, z],
        }, [w, rows, 1]);
      }
    };
  }
  const rowBytes = padded(s.width * eb);
  const dst = scratchBuffer(gpu, slot, layers * rows * rowBytes);
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const start = off * eb;
  const end = start + ((layers - 1) * stride + (rows - 1) * ld + s.width) * eb;
  const offset = Math.floor(start / align) * align;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: rows },
    { u: (s.width * eb) / 8 },
    { u: (start - offset) / 8 },
    { u: (ld * eb) / 8 },
    { u: rowBytes / 8 },
    { u: (stride * eb) / 8 },
    { u: (rows * rowBytes) / 8 },
  ]));
  const pipeline = getPipeline(gpu, REPACK);
  const src = { buffer, offset, size: Math.ceil((end - offset) / 8) * 8 };
  const units = (s.width * eb) / 8;
  dispatch(gpu, pass, pipeline, [u, src, dst], [Math.ceil(units / 64), rows, layers]);
  return (enc) =>
    enc.copyBufferToTexture(
      { buffer: dst, offset: 0, bytesPerRow: rowBytes, rowsPerImage: rows },
      { texture },
      [w, rows, layers],
    );
}

const REPACK =
  `struct P { rows: u32, units: u32, src0: u32, srcLd: u32, dstLd: u32, srcZ: u32, dstZ: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<vec2u>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec2u>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x < p.units && g.y < p.rows) {
    dst[g.z * p.dstZ + g.y * p.dstLd + g.x] = src[p.src0 + g.z * p.srcZ + g.y * p.srcLd + g.x];
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
