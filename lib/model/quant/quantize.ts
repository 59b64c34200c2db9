/**
 * bitsandbytes' 4-bit quantization on the host, bit for bit as its CUDA
 * kernels compute it (tools/bnb_quant.py is the NumPy reference; the rules
 * are in docs/qlora.md): a tensor is quantized flattened, in blocks of
 * `blocksize` (64) values, each block scaled by its absmax; two 4-bit codes
 * per byte, the first value in the high nibble; with double quantization the
 * absmax values, less their mean, are quantized again with the signed 8-bit
 * dynamic map in blocks of 256.
 *
 * The model quantizes each frozen linear weight once, when it loads
 * (`quantizeRaw` on the checkpoint's f16/bf16/f32 bytes, decoded a chunk at a
 * time; lib/model/upload.ts), and uploads the result as ./device.ts lays it
 * out.
 */
import { type DType, DTYPE_BYTES, toF32 } from "../../safetensors/dtype.ts";
import {
  dynamicMap,
  FP4_LEVEL_BITS,
  FP4_THRESHOLDS,
  NF4_THRESHOLDS,
  quant4Code,
  type Quant4Type,
  quant4Values,
  quant8Code,
} from "./codes.ts";

/** Block statistics after double quantization (bitsandbytes' QuantState.state2 and offset). */
export interface NestedAbsmax {
  /** 8-bit codes of absmax − offset, one per 4-bit block. */
  codes: Uint8Array;
  /** float32 absmax of those values per block of `blocksize` (256). */
  absmax: Float32Array;
  blocksize: number;
  /** float32 mean of the absmax values, added back after decoding. */
  offset: number;
  /** The 8-bit code book (the dynamic map). */
  code: Float32Array;
}

/** A tensor quantized to 4 bits, as bitsandbytes' quantize_4bit returns it. */
export interface Quant4Tensor {
  type: Quant4Type;
  /** The tensor's shape; quantization ran over its row-major flattening. */
  shape: number[];
  /** Number of values (the product of shape). */
  n: number;
  /** Values per block (64 for QLoRA). */
  blocksize: number;
  /** ⌈n / 2⌉ bytes: value 2i in the high nibble of byte i, value 2i + 1 in the low one. */
  packed: Uint8Array;
  /** float32 absmax per block (⌈n / blocksize⌉), when not double-quantized. */
  absmax?: Float32Array;
  /** The double-quantized absmax, when `doubleQuant`. */
  nested?: NestedAbsmax;
}

export interface Quant4Options {
  type: Quant4Type;
  /** Quantize the block absmax values too (bnb_4bit_use_double_quant / compress_statistics). */
  doubleQuant?: boolean;
  /** Values per block; bitsandbytes accepts 32..4096 (powers of two), QLoRA uses 64. */
  blocksize?: number;
}

const BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** Blocks of absmax values per second-level scale (bitsandbytes fixes 256 for 4-bit). */
export const NESTED_BLOCKSIZE = 256;

const f = Math.fround;

/** max |v| per block of `blocksize` (a short last block: over the values it has). */
function blockAbsmax(v: Float32Array, blocksize: number): Float32Array {
  const blocks = Math.ceil(v.length / blocksize);
  const out = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    let m = 0;
    const end = Math.min(v.length, (b + 1) * blocksize);
    for (let i = b * blocksize; i < end; i++) {
      const a = Math.abs(v[i]);
      if (a > m) m = a;
    }
    out[b] = m;
  }
  return out;
}

/** Quantize float32 values (an f16/bf16 weight decodes to them exactly) as bitsandbytes does. */
export function quantize4bit(
  values: Float32Array,
  shape: number[],
  opts: Quant4Options,
): Quant4Tensor {
  const n = values.length;
  const q = new Quantizer4(n, shape, opts);
  q.add(values);
  return q.finish();
}

/** Values decoded and quantized at a time by `quantizeRaw` (a multiple of every blocksize). */
export const RAW_CHUNK = 1 << 20;

/**
 * `quantize4bit` on a checkpoint tensor's raw bytes (F32, F16 or BF16,
 * little-endian), decoded a chunk of `chunk` values at a time (a multiple of
 * the blocksize) so that a 112 M-value weight never exists as f32 in memory
 * whole; the result is the same bytes whatever the chunk.
 */
export function quantizeRaw(
  bytes: Uint8Array,
  dtype: DType,
  shape: number[],
  opts: Quant4Options,
  chunk = RAW_CHUNK,
): Quant4Tensor {
  const width = DTYPE_BYTES[dtype];
  const n = bytes.length / width;
  const q = new Quantizer4(n, shape, opts);
  if (chunk % q.blocksize !== 0) {
    throw new Error(`quantizeRaw: chunk ${chunk} is not a multiple of the blocksize`);
  }
  for (let start = 0; start < n; start += chunk) {
    const end = Math.min(n, start + chunk);
    q.add(toF32(bytes.subarray(start * width, end * width), dtype));
  }
  return q.finish();
}

