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
 * (`quantize4bit` on the f32 values decoded from the checkpoint's
 * f16/bf16/f32), and uploads the result as ./device.ts lays it out.
 */
import { type DType, toF32 } from "../../safetensors/dtype.ts";
import { dynamicMap, quant4Code, type Quant4Type, quant4Values, quant8Code } from "./codes.ts";

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
  if (shape.reduce((a, b) => a * b, 1) !== n) {
    throw new Error(`quantize4bit: shape [${shape}] does not hold ${n} values`);
  }
  const blocksize = opts.blocksize ?? 64;
  if (!BLOCKSIZES.includes(blocksize)) {
    throw new Error(`quantize4bit: blocksize must be one of ${BLOCKSIZES.join(", ")}`);
  }
  const absmax = blockAbsmax(values, blocksize);
  const packed = new Uint8Array(Math.ceil(n / 2));
  for (let b = 0; b < absmax.length; b++) {
    // The kernel multiplies by a float32 reciprocal (1 / 0 = ∞: a block of zeros gives NaN codes).
    const inv = f(1 / absmax[b]);
    const start = b * blocksize;
    // An odd count's missing last value is loaded as 0 and quantized with the last block's scale.
    const end = Math.min(n + (n % 2), start + blocksize);
    for (let i = start; i < end; i++) {
      const x = f((i < n ? values[i] : 0) * inv);
      const q = quant4Code(x, opts.type);
      packed[i >> 1] |= i % 2 === 0 ? q << 4 : q;
    }
  }
  const t: Quant4Tensor = { type: opts.type, shape: [...shape], n, blocksize, packed };
  if (opts.doubleQuant) t.nested = quantizeAbsmax(absmax);
  else t.absmax = absmax;
  return t;
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

/** `quantize4bit` on a checkpoint tensor's raw bytes (F32, F16 or BF16, little-endian). */
export function quantizeRaw(
  bytes: Uint8Array,
  dtype: DType,
  shape: number[],
  opts: Quant4Options,
): Quant4Tensor {
  return quantize4bit(toF32(bytes, dtype), shape, opts);
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
