/**
 * Finding non-finite values (NaN, ±Infinity) in tensors, by their exponent
 * bits: all ones in IEEE 754 means infinity or NaN, whatever the mantissa.
 * Reading the bits of a typed array is a tight integer loop, fast enough to
 * check every tensor a model, adapter or checkpoint loads or writes.
 */
import { UserError } from "./errors.ts";

/** Index of the first NaN or ±Infinity in `a`, or -1. */
export function firstNonFinite(a: Float32Array): number {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < u.length; i++) if ((u[i] & 0x7f800000) === 0x7f800000) return i;
  return -1;
}

/**
 * Index of the first non-finite element of little-endian raw tensor bytes of
 * `dtype` (F32, F16, BF16; other dtypes have no non-finite values), or -1.
 */
export function firstNonFiniteRaw(bytes: Uint8Array, dtype: string): number {
  if (dtype === "F32") {
    if (bytes.byteOffset % 4 === 0) {
      return firstNonFinite(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length >> 2));
    }
    return firstNonFinite(new Float32Array(bytes.slice().buffer));
  }
  if (dtype !== "F16" && dtype !== "BF16") return -1;
  const mask = dtype === "F16" ? 0x7c00 : 0x7f80;
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    if (((bytes[i] | (bytes[i + 1] << 8)) & mask) === mask) return i >> 1;
  }
  return -1;
}

/** What a non-finite value is, for messages. */
export function nonFiniteName(x: number): string {
  return Number.isNaN(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity";
}

/**
 * Throw a UserError naming `where` and the tensor when `data` holds a
 * non-finite value: such weights came from a diverged run and would only make
 * NaN outputs (an empty reply in chat, NaN logits in evaluate).
 */
export function assertFiniteTensor(where: string, name: string, data: Float32Array): void {
  const i = firstNonFinite(data);
  if (i >= 0) {
    throw new UserError(
      `${where}: tensor ${name} holds a non-finite value (${
        nonFiniteName(data[i])
      } at element ${i}); these weights come from a run that diverged and cannot be used`,
    );
  }
}