/**
 * bitsandbytes' kQuantizeBlockwise over a flat tensor fed in order, whole
 * blocks at a time: each block's absmax, the float32 reciprocal, each value
 * scaled by it and coded as the kernel's comparison tree codes it, two codes
 * per byte.
 */
class Quantizer4 {
  readonly blocksize: number;
  private readonly packed: Uint8Array;
  private readonly absmax: Float32Array;
  /** Values quantized so far. */
  private done = 0;

  constructor(private n: number, private shape: number[], private opts: Quant4Options) {
    if (shape.reduce((a, b) => a * b, 1) !== n) {
      throw new Error(`quantize4bit: shape [${shape}] does not hold ${n} values`);
    }
    this.blocksize = opts.blocksize ?? 64;
    if (!BLOCKSIZES.includes(this.blocksize)) {
      throw new Error(`quantize4bit: blocksize must be one of ${BLOCKSIZES.join(", ")}`);
    }
    this.packed = new Uint8Array(Math.ceil(n / 2));
    this.absmax = new Float32Array(Math.ceil(n / this.blocksize));
  }

  /** The next values of the tensor: whole blocks, or the tensor's last ones. */
  add(v: Float32Array): void {
    const bs = this.blocksize, n = this.n, first = this.done;
    if (first % bs !== 0 || (v.length % bs !== 0 && first + v.length !== n)) {
      throw new Error("quantize4bit: values must come in whole blocks");
    }
    const absmax = this.absmax;
    absmax.set(blockAbsmax(v, bs), first / bs);
    if (this.opts.type === "nf4") codeNf4(v, first, bs, absmax, this.packed);
    else codeFp4(v, first, bs, absmax, this.packed);
    this.done += v.length;
  }

  finish(): Quant4Tensor {
    if (this.done !== this.n) throw new Error("quantize4bit: not every value was given");
    const o = this.opts;
    const t: Quant4Tensor = {
      type: o.type,
      shape: [...this.shape],
      n: this.n,
      blocksize: this.blocksize,
      packed: this.packed,
    };
    if (o.doubleQuant) t.nested = quantizeAbsmax(this.absmax);
    else t.absmax = this.absmax;
    return t;
  }
}

/**
 * The comparison tree as a table: the codes' range is cut into CELLS equal
 * cells, none holding more than one pivot, so a value's rank is its cell's
 * rank plus one if it lies above the cell's pivot. The same answer as the
 * tree (the rank is the number of pivots below the value; ties and NaN go
 * low), without the tree's four unpredictable branches: a chatglm3-6b
 * weight's normalised values spread over every code, and the tree ran at
 * about 30 M values/s here, the table at about 80.
 *
 * A cell is found as ⌊(x + 1)·CELLS/2⌋ (NF4, on x in [−1, 1]) or ⌊|x|·CELLS⌋
 * (FP4's magnitude, in [0, 1]); CELLS/2 is a power of two, so the only
 * rounding is in x + 1, within 2^−53 of x, and no pivot lies that close to a
 * cell's edge (checked when the table is made). x is at most a few ulps past
 * 1 in magnitude (|v| ≤ absmax, times a float32 reciprocal): the last cell
 * takes it. A block whose reciprocal overflows (absmax below 2^−128) goes
 * through the tree.
 */
const CELLS = 256;

interface CellTable {
  rank: Uint8Array;
  pivot: Float64Array;
}

function cellTable(pivots: Float32Array, lo: number, width: number): CellTable {
  const rank = new Uint8Array(CELLS + 1), pivot = new Float64Array(CELLS + 1);
  for (let c = 0; c <= CELLS; c++) {
    const a = lo + (c * width) / CELLS, b = lo + ((c + 1) * width) / CELLS;
    const inside = [...pivots].filter((t) => t >= a && t < b);
    if (inside.length > 1 || [...pivots].some((t) => t !== a && Math.abs(t - a) < 1e-12)) {
      throw new Error("quantize: the code table needs finer cells");
    }
    rank[c] = pivots.filter((t) => a > t).length;
    pivot[c] = inside.length ? inside[0] : Infinity;
  }
  return { rank, pivot };
}

const NF4_CELLS = cellTable(NF4_THRESHOLDS, -1, 2);
const FP4_CELLS = cellTable(FP4_THRESHOLDS, 0, 1);

/**
 * The codes of values `v` (whole blocks from flat index `first`), two per
 * byte of `packed`: each scaled by its block's float32 reciprocal (the kernel
 * multiplies by it; 1 / 0 = ∞, so a block of zeros gives NaN codes, rank 0)
 * and coded. An odd count's missing last value is loaded as 0 and quantized
 * with the last block's scale. One function per code type: a coder passed as
 * a value was several times slower.
 */
