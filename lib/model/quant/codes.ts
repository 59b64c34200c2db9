/**
 * The code books of bitsandbytes' 4-bit quantization, as float32 bit patterns
 * (the values its CUDA kernels hold: csrc/kernels.cu's nf4/fp4 dequantization
 * tables and the pivots of dQuantizeNF4 / dQuantizeFP4), and the signed 8-bit
 * dynamic map that double quantization uses (functional.py's
 * create_dynamic_map). tools/bnb_quant.py is the NumPy reference; the test
 * holds both equal, bit for bit, through tests/fixtures/quant/codes.json.
 *
 * Why bit patterns: four NF4 pivots are printed in the source with 16 digits
 * that sit almost exactly between two float32 values. A C compiler rounds the
 * `…f` literal once, from decimal to float32; JavaScript would round it to
 * float64 first and then to float32, and lands on the other neighbour for
 * those four (e.g. -0.8480964004993439: 0xbf591cd9 against 0xbf591cd8).
 */

export type Quant4Type = "nf4" | "fp4";

function fromBits(bits: number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits).buffer);
}

/** NF4's 16 values by code (QLoRA's NormalFloat: quantiles of N(0, 1), scaled to [-1, 1]). */
export const NF4_VALUES = fromBits([
  0xbf800000,
  0xbf3239b1,
  0xbf066b30,
  0xbeca32a0,
  0xbe91a24d,
  0xbe3d353f,
  0xbdba7871,
  0x00000000,
  0x3da2faff,
  0x3e24cae3,
  0x3e7c04dd,
  0x3ead033a,
  0x3ee1a4b8,
  0x3f1007ab,
  0x3f3913b3,
  0x3f800000,
]);

/**
 * FP4's 16 values by code: sign bit, 2 exponent bits, 1 mantissa bit; the
 * bit patterns 000..111 are 0, 0.0625, 8, 12, 4, 6, 2, 3 divided by 12. Code
 * 1000 is -0.0 (the kernel multiplies the table's 0 by -1).
 */
export const FP4_VALUES = fromBits([
  0x00000000,
  0x3baaaaab,
  0x3f2aaaab,
  0x3f800000,
  0x3eaaaaab,
  0x3f000000,
  0x3e2aaaab,
  0x3e800000,
  0x80000000,
  0xbbaaaaab,
  0xbf2aaaab,
  0xbf800000,
  0xbeaaaaab,
  0xbf000000,
  0xbe2aaaab,
  0xbe800000,
]);

/** dQuantizeNF4's pivots, ascending: a value's code is the number of pivots below it. */
export const NF4_THRESHOLDS = fromBits([
  0xbf591cd9,
  0xbf1c5270,
  0xbeeb8480,
  0xbeadea76,
  0xbe703cec,
  0xbe0d38bc,
  0xbd3a7871,
  0x3d22faff,
  0x3df64863,
  0x3e5067e0,
  0x3e9582d4,
  0x3ec753f9,
  0x3f006d03,
  0x3f248daf,
  0x3f5c89d9,
]);

/**
 * dQuantizeFP4's pivots on |x|, ascending; a magnitude above r of them takes
 * the bit pattern FP4_LEVEL_BITS[r] (the sign bit is x < 0).
 */
export const FP4_THRESHOLDS = fromBits([
  0x3b2aaab9,
  0x3db00000,
  0x3e555555,
  0x3e955555,
  0x3ed55556,
  0x3f155550,
  0x3f555555,
]);
export const FP4_LEVEL_BITS = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011] as const;

/** The 16 values a 4-bit code stands for, by code. */
export function quant4Values(type: Quant4Type): Float32Array {
  return type === "nf4" ? NF4_VALUES : FP4_VALUES;
}

/**
 * The 4-bit code of one normalised value, as the CUDA kernel's comparison
 * tree picks it: the number of pivots t with x > t (a binary search over the
 * sorted pivots, 4 comparisons for NF4, 3 for FP4's magnitude). `x > t` is
 * false for NaN (a block of zeros gives 0 · ∞), so NaN takes rank 0, as in
 * the kernel.
 */
export function quant4Code(x: number, type: Quant4Type): number {
  if (type === "nf4") return rankAbove(x, NF4_THRESHOLDS);
  return FP4_LEVEL_BITS[rankAbove(Math.abs(x), FP4_THRESHOLDS)] + (x < 0 ? 8 : 0);
}

function rankAbove(x: number, t: Float32Array): number {
  let lo = 0, hi = t.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (x > t[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

let dynamic: Float32Array | undefined;

/**
 * create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for
 * i = 0..6, the midpoints of torch.linspace(0.1, 1, 2^i + 1) in float32, times
 * 10^(i−6) (float32) and their negatives, with 0 and 1; 256 values, sorted.
 * torch 2.x on x86-64 computes each linspace value with one fused
 * multiply-add from the nearer end (start + step·i, end − step·(steps−1−i));
 * the float64 expression here is exact, so rounding it once is that result.
 */
export function dynamicMap(): Float32Array {
  if (dynamic) return dynamic;
  const f = Math.fround;
  // Decimal literals (float64 reads them correctly), rounded once to float32 as torch's
  // float32 tensor · Python float does; `10 ** k` is not guaranteed exact in JavaScript.
  const scales = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1];
  const out: number[] = [0, 1];
  for (let i = 0; i < 7; i++) {
    const steps = 2 ** i + 1, start = f(0.1), end = 1;
    const step = f((end - start) / (steps - 1));
    const half = Math.floor(steps / 2);
    const b: number[] = [];
    for (let j = 0; j < steps; j++) {
      b.push(f(j < half ? start + step * j : end - step * (steps - 1 - j)));
    }
    const s = f(scales[i]);
    for (let j = 0; j + 1 < steps; j++) {
      const mean = f(f(b[j] + b[j + 1]) / 2);
      const v = f(s * mean);
      out.push(v, -v);
    }
  }
  dynamic = new Float32Array(out.sort((a, b) => a - b));
  return dynamic;
}

/**
 * dQuantize<0>: the 8-bit code of a normalised value in `code` (sorted, 256
 * entries), by the kernel's search: 7 halving steps from pivot 127, then the
 * midpoint between the pivot and the neighbour the search last saw on the
 * value's side (float32 sums), ties to the pivot.
 */
export function quant8Code(x: number, code: Float32Array): number {
  let pivot = 127, upperPivot = 255, lowerPivot = 0;
  let lower = -1, upper = 1;
  let val = code[pivot];
  for (let i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lowerPivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upperPivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upperPivot === 255) upper = code[255];
  if (lowerPivot === 0) lower = code[0];
  const f = Math.fround;
  if (x > val) return x > f(f(upper + val) * 0.5) ? upperPivot : pivot;
  return x < f(f(lower + val) * 0.5) ? lowerPivot : pivot;
}
