/**
 * Element types of safetensors files and the conversions between them.
 * Half precision is handled bit by bit (no Float16Array dependency) so the
 * results are identical on every runtime; f32 → f16/bf16 rounds to nearest,
 * ties to even, as torch's `.to(torch.float16)` / `.to(torch.bfloat16)` do.
 */

export type DType = "F32" | "F16" | "BF16";

export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

export function isDType(s: string): s is DType {
  return s === "F32" || s === "F16" || s === "BF16";
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** IEEE binary16 bits → number. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** number → IEEE binary16 bits, round to nearest even; overflow → ±Inf, NaN kept quiet. */
export function f32ToF16Bits(x: number): number {
  f32buf[0] = x;
  const bits = u32buf[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): shift the mantissa with the implicit bit in.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, up to 0x7c00 (= Inf): still correct.
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** bfloat16 bits → number. */
export function bf16BitsToF32(h: number): number {
  u32buf[0] = (h & 0xffff) << 16;
  return f32buf[0];
}

/** number → bfloat16 bits, round to nearest even (NaN kept quiet). */
export function f32ToBf16Bits(x: number): number {
  f32buf[0] = x;
  const bits = u32buf[0];
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff)) {
    return ((bits >>> 16) | 0x40) & 0xffff;
  }
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** Decode little-endian raw bytes of `dtype` into f32. */
export function toF32(bytes: Uint8Array, dtype: DType): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (dtype === "F32") {
    const out = new Float32Array(n);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  if (dtype === "BF16") {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = dv.getUint16(2 * i, true) << 16;
  } else {
    // A 64 Ki lookup table beats per-element Math.pow for multi-megabyte tensors.
    const lut = f16Table();
    for (let i = 0; i < n; i++) out[i] = lut[dv.getUint16(2 * i, true)];
  }
  return out;
}

let f16Lut: Float32Array | undefined;
function f16Table(): Float32Array {
  if (!f16Lut) {
    f16Lut = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Lut[h] = f16BitsToF32(h);
  }
  return f16Lut;
}

/** Encode f32 values as little-endian raw bytes of `dtype`. */
export function fromF32(values: Float32Array, dtype: DType): Uint8Array {
  if (dtype === "F32") {
    return new Uint8Array(values.buffer.slice(
      values.byteOffset,
      values.byteOffset + values.byteLength,
    ) as ArrayBuffer);
  }
  const out = new Uint8Array(values.length * 2);
  const dv = new DataView(out.buffer);
  const enc = dtype === "F16" ? f32ToF16Bits : f32ToBf16Bits;
  for (let i = 0; i < values.length; i++) dv.setUint16(2 * i, enc(values[i]), true);
  return out;
}

/**
 * f32 values as IEEE f16 packed two per u32 (element 2i in the low half, as
 * WGSL's unpack2x16float expects); an odd length is padded with a zero half.
 */
export function f32ToF16Packed(src: Float32Array): Uint32Array {
  const out = new Uint32Array(Math.ceil(src.length / 2));
  for (let i = 0; i < out.length; i++) {
    const lo = f32ToF16Bits(src[2 * i]);
    const hi = 2 * i + 1 < src.length ? f32ToF16Bits(src[2 * i + 1]) : 0;
    out[i] = (lo | (hi << 16)) >>> 0;
  }
  return out;
}

/**
 * Raw little-endian bytes of `dtype` as f16 packed two per u32: F16 is copied
 * bit for bit, BF16/F32 are rounded to nearest even (bf16 values beyond the f16
 * range become ±Inf, tiny ones flush toward zero — fine for frozen weights of
 * a model trained in bf16, whose values sit well inside the f16 range).
 */
export function rawToF16Packed(bytes: Uint8Array, dtype: DType): Uint32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (dtype === "F16") {
    const out = new Uint32Array(Math.ceil(n / 2));
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  return f32ToF16Packed(toF32(bytes, dtype));
}

/** bf16 bits (one per Uint16Array element) as f16 packed two per u32. */
export function bf16ToF16Packed(src: Uint16Array): Uint32Array {
  const f = new Float32Array(src.length);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < src.length; i++) u[i] = src[i] << 16;
  return f32ToF16Packed(f);
}