function codeNf4(
  v: Float32Array,
  first: number,
  bs: number,
  absmax: Float32Array,
  packed: Uint8Array,
): void {
  const { rank, pivot } = NF4_CELLS, half = CELLS / 2;
  for (let s = 0; s < v.length; s += bs) {
    const e = Math.min(v.length, s + bs);
    const inv = f(1 / absmax[(first + s) / bs]);
    const tree = inv === Infinity && absmax[(first + s) / bs] !== 0;
    for (let i = s; i < e + (e - s) % 2; i++) {
      const x = f((i < e ? v[i] : 0) * inv);
      let q: number;
      if (tree) q = quant4Code(x, "nf4");
      else {
        const c = ((x + 1) * half) | 0;
        q = rank[c] + (x > pivot[c] ? 1 : 0);
      }
      const at = (first + i) >> 1;
      packed[at] = (i & 1) === 0 ? q << 4 : packed[at] | q;
    }
  }
}

/** codeNf4 for FP4: the sign bit, and the level of |x|. */
function codeFp4(
  v: Float32Array,
  first: number,
  bs: number,
  absmax: Float32Array,
  packed: Uint8Array,
): void {
  const { rank, pivot } = FP4_CELLS;
  for (let s = 0; s < v.length; s += bs) {
    const e = Math.min(v.length, s + bs);
    const inv = f(1 / absmax[(first + s) / bs]);
    const tree = inv === Infinity && absmax[(first + s) / bs] !== 0;
    for (let i = s; i < e + (e - s) % 2; i++) {
      const x = f((i < e ? v[i] : 0) * inv);
      let q: number;
      if (tree) q = quant4Code(x, "fp4");
      else {
        const a = Math.abs(x), c = (a * CELLS) | 0;
        q = FP4_LEVEL_BITS[rank[c] + (a > pivot[c] ? 1 : 0)] + (x < 0 ? 8 : 0);
      }
      const at = (first + i) >> 1;
      packed[at] = (i & 1) === 0 ? q << 4 : packed[at] | q;
    }
  }
}

/** The float32 mean double quantization subtracts: a float64 sum in index order, / n, rounded once. */
export function absmaxOffset(absmax: Float32Array): number {
  let s = 0;
  for (let i = 0; i < absmax.length; i++) s += absmax[i];
  return f(s / absmax.length);
}

/** compress_statistics: absmax − mean, quantized blockwise (256) with the dynamic map. */
function quantizeAbsmax(absmax: Float32Array): NestedAbsmax {
  const offset = absmaxOffset(absmax);
  const centred = absmax.map((a) => f(a - offset));
  const code = dynamicMap();
  const { codes, absmax: absmax2 } = quantizeBlockwise8(centred, code, NESTED_BLOCKSIZE);
  return { codes, absmax: absmax2, blocksize: NESTED_BLOCKSIZE, offset, code };
}

/** quantize_blockwise: 8-bit codes in `code` per value, float32 absmax per block. */
export function quantizeBlockwise8(
  values: Float32Array,
  code: Float32Array,
  blocksize: number,
): { codes: Uint8Array; absmax: Float32Array } {
  const absmax = blockAbsmax(values, blocksize);
  const codes = new Uint8Array(values.length);
  for (let b = 0; b < absmax.length; b++) {
    const inv = f(1 / absmax[b]);
    const end = Math.min(values.length, (b + 1) * blocksize);
    for (let i = b * blocksize; i < end; i++) codes[i] = quant8Code(f(values[i] * inv), code);
  }
  return { codes, absmax };
}

/** dequantize_blockwise: code · absmax of the block, float32. */
export function dequantizeBlockwise8(
  codes: Uint8Array,
  absmax: Float32Array,
  code: Float32Array,
  blocksize: number,
): Float32Array {
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    out[i] = f(code[codes[i]] * absmax[Math.floor(i / blocksize)]);
  }
  return out;
}

/** The float32 scale of every 4-bit block (double quantization undone: code8 · absmax2 + offset). */
export function blockScales(t: Quant4Tensor): Float32Array {
  if (t.absmax) return t.absmax;
  const q = t.nested!;
  const d = dequantizeBlockwise8(q.codes, q.absmax, q.code, q.blocksize);
  return d.map((x) => f(x + q.offset));
}

/** dequantize_4bit: each value's code value times its block's scale, float32, flattened. */
export function dequantize4bit(t: Quant4Tensor): Float32Array {
  const values = quant4Values(t.type);
  const scales = blockScales(t);
  const out = new Float32Array(t.n);
  for (let i = 0; i < t.n; i++) {
    const byte = t.packed[i >> 1];
    const q = i % 2 === 0 ? byte >> 4 : byte & 15;
    out[i] = f(values[q] * scales[Math.floor(i / t.blocksize)]);
  }
  return out;
}

/** Device bytes of a quantized tensor: packed codes and block statistics (see ./device.ts). */
export function quant4Bytes(n: number, opts: Quant4Options): number {
  const blocksize = opts.blocksize ?? 64;
  const blocks = Math.ceil(n / blocksize);
  const words = (bytes: number) => Math.ceil(bytes / 4) * 4;
  const stats = opts.doubleQuant
    ? words(blocks) + 4 * Math.ceil(blocks / NESTED_BLOCKSIZE)
    : 4 * blocks;
  return words(Math.ceil(n / 2)) + stats;
}
